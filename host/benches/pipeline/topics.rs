//! Growth with the number of topics (`topics`): the same messages spread over 1 to 10,000 topics
//! of one embedded store, appended, read back through a reader per topic, and the store reopened
//! (which reads the whole log back), beside the one-topic row as the ceiling.

use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Broker, OutMessage, Position, SubscriptionSpec};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::names::TopicName;

/// Topic counts of the rows.
pub(crate) const TOPIC_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];

/// Appends `messages` messages of 100 B spread over `topics` topics, reads them back and reopens
/// the store, for each count in `counts`.
pub(crate) fn topics(messages: usize, counts: &[usize]) -> anyhow::Result<()> {
    println!();
    println!(
        "| {messages} messages of 100 B over | append msg/s | read msg/s | reopen ms (the log read back) | resident MiB after reading |"
    );
    println!("|---|---|---|---|---|");
    for &count in counts {
        let scratch = tempfile::tempdir()?;
        let names: Vec<TopicName> =
            (0..count).map(|index| TopicName::parse(&format!("topic-{index}"))).collect::<Result<_, _>>()?;
        let each = messages.div_ceil(count).max(1);
        let store = EmbeddedStore::open(scratch.path())?;
        let started = Instant::now();
        for name in &names {
            let mut left = each;
            while left > 0 {
                let batch = left.min(MAX_BATCH_MESSAGES);
                store.produce(name, (0..batch).map(|_| OutMessage::new(vec![b'.'; 100])).collect())?;
                left -= batch;
            }
        }
        let appended = started.elapsed();
        let started = Instant::now();
        let mut read = 0;
        for name in &names {
            let reader = store.subscribe(SubscriptionSpec::single(vec![name.clone()], None, Position::Earliest))?;
            loop {
                let fetched = reader.fetch(MAX_BATCH_MESSAGES, Duration::ZERO)?.len();
                if fetched == 0 {
                    break;
                }
                read += fetched;
            }
        }
        let reading = started.elapsed();
        anyhow::ensure!(read == each * count, "read {read} of {} messages over {count} topics", each * count);
        let resident = crate::common::resident_bytes()? as f64 / (1 << 20) as f64;
        drop(store);
        let started = Instant::now();
        let reopened = reopen(scratch.path())?;
        let reopening = started.elapsed();
        drop(reopened);
        let total = (each * count) as f64;
        println!(
            "| {count} topics | {:.0} | {:.0} | {:.1} | {resident:.0} |",
            total / appended.as_secs_f64(),
            total / reading.as_secs_f64(),
            reopening.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Opens the store again; a store dropped a moment ago may still hold sled's lock for a moment.
fn reopen(dir: &std::path::Path) -> anyhow::Result<EmbeddedStore> {
    for _ in 0..100 {
        match EmbeddedStore::open(dir) {
            Err(fnhost::embedded::OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(20)),
            opened => return Ok(opened?),
        }
    }
    Ok(EmbeddedStore::open(dir)?)
}
