//! The hostile part: a neighbour's throughput in one worker alone, beside a hostile guest, and
//! beside the hostile guest and a hostile tenant attacking what the worker's tenants share through
//! its admin API; and how long the neighbour's status took over HTTP meanwhile.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use fnhost::cli::client::{Body, client_at, multipart};
use fnhost::engine::broker::OutMessage;
use fnhost::limits::{MAX_BATCH_MESSAGES, MAX_CONCURRENT_RECEIVES_PER_TENANT, MAX_RECEIVE_BYTES, MAX_REQUEST_SIZE};
use fnhost::names::{Fqfn, TopicName};
use fnhost::spec::FunctionSpec;
use fnhost::worker::Worker;
use fnhost::worker::admin::CLIENT_HEADER;
use fnhost::worker::api::InstanceStats;

use crate::common::{cpu_time, in_process_worker, input, output, session_events};

/// Events the neighbour of the hostile part processes per run.
pub const HOSTILE_MESSAGES: usize = 3_000_000;
/// What the hostile guest does, in turn, one command per message.
const ATTACKS: [&str; 8] =
    ["loop", "alloc", "log-flood", "put-flood", "publish-flood", "stack", "trap", "metrics-from:0"];
/// Messages the hostile guest gets: more than it can get through while its neighbour runs.
const ATTACK_MESSAGES: usize = 10_000;
/// The hostile tenant's threads holding long-polls, and its threads receiving the largest answers
/// over and over: together twice what its concurrent receives may be.
const LONG_POLLERS: usize = MAX_CONCURRENT_RECEIVES_PER_TENANT;
const AMPLIFIERS: usize = MAX_CONCURRENT_RECEIVES_PER_TENANT;
/// How long each of the hostile tenant's long-polls asks to wait (short, so that a run ends soon
/// after its neighbour).
const LONG_POLL_WAIT_MS: u64 = 2_000;
/// The messages the amplifiers receive: enough that every answer is as large as one may be.
const BIG_MESSAGE_BYTES: usize = 1024 * 1024;
const BIG_MESSAGES: usize = 2 * MAX_RECEIVE_BYTES / BIG_MESSAGE_BYTES;
/// How long an attacking thread waits after a refusal, as a client retrying at once would.
const RETRY_PAUSE: Duration = Duration::from_millis(1);

