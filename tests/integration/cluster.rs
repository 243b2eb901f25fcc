//! Cluster mode: NATS JetStream servers and several workers on loopback, each test with its own
//! servers, ports and directories. Workers and servers are killed with SIGKILL mid-stream; the
//! session-duration outputs are checked against the oracle of the crash tests.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fnhost_test_support::Nats;

use crate::crash::{Oracle, Random, counts, oracle};
use crate::support::{Worker, guest};

/// The figure: enough events that kills land mid-stream.
const EVENTS: usize = 30_000;
/// Events per produce request.
const PRODUCE_CHUNK: usize = 1_000;

/// Waits until `consumers` consumers of topic `public/default/TOPIC` for function
/// `public/default/NAME` exist and have nothing pending or unacknowledged.
fn wait_drained(nats: &Nats, topic: &str, name: &str, consumers: usize, workers: &[Worker]) {
    let prefix = format!("public_2fdefault_2f{name}");
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let found: Vec<_> = nats
            .consumers(&topic_stream(topic))
            .into_iter()
            .filter(|(consumer, _, _)| consumer.starts_with(&prefix))
            .collect();
        if found.len() == consumers && found.iter().all(|(_, pending, unacked)| pending + unacked == 0) {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .map(|worker| {
                    let status = worker.cli(&["functions", "status", "--name", name]).stdout;
                    format!("{}\n{status}\n{}", cluster_info(worker), worker.log())
                })
                .collect();
            panic!("the consumers of {prefix} did not drain: {found:?}\nworker logs:\n{}", logs.join("\n----\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stream of `persistent://public/default/TOPIC`.
fn topic_stream(topic: &str) -> String {
    format!("FNT-persistent_3a_2f_2fpublic_2fdefault_2f{topic}")
}

fn start_workers(nats: &Nats, count: usize) -> (Vec<Worker>, Vec<tempfile::TempDir>) {
    let dirs: Vec<tempfile::TempDir> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let urls = nats.urls();
    let workers = dirs
        .iter()
        .enumerate()
        .map(|(index, dir)| Worker::start_with(dir.path(), &["--cluster", &urls, "--worker-id", &format!("w{index}")]))
        .collect();
    (workers, dirs)
}

fn create_sessions(worker: &Worker, name: &str, output: &str, extra: &[&str]) {
    let wasm = guest("session-duration");
    let mut args = vec![
        "functions",
        "create",
        "--wasm",
        wasm.to_str().unwrap(),
        "--name",
        name,
        "-i",
        "events",
        "-o",
        output,
        "--log-level",
        "error",
    ];
    args.extend(extra);
    worker.ok(&args);
}

/// Produces events `range` of the oracle, each keyed by its user, through `worker`.
fn produce(worker: &Worker, oracle: &Oracle, range: std::ops::Range<usize>) {
    for chunk in oracle.events[range].chunks(PRODUCE_CHUNK) {
        let keyed = chunk.iter().map(|event| {
            let json: serde_json::Value = serde_json::from_str(event).unwrap();
            (event.as_str(), json["user_id"].as_str().unwrap().to_owned())
        });
        produce_keyed(worker, "events", keyed);
    }
}

/// Produces each `(value, key)` to `persistent://public/default/TOPIC` through `worker`, in one request.
fn produce_keyed<'a>(worker: &Worker, topic: &str, messages: impl IntoIterator<Item = (&'a str, String)>) {
    let messages: Vec<serde_json::Value> = messages
        .into_iter()
        .map(|(value, key)| {
            serde_json::json!({ "payload": base64::engine::general_purpose::STANDARD.encode(value), "key": key })
        })
        .collect();
    let body = serde_json::to_vec(&serde_json::json!({ "messages": messages })).unwrap();
    let (status, answer) =
        worker.http("POST", &format!("/topics/persistent/public/default/{topic}"), Some(("application/json", body)));
    assert_eq!(status, 200, "{answer}");
}

/// Every session in `topic`, read through `worker`.
/// The sessions on `topic`, read until at least `expected` have come and then once more, for
/// any extra: on a busy machine one `--until-idle` read can end before NATS hands over the rest,
/// so a short read is read again rather than taken for a loss.
fn sessions(worker: &Worker, topic: &str, expected: usize) -> Vec<(String, i64)> {
    let read = || -> Vec<(String, i64)> {
        let run = worker.cli(&["topics", "consume", topic, "--subscription", "verify", "--until-idle"]);
        assert!(run.success, "{}", run.stderr);
        run.stdout
            .lines()
            .map(|line| {
                let json: serde_json::Value = serde_json::from_str(line).unwrap();
                (json["user_id"].as_str().unwrap().to_owned(), json["duration"].as_i64().unwrap())
            })
            .collect()
    };
    // Bounded like `Worker::wait_for`, but what came is returned for the caller to say what is
    // missing rather than only that something is.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut outputs = Vec::new();
    while outputs.len() < expected && Instant::now() < deadline {
        outputs.extend(read());
    }
    outputs.extend(read());
    outputs
}

/// Fails, saying how many and which, unless `found` holds each of `expected`'s outputs as often
/// as `expected` does; `context` adds what the failure needs to be understood.
fn assert_each_once(found: &[(String, i64)], expected: &[(String, i64)], what: &str, context: impl FnOnce() -> String) {
    let (found, expected) = (counts(found), counts(expected));
    if found == expected {
        return;
    }
    let missing: Vec<_> = expected.keys().filter(|output| found.get(*output) < expected.get(*output)).collect();
    let extra: Vec<_> = found.keys().filter(|output| found.get(*output) > expected.get(*output)).collect();
    panic!(
        "{what}: {} outputs missing, such as {:?}; {} come too often or were never expected, such as {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)],
        context()
    );
}

fn cluster_info(worker: &Worker) -> serde_json::Value {
    let (status, json) = worker.http("GET", "/admin/v2/worker/cluster", None);
    assert_eq!(status, 200, "{json}");
    json
}

/// The worker running each instance of `fqfn`, by the status `worker` reports.
fn owners(worker: &Worker, name: &str) -> Vec<String> {
    let status = worker.ok(&["functions", "status", "--name", name]);
    status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|instance| {
            let status = &instance["status"];
            match status["running"].as_bool() {
                Some(true) => status["workerId"].as_str().unwrap_or_default().to_owned(),
                _ => String::new(),
            }
        })
        .collect()
}

#[test]
fn three_workers_share_a_function_and_any_of_them_answers_for_it() {
    let nats = Nats::start(3);
    let (workers, _dirs) = start_workers(&nats, 3);
    let mut random = Random::seeded();
    let oracle = oracle(&mut random, EVENTS);
    create_sessions(&workers[1], "sd", "sessions", &["--parallelism", "3", "--retain-key-ordering"]);
    workers[0].wait_for("every instance to run", || owners(&workers[0], "sd").iter().all(|owner| !owner.is_empty()));
    let spread: BTreeSet<String> = owners(&workers[2], "sd").into_iter().collect();
    assert_eq!(spread.len(), 3, "one instance on each worker: {spread:?}");

    produce(&workers[2], &oracle, 0..EVENTS);
    wait_drained(&nats, "events", "sd", 3, &workers);
    let outputs = sessions(&workers[0], "sessions", oracle.outputs.len());
    assert_each_once(&outputs, &oracle.outputs, "outputs equal the oracle's, once each", String::new);

    let config = workers[0].ok(&["functions", "get", "--name", "sd"]);
    let (user, login) = oracle.open.iter().next().expect("an open session");
    for worker in &workers {
        assert_eq!(worker.ok(&["functions", "list"]), serde_json::json!(["sd"]));
        assert_eq!(worker.ok(&["functions", "get", "--name", "sd"]), config);
        let status = worker.ok(&["functions", "status", "--name", "sd"]);
        assert_eq!((status["numInstances"].as_u64(), status["numRunning"].as_u64()), (Some(3), Some(3)), "{status}");
        let stats = worker.ok(&["functions", "stats", "--name", "sd"]);
        assert_eq!(stats["processedSuccessfullyTotal"], EVENTS, "{stats}");
        let state = worker.ok(&["functions", "querystate", "--name", "sd", "--key", user]);
        assert_eq!(state["stringValue"].as_str().and_then(|value| value.parse::<i64>().ok()), Some(*login), "{state}");
        let cluster = cluster_info(worker);
        assert_eq!(cluster["workers"].as_array().map(Vec::len), Some(3), "{cluster}");
        assert_eq!(cluster["leader"], cluster_info(&workers[0])["leader"]);
    }
}

/// Kills the worker `id` of `workers` (named by `ids`, in the same order) with SIGKILL, and waits
/// until the survivors run every instance of the sessions functions elsewhere.
fn kill_and_wait_for_moves(workers: &mut Vec<Worker>, ids: &mut Vec<String>, id: &str) {
    let index = ids.iter().position(|known| known == id).unwrap_or_else(|| panic!("no worker {id} in {ids:?}"));
    workers.remove(index).kill();
    ids.remove(index);
    let survivor = &workers[0];
    let killed_at = Instant::now();
    survivor.wait_for("the dead worker's instances to move", || {
        let all: Vec<String> = owners(survivor, "at-least").into_iter().chain(owners(survivor, "once")).collect();
        all.iter().all(|owner| !owner.is_empty() && owner != id)
    });
    eprintln!("instances moved {:?} after {id} was killed", killed_at.elapsed());
}

#[test]
fn a_killed_worker_leader_and_nats_server_lose_nothing() {
    let mut nats = Nats::start(3);
    let (mut workers, _dirs) = start_workers(&nats, 3);
    let mut random = Random::seeded();
    let oracle = oracle(&mut random, EVENTS);
    create_sessions(&workers[0], "at-least", "sessions-alo", &["--parallelism", "3", "--retain-key-ordering"]);
    create_sessions(
        &workers[0],
        "once",
        "sessions-eo",
        &["--parallelism", "2", "--processing-guarantees", "EFFECTIVELY_ONCE"],
    );
    workers[0].wait_for("every instance to run", || {
        owners(&workers[0], "at-least").iter().chain(&owners(&workers[0], "once")).all(|owner| !owner.is_empty())
    });

    let quarter = EVENTS / 4;
    let mut ids: Vec<String> = (0..workers.len()).map(|index| format!("w{index}")).collect();
    produce(&workers[0], &oracle, 0..quarter);
    nats.kill(2);
    produce(&workers[0], &oracle, quarter..2 * quarter);
    // The worker running the EFFECTIVELY_ONCE function's active instance (0) dies mid-stream.
    // With a NATS server just killed, a worker asked may not answer for the instance for a moment.
    let mut victim = String::new();
    workers[0].wait_for("the worker of the EFFECTIVELY_ONCE instance to be known", || {
        victim = owners(&workers[0], "once")[0].clone();
        !victim.is_empty()
    });
    kill_and_wait_for_moves(&mut workers, &mut ids, &victim);
    produce(&workers[0], &oracle, 2 * quarter..3 * quarter);
    // Then the leader (the same worker if it led, else one of the two left), mid-stream too: the
    // last worker takes the lease once it expires, and every instance.
    let leader = cluster_info(&workers[0])["leader"].as_str().expect("a leader").to_owned();
    kill_and_wait_for_moves(&mut workers, &mut ids, &leader);
    let survivor = &workers[0];
    survivor.wait_for("the last worker to lead", || cluster_info(survivor)["leader"].as_str() == Some(&ids[0]));
    produce(survivor, &oracle, 3 * quarter..EVENTS);

    wait_drained(&nats, "events", "at-least", 3, &workers);
    wait_drained(&nats, "events", "once", 1, &workers);
    // A NATS server or a worker dying is the host's failure, never a message's: a storage call
    // failing meanwhile stops the instance uncommitted, and dead-letters nothing.
    // (Asked of JetStream: reading a topic through fnhost would make its stream, which NATS
    // refuses while one of three servers is down.)
    let client = Client::connect(&nats);
    for name in ["at-least", "once"] {
        let dead_letters = client.runtime.block_on(async {
            use futures_util::TryStreamExt as _;
            let stream = topic_stream(&format!("{name}-DLQ"));
            let names: Vec<String> = client.jetstream.stream_names().try_collect().await.unwrap();
            match names.contains(&stream) {
                true => client.jetstream.get_stream(&stream).await.unwrap().info().await.unwrap().state.messages,
                false => 0,
            }
        });
        assert_eq!(dead_letters, 0, "{name} dead-lettered messages");
    }
    let at_least = sessions(survivor, "sessions-alo", oracle.outputs.len());
    let expected = counts(&oracle.outputs);
    let found = counts(&at_least);
    let missing: Vec<_> = expected.keys().filter(|output| !found.contains_key(*output)).collect();
    assert!(missing.is_empty(), "ATLEAST_ONCE lost {} sessions, such as {:?}", missing.len(), missing.first());
    let invented: Vec<_> = found.keys().filter(|output| !expected.contains_key(*output)).collect();
    assert!(invented.is_empty(), "ATLEAST_ONCE invented {invented:?}");
    let once = sessions(survivor, "sessions-eo", oracle.outputs.len());
    assert_each_once(&once, &oracle.outputs, "EFFECTIVELY_ONCE", || {
        let stats = survivor.cli(&["functions", "stats", "--name", "once"]).stdout;
        format!("stats of the EFFECTIVELY_ONCE function:\n{stats}\nthe last worker's log:\n{}", survivor.log())
    });
}

/// A JetStream client of the test's own, beside the workers.
struct Client {
    runtime: tokio::runtime::Runtime,
    jetstream: async_nats::jetstream::Context,
}

impl Client {
    fn connect(nats: &Nats) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let url = nats.urls().split(',').next().expect("a server").to_owned();
        let client = runtime.block_on(async_nats::connect(url)).unwrap();
        Self { runtime, jetstream: async_nats::jetstream::new(client) }
    }

    /// Consumer `durable` of the stream of `persistent://public/default/TOPIC`.
    fn consumer(&self, topic: &str, durable: &str) -> async_nats::jetstream::consumer::PullConsumer {
        self.runtime.block_on(async {
            self.jetstream.get_stream(topic_stream(topic)).await.unwrap().get_consumer(durable).await.unwrap()
        })
    }

    /// What `consumer` has delivered (a stream sequence), how many deliveries wait for an
    /// acknowledgement, and how many pull requests wait for messages.
    fn delivered(&self, consumer: &mut async_nats::jetstream::consumer::PullConsumer) -> (u64, usize, usize) {
        let info = self.runtime.block_on(consumer.info()).unwrap();
        (info.delivered.stream_sequence, info.num_ack_pending, info.num_waiting)
    }

    /// The keys of fnhost's metadata bucket that record partly acknowledged entries.
    fn partial_records(&self) -> Vec<String> {
        use futures_util::TryStreamExt as _;
        self.runtime.block_on(async {
            let bucket = self.jetstream.get_key_value("fnhost-metadata").await.unwrap();
            let keys: Vec<String> = bucket.keys().await.unwrap().try_collect().await.unwrap();
            keys.iter()
                .filter_map(|key| key.strip_prefix("k_"))
                .filter_map(|key| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(key).ok())
                .filter_map(|key| String::from_utf8(key).ok())
                .filter(|key| key.starts_with("partial/"))
                .collect()
        })
    }

    /// Pulls the next message of `consumer` and forgets it, as a connection that dies with a
    /// delivery on its way does: the server counts it delivered, and nobody processes it.
    /// Returns its stream sequence.
    fn lose_next(&self, consumer: &async_nats::jetstream::consumer::PullConsumer) -> u64 {
        use futures_util::StreamExt as _;
        self.runtime.block_on(async {
            let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
            let message = batch.next().await.expect("a message to lose").unwrap();
            message.info().unwrap().stream_sequence
        })
    }
}

