//! The library, driven directly: a guest through `instance::run` over several pipelined batches.

use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Broker, OutMessage, Position, SubscriptionSpec};
use fnhost::engine::state::{StateStore, StateValue};
use fnhost::function::{FunctionConfig, SharedLogLevel};
use fnhost::instance::{
    self, Executor, LogSink, MESSAGES_PER_CALL, MessageContext, NativeExecutor, Outcome, RunUntil, WasmExecutor,
};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::metrics::Stats;
use fnhost::names::{Fqfn, TopicName};
use fnhost::runtime::{GuestMessage, InstanceLimits, LogLevel, Runtime, RuntimeConfig};

use crate::support::guest;

#[test]
fn counters_stay_exact_across_batches_committed_while_the_next_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let input = TopicName::parse("sentences").unwrap();
    // Three and a half batches; every sentence adds to "all", so every batch reads the counter
    // while the previous batch's increments may still be committing.
    let sentences = 3 * MAX_BATCH_MESSAGES + MAX_BATCH_MESSAGES / 2;
    let messages: Vec<OutMessage> =
        (0..sentences).map(|i| OutMessage::new(format!("all {}", if i % 2 == 0 { "even" } else { "odd" }))).collect();
    store.produce(&input, messages).unwrap();

    let fqfn = Fqfn::parse("acme/text/word-count").unwrap();
    let limits = InstanceLimits { memory_bytes: 64 << 20, timeout: Duration::from_secs(10) };
    let config = FunctionConfig {
        limits,
        log_level: SharedLogLevel::new(LogLevel::Warn),
        ..FunctionConfig::new(fqfn.clone(), vec![input])
    };
    let stats = run_until_idle(&store, &config, "word-count");
    assert_eq!((stats.received, stats.succeeded, stats.restarts), (sentences as u64, sentences as u64, 0));
    assert_eq!(stats.user_metrics["words"], (sentences as u64, 2.0 * sentences as f64));

    let table = store.table(&fqfn).unwrap();
    let counter = |key: &str| table.get(key).unwrap().map(|stored| stored.value);
    assert_eq!(counter("all"), Some(StateValue::Counter(sentences as i64)));
    assert_eq!(counter("even"), Some(StateValue::Counter(sentences.div_ceil(2) as i64)));
    assert_eq!(counter("odd"), Some(StateValue::Counter((sentences / 2) as i64)));
}

/// Runs one instance of the test guest `guest_name` with `config` until its inputs are drained.
fn run_until_idle(store: &EmbeddedStore, config: &FunctionConfig, guest_name: &str) -> Stats {
    let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 2 }).unwrap();
    let code = runtime.load(&guest(guest_name)).unwrap();
    let function = code.prepare::<MessageContext>().unwrap();
    let context = MessageContext::new(config, 0, store.table(&config.fqfn).unwrap(), LogSink::default());
    let details = Arc::new(config.details(code.digest(), 0, 1));
    let executor = WasmExecutor::start(function, details, config.limits, context).unwrap();
    instance::run(store, config, vec![Box::new(executor)], RunUntil::Idle, &AtomicBool::new(false)).unwrap().remove(0)
}

/// Runs the misbehave guest over `commands` until they are all done; returns its stats and the
/// values written to the output topic, in order.
fn run_misbehave(commands: &[&str], timeout: Duration, max_message_retries: u32) -> (Stats, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let input = TopicName::parse("commands").unwrap();
    let output = TopicName::parse("results").unwrap();
    store.produce(&input, commands.iter().map(|command| OutMessage::new(*command)).collect()).unwrap();

    let fqfn = Fqfn::parse("acme/test/misbehave").unwrap();
    let limits = InstanceLimits { memory_bytes: 32 << 20, timeout };
    let config = FunctionConfig {
        limits,
        log_level: SharedLogLevel::new(LogLevel::Warn),
        output: Some(output.clone()),
        max_message_retries,
        ..FunctionConfig::new(fqfn.clone(), vec![input])
    };
    let stats = run_until_idle(&store, &config, "misbehave");

    let results = store.subscribe(SubscriptionSpec::single(vec![output], None, Position::Earliest)).unwrap();
    let values = results
        .fetch(100, Duration::ZERO)
        .unwrap()
        .into_iter()
        .map(|message| String::from_utf8(message.body.value).unwrap())
        .collect();
    (stats, values)
}

#[test]
fn a_failure_inside_a_batch_is_retried_before_the_messages_after_it() {
    // The guest gets the commands as one batch; each failure stops the batch there, is tried again
    // on its own (on a new instance after a trap), and the batch goes on after it.
    let commands = ["a", "fail-once:b", "c", "trap", "d", "fail", "e"];
    let (stats, outputs) = run_misbehave(&commands, Duration::from_secs(10), 1);
    assert_eq!(outputs, ["ok:a", "ok:fail-once:b", "ok:c", "ok:d", "ok:e"]);
    assert_eq!((stats.received, stats.succeeded, stats.dead_lettered), (7, 5, 2));
    // fail-once:b once, fail twice; trap twice, each replacing the instance.
    assert_eq!((stats.user_exceptions, stats.system_exceptions, stats.restarts), (3, 2, 2));
}