/// The session guest as a neighbour in one worker: alone; beside the hostile guest (the
/// misbehave guest, cycling through endless loops, memory bombs, floods of logs, state,
/// publishes and metric names, stack overflows and traps, with a 100 ms time limit and no
/// retries); and beside that guest and a hostile tenant over HTTP ([`HostileTenant`]).
/// Alternated, `rounds` times; medians, and how long the neighbour's status took over HTTP
/// during the attacks.
pub fn hostile(session: &Path, misbehave: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    let events = session_events(messages);
    let mut alone = Vec::new();
    let mut beside_guest = Vec::new();
    let mut beside_both = Vec::new();
    let mut failed_attacks = Vec::new();
    let mut tenant_attacks = Vec::new();
    let mut status_times = Vec::new();
    // Cores kept busy in the runs beside both attacks: the attacker's client, the admin API's
    // threads, and the whole process.
    let (mut client_cores, mut server_cores, mut process_cores) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        alone.push(neighbour_run(session, None, false, &events)?.elapsed);
        let run = neighbour_run(session, Some(misbehave), false, &events)?;
        beside_guest.push(run.elapsed);
        failed_attacks.push(run.failed_attacks);
        let run = neighbour_run(session, Some(misbehave), true, &events)?;
        beside_both.push(run.elapsed);
        let cores = |cpu: Duration| cpu.as_secs_f64() / run.elapsed.as_secs_f64();
        client_cores.push(cores(run.tenant_attacks.client_cpu));
        server_cores.push(cores(run.server_cpu));
        process_cores.push(cores(run.process_cpu));
        tenant_attacks.push(run.tenant_attacks);
        status_times.extend(run.status_times);
    }
    status_times.sort_unstable();
    let status_time = |quantile: f64| {
        let index = ((status_times.len() as f64 * quantile) as usize).min(status_times.len().saturating_sub(1));
        status_times.get(index).map_or(0.0, |time| time.as_secs_f64() * 1e3)
    };
    let rate = |times: &mut Vec<Duration>| {
        times.sort();
        messages as f64 / times[times.len() / 2].as_secs_f64()
    };
    let median = |counts: &mut Vec<u64>| {
        counts.sort_unstable();
        counts[counts.len() / 2]
    };
    let median_cores = |cores: &mut Vec<f64>| {
        cores.sort_by(f64::total_cmp);
        cores[cores.len() / 2]
    };
    let alone = rate(&mut alone);
    let (beside_guest, beside_both) = (rate(&mut beside_guest), rate(&mut beside_both));
    let failed_attacks = median(&mut failed_attacks);
    let tally = |field: fn(&AttackTally) -> u64| median(&mut tenant_attacks.iter().map(field).collect());
    let (requests, refused, changes, refused_changes, topics, megabytes) = (
        tally(|tally| tally.requests),
        tally(|tally| tally.refused),
        tally(|tally| tally.changes),
        tally(|tally| tally.refused_changes),
        tally(|tally| tally.topics),
        tally(|tally| tally.received_bytes >> 20),
    );
    println!();
    println!(
        "| one worker, session-duration neighbour, {messages} events, median of {rounds} | messages/s | of alone |"
    );
    println!("|---|---|---|");
    println!("| neighbour alone | {alone:.0} | 1.00 |");
    println!(
        "| beside the hostile guest ({failed_attacks} of its messages failed during the run) | {beside_guest:.0} | {:.2} |",
        beside_guest / alone
    );
    println!(
        "| beside the hostile guest and a hostile tenant over HTTP | {beside_both:.0} | {:.2} |",
        beside_both / alone
    );
    println!();
    println!("| the hostile tenant's attack during the neighbour's run (median of {rounds}) | |");
    println!("|---|---|");
    println!("| requests sent (long-polls, largest receives, changes, produces) | {requests} |");
    println!("| of them refused (429 or 403) | {refused} |");
    println!(
        "| function creates, updates and deletes tried / refused for the tenant's rate | {changes} / {refused_changes} |"
    );
    println!("| new topics opened | {topics} |");
    println!("| MiB received in answers | {megabytes} |");
    println!(
        "| cores busy with the attacker's client (its threads' CPU time over the run) | {:.2} |",
        median_cores(&mut client_cores)
    );
    println!(
        "| cores busy with the admin API's threads (server and blocking pool) | {:.2} |",
        median_cores(&mut server_cores)
    );
    println!(
        "| cores busy in the whole process (worker, both attacks, bench) | {:.2} |",
        median_cores(&mut process_cores)
    );
    println!();
    println!("| the neighbour's status over HTTP during both attacks ({} calls) | ms |", status_times.len());
    println!("|---|---|");
    println!("| median | {:.2} |", status_time(0.5));
    println!("| 99th percentile | {:.2} |", status_time(0.99));
    println!("| slowest | {:.2} |", status_time(1.0));
    Ok(())
}

/// What one run of the hostile part measured.
struct NeighbourRun {
    /// The neighbour's time from its creation to its last message.
    elapsed: Duration,
    /// The hostile guest's messages that failed meanwhile.
    failed_attacks: u64,
    /// What the hostile tenant did meanwhile.
    tenant_attacks: AttackTally,
    /// How long each of the neighbour's status calls took over HTTP, during the attacks.
    status_times: Vec<Duration>,
    /// The CPU time of the admin API's threads (its server and its blocking pool) in the run.
    server_cpu: Duration,
    /// The CPU time of the whole process in the run: the worker, the attacks and the bench.
    process_cpu: Duration,
}

/// Counts of the hostile tenant's requests, kept by its threads.
#[derive(Default)]
struct AttackCounters {
    requests: AtomicU64,
    refused: AtomicU64,
    changes: AtomicU64,
    refused_changes: AtomicU64,
    topics: AtomicU64,
    received_bytes: AtomicU64,
    /// The CPU time of the attacking threads (the attacker's client), in microseconds.
    client_cpu_micros: AtomicU64,
}

/// [`AttackCounters`] read after a run.
#[derive(Default)]
struct AttackTally {
    requests: u64,
    refused: u64,
    changes: u64,
    refused_changes: u64,
    topics: u64,
    received_bytes: u64,
    client_cpu: Duration,
}

impl AttackCounters {
    fn tally(&self) -> AttackTally {
        let read = |counter: &AtomicU64| counter.load(AtomicOrdering::Relaxed);
        AttackTally {
            requests: read(&self.requests),
            refused: read(&self.refused),
            changes: read(&self.changes),
            refused_changes: read(&self.refused_changes),
            topics: read(&self.topics),
            received_bytes: read(&self.received_bytes),
            client_cpu: Duration::from_micros(read(&self.client_cpu_micros)),
        }
    }

