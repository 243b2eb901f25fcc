//! A topic: where each of its messages lies in the log, which of them are readable, and how far
//! each durable subscription has acknowledged it.

use std::collections::{HashMap, VecDeque};
use std::ops::{Range, RangeInclusive};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::journal::{Assembler, log_failed};
use super::lock;
use crate::engine::broker::{BrokerError, MessageBody};
use crate::names::{SubscriptionName, TopicName};
use crate::seglog::SegmentLog;

/// Extents read per look at the index, so that a long scan does not hold it.
const EXTENTS_PER_LOOK: usize = 16;

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
}

/// Consecutive messages of one topic in one step of the log.
#[derive(Clone, Copy, Debug)]
pub(super) struct Extent {
    pub(super) first: u64,
    pub(super) count: u32,
    /// The id of the step's first record.
    pub(super) log_id: u64,
    /// How many records the step takes (one, unless it is long).
    pub(super) records: u32,
}

impl Extent {
    /// `count` messages from sequence `first` in the step of log records `ids`.
    pub(super) fn new(first: u64, count: u32, ids: &Range<u64>) -> Self {
        Self { first, count, log_id: ids.start, records: (ids.end - ids.start) as u32 }
    }

    fn last_log_id(&self) -> u64 {
        self.log_id + u64::from(self.records.max(1)) - 1
    }

    fn end(&self) -> u64 {
        self.first + u64::from(self.count)
    }
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
    pub(super) fn record(&self, extent: Extent) {
        lock(&self.extents).push_back(extent);
    }

    /// Makes the messages before `end` readable, once they are durable.
    pub(super) fn published(&self, end: u64) {
        self.length.fetch_max(end, Ordering::AcqRel);
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

    /// The log ids of the extents some durable subscription has not acknowledged (all of them
    /// when the topic has no subscription: its messages wait for one).
    pub(super) fn needed(&self) -> Option<RangeInclusive<u64>> {
        let lowest = lock(&self.marks).values().copied().min();
        let extents = lock(&self.extents);
        let start = lowest.map_or(0, |lowest| extents.partition_point(|extent| extent.end() <= lowest));
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
        lock(&self.extents).retain(|extent| is_kept(extent.log_id));
    }

    /// Checks, after a restart, that the messages some subscription has not acknowledged are all
    /// there: a gap means a segment still needed is gone. (A topic without subscriptions is not
    /// checked: what it kept from before its last subscription went may have gaps.)
    pub(super) fn check_contiguous(&self) -> Result<(), BrokerError> {
        let Some(lowest) = lock(&self.marks).values().copied().min() else { return Ok(()) };
        let end = *lock(&self.next);
        let extents = lock(&self.extents);
        let mut expected = lowest;
        let tail = Extent { first: end, count: 0, log_id: 0, records: 0 };
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