#[test]
fn the_time_limit_is_per_message_even_when_a_batch_takes_longer() {
    // Four messages of 400 ms each run in one call of 1.6 s, past the 1.5 s limit, and pass (each
    // has 1.1 s to spare, which no load on the machine takes away); the endless one fails alone.
    let commands = ["spin:400", "spin:400", "loop", "spin:400", "spin:400"];
    let (stats, outputs) = run_misbehave(&commands, Duration::from_millis(1500), 0);
    assert_eq!(outputs, ["spin:400"; 4]);
    assert_eq!((stats.succeeded, stats.system_exceptions, stats.dead_lettered), (4, 1, 1));
    let failure = &stats.latest_system_exceptions[0].exception_string;
    assert!(failure.contains("processing took longer than the time limit of 1500 ms"), "{failure}");
}

#[test]
fn the_guest_knows_the_log_level_and_skips_lines_below_it() {
    let (_, outputs) = run_misbehave(&["log-levels"], Duration::from_secs(10), 0);
    assert_eq!(outputs, ["debug:false warn:true"]);
}

/// An executor that records how many messages each call hands the function.
struct CallSizes {
    inner: Box<dyn Executor>,
    sizes: Arc<Mutex<Vec<usize>>>,
}

impl Executor for CallSizes {
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome> {
        self.sizes.lock().unwrap().push(call.len());
        self.inner.process_batch(batch, call)
    }

    fn context(&mut self) -> &mut MessageContext {
        self.inner.context()
    }
}

#[test]
fn a_long_batch_reaches_the_function_in_calls_of_at_most_messages_per_call_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let input = TopicName::parse("numbers").unwrap();
    let output = TopicName::parse("echoes").unwrap();
    let count = 3 * MESSAGES_PER_CALL + 5;
    store.produce(&input, (0..count).map(|i| OutMessage::new(i.to_string())).collect()).unwrap();

    let fqfn = Fqfn::parse("acme/test/echo").unwrap();
    let config = FunctionConfig { output: Some(output.clone()), ..FunctionConfig::new(fqfn.clone(), vec![input]) };
    let context = MessageContext::new(&config, 0, store.table(&fqfn).unwrap(), LogSink::default());
    let echo =
        NativeExecutor::new(|message: &GuestMessage, _: &mut MessageContext| Ok(Some(message.value.clone())), context);
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let executor = CallSizes { inner: Box::new(echo), sizes: sizes.clone() };
    let stats = instance::run(&store, &config, vec![Box::new(executor)], RunUntil::Idle, &AtomicBool::new(false))
        .unwrap()
        .remove(0);
    assert_eq!(stats.succeeded, count as u64);

    let sizes = sizes.lock().unwrap();
    assert_eq!(sizes.iter().sum::<usize>(), count, "{sizes:?}");
    assert_eq!(sizes.iter().max(), Some(&MESSAGES_PER_CALL), "{sizes:?}");
    let echoes = store.subscribe(SubscriptionSpec::single(vec![output], None, Position::Earliest)).unwrap();
    let values: Vec<String> = echoes
        .fetch(MAX_BATCH_MESSAGES, Duration::ZERO)
        .unwrap()
        .into_iter()
        .map(|message| String::from_utf8(message.body.value).unwrap())
        .collect();
    assert_eq!(values, (0..count).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_waker_ends_a_waiting_fetch_and_an_append_still_arrives_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path()).unwrap();
    let topic = TopicName::parse("quiet").unwrap();
    let consumer = store.subscribe(SubscriptionSpec::single(vec![topic.clone()], None, Position::Earliest)).unwrap();
    let wake = consumer.waker();
    // The fetch would wait an hour for a message that never comes; the waker ends it.
    let hour = Duration::from_secs(3600);
    let (done, returned) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fetched = consumer.fetch(10, hour).unwrap().len();
        done.send((consumer, fetched)).unwrap();
    });
    let mut answer = None;
    for _ in 0..600 {
        wake();
        if let Ok(received) = returned.recv_timeout(Duration::from_millis(50)) {
            answer = Some(received);
            break;
        }
    }
    let (consumer, fetched) = answer.expect("the woken fetch returned");
    assert_eq!(fetched, 0);
    // Being woken leaves nothing behind: the next fetch waits for and gets the next append.
    store.produce(&topic, vec![OutMessage::new("hello")]).unwrap();
    let messages = consumer.fetch(10, hour).unwrap();
    assert_eq!(messages.iter().map(|message| message.body.value.clone()).collect::<Vec<_>>(), [b"hello".to_vec()]);
}
