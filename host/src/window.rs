//! Window semantics: which records form which window, and when a window fires.
//!
//! A [`Windower`] decides, record by record and tick by tick, without I/O and without reading a
//! clock: every call takes the current processing time, so that tests control time and a
//! restarted instance continues from its saved [`WindowerState`].
//! It holds no record contents, only each record's id (the caller's key for the stored record)
//! and timestamp; the caller stores records durably, hands [`Window`]s to the function and deletes
//! what [`Advance::evicted`] names.
//!
//! The model is Pulsar's (and Storm's, which Pulsar's window functions are built on): a window's
//! length (`--window-length-count` or `--window-length-duration-ms`) and how often windows fire
//! (`--sliding-interval-count` or `--sliding-interval-duration-ms`, the length if absent, which
//! makes tumbling windows) are independent, by count or by duration.
//! Time is processing time (a record's time is when it arrived) unless event time is chosen.
//! Under event time, a watermark says that no record older than it is still expected: it trails
//! the newest event time seen by `max_lag_ms` and moves at most once per `watermark_interval_ms`
//! of processing time; records arriving behind it are late.
//! Time windows are half-open, `[start, end)`, and aligned to multiples of the sliding interval
//! since the Unix epoch, so that every instance and every restart cut the same windows.

use std::collections::{BTreeSet, VecDeque};

use bincode::{Decode, Encode};

/// A window's length, or the interval at which windows fire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// A number of records (greater than zero).
    Count(u64),
    /// A duration in milliseconds (greater than zero).
    DurationMs(u64),
}

/// Which time a record is placed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeBase {
    /// When the record arrived at the instance.
    Processing,
    /// The record's event time, with a watermark.
    Event {
        /// How far behind the newest event time the watermark trails (`--max-lag-ms`).
        max_lag_ms: u64,
        /// Least processing time between two moves of the watermark (`--watermark-emit-interval-ms`).
        watermark_interval_ms: u64,
    },
}

/// How records are cut into windows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    /// How much a window holds.
    pub length: Extent,
    /// How often a window fires (equal to `length` for tumbling windows).
    pub slide: Extent,
    /// Processing or event time.
    pub time: TimeBase,
}

/// What the instance loop needs to run a window function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    /// How records are cut into windows.
    pub spec: WindowSpec,
    /// Where late records go (`--late-data-topic`); without it they are logged, counted and dropped.
    pub late_data_topic: Option<crate::names::TopicName>,
}

impl WindowSpec {
    /// Whether records are placed by event time rather than arrival.
    pub fn is_event_time(&self) -> bool {
        matches!(self.time, TimeBase::Event { .. })
    }
}

/// A record known to the windower: the caller's id for it and its time in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct Entry {
    /// When the record happened (event time) or arrived (processing time).
    pub timestamp: u64,
    /// The caller's id for the stored record; ids must grow in arrival order.
    pub id: u64,
}

/// A window that fired.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// The first millisecond the window covers.
    pub start: u64,
    /// The first millisecond after the window.
    pub end: u64,
    /// The records' ids, oldest first.
    pub records: Vec<u64>,
}

/// What one [`Windower::advance`] produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Advance {
    /// Windows that fired, in order.
    pub fired: Vec<Window>,
    /// Ids of records no future window can hold: the caller may delete them.
    pub evicted: Vec<u64>,
}

/// Whether [`Windower::offer`] took a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offered {
    /// The record will be in the windows it falls into, by this time (its event time, or its
    /// arrival: the caller's `now`, never before an earlier record's).
    Accepted { timestamp: u64 },
    /// The record is behind the watermark: its windows have fired (late-data topic, or dropped).
    Late,
}

/// What a windower must remember across restarts besides its records, small enough to save
/// with every commit.
///
/// The records themselves are the caller's to store; [`Windower::resume`] takes them back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct WindowerState {
    /// Records released since the last count-triggered window.
    since_fire: u64,
    /// The end of the next time-triggered window, once a record has been released.
    next_end: Option<u64>,
    /// No record older than this is expected any more (processing time: the latest `now`).
    watermark: u64,
    /// The newest event time seen.
    newest: Option<u64>,
    /// When the watermark last moved, in processing time.
    watermark_moved_at: Option<u64>,
}