    /// Counts the calling attacking thread's CPU time so far; called as it ends.
    fn count_client_cpu(&self) {
        let cpu = cpu_time(rustix::time::ClockId::ThreadCPUTime);
        self.client_cpu_micros.fetch_add(cpu.as_micros() as u64, AtomicOrdering::Relaxed);
    }
}

/// The CPU time so far of this process's live threads named `name`, from `/proc` (in clock ticks
/// of 10 ms, Linux's `USER_HZ`).
fn named_threads_cpu(name: &str) -> anyhow::Result<Duration> {
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task")? {
        // A thread may end between the listing and the read; it is then not live.
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if &stat[open + 1..close] != name {
            continue;
        }
        // After the name: state, then 10 fields, then utime and stime (fields 14 and 15 of proc(5)).
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        for field in fields.get(11..13).unwrap_or_default() {
            ticks += field.parse::<u64>()?;
        }
    }
    Ok(Duration::from_millis(ticks * 10))
}

/// Tenant `evil` attacking, over the worker's admin API, what the worker's tenants share: long-polls
/// on an empty topic ([`LONG_POLLERS`] threads), receives of the largest answers over and over
/// ([`AMPLIFIERS`] threads, never acknowledging, so each answer comes again), and a thread
/// creating, updating (asking for more instances than its share) and deleting a function, opening
/// a new topic and receiving from it, round after round. Every thread goes on after a refusal,
/// [`RETRY_PAUSE`] later. The bench's own HTTP client, not the CLI's: an attacker reads answers
/// and drops them, and should not spend the neighbour's cores parsing them.
struct HostileTenant {
    agent: ureq::Agent,
    url: String,
    counters: AttackCounters,
}

/// What became of one of the hostile tenant's requests.
enum Answer {
    Served,
    Refused,
    /// 404 or 409: nothing to update or delete after a refused create, or a function to create
    /// again after a refused delete.
    Moot,
}

impl HostileTenant {
    fn new(url: &str) -> Self {
        let agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
        Self { agent, url: url.to_owned(), counters: AttackCounters::default() }
    }

    /// Sends one request (a body with its content type, or none) and reads its answer to the end.
    fn send(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> anyhow::Result<Answer> {
        let url = format!("{}{path}", self.url);
        let mut response = match (method, body) {
            ("POST", Some((content_type, bytes))) => {
                self.agent.post(&url).header(CLIENT_HEADER, "bench").header("Content-Type", content_type).send(bytes)?
            }
            ("PUT", Some((content_type, bytes))) => {
                self.agent.put(&url).header(CLIENT_HEADER, "bench").header("Content-Type", content_type).send(bytes)?
            }
            ("DELETE", None) => self.agent.delete(&url).header(CLIENT_HEADER, "bench").call()?,
            _ => anyhow::bail!("the hostile tenant sends POST and PUT with a body and DELETE without, not {method}"),
        };
        self.counters.requests.fetch_add(1, AtomicOrdering::Relaxed);
        let mut answer = response.body_mut().with_config().limit(MAX_REQUEST_SIZE as u64).reader();
        let mut reason = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(&mut answer, 1024), &mut reason)?;
        let received = reason.len() as u64 + std::io::copy(&mut answer, &mut std::io::sink())?;
        self.counters.received_bytes.fetch_add(received, AtomicOrdering::Relaxed);
        match response.status().as_u16() {
            200..=299 => Ok(Answer::Served),
            403 | 429 => {
                self.counters.refused.fetch_add(1, AtomicOrdering::Relaxed);
                std::thread::sleep(RETRY_PAUSE);
                Ok(Answer::Refused)
            }
            404 | 409 => Ok(Answer::Moot),
            status => anyhow::bail!(
                "the worker answered the hostile tenant's {method} {path} with HTTP {status}: {}",
                String::from_utf8_lossy(&reason)
            ),
        }
    }

