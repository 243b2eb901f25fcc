//! A topic: where each of its messages lies in the log, which of them are readable, and how far
//! each durable subscription has acknowledged it.

use std::collections::{HashMap, VecDeque};
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::journal::{Append, Assembler, log_failed};
use super::lock;
use crate::engine::broker::{BrokerError, MessageBody};
use crate::engine::topics::Retention;
use crate::names::{SubscriptionName, TopicName};
use crate::seglog::SegmentLog;

/// Extents read per look at the index, so that a long scan does not hold it.
const EXTENTS_PER_LOOK: usize = 16;

/// The store's topics by name, with how many each namespace holds (so that the topic limit of a
/// namespace is checked without counting every topic of the store).
#[derive(Default)]
pub(super) struct TopicTable {
    by_name: HashMap<TopicName, Arc<Topic>>,
    per_namespace: HashMap<(String, String), usize>,
}

impl TopicTable {
    /// The topics of `tenant/namespace`.
    pub(super) fn in_namespace(&self, tenant: &str, namespace: &str) -> usize {
        self.per_namespace.get(&(tenant.to_owned(), namespace.to_owned())).copied().unwrap_or(0)
    }

    pub(super) fn insert(&mut self, topic: Arc<Topic>) {
        let key = (topic.name.tenant().to_owned(), topic.name.namespace().to_owned());
        if self.by_name.insert(topic.name.clone(), topic).is_none() {
            *self.per_namespace.entry(key).or_default() += 1;
        }
    }

    pub(super) fn remove(&mut self, name: &TopicName) -> Option<Arc<Topic>> {
        let removed = self.by_name.remove(name)?;
        let key = (name.tenant().to_owned(), name.namespace().to_owned());
        if let Some(count) = self.per_namespace.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                self.per_namespace.remove(&key);
            }
        }
        Some(removed)
    }
}

/// Reading goes straight to the map; changes go through [`TopicTable::insert`] and
/// [`TopicTable::remove`], which keep the counts.
impl std::ops::Deref for TopicTable {
    type Target = HashMap<TopicName, Arc<Topic>>;

    fn deref(&self) -> &Self::Target {
        &self.by_name
    }
}

pub(super) struct Topic {
    pub(super) name: TopicName,
    log: Arc<SegmentLog>,
    /// The next sequence number; held locked from allocation until the append is submitted to
    /// the log, so that the log holds a topic's messages in sequence order.
    pub(super) next: Mutex<u64>,
    /// The number of durable messages: readers see nothing at or after it.
    pub(super) length: AtomicU64,
    /// Where the kept messages are, in sequence order; contiguous.
    extents: Mutex<VecDeque<Extent>>,
    /// The mark of each durable subscription on the topic: messages below the lowest are
    /// acknowledged by every subscription, and their extents can go.
    marks: Mutex<HashMap<SubscriptionName, u64>>,
    /// The length last written to the topic-ends tree.
    saved_end: AtomicU64,
    /// The bytes of the messages the index holds.
    stored_bytes: AtomicU64,
    pub(super) traffic: Mutex<Traffic>,
    /// Set once the topic is deleted: an append that finds it so looks the topic up again.
    pub(super) deleted: AtomicBool,
}

/// Consecutive messages of one topic in one step of the log.
#[derive(Clone, Copy, Debug)]
pub(super) struct Extent {
    pub(super) first: u64,
    pub(super) count: u32,
    /// How many records the step takes (one, unless it is long).
    pub(super) records: u32,
    /// The id of the step's first record.
    pub(super) log_id: u64,
    /// The bytes of its messages, encoded.
    bytes: u64,
    /// The bytes of the topic's messages before it (since the index began), so that the bytes
    /// between two extents are a subtraction.
    bytes_before: u64,
    /// When its messages were published (milliseconds since the Unix epoch).
    publish_time: u64,
}

impl Extent {
    /// The messages of `append`, in the step of log records `ids`.
    pub(super) fn of(append: &Append, ids: &Range<u64>) -> Self {
        Self {
            first: append.first,
            count: append.count,
            records: (ids.end - ids.start) as u32,
            log_id: ids.start,
            bytes: append.messages.len() as u64,
            bytes_before: 0,
            publish_time: append.publish_time,
        }
    }

    fn last_log_id(&self) -> u64 {
        self.log_id + u64::from(self.records.max(1)) - 1
    }

    fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }

    fn bytes_through(&self) -> u64 {
        self.bytes_before + self.bytes
    }
}

