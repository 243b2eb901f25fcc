//! The library, driven directly: a guest through `instance::run` over several pipelined batches.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use fnhost::broker::{Broker, OutMessage};
use fnhost::embedded::EmbeddedStore;
use fnhost::instance::{self, FunctionConfig, LogSink, MessageContext, RunUntil, WasmExecutor};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::names::{Fqfn, TopicName};
use fnhost::runtime::{InstanceLimits, LogLevel, Runtime, RuntimeConfig};
use fnhost::state::{StateStore, StateValue};

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
    let config = FunctionConfig { limits, log_level: LogLevel::Warn, ..FunctionConfig::new(fqfn.clone(), vec![input]) };
    let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 1 }).unwrap();
    let code = runtime.load(&guest("word-count")).unwrap();
    let function = code.prepare::<MessageContext>().unwrap();
    let context = MessageContext::new(&config, 0, store.table(&fqfn).unwrap(), LogSink::default());
    let details = Arc::new(config.details(code.digest(), 0, 1));
    let executor = WasmExecutor::start(function, details, limits, context).unwrap();

    let stats = instance::run(&store, &config, vec![Box::new(executor)], RunUntil::Idle, &AtomicBool::new(false))
        .unwrap()
        .remove(0);
    assert_eq!((stats.received, stats.succeeded, stats.restarts), (sentences as u64, sentences as u64, 0));
    assert_eq!(stats.user_metrics["words"], (sentences as u64, 2.0 * sentences as f64));

    let table = store.table(&fqfn).unwrap();
    let counter = |key: &str| table.get(key).unwrap().map(|stored| stored.value);
    assert_eq!(counter("all"), Some(StateValue::Counter(sentences as i64)));
    assert_eq!(counter("even"), Some(StateValue::Counter(sentences.div_ceil(2) as i64)));
    assert_eq!(counter("odd"), Some(StateValue::Counter((sentences / 2) as i64)));
}
