//! The loop of a window function's instance: each record is stored durably and acknowledged in
//! one commit, windows fire from the stored records, and a window's output, its state changes
//! and the deletion of the records no later window needs are committed together.
//!
//! So every processing guarantee gets the same, exactly-once windows: a record is acknowledged
//! only once it is stored, and a window's effects and the windower's progress commit atomically,
//! so a restart (after SIGKILL too) continues the same windows without losing or repeating one.

use bincode::{Decode, Encode};

use super::executor::Executor;
use super::pipeline::to_guest;
use super::pipeline::{Halt, RunError, RunUntil, commit_now};
use crate::engine::broker::{Acks, Message, MessageBody, OutMessage, Subscription};
use crate::engine::clock::now_millis;
use crate::engine::state::{Change, HOST_KEY_PREFIX};
use crate::function::FunctionConfig;
use crate::limits::{MAX_STORED_WINDOW_RECORDS, MAX_WINDOW_BYTES};
use crate::metrics::{InstanceMetrics, Stats};
use crate::names::TopicName;
use crate::runtime::{GuestMessage, GuestWindow, HostContext, ProcessError};
use crate::window::{Offered, Window, WindowConfig, Windower, WindowerState};

/// How often an instance of a window function looks at the clock while no record arrives, so
/// that time windows close on time.
const WINDOW_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// A record as stored until no window needs it.
#[derive(Debug, PartialEq, Encode, Decode)]
pub(crate) struct StoredRecord {
    topic: String,
    sequence: u64,
    timestamp: u64,
    body: MessageBody,
}

/// The windower's progress, stored with every commit.
#[derive(Debug, PartialEq, Encode, Decode, Default)]
pub(crate) struct Progress {
    windower: WindowerState,
    /// The id the next accepted record gets.
    next_id: u64,
    /// No stored record has a smaller id.
    oldest_id: u64,
}

/// Most bytes of record values a window function's instance keeps in memory besides storing
/// them, so that firing a window reads the store only for what did not fit (or came from before a
/// restart).
const CACHED_RECORD_BYTES: usize = 64 * 1024 * 1024;

/// The stored records a window may still need, as the function gets them, up to `CACHED_RECORD_BYTES`.
#[derive(Default)]
struct RecordCache {
    records: std::collections::HashMap<u64, GuestMessage>,
    bytes: usize,
}