/// Messages and bytes that went through, and their rates over the cleaner's last interval.
#[derive(Default)]
pub(super) struct Meter {
    pub(super) messages: u64,
    pub(super) bytes: u64,
    pub(super) redelivered: u64,
    /// The counts at the last sample, and when it was taken.
    sampled: Option<(Instant, [u64; 3])>,
    /// Messages, bytes and redeliveries per second over the last sampled interval.
    pub(super) rates: [f64; 3],
}

impl Meter {
    pub(super) fn add(&mut self, messages: u64, bytes: u64, redelivered: u64) {
        self.messages += messages;
        self.bytes += bytes;
        self.redelivered += redelivered;
    }

    /// Takes a sample: the rates become those since the last one.
    fn sample(&mut self, now: Instant) {
        let counts = [self.messages, self.bytes, self.redelivered];
        if let Some((at, before)) = self.sampled {
            let seconds = now.duration_since(at).as_secs_f64();
            if seconds > 0.0 {
                for ((rate, count), before) in self.rates.iter_mut().zip(counts).zip(before) {
                    *rate = (count - before) as f64 / seconds;
                }
            }
        }
        self.sampled = Some((now, counts));
    }
}

/// What went in and out of a topic: published, and delivered to each subscription (`None`: to
/// readers without one).
#[derive(Default)]
pub(super) struct Traffic {
    pub(super) input: Meter,
    pub(super) output: HashMap<Option<SubscriptionName>, Meter>,
}

impl Topic {
    /// A topic without messages; [`Topic::restore_end`] sets where numbering goes on after a restart.
    pub(super) fn new(name: TopicName, log: Arc<SegmentLog>) -> Self {
        Self {
            name,
            log,
            next: Mutex::new(0),
            length: AtomicU64::new(0),
            extents: Mutex::new(VecDeque::new()),
            marks: Mutex::new(HashMap::new()),
            saved_end: AtomicU64::new(0),
            stored_bytes: AtomicU64::new(0),
            traffic: Mutex::new(Traffic::default()),
            deleted: AtomicBool::new(false),
        }
    }

    /// Sets the next sequence number found at open.
    pub(super) fn restore_end(&self, end: u64) {
        *lock(&self.next) = end;
        self.length.store(end, Ordering::Release);
        self.saved_end.store(end, Ordering::Release);
    }

    pub(super) fn saved_end(&self) -> u64 {
        self.saved_end.load(Ordering::Acquire)
    }

    pub(super) fn set_saved_end(&self, end: u64) {
        self.saved_end.store(end, Ordering::Release);
    }

    /// Notes where messages submitted to the log are; called with `next` held, in sequence order.
    pub(super) fn record(&self, mut extent: Extent) {
        let mut extents = lock(&self.extents);
        extent.bytes_before = extents.back().map_or(0, Extent::bytes_through);
        self.stored_bytes.fetch_add(extent.bytes, Ordering::AcqRel);
        extents.push_back(extent);
    }

    /// Makes the `count` messages (of `bytes`) before `end` readable, once they are durable.
    pub(super) fn published(&self, end: u64, count: u64, bytes: u64) {
        self.length.fetch_max(end, Ordering::AcqRel);
        lock(&self.traffic).input.add(count, bytes, 0);
    }

    /// Counts messages delivered to `subscription`, `redelivered` of them again.
    pub(super) fn delivered(&self, subscription: Option<&SubscriptionName>, count: u64, bytes: u64, redelivered: u64) {
        lock(&self.traffic).output.entry(subscription.cloned()).or_default().add(count, bytes, redelivered);
    }

    /// Samples the rates of its meters.
    pub(super) fn sample_rates(&self, now: Instant) {
        let mut traffic = lock(&self.traffic);
        traffic.input.sample(now);
        traffic.output.values_mut().for_each(|meter| meter.sample(now));
    }

