//! What instances did, counted as Pulsar counts it: totals, the last minute, latency quantiles and
//! the most recent exceptions.
//!
//! An instance gathers a batch's counts in a [`Stats`] of its own and adds them to its shared
//! [`InstanceMetrics`] once per batch, so readers (status, stats, `/metrics`) take a lock once per
//! batch rather than once per message.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::clock::now_millis;
use crate::limits::MAX_METRICS_PER_INSTANCE;

/// How many recent exceptions of each kind are kept, as Pulsar keeps them.
pub const LATEST_EXCEPTIONS: usize = 10;
/// The width of one slot of the one-minute window.
const MINUTE_SLOT_SECONDS: u64 = 10;
/// Slots in the one-minute window.
const MINUTE_SLOTS: usize = 6;
/// Buckets per power of two in the latency histogram: quantiles are within about 4.5% of the truth.
const SUB_BUCKETS_LOG2: u32 = 3;

/// A failure, as Pulsar reports it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExceptionInfo {
    /// What went wrong.
    pub exception_string: String,
    /// When, in milliseconds since the Unix epoch.
    pub time_stamp: u64,
}

/// Counts of what an instance did, with Pulsar's meanings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    /// Messages delivered to the function.
    pub received: u64,
    /// Messages processed without an exception.
    pub succeeded: u64,
    /// Messages the function failed by returning an error.
    pub user_exceptions: u64,
    /// Messages that failed through a trap, a limit or the host.
    pub system_exceptions: u64,
    /// Times the instance was replaced after a trap (or restarted by an operator).
    pub restarts: u64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: u64,
    /// The most recent user exceptions, oldest first.
    pub latest_user_exceptions: VecDeque<ExceptionInfo>,
    /// The most recent system exceptions, oldest first.
    pub latest_system_exceptions: VecDeque<ExceptionInfo>,
    /// Processing time of each message that was processed (successfully or not).
    pub latency: Histogram,
    /// When a message was last processed, in milliseconds since the Unix epoch.
    pub last_invocation: Option<u64>,
    /// User metrics: name to (count, sum).
    pub user_metrics: BTreeMap<String, (u64, f64)>,
}

impl Stats {
    /// Records the outcome of one message that took `elapsed`.
    pub fn record_latency(&mut self, elapsed: Duration) {
        self.latency.record(elapsed);
    }

    /// Records a user exception (`user`) or a system exception.
    pub fn record_exception(&mut self, user: bool, text: String) {
        let (count, latest) = if user {
            (&mut self.user_exceptions, &mut self.latest_user_exceptions)
        } else {
            (&mut self.system_exceptions, &mut self.latest_system_exceptions)
        };
        *count += 1;
        push_latest(latest, ExceptionInfo { exception_string: text, time_stamp: now_millis() });
    }

    /// The most recent exception of either kind.
    pub fn last_exception(&self) -> Option<&ExceptionInfo> {
        let user = self.latest_user_exceptions.back();
        let system = self.latest_system_exceptions.back();
        match (user, system) {
            (Some(user), Some(system)) => Some(if user.time_stamp > system.time_stamp { user } else { system }),
            (user, system) => user.or(system),
        }
    }

    /// Adds `other`'s counts to these.
    pub fn absorb(&mut self, other: &Stats) {
        self.received += other.received;
        self.restarts += other.restarts;
        self.succeeded += other.succeeded;
        self.user_exceptions += other.user_exceptions;
        self.system_exceptions += other.system_exceptions;
        self.dead_lettered += other.dead_lettered;
        for exception in &other.latest_user_exceptions {
            push_latest(&mut self.latest_user_exceptions, exception.clone());
        }
        for exception in &other.latest_system_exceptions {
            push_latest(&mut self.latest_system_exceptions, exception.clone());
        }
        self.latency.absorb(&other.latency);
        self.last_invocation = self.last_invocation.max(other.last_invocation);
        // Names count over the stats' whole life, not per batch: new names past the limit are
        // dropped (the context has logged that), so that no instance grows /metrics without end.
        for (name, (count, sum)) in &other.user_metrics {
            if self.user_metrics.len() >= MAX_METRICS_PER_INSTANCE && !self.user_metrics.contains_key(name) {
                continue;
            }
            let entry = self.user_metrics.entry(name.clone()).or_default();
            entry.0 += count;
            entry.1 += sum;
        }
    }