/// Decides windows for one instance. See the module documentation.
#[derive(Clone, Debug)]
pub struct Windower {
    spec: WindowSpec,
    state: WindowerState,
    /// Accepted records not yet released to windows (event time: not yet behind the watermark).
    waiting: BTreeSet<Entry>,
    /// Released records a future window may still hold, in release order.
    released: VecDeque<Entry>,
}

impl Windower {
    /// A windower with nothing seen yet.
    pub fn new(spec: WindowSpec) -> Self {
        Self::resume(spec, WindowerState::default(), [])
    }

    /// A windower that continues from `state` (saved with [`Windower::state`] after an
    /// [`Windower::advance`]) with the records it had accepted and not evicted, in any order.
    pub fn resume(spec: WindowSpec, state: WindowerState, records: impl IntoIterator<Item = Entry>) -> Self {
        // After an advance, exactly the records behind the watermark have been released, and
        // under processing time all of them, in arrival (id) order.
        let records = records.into_iter();
        let (mut released, waiting): (Vec<Entry>, Vec<Entry>) = match spec.time {
            TimeBase::Processing => (records.collect(), Vec::new()),
            TimeBase::Event { .. } => records.partition(|entry| entry.timestamp < state.watermark),
        };
        match spec.time {
            TimeBase::Processing => released.sort_unstable_by_key(|entry| entry.id),
            TimeBase::Event { .. } => released.sort_unstable(),
        }
        Self { spec, state, waiting: waiting.into_iter().collect(), released: released.into() }
    }

    /// What to save, with the records not yet evicted, to continue later.
    pub fn state(&self) -> &WindowerState {
        &self.state
    }

    /// The smallest id of a record not yet evicted, if any.
    pub fn oldest_id(&self) -> Option<u64> {
        self.waiting.iter().chain(&self.released).map(|entry| entry.id).min()
    }

    /// Takes a record with id `id` and event time `event_time` (ignored under processing time,
    /// where the record's time is `now`), arriving at processing time `now`.
    pub fn offer(&mut self, id: u64, event_time: u64, now: u64) -> Offered {
        match self.spec.time {
            TimeBase::Processing => {
                // Processing time never goes back, even if the caller's clock does.
                let timestamp = now.max(self.state.watermark);
                self.waiting.insert(Entry { timestamp, id });
                Offered::Accepted { timestamp }
            }
            TimeBase::Event { .. } => {
                if event_time < self.state.watermark {
                    return Offered::Late;
                }
                self.state.newest = Some(self.state.newest.map_or(event_time, |newest| newest.max(event_time)));
                self.waiting.insert(Entry { timestamp: event_time, id });
                Offered::Accepted { timestamp: event_time }
            }
        }
    }

    /// Moves time to processing time `now`: moves the watermark if it is due, releases the
    /// records behind it in time order, and fires the windows that are complete.
    pub fn advance(&mut self, now: u64) -> Advance {
        let time = self.move_watermark(now);
        let mut advance = Advance::default();
        while let Some(&entry) =
            self.waiting.first().filter(|entry| entry.timestamp < time || !self.spec.is_event_time())
        {
            if matches!(self.spec.slide, Extent::DurationMs(_)) {
                // Windows that end before this record are complete without it.
                self.fire_time_windows(entry.timestamp, &mut advance);
            }
            self.waiting.pop_first();
            self.release(entry, &mut advance);
        }
        if matches!(self.spec.slide, Extent::DurationMs(_)) {
            self.fire_time_windows(time, &mut advance);
        }
        advance
    }

    /// The time up to which windows may close: `now` under processing time, the watermark under
    /// event time (moved first if its interval has passed).
    fn move_watermark(&mut self, now: u64) -> u64 {
        let state = &mut self.state;
        match self.spec.time {
            TimeBase::Processing => {
                state.watermark = state.watermark.max(now);
            }
            TimeBase::Event { max_lag_ms, watermark_interval_ms } => {
                let due =
                    state.watermark_moved_at.is_none_or(|moved| now >= moved.saturating_add(watermark_interval_ms));
                if let (true, Some(newest)) = (due, state.newest) {
                    // A record exactly `max_lag_ms` older than the newest is still on time.
                    state.watermark = state.watermark.max(newest.saturating_sub(max_lag_ms));
                    state.watermark_moved_at = Some(now);
                }
            }
        }
        state.watermark
    }