    /// The bytes of the messages it keeps.
    pub(super) fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::Acquire)
    }

    /// The bytes of the messages from sequence `from` on (counting whole extents).
    pub(super) fn bytes_from(&self, from: u64) -> u64 {
        let extents = lock(&self.extents);
        let start = extents.partition_point(|extent| extent.end() <= from);
        match (extents.get(start), extents.back()) {
            (Some(first), Some(last)) => last.bytes_through() - first.bytes_before,
            _ => 0,
        }
    }

    /// The lowest mark of its durable subscriptions, if it has any.
    pub(super) fn lowest_mark(&self) -> Option<u64> {
        lock(&self.marks).values().copied().min()
    }

    /// Its durable subscriptions, with their marks.
    pub(super) fn marks(&self) -> Vec<(SubscriptionName, u64)> {
        lock(&self.marks).iter().map(|(name, mark)| (name.clone(), *mark)).collect()
    }

    /// The first sequence number whose messages were published after `time`, or where the first
    /// messages kept from `bytes` before the end start: what message TTL and backlog eviction
    /// acknowledge up to. (By extent: an extent's messages share a publish time.)
    pub(super) fn first_after(&self, time: Option<u64>, bytes: Option<u64>) -> u64 {
        let extents = lock(&self.extents);
        let total = extents.back().map_or(0, Extent::bytes_through);
        let index = extents.partition_point(|extent| {
            time.is_some_and(|time| extent.publish_time <= time)
                || bytes.is_some_and(|bytes| total - extent.bytes_before > bytes)
        });
        extents.get(index).map_or_else(|| self.length.load(Ordering::Acquire), |extent| extent.first)
    }

    /// The first message published at or after `time`, or the length if none was.
    pub(super) fn first_published_at(&self, time: u64) -> u64 {
        let extents = lock(&self.extents);
        let index = extents.partition_point(|extent| extent.publish_time < time);
        extents.get(index).map_or_else(|| self.length.load(Ordering::Acquire), |extent| extent.first)
    }

    /// The log id of the step that appended message `sequence`, while it is kept.
    pub(super) fn log_id_of(&self, sequence: u64) -> Option<u64> {
        self.extents_from(sequence, 1).pop().filter(|extent| extent.first <= sequence).map(|extent| extent.log_id)
    }

    /// The first sequence number still kept (the length when none is).
    pub(super) fn first_kept(&self) -> u64 {
        lock(&self.extents).front().map_or_else(|| self.length.load(Ordering::Acquire), |extent| extent.first)
    }

    /// Notes a durable subscription's mark (`None`: its cursor was removed).
    pub(super) fn set_mark(&self, subscription: &SubscriptionName, mark: Option<u64>) {
        let mut marks = lock(&self.marks);
        match mark {
            Some(mark) => marks.insert(subscription.clone(), mark),
            None => marks.remove(subscription),
        };
    }

    /// The highest mark of any durable subscription, if it has any.
    pub(super) fn highest_mark(&self) -> Option<u64> {
        lock(&self.marks).values().copied().max()
    }

    /// The log ids of the extents it needs: those some durable subscription has not acknowledged,
    /// and the acknowledged ones `retention` keeps (measured at `now`, in milliseconds). A topic
    /// with no subscription and no retention set keeps all of them: its messages wait for one.
    pub(super) fn needed(&self, retention: Option<&Retention>, now: u64) -> Option<RangeInclusive<u64>> {
        let lowest = lock(&self.marks).values().copied().min();
        let extents = lock(&self.extents);
        let mut start = match (lowest, retention) {
            (Some(lowest), _) => extents.partition_point(|extent| extent.end() <= lowest),
            (None, Some(_)) => extents.len(),
            (None, None) => 0,
        };
        if let Some(retention) = retention {
            let end_bytes = extents
                .get(start)
                .map_or_else(|| extents.back().map_or(0, Extent::bytes_through), |extent| extent.bytes_before);
            while start > 0 {
                let extent = &extents[start - 1];
                let too_old = retention.time.is_some_and(|time| {
                    now.saturating_sub(extent.publish_time) > u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
                });
                let too_big = retention.size_bytes.is_some_and(|size| end_bytes - extent.bytes_before > size);
                if too_old || too_big {
                    break;
                }
                start -= 1;
            }
        }
        Some(extents.get(start)?.log_id..=extents.back()?.last_log_id())
    }

    /// Forgets the extents whose records are no longer in the log: `kept` are the ids of the
    /// segments left, in order. Acknowledged messages stay readable (from `Earliest`) until their
    /// segment goes, as Pulsar's stay until their ledger is trimmed.
    pub(super) fn forget_removed(&self, kept: &[Range<u64>]) {
        // Records from the active segment's start on are kept, including those submitted after
        // `kept` was taken, which it does not list yet.
        let active = kept.last().map_or(0, |ids| ids.start);
        let is_kept = |log_id: u64| {
            let index = kept.partition_point(|ids| ids.end <= log_id);
            log_id >= active || kept.get(index).is_some_and(|ids| ids.contains(&log_id))
        };
        let mut extents = lock(&self.extents);
        let mut freed = 0;
        extents.retain(|extent| {
            let kept = is_kept(extent.log_id);
            freed += if kept { 0 } else { extent.bytes };
            kept
        });
        self.stored_bytes.fetch_sub(freed, Ordering::AcqRel);
    }

    /// Forgets every message and subscription mark: the topic was deleted.
    pub(super) fn clear(&self) {
        self.deleted.store(true, Ordering::Release);
        lock(&self.extents).clear();
        lock(&self.marks).clear();
        self.stored_bytes.store(0, Ordering::Release);
    }

    /// Checks, after a restart, that the messages some subscription has not acknowledged are all
    /// there: a gap means a segment still needed is gone. (A topic without subscriptions is not
    /// checked: what it kept from before its last subscription went may have gaps.)
    pub(super) fn check_contiguous(&self) -> Result<(), BrokerError> {
        let Some(lowest) = lock(&self.marks).values().copied().min() else { return Ok(()) };
        let end = *lock(&self.next);
        let extents = lock(&self.extents);
        let mut expected = lowest;
        let tail = Extent { first: end, count: 0, records: 0, log_id: 0, bytes: 0, bytes_before: 0, publish_time: 0 };
        for extent in extents.iter().filter(|extent| extent.end() > lowest).chain(std::iter::once(&tail)) {
            if extent.first > expected {
                return Err(BrokerError::Corrupt {
                    topic: self.name.clone(),
                    sequence: expected,
                    reason: format!(
                        "messages {expected}..{} are missing from the log although a subscription has not acknowledged them (was a segment file removed by hand?); restore the data directory from a backup",
                        extent.first
                    ),
                });
            }
            expected = expected.max(extent.end());
        }
        Ok(())
    }

    /// Up to `max` extents holding messages from `from` on.
    fn extents_from(&self, from: u64, max: usize) -> Vec<Extent> {
        let extents = lock(&self.extents);
        let start = extents.partition_point(|extent| extent.end() <= from);
        extents.range(start..).take(max).copied().collect()
    }

    /// Calls `visit` with each readable message from sequence `from` on, until it returns false or
    /// the readable messages end.
    pub(super) fn scan(&self, from: u64, mut visit: impl FnMut(u64, MessageBody) -> bool) -> Result<(), BrokerError> {
        let length = self.length.load(Ordering::Acquire);
        let mut next = from;
        while next < length {
            let extents = self.extents_from(next, EXTENTS_PER_LOOK);
            if extents.is_empty() {
                return Ok(());
            }
            for extent in extents {
                if extent.first >= length {
                    return Ok(());
                }
                next = extent.end();
                // Gone since it was looked up: every subscription acknowledged it.
                let Some(bodies) = self.read(extent)? else { continue };
                for (sequence, body) in (extent.first..).zip(bodies) {
                    if sequence >= length {
                        return Ok(());
                    }
                    if sequence >= from && !visit(sequence, body) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// The readable messages at `sequences` (ascending), reading each extent once.
    pub(super) fn read_at(&self, sequences: &[u64]) -> Result<Vec<(u64, MessageBody)>, BrokerError> {
        let length = self.length.load(Ordering::Acquire);
        let mut found = Vec::with_capacity(sequences.len());
        let mut current: Option<(Extent, Vec<MessageBody>)> = None;
        for &sequence in sequences.iter().filter(|&&sequence| sequence < length) {
            if !current.as_ref().is_some_and(|(extent, _)| sequence >= extent.first && sequence < extent.end()) {
                let Some(extent) = self.extents_from(sequence, 1).pop().filter(|extent| extent.first <= sequence)
                else {
                    continue;
                };
                current = self.read(extent)?.map(|bodies| (extent, bodies));
            }
            if let Some((extent, bodies)) = &current
                && let Some(body) = bodies.get((sequence - extent.first) as usize)
            {
                found.push((sequence, body.clone()));
            }
        }
        Ok(found)
    }

    /// The messages of `extent`, or `None` if its records were removed.
    fn read(&self, extent: Extent) -> Result<Option<Vec<MessageBody>>, BrokerError> {
        let records = self.log.read(extent.log_id, extent.records as usize, usize::MAX).map_err(log_failed)?;
        let corrupt = |reason: String| BrokerError::Corrupt {
            topic: self.name.clone(),
            sequence: extent.first,
            reason: format!("log record {}: {reason}", extent.log_id),
        };
        let mut assembler = Assembler::default();
        let mut whole = None;
        for (id, payload) in records {
            whole = assembler.push(id, payload).map_err(corrupt)?;
        }
        let Some(whole) = whole.filter(|whole| whole.ids.start == extent.log_id) else { return Ok(None) };
        let step = whole.step().map_err(corrupt)?;
        let append = step
            .appends
            .into_iter()
            .find(|append| append.first == extent.first && append.topic == self.name.as_str())
            .ok_or_else(|| corrupt("it does not hold the messages the index says".into()))?;
        append.bodies().map(Some).map_err(corrupt)
    }
}
