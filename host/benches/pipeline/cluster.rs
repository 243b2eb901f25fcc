//! The session guest in cluster mode on one NATS server and on three, beside raw JetStream on
//! the same servers (`cluster`).

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use fnhost::engine::broker::{Broker, OutMessage};
use fnhost::engine::state::StateStore as _;
use fnhost::function::{FunctionConfig, Ordering, ProcessingGuarantee};
use fnhost::instance::{self, RunUntil};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::names::SubscriptionName;
use fnhost_test_support::Nats;

use crate::common::{
    Code, Workload, count_outputs, executors, input, native_session_duration, pipeline_config, session_events,
};

/// Events per run of the cluster part: NATS is several times slower than sled here.
pub(crate) const CLUSTER_MESSAGES: usize = 200_000;

/// Messages per fetch in the raw JetStream ceiling, as the issue measured it.
pub(crate) const RAW_FETCH: usize = 500;

/// The session-duration guest in cluster mode (the NATS engine under the same pipeline, with
/// batched entries and state per batch), beside the engine's own ceiling measured on the same
/// servers (raw JetStream fetch in batches of 500 with an acknowledgement per message, one
/// message per JetStream message as a NATS user publishes) and beside the same fetches doing the
/// raw writes of the function's mapping, and of a batched state layout; on one server, then on a
/// cluster of three with three copies of every stream. Alternated, `rounds` times; medians.
pub(crate) fn cluster(wasm: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    for servers in [1, 3] {
        cluster_of(wasm, messages, rounds, servers)?;
    }
    Ok(())
}

fn cluster_of(wasm: &Path, messages: usize, rounds: usize, servers: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let mut raw = Vec::new();
    let mut mapped = Vec::new();
    let mut batched = Vec::new();
    let mut guest = Vec::new();
    let mut processing = Vec::new();
    for round in 0..rounds {
        let server = Nats::start(servers);
        let url = server.urls();
        let raw_url = url.split(',').next().expect("a server").to_owned();
        raw.push(raw_jetstream(&raw_url, servers, &events, round, RawWork::FetchAndAck)?);
        mapped.push(raw_jetstream(&raw_url, servers, &events, round, RawWork::SessionMapping)?);
        batched.push(raw_jetstream(&raw_url, servers, &events, round, RawWork::BatchedState)?);
        let engine = fnhost::nats::NatsEngine::connect(&url, servers, &fnhost::nats::NatsSecurity::default())?;
        let config = FunctionConfig {
            subscription: SubscriptionName::new("public", "default", &format!("bench-{round}"))?,
            ..pipeline_config(ProcessingGuarantee::AtLeastOnce, Ordering::Unordered, 1)?
        };
        for chunk in events.chunks(MAX_BATCH_MESSAGES) {
            engine.produce(&input(), chunk.to_vec())?;
        }
        let executors = executors(&engine, &config, Code::Wasm(wasm), native_session_duration)?;
        let started = Instant::now();
        // The leader's upkeep, as a worker runs it: the state views follow the commits.
        let (done, stop) = std::sync::mpsc::channel::<()>();
        let stats = std::thread::scope(|scope| {
            let upkeep = &engine;
            scope.spawn(move || {
                // Until the run ends and drops `done`: a disconnection is the stop signal.
                while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(Duration::from_millis(500)) {
                    upkeep.materialise_views().expect("the views follow the changelogs");
                }
            });
            let stats = instance::run(&engine, &config, executors, RunUntil::Idle, &AtomicBool::new(false));
            drop(done);
            stats
        })?;
        let processed = started.elapsed();
        // Timed until every commit's state is in the view, where querystate and a successor read it.
        engine.materialise_views()?;
        guest.push(started.elapsed());
        processing.push(processed);
        let succeeded: u64 = stats.iter().map(|instance| instance.succeeded).sum();
        anyhow::ensure!(
            succeeded as usize == events.len(),
            "cluster: {succeeded} of {} messages succeeded",
            events.len()
        );
        let written = count_outputs(&engine)?;
        let expected = Workload::sessions(&events).outputs();
        anyhow::ensure!(written == expected, "cluster: {written} outputs of {expected}");
    }
    let rate = |times: &mut Vec<Duration>| {
        times.sort();
        messages as f64 / times[times.len() / 2].as_secs_f64()
    };
    let (raw, mapped, batched, guest) = (rate(&mut raw), rate(&mut mapped), rate(&mut batched), rate(&mut guest));
    let processing = rate(&mut processing);
    println!();
    let servers = match servers {
        1 => "one NATS server".to_owned(),
        count => format!("{count} NATS servers, {count} copies"),
    };
    println!(
        "| cluster mode, {servers}, {messages} events, median of {rounds} | messages/s | of the ceiling | of the mapping's own work |"
    );
    println!("|---|---|---|---|");
    println!("| raw JetStream fetch ({RAW_FETCH}) and ack (ceiling) | {raw:.0} | 1.00 | |");
    println!(
        "| raw JetStream fetch, the session mapping's writes, ack (no wasm, no host) | {mapped:.0} | {:.2} | 1.00 |",
        mapped / raw
    );
    println!(
        "| raw JetStream fetch, the outputs and one state message per batch, ack (no wasm, no host) | {batched:.0} | {:.2} | |",
        batched / raw
    );
    println!(
        "| session-duration guest with batched entries and state per batch, ATLEAST_ONCE, until the views caught up | {guest:.0} | {:.2} | {:.2} |",
        guest / raw,
        guest / mapped
    );
    println!(
        "| the same runs, until the last commit | {processing:.0} | {:.2} | {:.2} |",
        processing / raw,
        processing / mapped
    );
    Ok(())
}