    fn release(&mut self, entry: Entry, advance: &mut Advance) {
        if self.state.next_end.is_none()
            && let Extent::DurationMs(slide) = self.spec.slide
        {
            self.state.next_end = Some(aligned_end(entry.timestamp, slide));
        }
        self.released.push_back(entry);
        if let Extent::Count(slide) = self.spec.slide {
            self.state.since_fire += 1;
            if self.state.since_fire == slide {
                self.state.since_fire = 0;
                self.fire_at_record(entry, slide, advance);
            }
        }
    }

    /// A window triggered by `last`, the record just released, the `slide`-th since the previous one.
    fn fire_at_record(&mut self, last: Entry, slide: u64, advance: &mut Advance) {
        let released = &self.released;
        let (first, keep_from) = match self.spec.length {
            Extent::Count(length) => {
                let first = released.len().saturating_sub(length as usize);
                // The next window holds the `slide` records to come and the last `length - slide` of these.
                (first, released.len().saturating_sub(length.saturating_sub(slide) as usize))
            }
            Extent::DurationMs(length) => {
                // The `length` milliseconds up to and including the last record; no later window
                // reaches further back.
                let first = match last.timestamp.checked_sub(length) {
                    Some(before) => released.partition_point(|entry| entry.timestamp <= before),
                    None => 0,
                };
                (first, first)
            }
        };
        let records: Vec<Entry> = released.range(first..).copied().collect();
        advance.fired.push(Window {
            start: records.first().map_or(last.timestamp, |first| first.timestamp),
            end: last.timestamp + 1,
            records: records.iter().map(|entry| entry.id).collect(),
        });
        self.evict_before(keep_from, advance);
    }

    /// Fires every time-triggered window that ends at or before `time`.
    fn fire_time_windows(&mut self, time: u64, advance: &mut Advance) {
        let Extent::DurationMs(slide) = self.spec.slide else { return };
        while let Some(end) = self.state.next_end.filter(|end| *end <= time) {
            let released = &self.released;
            let before_end = released.partition_point(|entry| entry.timestamp < end);
            let (first, start, changed) = match self.spec.length {
                Extent::Count(length) => {
                    let first = before_end.saturating_sub(length as usize);
                    // The last records before the end: the same as the previous window's unless
                    // one arrived since it ended.
                    let changed = before_end > 0 && released[before_end - 1].timestamp >= end.saturating_sub(slide);
                    (first, released.get(first).map_or(end, |entry| entry.timestamp), changed)
                }
                Extent::DurationMs(length) => {
                    let start = end.saturating_sub(length);
                    (released.partition_point(|entry| entry.timestamp < start), start, true)
                }
            };
            if first < before_end && changed {
                advance.fired.push(Window {
                    start,
                    end,
                    records: released.range(first..before_end).map(|entry| entry.id).collect(),
                });
            }
            let next = end + slide;
            let keep_from = match self.spec.length {
                Extent::Count(length) => before_end.saturating_sub(length as usize),
                Extent::DurationMs(length) => {
                    released.partition_point(|entry| entry.timestamp < next.saturating_sub(length))
                }
            };
            self.evict_before(keep_from, advance);
            // Until a record arrives, the windows to come are empty (or, by count, unchanged):
            // skip to the first that can hold the next record, rather than step through them.
            let idle = match self.spec.length {
                Extent::Count(_) => true,
                Extent::DurationMs(_) => self.released.is_empty(),
            };
            // No record to come is older than the watermark, nor than the first one waiting.
            let oldest_to_come =
                self.waiting.first().map_or(self.state.watermark, |entry| entry.timestamp.min(self.state.watermark));
            self.state.next_end = Some(if idle { next.max(aligned_end(oldest_to_come, slide)) } else { next });
        }
    }