    fn produce(&self, topic: &str, values: &[Vec<u8>]) -> anyhow::Result<Answer> {
        let messages: Vec<_> = values
            .iter()
            .map(|value| serde_json::json!({ "payload": base64::engine::general_purpose::STANDARD.encode(value) }))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({ "messages": messages }))?;
        self.send("POST", &format!("/topics/persistent/evil/ns/{topic}"), Some(("application/json", &body)))
    }

    fn receive(&self, topic: &str, subscription: &str, count: usize, wait_ms: u64) -> anyhow::Result<Answer> {
        let path = format!(
            "/topics/persistent/evil/ns/{topic}/subscription/{subscription}/receive?count={count}&waitMs={wait_ms}"
        );
        self.send("POST", &path, Some(("application/json", b"")))
    }

    /// Creates (POST), updates (PUT) or deletes (DELETE, without a form) the churned function.
    fn change(&self, method: &str, form: Option<(String, Vec<u8>)>) -> anyhow::Result<Answer> {
        self.counters.changes.fetch_add(1, AtomicOrdering::Relaxed);
        let body = form.as_ref().map(|(content_type, body)| (content_type.as_str(), body.as_slice()));
        let answer = self.send(method, CHURNED, body)?;
        if matches!(answer, Answer::Refused) {
            self.counters.refused_changes.fetch_add(1, AtomicOrdering::Relaxed);
        }
        Ok(answer)
    }

    /// Runs every attack until `done`.
    fn attack(&self, code: &[u8], done: &AtomicBool) -> anyhow::Result<()> {
        let big: Vec<Vec<u8>> = (0..BIG_MESSAGES).map(|index| vec![index as u8; BIG_MESSAGE_BYTES]).collect();
        for chunk in big.chunks(8) {
            self.produce("big", chunk)?;
        }
        std::thread::scope(|scope| {
            let threads: Vec<_> = (0..LONG_POLLERS)
                .map(|index| {
                    scope.spawn(move || {
                        self.counting_cpu(|| {
                            while !done.load(AtomicOrdering::Relaxed) {
                                self.receive("quiet", &format!("poll-{index}"), 1, LONG_POLL_WAIT_MS)?;
                            }
                            Ok(())
                        })
                    })
                })
                .chain((0..AMPLIFIERS).map(|index| {
                    scope.spawn(move || {
                        self.counting_cpu(|| {
                            while !done.load(AtomicOrdering::Relaxed) {
                                self.receive("big", &format!("amplify-{index}"), MAX_BATCH_MESSAGES, 0)?;
                            }
                            Ok(())
                        })
                    })
                }))
                .chain(std::iter::once(scope.spawn(move || self.counting_cpu(|| self.churn(code, done)))))
                .collect();
            threads.into_iter().try_for_each(|thread| thread.join().expect("an attacking thread does not panic"))
        })
    }

    /// Runs one attacking thread's `attack`, then counts the thread's CPU time.
    fn counting_cpu(&self, attack: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let result = attack();
        self.counters.count_client_cpu();
        result
    }

    /// Function changes and new topics, round after round, until `done`.
    fn churn(&self, code: &[u8], done: &AtomicBool) -> anyhow::Result<()> {
        for round in 0.. {
            if done.load(AtomicOrdering::Relaxed) {
                break;
            }
            self.change("POST", Some(churned_form(code, 1)?))?;
            self.change("PUT", Some(churned_form(code, 2)?))?;
            self.change("DELETE", None)?;
            let topic = format!("spam-{round}");
            self.produce(&topic, &[b"spam".to_vec()])?;
            self.counters.topics.fetch_add(1, AtomicOrdering::Relaxed);
            self.receive(&topic, "spam-reader", 40, 0)?;
            std::thread::sleep(RETRY_PAUSE);
        }
        Ok(())
    }
}

/// The path of the hostile tenant's churned function.
const CHURNED: &str = "/admin/v3/functions/evil/ns/churn";

/// The multipart form of the churned function with `code` and `parallelism` instances.
fn churned_form(code: &[u8], parallelism: u32) -> anyhow::Result<(String, Vec<u8>)> {
    let config = serde_json::json!({
        "tenant": "evil", "namespace": "ns", "name": "churn", "inputs": ["evil/ns/churn-in"],
        "parallelism": parallelism, "resources": { "ram": "32M" },
    });
    Ok(multipart(&[("functionConfig", serde_json::to_vec(&config)?), ("data", code.to_vec())]))
}

/// The name of the admin API's threads, by which the bench finds their CPU time.
const HTTP_THREADS: &str = "fnhost-http";