/// The fault the kill test met by chance, made on purpose: NATS delivers a message to an
/// ordered instance that never receives it. The instance must not take the messages after it
/// (the lost one would come back behind them, and was skipped as committed); it starts again
/// after its acknowledgement floor, and every message is processed once, in order.
#[test]
fn a_delivery_lost_on_its_way_to_an_ordered_instance_is_processed_in_order() {
    let nats = Nats::start(1);
    let (workers, _dirs) = start_workers(&nats, 1);
    let worker = &workers[0];
    let client = Client::connect(&nats);
    let misbehave = guest("misbehave");
    // Long enough for this test to act while the instance spins, on the busiest machine.
    let spin = "spin:15000";
    // MANUAL (the guest acknowledges every message) for its acknowledgement timeout: the lost
    // message must not come back before the instance takes the next one, and a minute is far
    // beyond the spin. Key-shared and failover subscriptions are the two ordered ones.
    for (name, ordering) in [("keyed", "--retain-key-ordering"), ("ordered", "--retain-ordering")] {
        let (input, output) = (format!("{name}-in"), format!("{name}-out"));
        let mut args = vec!["functions", "create", "--wasm", misbehave.to_str().unwrap(), "--name", name];
        args.extend(["-i", &input, "-o", &output, "--timeout-ms", "120000", ordering]);
        args.extend(["--processing-guarantees", "MANUAL", "--ack-timeout-ms", "60000"]);
        worker.ok(&args);
        worker.wait_for("the instance to run", || owners(worker, name).iter().all(|owner| !owner.is_empty()));
        // While the instance spins on the first message it has no pull open, so the next
        // message goes to the pull made here, which then loses it.
        produce_keyed(worker, &input, [(spin, "k".to_owned())]);
        let mut consumer = client.consumer(&input, &format!("public_2fdefault_2f{name}"));
        // And for the pull that brought it to expire: one still open would take the next message
        // (on a busy machine the instance's pull outlived the first message, and took `a`).
        worker.wait_for("the instance to take the first message, its pull over", || {
            client.delivered(&mut consumer) == (1, 1, 0)
        });
        // One request each: a request's messages go in one entry, and only `a` is to be lost.
        for value in ["a", "b"] {
            produce_keyed(worker, &input, [(value, "k".to_owned())]);
        }
        assert_eq!(client.lose_next(&consumer), 2, "{name}: the lost message is `a`, while the instance spins");
        wait_drained(&nats, &input, name, 1, &workers);
        let run = worker.cli(&["topics", "consume", &output, "--subscription", "verify", "--until-idle"]);
        assert!(run.success, "{}", run.stderr);
        assert_eq!(run.stdout.lines().collect::<Vec<_>>(), [spin, "ok:a", "ok:b"], "{name}: {}", worker.log());
        assert!(worker.log().contains("missed deliveries 2 to 3"), "{name}: {}", worker.log());
    }
}

