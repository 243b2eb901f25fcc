//! Growth with the number of topics and subscriptions (`topics`): the same messages spread over 1
//! to 10,000 topics of one embedded store, appended, read back through a reader per topic, and the
//! store reopened (which reads the whole log back); then the same deliveries spread over 1 to 1,000
//! durable subscriptions of one topic, each fetching and acknowledging all of it. The one-topic
//! and one-subscription rows are the ceilings.

use std::time::{Duration, Instant};

use fnhost::embedded::EmbeddedStore;
use fnhost::engine::broker::{Acks, Broker, Effects, OutMessage, Position, Subscription, SubscriptionSpec};
use fnhost::limits::MAX_BATCH_MESSAGES;
use fnhost::names::{SubscriptionName, TopicName};

use crate::log::quantile;

/// Topic counts of the rows.
pub(crate) const TOPIC_COUNTS: [usize; 4] = [1, 100, 1_000, 10_000];
/// Subscription counts of the rows.
pub(crate) const SUBSCRIPTION_COUNTS: [usize; 4] = [1, 10, 100, 1_000];

/// Appends `messages` messages of 100 B spread over `topics` topics, reads them back and reopens
/// the store, for each count in `counts`.
pub(crate) fn topics(messages: usize, counts: &[usize]) -> anyhow::Result<()> {
    println!();
    println!(
        "| {messages} messages of 100 B over | append msg/s | append p50 ms | p99 ms | read msg/s | reopen ms (the log read back) | resident MiB after reading |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &count in counts {
        let scratch = tempfile::tempdir()?;
        let names: Vec<TopicName> =
            (0..count).map(|index| TopicName::parse(&format!("topic-{index}"))).collect::<Result<_, _>>()?;
        let each = messages.div_ceil(count).max(1);
        let store = EmbeddedStore::open(scratch.path())?;
        let mut appends = Vec::new();
        let started = Instant::now();
        for name in &names {
            appends.extend(append_messages(&store, name, each)?);
        }
        let appended = started.elapsed();
        appends.sort_unstable();
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
            "| {count} topics | {:.0} | {:.2} | {:.2} | {:.0} | {:.1} | {resident:.0} |",
            total / appended.as_secs_f64(),
            quantile(&appends, 0.5),
            quantile(&appends, 0.99),
            total / reading.as_secs_f64(),
            reopening.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// For each count in `counts`: that many durable subscriptions of one topic holding
/// `deliveries / count` messages of 100 B, so that every row delivers and acknowledges the same
/// number of messages. Each subscription fetches and commits its acknowledgements batch by batch,
/// one subscription after another (each commit a durable step of its own); then the store is
/// reopened, which reads every cursor back.
pub(crate) fn subscriptions(deliveries: usize, counts: &[usize]) -> anyhow::Result<()> {
    println!();
    println!(
        "| {deliveries} deliveries of 100 B over | delivered and acknowledged msg/s | commits/s | commit p50 ms | p99 ms | reopen ms (the log read back) | data directory MiB after every acknowledgement |"
    );
    println!("|---|---|---|---|---|---|---|");
    let topic = TopicName::parse("subscribed")?;
    for &count in counts {
        let scratch = tempfile::tempdir()?;
        let each = deliveries.div_ceil(count).max(1);
        let store = EmbeddedStore::open(scratch.path())?;
        let opened: Vec<Box<dyn Subscription>> = (0..count)
            .map(|index| {
                let name = SubscriptionName::on_topic(&topic, &format!("sub-{index}"))?;
                Ok(store.subscribe(SubscriptionSpec::single(vec![topic.clone()], Some(name), Position::Earliest))?)
            })
            .collect::<anyhow::Result<_>>()?;
        append_messages(&store, &topic, each)?;
        let started = Instant::now();
        let (mut delivered, mut commits) = (0, Vec::new());
        for subscription in &opened {
            loop {
                let messages = subscription.fetch(MAX_BATCH_MESSAGES, Duration::ZERO)?;
                if messages.is_empty() {
                    break;
                }
                delivered += messages.len();
                let commit_started = Instant::now();
                subscription.commit(Effects { acks: Acks::of(&messages), ..Effects::default() })?;
                commits.push(commit_started.elapsed());
            }
        }
        let acknowledging = started.elapsed();
        commits.sort_unstable();
        anyhow::ensure!(
            delivered == each * count,
            "delivered {delivered} of {} over {count} subscriptions",
            each * count
        );
        drop(opened);
        drop(store);
        let disk = crate::soak::disk_bytes(scratch.path()) as f64 / (1 << 20) as f64;
        let started = Instant::now();
        let reopened = reopen(scratch.path())?;
        let reopening = started.elapsed();
        drop(reopened);
        println!(
            "| {count} subscriptions | {:.0} | {:.0} | {:.2} | {:.2} | {:.1} | {disk:.1} |",
            delivered as f64 / acknowledging.as_secs_f64(),
            commits.len() as f64 / acknowledging.as_secs_f64(),
            quantile(&commits, 0.5),
            quantile(&commits, 0.99),
            reopening.as_secs_f64() * 1e3
        );
    }
    Ok(())
}

/// Appends `count` messages of 100 B to `topic` in appends of up to `MAX_BATCH_MESSAGES`; returns
/// how long each append took.
fn append_messages(store: &EmbeddedStore, topic: &TopicName, count: usize) -> anyhow::Result<Vec<Duration>> {
    let mut appends = Vec::new();
    let mut left = count;
    while left > 0 {
        let batch = left.min(MAX_BATCH_MESSAGES);
        let started = Instant::now();
        store.produce(topic, (0..batch).map(|_| OutMessage::new(vec![b'.'; 100])).collect())?;
        appends.push(started.elapsed());
        left -= batch;
    }
    Ok(appends)
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