    /// The sum of several instances' stats.
    pub fn total<'a>(instances: impl IntoIterator<Item = &'a Stats>) -> Stats {
        instances.into_iter().fold(Stats::default(), |mut total, instance| {
            total.absorb(instance);
            total
        })
    }
}

fn push_latest(latest: &mut VecDeque<ExceptionInfo>, exception: ExceptionInfo) {
    if latest.len() == LATEST_EXCEPTIONS {
        latest.pop_front();
    }
    latest.push_back(exception);
}

/// A log-linear histogram of durations in nanoseconds: a few buckets per power of two, so it is
/// small, mergeable, and its quantiles have a bounded relative error.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    sum_nanos: u128,
}

impl Histogram {
    /// Adds one duration.
    pub fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let index = bucket_index(nanos);
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, 0);
        }
        self.buckets[index] += 1;
        self.count += 1;
        self.sum_nanos += u128::from(nanos);
    }

    /// Adds every duration of `other`.
    pub fn absorb(&mut self, other: &Histogram) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum_nanos += other.sum_nanos;
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Their sum, in milliseconds.
    pub fn sum_millis(&self) -> f64 {
        self.sum_nanos as f64 / 1e6
    }

    /// Their mean, in milliseconds (0 when empty).
    pub fn mean_millis(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum_millis() / self.count as f64 }
    }

    /// The `q` quantile (0 to 1), in milliseconds: the middle of the bucket holding it (0 when empty).
    pub fn quantile_millis(&self, q: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (index, &count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                let (low, high) = bucket_bounds(index);
                return (low as f64 + high as f64) / 2.0 / 1e6;
            }
        }
        0.0
    }
}

/// The bucket of `nanos`: values below 2^SUB_BUCKETS_LOG2 have a bucket each; above, each power of
/// two is split into 2^SUB_BUCKETS_LOG2 equal buckets.
fn bucket_index(nanos: u64) -> usize {
    let subs = 1u64 << SUB_BUCKETS_LOG2;
    if nanos < subs {
        return nanos as usize;
    }
    let exponent = 63 - nanos.leading_zeros();
    let sub = (nanos >> (exponent - SUB_BUCKETS_LOG2)) - subs;
    ((exponent - SUB_BUCKETS_LOG2 + 1) as u64 * subs + sub) as usize
}

/// The values bucket `index` holds: `low..high`.
fn bucket_bounds(index: usize) -> (u64, u64) {
    let subs = 1u64 << SUB_BUCKETS_LOG2;
    let index = index as u64;
    if index < subs {
        return (index, index + 1);
    }
    let exponent = (index / subs) as u32 + SUB_BUCKETS_LOG2 - 1;
    let width = 1u64 << (exponent - SUB_BUCKETS_LOG2);
    let low = (1u64 << exponent) + (index % subs) * width;
    (low, low.saturating_add(width))
}

/// Counts over the last minute, as six ten-second slots.
#[derive(Clone, Debug, Default)]
struct MinuteWindow {
    /// Each slot: which ten-second period it holds, and its counts.
    slots: [(u64, MinuteCounts); MINUTE_SLOTS],
}

/// What happened in one period.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MinuteCounts {
    /// Messages delivered.
    pub received: u64,
    /// Messages processed successfully.
    pub succeeded: u64,
    /// User exceptions.
    pub user_exceptions: u64,
    /// System exceptions.
    pub system_exceptions: u64,
    /// Messages timed, and their total time in nanoseconds.
    pub timed: u64,
    /// Total processing time, in nanoseconds.
    pub latency_nanos: u128,
}

impl MinuteCounts {
    /// Mean processing time, in milliseconds (0 when nothing was timed).
    pub fn mean_latency_millis(&self) -> f64 {
        if self.timed == 0 { 0.0 } else { self.latency_nanos as f64 / 1e6 / self.timed as f64 }
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &MinuteCounts) {
        self.received += other.received;
        self.succeeded += other.succeeded;
        self.user_exceptions += other.user_exceptions;
        self.system_exceptions += other.system_exceptions;
        self.timed += other.timed;
        self.latency_nanos += other.latency_nanos;
    }
}

impl MinuteWindow {
    fn record(&mut self, now_seconds: u64, counts: &MinuteCounts) {
        let period = now_seconds / MINUTE_SLOT_SECONDS;
        let slot = &mut self.slots[(period % MINUTE_SLOTS as u64) as usize];
        if slot.0 != period {
            *slot = (period, MinuteCounts::default());
        }
        slot.1.add(counts);
    }