#[test]
fn a_killed_leader_is_replaced_and_scheduling_goes_on() {
    let nats = Nats::start(1);
    let (mut workers, _dirs) = start_workers(&nats, 3);
    let leader = cluster_info(&workers[0])["leader"].as_str().expect("a leader").to_owned();
    let index: usize = leader.trim_start_matches('w').parse().unwrap();
    workers.remove(index).kill();
    let survivor = &workers[0];
    survivor.wait_for("a new leader", || cluster_info(survivor)["leader"].as_str().is_some_and(|now| now != leader));
    let exclamation = guest("exclamation");
    survivor.ok(&[
        "functions",
        "create",
        "--wasm",
        exclamation.to_str().unwrap(),
        "--name",
        "shout",
        "-i",
        "words",
        "-o",
        "shouted",
        "--parallelism",
        "2",
    ]);
    survivor.wait_for("both instances to run", || owners(survivor, "shout").iter().all(|owner| !owner.is_empty()));
    let owners: BTreeMap<String, usize> =
        owners(survivor, "shout").into_iter().fold(BTreeMap::new(), |mut map, owner| {
            *map.entry(owner).or_default() += 1;
            map
        });
    assert_eq!(owners.len(), 2, "one instance on each live worker: {owners:?}");
    assert!(!owners.contains_key(&leader), "nothing on the dead worker: {owners:?}");
    let triggered = workers[1].ok(&["functions", "trigger", "--name", "shout", "--trigger-value", "hello"]);
    assert_eq!(triggered["value"], "hello!", "{triggered}");
}