impl RecordCache {
    fn insert(&mut self, id: u64, record: impl FnOnce() -> GuestMessage) {
        if self.bytes < CACHED_RECORD_BYTES {
            let record = record();
            self.bytes += record.value.len();
            self.records.insert(id, record);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(record) = self.records.remove(&id) {
            self.bytes -= record.value.len();
        }
    }
}

/// Where instance `instance_id`'s window records and progress are kept in the function's state
/// table: under a NUL byte, which the context refuses in a function's own keys.
fn progress_key(instance_id: u32) -> String {
    format!("{HOST_KEY_PREFIX}window/{instance_id}")
}

fn record_key(instance_id: u32, id: u64) -> String {
    format!("{HOST_KEY_PREFIX}window/{instance_id}/{id:016x}")
}

fn encode<T: Encode>(value: &T) -> Vec<u8> {
    crate::codec::encode(value)
}

fn decode<T: Decode<()>>(bytes: &[u8], what: &str) -> Result<T, RunError> {
    crate::codec::decode(bytes).map_err(|error| {
        damaged(format!(
            "a stored {what} of a window function cannot be decoded ({error}); the data directory is damaged or was written by an incompatible fnhost"
        ))
    })
}

/// What the store gave back is not what the window loop stored.
fn damaged(reason: String) -> RunError {
    RunError::State(crate::engine::state::StateError::Storage(reason))
}

/// Runs a window function's instance until it is halted (or, under [`RunUntil::Idle`], until
/// its inputs are drained; windows still open then stay stored for the next run).
pub(super) fn run_window_instance(
    subscription: &dyn Subscription,
    config: &FunctionConfig,
    window: &WindowConfig,
    executor: &mut dyn Executor,
    metrics: &InstanceMetrics,
    until: RunUntil,
    halt: &Halt<'_>,
) -> Result<(), RunError> {
    let instance_id = executor.context().instance_id();
    let progress: Progress = match executor.context().read(&progress_key(instance_id))? {
        Some(bytes) => decode(&bytes, "window progress")?,
        None => Progress::default(),
    };
    // Stored progress is checked before the host loops over it: an instance keeps at most
    // MAX_STORED_WINDOW_RECORDS records, so a wider range is damage, never a reason to spin.
    if progress.next_id < progress.oldest_id || progress.next_id - progress.oldest_id > MAX_STORED_WINDOW_RECORDS {
        return Err(damaged(format!(
            "the stored window progress spans records {} to {}, more than MAX_STORED_WINDOW_RECORDS ({MAX_STORED_WINDOW_RECORDS}); the data directory is damaged",
            progress.oldest_id, progress.next_id
        )));
    }
    let mut entries = Vec::new();
    for id in progress.oldest_id..progress.next_id {
        if halt.halted() {
            return Ok(());
        }
        if let Some(bytes) = executor.context().read(&record_key(instance_id, id))? {
            let record: StoredRecord = decode(&bytes, "window record")?;
            entries.push(crate::window::Entry { timestamp: record.timestamp, id });
        }
    }
    let mut windower = Windower::resume(window.spec, progress.windower, entries);
    let mut cache = RecordCache::default();
    let mut next_id = progress.next_id;
    while !halt.halted() {
        let wait = if until == RunUntil::Idle { std::time::Duration::ZERO } else { WINDOW_TICK };
        let messages = subscription.fetch(config.batch_size, wait)?;
        let now = now_millis();
        let mut stats = Stats { received: messages.len() as u64, ..Stats::default() };
        let acks = Acks::of(&messages);
        let count = messages.len();
        halt.rest(executor);
        let (extracted, mut converted) = extract_event_times(&messages, window, executor, &mut stats);
        for (index, message) in messages.into_iter().enumerate() {
            let event_time = extracted
                .get(index)
                .copied()
                .flatten()
                .or(message.body.event_time)
                .unwrap_or(message.body.publish_time);
            // Under event time the record was already made into what the function gets.
            let guest = converted.next();
            match windower.offer(next_id, event_time, now) {
                Offered::Accepted { timestamp } => {
                    let stored = StoredRecord {
                        topic: message.topic.as_str().to_owned(),
                        sequence: message.sequence,
                        timestamp,
                        body: message.body,
                    };
                    executor.context().stage(record_key(instance_id, next_id), Change::Put(encode(&stored), None));
                    cache.insert(next_id, || {
                        guest.unwrap_or_else(|| to_guest(&message.topic, stored.sequence, stored.body.clone()))
                    });
                    next_id += 1;
                }
                Offered::Late => late(message, event_time, window.late_data_topic.as_ref(), executor),
            }
        }
        let advance = windower.advance(now);
        let changed = count > 0 || !advance.fired.is_empty() || !advance.evicted.is_empty();
        for fired in advance.fired {
            fire(fired, instance_id, &cache, config, executor, &mut stats, halt)?;
        }
        for id in advance.evicted {
            executor.context().stage(record_key(instance_id, id), Change::Delete);
            cache.remove(id);
        }
        if changed {
            let progress = Progress {
                windower: windower.state().clone(),
                next_id,
                oldest_id: windower.oldest_id().unwrap_or(next_id),
            };
            executor.context().stage(progress_key(instance_id), Change::Put(encode(&progress), None));
            stats.last_invocation = Some(now);
            stats.user_metrics = executor.context().take_metrics();
            commit_now(subscription, acks, count, config, executor)?;
            metrics.record_batch(&stats);
        } else if until == RunUntil::Idle && subscription.drained() {
            break;
        }
    }
    Ok(())
}

/// Under event time, the event times the function reads from `messages` (none where it has none
/// to say), and the records as it got them, in order. If it fails, the records' own event times
/// serve, and the failure is counted and logged.
fn extract_event_times(
    messages: &[Message],
    window: &WindowConfig,
    executor: &mut dyn Executor,
    stats: &mut Stats,
) -> (Vec<Option<u64>>, std::vec::IntoIter<GuestMessage>) {
    if !window.spec.is_event_time() || messages.is_empty() {
        return (Vec::new(), Vec::new().into_iter());
    }
    let records: Vec<GuestMessage> =
        messages.iter().map(|message| to_guest(&message.topic, message.sequence, message.body.clone())).collect();
    let times = match executor.event_times(&records) {
        Ok(times) => times,
        Err(error) => {
            let reason =
                format!("event-times failed for {} records: {error}; their own event times serve", records.len());
            stats.record_exception(matches!(error, ProcessError::User(_)), reason.clone());
            executor.context().write_log(crate::runtime::LogLevel::Error, reason);
            Vec::new()
        }
    };
    (times, records.into_iter())
}

/// A record behind the watermark: to the late-data topic, or logged and counted.
fn late(message: Message, event_time: u64, late_data_topic: Option<&TopicName>, executor: &mut dyn Executor) {
    let context = executor.context();
    match late_data_topic {
        Some(topic) => {
            let MessageBody { value, key, properties, event_time, .. } = message.body;
            context.stage_output(topic.clone(), OutMessage { value, key, properties, event_time });
        }
        None => {
            context.write_log(
                crate::runtime::LogLevel::Warn,
                format!(
                    "message {} from {} is behind the watermark (event time {event_time}) and was dropped; give --late-data-topic to keep late records",
                    message.sequence, message.topic
                ),
            );
            context.record_metric(LATE_RECORDS_METRIC.to_owned(), 1.0);
        }
    }
}

/// The metric that counts late records dropped for want of a late-data topic.
pub const LATE_RECORDS_METRIC: &str = "fnhost_late_records_dropped";

/// Calls the function on a fired window, trying it again after a failure up to the retry limit,
/// and then sending its records to the dead-letter topic.
fn fire(
    window: Window,
    instance_id: u32,
    cache: &RecordCache,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    stats: &mut Stats,
    halt: &Halt<'_>,
) -> Result<(), RunError> {
    let mut records = Vec::with_capacity(window.records.len());
    for id in &window.records {
        if let Some(record) = cache.records.get(id) {
            records.push(record.clone());
            continue;
        }
        let bytes = executor
            .context()
            .read(&record_key(instance_id, *id))?
            .ok_or_else(|| damaged(format!("window record {id} is missing from the store")))?;
        let record: StoredRecord = decode(&bytes, "window record")?;
        let topic = TopicName::parse(&record.topic)
            .map_err(|error| damaged(format!("a stored window record names a bad topic: {error}")))?;
        records.push(to_guest(&topic, record.sequence, record.body));
    }
    let span = GuestWindow { start: window.start, end: window.end };
    let bytes: usize = records.iter().map(|record| record.value.len()).sum();
    if bytes > MAX_WINDOW_BYTES {
        let reason = format!(
            "window [{}, {}) holds {bytes} bytes of records; the limit (MAX_WINDOW_BYTES) is {MAX_WINDOW_BYTES}: use a shorter window",
            window.start, window.end
        );
        stats.record_exception(false, reason.clone());
        executor.context().write_log(
            crate::runtime::LogLevel::Error,
            format!("{reason}; records sent to {}", config.dead_letter_topic),
        );
        dead_letter(&records, &reason, config, executor, stats);
        return Ok(());
    }
    let tries = config.max_message_retries + 1;
    for attempt in 1..=tries {
        halt.rest(executor);
        let started = std::time::Instant::now();
        executor.context().begin_window();
        let result = executor.process_window(span, &records);
        let result = executor.context().end_window(result);
        stats.latency.record(started.elapsed());
        let error = match result {
            Ok(()) => {
                stats.succeeded += 1;
                return Ok(());
            }
            // Not the window's fault: the instance stops uncommitted, and its records come again.
            Err(ProcessError::Host(reason)) => {
                return Err(RunError::State(crate::engine::state::StateError::Storage(reason)));
            }
            Err(error) => error,
        };
        stats.record_exception(matches!(error, ProcessError::User(_)), error.to_string());
        let fate = if attempt < tries {
            "trying again".to_owned()
        } else {
            format!("records sent to {}", config.dead_letter_topic)
        };
        let rest = executor.take_rest().map(|rest| format!("; {rest}")).unwrap_or_default();
        executor.context().write_log(
            crate::runtime::LogLevel::Error,
            format!(
                "window [{}, {}) of {} records failed (try {attempt} of {tries}): {error}; {fate}{rest}",
                window.start,
                window.end,
                records.len()
            ),
        );
    }
    dead_letter(&records, "the window failed every try", config, executor, stats);
    Ok(())
}

fn dead_letter(
    records: &[GuestMessage],
    reason: &str,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    stats: &mut Stats,
) {
    for record in records {
        executor.context().dead_letter(&config.dead_letter_topic, record, reason);
        stats.dead_lettered += 1;
    }
}