    fn evict_before(&mut self, index: usize, advance: &mut Advance) {
        advance.evicted.extend(self.released.drain(..index).map(|entry| entry.id));
    }
}

/// The end of the first window, aligned to multiples of `slide`, that ends after `timestamp`.
fn aligned_end(timestamp: u64, slide: u64) -> u64 {
    (timestamp / slide + 1) * slide
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Runs `events` (id, event time, processing time) through a windower, advancing after each
    /// and then at `end_time`; returns the windows fired, checking what every advance evicted
    /// against what later windows used.
    struct Run {
        windower: Windower,
        /// What the caller would have stored: accepted records not yet evicted.
        stored: BTreeMap<u64, Entry>,
        fired: Vec<Window>,
        late: Vec<u64>,
        evicted: Vec<u64>,
    }

    impl Run {
        fn new(spec: WindowSpec) -> Self {
            Self {
                windower: Windower::new(spec),
                stored: BTreeMap::new(),
                fired: Vec::new(),
                late: Vec::new(),
                evicted: Vec::new(),
            }
        }

        fn offer(&mut self, id: u64, event_time: u64, now: u64) {
            match self.windower.offer(id, event_time, now) {
                Offered::Accepted { timestamp } => {
                    self.stored.insert(id, Entry { timestamp, id });
                }
                Offered::Late => self.late.push(id),
            }
            self.advance(now);
        }

        fn advance(&mut self, now: u64) {
            let advance = self.windower.advance(now);
            for window in &advance.fired {
                for id in &window.records {
                    assert!(!self.evicted.contains(id), "record {id} was evicted before {window:?} used it");
                    assert!(self.stored.contains_key(id), "record {id} of {window:?} was never accepted");
                }
            }
            for id in &advance.evicted {
                assert!(self.stored.remove(id).is_some(), "record {id} evicted twice");
            }
            self.evicted.extend(advance.evicted);
            self.fired.extend(advance.fired);
        }

        /// As if the instance stopped here and a new one resumed from what was saved.
        fn restart(&mut self) {
            let spec = self.windower.spec;
            let state = self.windower.state().clone();
            self.windower = Windower::resume(spec, state, self.stored.values().copied());
        }

        fn windows(&self) -> Vec<Vec<u64>> {
            self.fired.iter().map(|window| window.records.clone()).collect()
        }
    }

    fn count(length: u64, slide: u64) -> WindowSpec {
        WindowSpec { length: Extent::Count(length), slide: Extent::Count(slide), time: TimeBase::Processing }
    }

    fn event_time(length_ms: u64, slide_ms: u64, max_lag_ms: u64) -> WindowSpec {
        WindowSpec {
            length: Extent::DurationMs(length_ms),
            slide: Extent::DurationMs(slide_ms),
            time: TimeBase::Event { max_lag_ms, watermark_interval_ms: 0 },
        }
    }

    /// The oracle for count windows: after every `slide`-th record, the last `length` records.
    fn count_oracle(length: u64, slide: u64, records: u64) -> Vec<Vec<u64>> {
        (1..=records / slide)
            .map(|fire| fire * slide)
            .map(|last| (last.saturating_sub(length)..last).collect())
            .collect()
    }

    #[test]
    fn count_windows_hold_the_last_length_records_after_every_slide_records() {
        for (length, slide, records) in [(10, 10, 35), (3, 1, 7), (5, 2, 13), (2, 5, 21), (1, 1, 4), (1000, 1000, 2500)]
        {
            let mut run = Run::new(count(length, slide));
            for id in 0..records {
                run.offer(id, 0, 1_000 + id);
            }
            assert_eq!(run.windows(), count_oracle(length, slide, records), "length {length}, slide {slide}");
            // Only what a later window may still need is kept.
            assert!(
                run.stored.len() as u64 <= length.max(slide),
                "length {length}, slide {slide}: kept {}",
                run.stored.len()
            );
        }
    }

    #[test]
    fn a_restart_from_the_saved_state_and_stored_records_continues_the_same_windows() {
        let specs = [
            count(5, 2),
            event_time(10_000, 5_000, 3_000),
            WindowSpec { length: Extent::Count(4), slide: Extent::DurationMs(1_000), time: TimeBase::Processing },
            WindowSpec { length: Extent::DurationMs(2_500), slide: Extent::Count(3), time: TimeBase::Processing },
        ];
        // Event times wander back and forth; processing time moves 400 ms a record.
        let events: Vec<(u64, u64, u64)> =
            (0..60).map(|id| (id, 100_000 + id * 700 - (id % 4) * 900, 50_000 + id * 400)).collect();
        for spec in specs {
            let mut straight = Run::new(spec);
            let mut restarted = Run::new(spec);
            for &(id, event_time, now) in &events {
                straight.offer(id, event_time, now);
                restarted.offer(id, event_time, now);
                if id % 7 == 3 {
                    restarted.restart();
                }
            }
            straight.advance(200_000);
            restarted.advance(200_000);
            assert!(!straight.fired.is_empty(), "{spec:?} fired nothing");
            assert_eq!(restarted.fired, straight.fired, "{spec:?}");
            assert_eq!(restarted.late, straight.late, "{spec:?}");
        }
    }

    /// The oracle for event-time windows: with the watermark moved after every record, a record is
    /// late if it is older than the watermark when it arrives; each aligned window that the final
    /// watermark has passed holds the on-time records of its span.
    fn event_time_oracle(length: u64, slide: u64, max_lag: u64, events: &[(u64, u64)]) -> (Vec<Window>, Vec<u64>) {
        let (mut watermark, mut newest, mut late, mut on_time) = (0, 0, Vec::new(), Vec::new());
        for &(id, timestamp) in events {
            if timestamp < watermark {
                late.push(id);
                continue;
            }
            on_time.push((timestamp, id));
            newest = newest.max(timestamp);
            watermark = watermark.max(newest.saturating_sub(max_lag));
        }
        on_time.sort_unstable();
        let mut windows = Vec::new();
        let mut end = slide;
        while end <= watermark {
            let records: Vec<u64> = on_time
                .iter()
                .filter(|(t, _)| *t < end && *t >= end.saturating_sub(length))
                .map(|(_, id)| *id)
                .collect();
            if !records.is_empty() {
                windows.push(Window { start: end.saturating_sub(length), end, records });
            }
            end += slide;
        }
        (windows, late)
    }

    #[test]
    fn event_time_windows_take_records_within_the_lag_and_send_older_ones_to_late_data() {
        // (id, event time): out of order, some within the lag, some behind the watermark.
        let events: &[(u64, u64)] = &[
            (0, 1_000),
            (1, 3_000),
            (2, 2_000),  // within the lag: joins [0, 5 000)
            (3, 12_000), // moves the watermark to 9 000: [0, 5 000) is complete
            (4, 9_500),  // within the lag
            (5, 4_000),  // behind the watermark: late
            (6, 16_000),
            (7, 8_900),  // behind the watermark (13 000): late
            (8, 13_000), // exactly at the watermark: on time
            (9, 30_000),
        ];
        let cases = [(10_000, 5_000, 3_000), (5_000, 5_000, 3_000), (10_000, 5_000, 0), (4_000, 1_000, 10_000)];
        for (length, slide, max_lag) in cases {
            let mut run = Run::new(event_time(length, slide, max_lag));
            for (step, &(id, timestamp)) in events.iter().enumerate() {
                let fired_before = run.fired.len();
                run.offer(id, timestamp, step as u64);
                let watermark = run.windower.state().watermark;
                for window in &run.fired[fired_before..] {
                    assert!(window.end <= watermark, "{window:?} fired before the watermark ({watermark}) passed it");
                }
            }
            let (windows, late) = event_time_oracle(length, slide, max_lag, events);
            assert!(!windows.is_empty(), "the case ({length}, {slide}, {max_lag}) tests nothing");
            assert_eq!(run.fired, windows, "length {length}, slide {slide}, lag {max_lag}");
            assert_eq!(run.late, late, "length {length}, slide {slide}, lag {max_lag}");
        }
    }

    #[test]
    fn the_watermark_moves_at_most_once_per_interval() {
        let spec = WindowSpec {
            length: Extent::DurationMs(1_000),
            slide: Extent::DurationMs(1_000),
            time: TimeBase::Event { max_lag_ms: 0, watermark_interval_ms: 1_000 },
        };
        let mut run = Run::new(spec);
        run.offer(0, 500, 10_000); // the first move: watermark 500
        run.offer(1, 1_500, 10_400); // not due: the watermark stays at 500
        run.offer(2, 2_500, 10_800);
        assert!(run.fired.is_empty(), "{:?}", run.fired);
        run.advance(11_000); // due: watermark 2 500, [0, 1 000) and [1 000, 2 000) fire
        assert_eq!(run.windows(), vec![vec![0], vec![1]]);
        run.offer(3, 2_000, 11_100); // behind the watermark
        assert_eq!(run.late, vec![3]);
    }

    #[test]
    fn processing_time_windows_fire_as_the_clock_passes_their_end() {
        let tumbling = WindowSpec {
            length: Extent::DurationMs(10_000),
            slide: Extent::DurationMs(10_000),
            time: TimeBase::Processing,
        };
        let mut run = Run::new(tumbling);
        run.offer(0, 0, 1_000);
        run.offer(1, 0, 9_999);
        run.advance(9_999);
        assert!(run.fired.is_empty());
        run.offer(2, 0, 10_000); // arrives as [0, 10 000) closes: it belongs to the next window
        assert_eq!(run.windows(), vec![vec![0, 1]]);
        // An hour without records fires no empty windows, and the next record's window is right.
        run.advance(3_600_000);
        run.offer(3, 0, 3_605_000);
        run.advance(3_610_000);
        assert_eq!(run.windows(), vec![vec![0, 1], vec![2], vec![3]]);
        assert_eq!((run.fired[1].start, run.fired[1].end), (10_000, 20_000));
        assert_eq!((run.fired[2].start, run.fired[2].end), (3_600_000, 3_610_000));

        let sliding = WindowSpec {
            length: Extent::DurationMs(10_000),
            slide: Extent::DurationMs(5_000),
            time: TimeBase::Processing,
        };
        let mut run = Run::new(sliding);
        for (id, now) in [(0, 1_000), (1, 6_000), (2, 12_000)] {
            run.offer(id, 0, now);
        }
        run.advance(30_000);
        // Windows end every 5 s and span 10 s: [-5, 5), [0, 10), [5, 15), [10, 20).
        assert_eq!(run.windows(), vec![vec![0], vec![0, 1], vec![1, 2], vec![2]]);
        assert!(run.stored.is_empty(), "records left after every window that can hold them fired: {:?}", run.stored);
    }

    #[test]
    #[expect(clippy::type_complexity, reason = "a table of cases reads best inline")]
    fn a_count_and_a_duration_combine_either_way() {
        let last_three_every_second =
            WindowSpec { length: Extent::Count(3), slide: Extent::DurationMs(1_000), time: TimeBase::Processing };
        let last_second_every_two =
            WindowSpec { length: Extent::DurationMs(1_000), slide: Extent::Count(2), time: TimeBase::Processing };
        // (spec, arrival times, windows by record id)
        let cases: [(WindowSpec, &[u64], Vec<Vec<u64>>); 2] = [
            // Windows end at 1 000 and 2 000; nothing new arrives before 3 000, so it fires nothing.
            (last_three_every_second, &[100, 200, 1_500, 1_600, 1_700], vec![vec![0, 1], vec![2, 3, 4]]),
            // Every second record fires with the records of the last second, itself included.
            (last_second_every_two, &[0, 500, 1_200, 1_600, 3_000, 3_000], vec![vec![0, 1], vec![2, 3], vec![4, 5]]),
        ];
        for (spec, arrivals, expected) in cases {
            let mut run = Run::new(spec);
            for (id, now) in arrivals.iter().enumerate() {
                run.offer(id as u64, 0, *now);
            }
            run.advance(3_000);
            assert_eq!(run.windows(), expected, "{spec:?}");
        }
    }
}