/// Individual acknowledgements inside a batched entry survive a kill: a MANUAL function
/// acknowledges every other message of one entry, its worker is killed, and on the worker that
/// takes its instance over the entry comes again with exactly the unacknowledged messages.
#[test]
fn a_manual_function_killed_inside_an_entry_gets_exactly_its_unacknowledged_messages_again() {
    let nats = Nats::start(1);
    let (mut workers, _dirs) = start_workers(&nats, 2);
    let client = Client::connect(&nats);
    let misbehave = guest("misbehave");
    workers[0].ok(&[
        "functions",
        "create",
        "--wasm",
        misbehave.to_str().unwrap(),
        "--name",
        "manual",
        "-i",
        "manual-in",
        "-o",
        "manual-out",
        "--processing-guarantees",
        "MANUAL",
        // Unacknowledged messages come again this long after their delivery, on the live worker
        // as on the one that takes over; the retries keep them from the dead-letter topic.
        "--ack-timeout-ms",
        "3000",
        "--max-message-retries",
        "100",
    ]);
    workers[0].wait_for("the instance to run", || owners(&workers[0], "manual").iter().all(|owner| !owner.is_empty()));
    let values: Vec<String> =
        (0..10).map(|index| if index % 2 == 0 { format!("m{index}") } else { format!("noack:m{index}") }).collect();
    // One request: one entry.
    produce_keyed(&workers[0], "manual-in", values.iter().map(|value| (value.as_str(), "k".to_owned())));
    let read = |worker: &Worker| -> Vec<String> {
        let run = worker.cli(&["topics", "consume", "manual-out", "--subscription", "verify", "--until-idle"]);
        assert!(run.success, "{}", run.stderr);
        run.stdout.lines().map(str::to_owned).collect()
    };
    let mut before = Vec::new();
    workers[0].wait_for("every message to be processed once", || {
        before.extend(read(&workers[0]));
        values.iter().all(|value| before.contains(&format!("ok:{value}")))
    });
    workers[0].wait_for("the acknowledged half to be recorded", || {
        client.partial_records().iter().any(|key| key.starts_with("partial/public/default/manual/"))
    });

    let victim = owners(&workers[0], "manual")[0].clone();
    let index: usize = victim.trim_start_matches('w').parse().unwrap();
    workers.remove(index).kill();
    let survivor = &workers[0];
    survivor.wait_for("the instance to move", || {
        owners(survivor, "manual").iter().all(|owner| !owner.is_empty() && *owner != victim)
    });
    let mut after = Vec::new();
    survivor.wait_for("every unacknowledged message to come again", || {
        after.extend(read(survivor));
        values.iter().filter(|value| value.starts_with("noack:")).all(|value| after.contains(&format!("ok:{value}")))
    });
    // Past one more acknowledgement timeout, in case an acknowledged message were to come late.
    std::thread::sleep(Duration::from_secs(4));
    after.extend(read(survivor));
    let acknowledged_again: Vec<&String> = after.iter().filter(|output| !output.starts_with("ok:noack:")).collect();
    assert!(acknowledged_again.is_empty(), "acknowledged messages came again after the kill: {acknowledged_again:?}");
    let all: Vec<&String> = before.iter().chain(&after).collect();
    for value in values.iter().filter(|value| !value.starts_with("noack:")) {
        assert_eq!(all.iter().filter(|output| ***output == format!("ok:{value}")).count(), 1, "{value}: once");
    }
}