    fn last_minute(&self, now_seconds: u64) -> MinuteCounts {
        let period = now_seconds / MINUTE_SLOT_SECONDS;
        let mut total = MinuteCounts::default();
        for (slot_period, counts) in &self.slots {
            if period.saturating_sub(*slot_period) < MINUTE_SLOTS as u64 {
                total.add(counts);
            }
        }
        total
    }
}

/// One instance's counts, shared between the instance that writes them and the readers.
#[derive(Debug, Default)]
pub struct InstanceMetrics {
    inner: Mutex<(Stats, MinuteWindow)>,
}

impl InstanceMetrics {
    /// Adds a batch's counts.
    pub fn record_batch(&self, batch: &Stats) {
        let minute = MinuteCounts {
            received: batch.received,
            succeeded: batch.succeeded,
            user_exceptions: batch.user_exceptions,
            system_exceptions: batch.system_exceptions,
            timed: batch.latency.count,
            latency_nanos: batch.latency.sum_nanos,
        };
        let now_seconds = now_millis() / 1000;
        let mut inner = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        inner.0.absorb(batch);
        inner.1.record(now_seconds, &minute);
    }

    /// Counts one more restart of the instance (an operator's, or a start after a failure).
    pub fn record_restart(&self) {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0.restarts += 1;
    }

    /// The totals so far.
    pub fn snapshot(&self) -> Stats {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).0.clone()
    }

    /// The counts of the last minute.
    pub fn last_minute(&self) -> MinuteCounts {
        let now_seconds = now_millis() / 1000;
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).1.last_minute(now_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_inside_its_bucket_and_buckets_are_ordered() {
        let mut previous_high = 0;
        for index in 0..400 {
            let (low, high) = bucket_bounds(index);
            assert_eq!(low, previous_high, "bucket {index} starts where the last ended");
            assert!(high > low);
            assert_eq!(bucket_index(low), index);
            assert_eq!(bucket_index(high - 1), index);
            previous_high = high;
        }
    }

    #[test]
    fn quantiles_are_within_the_bucket_error() {
        let mut histogram = Histogram::default();
        for micros in 1..=10_000u64 {
            histogram.record(Duration::from_micros(micros));
        }
        for (q, exact_ms) in [(0.5, 5.0), (0.9, 9.0), (0.99, 9.9), (0.999, 9.99)] {
            let estimate = histogram.quantile_millis(q);
            assert!((estimate - exact_ms).abs() / exact_ms < 0.07, "q{q}: {estimate} against {exact_ms}");
        }
        assert!((histogram.mean_millis() - 5.0005).abs() < 1e-9);
        let mut merged = Histogram::default();
        merged.absorb(&histogram);
        merged.absorb(&histogram);
        assert_eq!(merged.count(), 20_000);
        assert_eq!(merged.quantile_millis(0.5), histogram.quantile_millis(0.5));
    }

    #[test]
    fn the_minute_window_forgets_periods_older_than_a_minute() {
        let mut window = MinuteWindow::default();
        let one = MinuteCounts { received: 1, ..MinuteCounts::default() };
        window.record(1_000, &one);
        window.record(1_005, &one);
        window.record(1_030, &one);
        assert_eq!(window.last_minute(1_030).received, 3);
        assert_eq!(window.last_minute(1_059).received, 3);
        assert_eq!(window.last_minute(1_060).received, 1, "the 1000s slot is more than a minute old");
        window.record(1_065, &one);
        assert_eq!(window.last_minute(1_065).received, 2);
        assert_eq!(window.last_minute(2_000).received, 0);
    }

    #[test]
    fn only_the_latest_exceptions_are_kept() {
        let mut stats = Stats::default();
        for n in 0..25 {
            stats.record_exception(n % 2 == 0, format!("failure {n}"));
        }
        assert_eq!(stats.user_exceptions, 13);
        assert_eq!(stats.system_exceptions, 12);
        assert_eq!(stats.latest_user_exceptions.len(), LATEST_EXCEPTIONS);
        assert_eq!(stats.latest_user_exceptions.back().unwrap().exception_string, "failure 24");
        assert_eq!(stats.latest_system_exceptions.front().unwrap().exception_string, "failure 5");
    }
}