/// What a raw JetStream consumer does with each fetched batch.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum RawWork {
    /// Acknowledge each message: what any JetStream consumer pays.
    FetchAndAck,
    /// First write what the session function's mapping writes, with every write's server
    /// acknowledgement awaited (a key-value put for a login, a key-value delete and an output
    /// message with a `Nats-Msg-Id` for a logout), then acknowledge each message: the least any
    /// host of this function on this mapping can do, with no wasm, JSON or bookkeeping.
    SessionMapping,
    /// As `SessionMapping`, but with the batch's state changes written as one message: the
    /// least a host could do with a state layout other than the issue's key-value bucket, since
    /// each output must still be a message of its own.
    BatchedState,
}

/// Publishes `events` to a stream of their own, then times fetching them in batches of
/// `RAW_FETCH` through a durable pull consumer and doing `work` with each batch.
pub(crate) fn raw_jetstream(
    url: &str,
    replicas: usize,
    events: &[OutMessage],
    round: usize,
    work: RawWork,
) -> anyhow::Result<Duration> {
    use futures_util::StreamExt as _;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let prefix = match work {
            RawWork::FetchAndAck => format!("raw{round}"),
            RawWork::SessionMapping => format!("mapped{round}"),
            RawWork::BatchedState => format!("batched{round}"),
        };
        let stream = jetstream
            .get_or_create_stream(async_nats::jetstream::stream::Config {
                name: prefix.to_uppercase(),
                subjects: vec![format!("{prefix}.>")],
                num_replicas: replicas,
                ..Default::default()
            })
            .await?;
        jetstream
            .create_key_value(async_nats::jetstream::kv::Config {
                bucket: format!("{prefix}-state"),
                num_replicas: replicas,
                ..Default::default()
            })
            .await?;
        let mut acks = Vec::new();
        for event in events {
            acks.push(jetstream.publish(format!("{prefix}.events"), event.value.clone().into()).await?);
        }
        for ack in acks {
            ack.await?;
        }
        let consumer: async_nats::jetstream::consumer::PullConsumer = stream
            .create_consumer(async_nats::jetstream::consumer::pull::Config {
                durable_name: Some("raw".into()),
                ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                ..Default::default()
            })
            .await?;
        let started = Instant::now();
        let mut acknowledged = 0;
        while acknowledged < events.len() {
            let mut batch = consumer.fetch().max_messages(RAW_FETCH).messages().await?;
            let mut messages = Vec::new();
            while let Some(message) = batch.next().await {
                messages.push(message.map_err(|e| anyhow::anyhow!("{e}"))?);
            }
            if work != RawWork::FetchAndAck {
                let mut writes = Vec::new();
                let mut changes = Vec::new();
                for message in &messages {
                    let event = std::str::from_utf8(&message.payload)?;
                    let user = event.split('"').nth(3).ok_or_else(|| anyhow::anyhow!("no user in {event}"))?;
                    // The key-value bucket's own subjects, so its writes are pipelined like the outputs.
                    let key = || format!("$KV.{prefix}-state.{user}");
                    let login = event.contains("login");
                    if work == RawWork::BatchedState {
                        changes.extend_from_slice(user.as_bytes());
                        changes.extend_from_slice(if login { b"=1678886400;" } else { b";" });
                    } else if login {
                        writes.push(jetstream.publish(key(), "1678886400".into()).await?);
                    } else {
                        let mut delete = async_nats::HeaderMap::new();
                        delete.insert("KV-Operation", "DEL");
                        writes.push(jetstream.publish_with_headers(key(), delete, "".into()).await?);
                    }
                    if !login {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(
                            "Nats-Msg-Id",
                            message.info().map_err(|e| anyhow::anyhow!("{e}"))?.stream_sequence.to_string(),
                        );
                        let output = format!(r#"{{"user_id":"{user}","duration":10}}"#);
                        writes.push(
                            jetstream.publish_with_headers(format!("{prefix}.outputs"), headers, output.into()).await?,
                        );
                    }
                }
                if work == RawWork::BatchedState {
                    writes.push(jetstream.publish(format!("{prefix}.state"), changes.into()).await?);
                }
                for write in writes {
                    write.await?;
                }
            }
            for message in messages {
                message.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                acknowledged += 1;
            }
        }
        client.flush().await?;
        anyhow::Ok(started.elapsed())
    })
}