/// REST producers batch (`--batch-max-delay-ms`, Pulsar's `batchingMaxPublishDelay`): requests
/// to one topic within the delay go out as one entry, and each gets the ids of its own messages.
#[test]
fn rest_producers_within_the_delay_share_one_entry() {
    let nats = Nats::start(1);
    let data = tempfile::tempdir().unwrap();
    // The longest delay, so that six requests sent at once arrive within it on a busy machine.
    let worker = Worker::start_with(data.path(), &["--cluster", &nats.urls(), "--batch-max-delay-ms", "1000"]);
    let start = std::sync::Barrier::new(6);
    let answers: Vec<(String, Vec<u64>)> = std::thread::scope(|scope| {
        let producers: Vec<_> = (0..6)
            .map(|producer| {
                let (worker, start) = (&worker, &start);
                scope.spawn(move || {
                    start.wait();
                    let value = format!("from-{producer}");
                    let payload = base64::engine::general_purpose::STANDARD.encode(&value);
                    let body = serde_json::json!({ "messages": [{ "payload": payload }] });
                    let (status, answer) = worker.http(
                        "POST",
                        "/topics/persistent/public/default/batched",
                        Some(("application/json", serde_json::to_vec(&body).unwrap())),
                    );
                    assert_eq!(status, 200, "{answer}");
                    let results = answer["messagePublishResults"].as_array().unwrap_or_else(|| panic!("{answer}"));
                    let id = |result: &serde_json::Value| result["messageId"].as_str().unwrap().parse::<u64>().unwrap();
                    (value, results.iter().map(id).collect())
                })
            })
            .collect();
        producers.into_iter().map(|producer| producer.join().unwrap()).collect()
    });
    // A message id is its entry's stream sequence (high bits) and its index in the entry.
    let entries: BTreeSet<u64> = answers.iter().flat_map(|(_, ids)| ids.iter().map(|id| id >> 16)).collect();
    assert_eq!(entries.len(), 1, "six requests within the delay share one entry: {answers:?}");
    let run = worker.cli(&["topics", "consume", "batched", "--subscription", "verify", "--until-idle"]);
    assert!(run.success, "{}", run.stderr);
    let mut stored: Vec<&str> = run.stdout.lines().collect();
    stored.sort_unstable();
    let mut produced: Vec<&str> = answers.iter().map(|(value, _)| value.as_str()).collect();
    produced.sort_unstable();
    assert_eq!(stored, produced, "every request's message, once");
}