/// The worker's admin API on a loopback port, served by a runtime like the worker's own until
/// dropped.
struct AdminServer {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl AdminServer {
    fn start(worker: Arc<Worker>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(HTTP_THREADS).build()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                axum::serve(listener, fnhost::worker::admin::router(worker))
                    .with_graceful_shutdown(async {
                        // Either a stop or a dropped sender ends the server.
                        let _ = stopped.await;
                    })
                    .await
            })
        });
        Ok(Self { url, stop: Some(stop), thread: Some(thread) })
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Runs the session guest over `events` in a fresh in-process worker, beside the hostile guest
/// `attacker` if given (started just before the neighbour, so that the neighbour's run includes
/// the attacker's first, and least held back, attacks) and, if `tenant_attacks`, the hostile
/// tenant over HTTP ([`HostileTenant`]), timing the neighbour's status over HTTP meanwhile.
fn neighbour_run(
    session: &Path,
    attacker: Option<&Path>,
    tenant_attacks: bool,
    events: &[OutMessage],
) -> anyhow::Result<NeighbourRun> {
    let scratch = tempfile::tempdir()?;
    let worker = Arc::new(in_process_worker(scratch.path(), 4)?);
    let fqfn = |name: &str| Fqfn::new("public", "default", name);
    let failed = |stats: &InstanceStats| stats.system_exceptions_total + stats.user_exceptions_total;
    for chunk in events.chunks(MAX_BATCH_MESSAGES) {
        worker.produce(&input(), chunk.to_vec())?;
    }
    let attacker_code = attacker.map(std::fs::read).transpose()?;
    if let Some(code) = &attacker_code {
        let commands: Vec<OutMessage> =
            (0..ATTACK_MESSAGES).map(|index| OutMessage::new(ATTACKS[index % ATTACKS.len()])).collect();
        for chunk in commands.chunks(MAX_BATCH_MESSAGES) {
            worker.produce(&TopicName::parse("attacks")?, chunk.to_vec())?;
        }
        let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
            "name": "attacker",
            "inputs": ["attacks"],
            "timeoutMs": 100,
            "maxMessageRetries": 0,
            "resources": { "ram": "32M" },
            "logLevel": "warn",
            // Stats move once per batch: with batches of one, they count each attack.
            "batchSize": 1,
        }))?;
        worker.create(spec, Some(code.clone()))?;
    }
    let server = tenant_attacks.then(|| AdminServer::start(worker.clone())).transpose()?;
    let hostile = server.as_ref().map(|server| HostileTenant::new(&server.url));
    let status = server.as_ref().map(|server| client_at(&server.url)).transpose()?;
    let spec: FunctionSpec = serde_json::from_value(serde_json::json!({
        "name": "neighbour",
        "inputs": [input().to_string()],
        "output": output().to_string(),
        "logLevel": "warn",
    }))?;
    let started = Instant::now();
    let process_cpu_before = cpu_time(rustix::time::ClockId::ProcessCPUTime);
    worker.create(spec, Some(std::fs::read(session)?))?;
    let done = AtomicBool::new(false);
    let mut status_times = Vec::new();
    let elapsed = std::thread::scope(|scope| -> anyhow::Result<Duration> {
        let attack = hostile.as_ref().zip(attacker_code.as_deref()).map(|(hostile, code)| {
            let done = &done;
            scope.spawn(move || hostile.attack(code, done))
        });
        let neighbour = fqfn("neighbour")?;
        let finished = loop {
            if let Some(status) = &status {
                let asked = Instant::now();
                status.send("GET", "/admin/v3/functions/public/default/neighbour/status", Body::Empty)?;
                status_times.push(asked.elapsed());
            }
            if worker.stats(&neighbour)?.totals.processed_successfully_total >= events.len() as u64 {
                break started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        done.store(true, AtomicOrdering::Relaxed);
        if let Some(attack) = attack {
            attack.join().expect("the hostile tenant does not panic")?;
        }
        Ok(finished)
    })?;
    let failed_attacks = match attacker {
        Some(_) => {
            let stats = worker.stats(&fqfn("attacker")?)?.totals;
            anyhow::ensure!(
                stats.received_total < ATTACK_MESSAGES as u64,
                "the attacker ran out of messages before its neighbour finished; raise ATTACK_MESSAGES"
            );
            failed(&stats)
        }
        None => 0,
    };
    let process_cpu = cpu_time(rustix::time::ClockId::ProcessCPUTime).saturating_sub(process_cpu_before);
    let tenant_attacks = hostile.map(|hostile| hostile.counters.tally()).unwrap_or_default();
    let server_cpu = if server.is_some() { named_threads_cpu(HTTP_THREADS)? } else { Duration::ZERO };
    drop(server);
    worker.shutdown();
    Ok(NeighbourRun { elapsed, failed_attacks, tenant_attacks, status_times, server_cpu, process_cpu })
}
