//! The function instance loop: fetch a batch, process each message, commit the batch.
//!
//! A message's effects (state changes, published messages, its output) are gathered in a
//! [`MessageContext`]; when the message succeeds they join the batch, when it fails they are
//! dropped and the message is tried again, up to the retry limit, then sent to the dead-letter
//! topic. The batch's effects and the acknowledgement of its messages are committed in one
//! atomic step by [`Subscription::commit`], so a crash loses no work that was acknowledged and
//! applies no effect of a message that will be delivered again.
//!
//! [`run`] runs one loop per instance, each with its own consumer of the function's subscription;
//! the processing guarantee decides when messages are acknowledged.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufWriter, Stdout, Write};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::engine::broker::{
    Acks, Broker, BrokerError, Effects, FetchWaker, Message, MessageBody, OutMessage, Subscription, message_id,
};
use crate::engine::state::{Change, KeyMap, StateChanges, StateError, StateTable, StateValue};
use crate::function::{FunctionConfig, ProcessingGuarantee};
use crate::limits::{
    COOL_DOWN_MEMORY_MS, MAX_COOL_DOWN_FACTOR, MAX_COOL_DOWN_MS, MAX_LOG_LINE_LEN, MAX_LOG_LINES_PER_MESSAGE,
    MAX_MESSAGE_KEY_LEN, MAX_MESSAGE_SIZE, MAX_METRIC_NAME_LEN, MAX_METRICS_PER_INSTANCE, MAX_PROPERTIES,
    MAX_PROPERTY_LEN, MAX_PUBLISHES_PER_MESSAGE, MAX_STATE_KEY_LEN, MAX_STATE_VALUE_SIZE,
    MAX_WORKER_LOG_LINES_PER_SECOND, MAX_WRITTEN_BYTES_PER_MESSAGE,
};
use crate::metrics::{InstanceMetrics, Stats};
use crate::names::{Fqfn, TopicAccess, TopicName};
use crate::runtime::{
    ContextError, FunctionDetails, GuestMessage, GuestWindow, HostContext, Instance, InstanceLimits, LogLevel,
    PreparedFunction, ProcessError,
};
use crate::token_bucket::TokenBucket;

mod window_loop;

pub(crate) use window_loop::{Progress as WindowProgress, StoredRecord as StoredWindowRecord};

/// How long an idle loop waits for new messages before looking at its stop flag again. A stop
/// through [`RunningInstance`] wakes the fetch at once; a long wait keeps thousands of idle
/// instances from costing CPU.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// Where function log lines go (besides the log topic).
#[derive(Clone)]
pub enum LogSink {
    /// Stdout, as `LEVEL [name] line`, buffered and flushed after every batch: for `localrun`.
    Stdout(Arc<Mutex<BufWriter<Stdout>>>),
    /// Tracing events with the function's name and instance id as fields: for the worker, whose
    /// log carries many functions.
    Tracing,
}

impl Default for LogSink {
    fn default() -> Self {
        Self::Stdout(Arc::new(Mutex::new(BufWriter::new(std::io::stdout()))))
    }
}

impl LogSink {
    fn write_line(&self, level: LogLevel, fqfn: &Fqfn, instance_id: u32, message: &str) {
        match self {
            Self::Stdout(out) => {
                let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // A closed stdout must not stop processing; the log topic (if any) still gets the line.
                let _ = writeln!(out, "{} [{}] {message}", level_name(level), fqfn.name());
            }
            Self::Tracing => match level {
                LogLevel::Trace => tracing::trace!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Debug => tracing::debug!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Info => tracing::info!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Warn => tracing::warn!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
                LogLevel::Error => tracing::error!(target: "fnhost::function", %fqfn, instance_id, "{message}"),
            },
        }
    }

    /// Writes out buffered lines.
    pub fn flush(&self) {
        if let Self::Stdout(out) = self {
            let mut out = out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let _ = out.flush();
        }
    }
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace => "TRACE",
        LogLevel::Debug => "DEBUG",
        LogLevel::Info => "INFO",
        LogLevel::Warn => "WARN",
        LogLevel::Error => "ERROR",
    }
}

fn level_rank(level: LogLevel) -> u8 {
    level as u8
}

/// How many guest log lines an instance may still write into the worker's log: a bucket that
/// fills at MAX_WORKER_LOG_LINES_PER_SECOND and holds a second's worth.
struct LogBudget {
    bucket: TokenBucket,
    /// Lines left out since the last one written.
    left_out: u64,
}

impl Default for LogBudget {
    fn default() -> Self {
        let rate = MAX_WORKER_LOG_LINES_PER_SECOND;
        Self { bucket: TokenBucket::full(rate, f64::from(rate), Instant::now()), left_out: 0 }
    }
}

impl LogBudget {
    /// Takes one line at `now`: `None` if it is left out, else how many were left out before it.
    fn take(&mut self, now: Instant) -> Option<u64> {
        match self.bucket.take(now) {
            Ok(()) => Some(std::mem::take(&mut self.left_out)),
            Err(_) => {
                self.left_out += 1;
                None
            }
        }
    }
}

/// The host side of a function's context: what one instance has done in the current batch.
pub struct MessageContext {
    /// Set when the instance is told to stop; the running guest is interrupted (see [`spawn`]).
    stop: Arc<AtomicBool>,
    fqfn: Fqfn,
    instance_id: u32,
    state: Box<dyn StateTable>,
    batch_state: StateChanges,
    message_state: StateChanges,
    /// The changes of the batch being committed: read before the store, which may not have them
    /// yet. Shared with the commit rather than copied.
    in_flight: Arc<StateChanges>,
    /// The counters that `in_flight` increments, as that batch leaves them.
    in_flight_counters: KeyMap<Option<StateValue>>,
    batch_outputs: Vec<PendingOutput>,
    message_outputs: Vec<PendingOutput>,
    publishes: usize,
    /// Bytes of state and published messages the current message wrote (MAX_WRITTEN_BYTES_PER_MESSAGE).
    written: usize,
    /// Log lines the function wrote while processing the current message (MAX_LOG_LINES_PER_MESSAGE).
    log_lines: usize,
    /// Bounds this instance's lines in the worker's log (not in its log topic).
    worker_log_budget: LogBudget,
    /// Whether the function acknowledged the current message.
    acked: bool,
    topics: HashMap<String, TopicName>,
    topic_access: TopicAccess,
    log_topic: Option<TopicName>,
    log_level: LogLevel,
    logs: LogSink,
    metrics: BTreeMap<String, (u64, f64)>,
    host_failure: Option<String>,
    output: Option<TopicName>,
    /// The fetched batch the function is processing a call of; shared rather than copied, since
    /// an output needs its message's topic, id and key.
    batch: Arc<[GuestMessage]>,
    /// The messages of `batch` in the current call, in order.
    call: Range<usize>,
    /// What the context is done with, handed to the next commit with the batch's effects, so that
    /// the processing thread does not spend its time freeing it.
    retired: Retired,
    /// How each message of the batch the function finished went, in order.
    outcomes: Vec<Outcome>,
    message_started: Instant,
}

/// How one try of a message went, and how long it took.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the function acknowledged the message, or why the message failed.
    pub result: Result<bool, ProcessError>,
    /// From the start of the message to its end.
    pub elapsed: Duration,
}

impl MessageContext {
    /// A context for instance `instance_id` of the function in `config`.
    pub fn new(config: &FunctionConfig, instance_id: u32, state: Box<dyn StateTable>, logs: LogSink) -> Self {
        Self {
            stop: Arc::default(),
            fqfn: config.fqfn.clone(),
            instance_id,
            state,
            batch_state: StateChanges::default(),
            message_state: StateChanges::default(),
            in_flight: Arc::default(),
            in_flight_counters: KeyMap::default(),
            batch_outputs: Vec::new(),
            message_outputs: Vec::new(),
            publishes: 0,
            written: 0,
            log_lines: 0,
            worker_log_budget: LogBudget::default(),
            acked: false,
            topics: HashMap::new(),
            topic_access: config.topic_access.clone(),
            log_topic: config.log_topic.clone(),
            log_level: config.log_level,
            logs,
            metrics: BTreeMap::new(),
            host_failure: None,
            output: config.output.clone(),
            batch: Arc::new([]),
            call: 0..0,
            retired: Retired::default(),
            outcomes: Vec::new(),
            message_started: Instant::now(),
        }
    }

    /// Starts a call: the function finishes the messages of `batch` in `call`, in order, through
    /// [`MessageContext::end_message`].
    fn begin_call(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) {
        if !Arc::ptr_eq(&self.batch, batch) {
            self.batch = batch.clone();
        }
        self.outcomes.clear();
        // The executor takes the outcomes after each call: one allocation, not a Vec growing per message.
        self.outcomes.reserve(call.len());
        self.call = call;
        self.begin_message(Instant::now());
    }

    /// Lets go of the batch's messages once every call is over, so an idle instance does not hold
    /// them; the batch's commit frees them.
    fn end_batch(&mut self) {
        self.retired._batches.push(std::mem::replace(&mut self.batch, Arc::new([])));
        self.call = 0..0;
    }

    fn begin_message(&mut self, now: Instant) {
        self.message_state.clear();
        self.message_outputs.clear();
        self.publishes = 0;
        self.written = 0;
        self.log_lines = 0;
        self.acked = false;
        self.host_failure = None;
        self.message_started = now;
    }

    /// Ends the current message of the batch with what the function said: on success its effects
    /// join the batch, on failure they are dropped. Returns whether the function should go on:
    /// after a failure it stops, so that the message is tried again before the ones after it.
    fn end_message(&mut self, result: Result<Option<Vec<u8>>, ProcessError>, now: Instant) -> bool {
        if self.outcomes.len() >= self.call.len() {
            return false;
        }
        let index = self.call.start + self.outcomes.len();
        let origin = &self.batch[index];
        let result = match (result, self.host_failure.take()) {
            (_, Some(failure)) => Err(ProcessError::System(failure)),
            (Ok(Some(value)), None) if self.output.is_some() => {
                let properties = result_properties(origin);
                match check_parts(value.len(), origin.key.as_deref(), properties.len(), properties) {
                    Ok(()) => Ok(Some(PendingOutput::Result { value, batch: self.batch.clone(), index })),
                    Err(limit) => Err(ProcessError::System(format!("the output was refused: {limit}"))),
                }
            }
            (Ok(Some(_)), None) => Ok(None),
            (Ok(None), None) => Ok(None),
            (Err(error), None) => Err(error),
        };
        let result = match result {
            Ok(output) => Ok(self.keep_message(output)),
            Err(error) => {
                self.drop_message();
                Err(error)
            }
        };
        let go_on = result.is_ok();
        self.outcomes.push(Outcome { result, elapsed: now.saturating_duration_since(self.message_started) });
        self.begin_message(now);
        go_on && self.outcomes.len() < self.call.len()
    }

    /// Moves the current message's effects into the batch, with its output if it has one;
    /// returns whether the function acknowledged the message.
    fn keep_message(&mut self, output: Option<PendingOutput>) -> bool {
        self.batch_state.absorb(&mut self.message_state);
        self.batch_outputs.append(&mut self.message_outputs);
        self.batch_outputs.extend(output);
        self.acked
    }

    /// True when the batch has effects not yet handed over for commit.
    fn has_batch(&self) -> bool {
        !self.batch_state.is_empty() || !self.batch_outputs.is_empty()
    }

    /// Adds `message`, which failed with `reason`, to the batch's outputs on the dead-letter topic,
    /// with Pulsar's dead-letter properties and the reason.
    fn dead_letter(&mut self, topic: &TopicName, message: &GuestMessage, reason: &str) {
        let mut properties = message.properties.clone();
        properties.truncate(MAX_PROPERTIES - DEAD_LETTER_PROPERTIES);
        properties.push(("REAL_TOPIC".into(), message.topic.clone()));
        properties.push(("ORIGIN_MESSAGE_ID".into(), message.message_id.clone()));
        properties.push(("ERROR".into(), cut(reason.to_owned(), MAX_PROPERTY_LEN, "")));
        let letter = OutMessage {
            value: message.value.clone(),
            key: message.key.clone(),
            properties,
            event_time: message.event_time,
        };
        self.batch_outputs.push(PendingOutput::Ready(topic.clone(), letter));
    }

    fn drop_message(&mut self) {
        self.message_state.clear();
        self.message_outputs.clear();
    }

    /// Starts a window function's call: its context calls are the window's effects.
    fn begin_window(&mut self) {
        self.begin_message(Instant::now());
    }

    /// Ends a window function's call with what it returned: on success its effects and its output
    /// join the batch, on failure they are dropped.
    fn end_window(&mut self, result: Result<Option<Vec<u8>>, ProcessError>) -> Result<(), ProcessError> {
        let result = match (result, self.host_failure.take()) {
            (_, Some(failure)) => Err(ProcessError::System(failure)),
            (Ok(Some(value)), None) => match (&self.output, check_parts(value.len(), None, 0, [])) {
                (Some(topic), Ok(())) => Ok(Some(PendingOutput::Ready(topic.clone(), OutMessage::new(value)))),
                (None, _) => Ok(None),
                (Some(_), Err(limit)) => Err(ProcessError::System(format!("the output was refused: {limit}"))),
            },
            (Ok(None), None) => Ok(None),
            (Err(error), None) => Err(error),
        };
        match result {
            Ok(output) => {
                self.keep_message(output);
                Ok(())
            }
            Err(error) => {
                self.drop_message();
                Err(error)
            }
        }
    }

    /// Adds a host change to the batch (a window record stored or deleted), committed with it.
    fn stage(&mut self, key: String, change: Change) {
        self.batch_state.record(key, change);
    }

    /// Adds a message to the batch's outputs.
    fn stage_output(&mut self, topic: TopicName, message: OutMessage) {
        self.batch_outputs.push(PendingOutput::Ready(topic, message));
    }

    /// The bytes under `key` as the next commit will leave them.
    fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.current(key).map(|value| value.map(StateValue::into_bytes)).map_err(|_| {
            StateError::Storage(self.host_failure.take().unwrap_or_else(|| format!("cannot read `{key:?}`")))
        })
    }

    /// Hands the batch's effects over for commit, keeping its changes (shared with the commit) so
    /// that the next batch reads them while the commit runs. The previous commit must have finished.
    fn take_batch(&mut self, acks: Acks) -> Result<PendingBatch, StateError> {
        self.in_flight_counters.clear();
        let outputs = self.batch_outputs.len();
        // The next batch likely changes as many keys: its map then grows without rehashing.
        let keys = self.batch_state.len();
        let changes = Arc::new(std::mem::replace(&mut self.batch_state, StateChanges::with_capacity(keys)));
        for (key, change) in changes.iter() {
            if let Change::Add(_) = change {
                let counter = change.apply(self.state.get(key)?.map(|versioned| versioned.value));
                self.in_flight_counters.insert(key.clone(), counter);
            }
        }
        let committed = std::mem::replace(&mut self.in_flight, changes.clone());
        self.retired._changes = Some(committed);
        Ok(PendingBatch {
            acks,
            outputs: std::mem::replace(&mut self.batch_outputs, Vec::with_capacity(outputs)),
            output_topic: self.output.clone(),
            state: Some((self.fqfn.clone(), changes)),
            retired: std::mem::take(&mut self.retired),
        })
    }

    /// The value of `key` as this message sees it: its own changes, then the batch's, then the store.
    fn current(&mut self, key: &str) -> Result<Option<StateValue>, ContextError> {
        let message = self.message_state.get(key);
        if let Some(change) = message
            && !matches!(change, Change::Add(_))
        {
            return Ok(change.apply(None));
        }
        let base = match self.batch_state.get(key) {
            Some(change) if !matches!(change, Change::Add(_)) => change.apply(None),
            batch => {
                let committed = match self.in_flight.get(key) {
                    Some(Change::Add(_)) => self.in_flight_counters.get(key).cloned().flatten(),
                    Some(absolute) => absolute.apply(None),
                    None => match self.state.get(key) {
                        Ok(stored) => stored.map(|versioned| versioned.value),
                        Err(error) => return Err(self.fail_host(error.to_string())),
                    },
                };
                match batch {
                    Some(change) => change.apply(committed),
                    None => committed,
                }
            }
        };
        Ok(match message {
            Some(change) => change.apply(base),
            None => base,
        })
    }

    /// Counts `bytes` more written by the current message, which the host holds until the commit.
    fn spend(&mut self, bytes: usize) -> Result<(), ContextError> {
        if self.written + bytes > MAX_WRITTEN_BYTES_PER_MESSAGE {
            return Err(ContextError::LimitExceeded(format!(
                "the message's state writes and publishes come to more than {MAX_WRITTEN_BYTES_PER_MESSAGE} bytes, the limit (MAX_WRITTEN_BYTES_PER_MESSAGE)"
            )));
        }
        self.written += bytes;
        Ok(())
    }

    /// Records a host failure: the message fails as a system exception whatever the function does next.
    fn fail_host(&mut self, reason: String) -> ContextError {
        self.host_failure = Some(reason.clone());
        ContextError::NotPermitted(format!("the host could not serve this call: {reason}"))
    }

    fn topic(&mut self, name: &str) -> Result<TopicName, ContextError> {
        if let Some(topic) = self.topics.get(name) {
            return Ok(topic.clone());
        }
        let topic = TopicName::parse(name).map_err(|error| ContextError::InvalidArgument(error.to_string()))?;
        self.topic_access.check(&topic, "topic").map_err(|error| ContextError::NotPermitted(error.to_string()))?;
        self.topics.insert(name.to_owned(), topic.clone());
        Ok(topic)
    }

    /// Writes a line to the log, as the function's own logging does.
    pub fn write_log(&mut self, level: LogLevel, message: String) {
        if level_rank(level) < level_rank(self.log_level) {
            return;
        }
        let message = cut(message, MAX_LOG_LINE_LEN, " [cut at MAX_LOG_LINE_LEN]");
        if !matches!(self.logs, LogSink::Tracing) {
            self.logs.write_line(level, &self.fqfn, self.instance_id, &message);
        } else if let Some(left_out) = self.worker_log_budget.take(Instant::now()) {
            if left_out > 0 {
                let note = format!(
                    "{left_out} log lines of this instance were left out of the worker's log (MAX_WORKER_LOG_LINES_PER_SECOND is {MAX_WORKER_LOG_LINES_PER_SECOND}); its log topic, if it has one, has them all"
                );
                self.logs.write_line(LogLevel::Warn, &self.fqfn, self.instance_id, &note);
            }
            self.logs.write_line(level, &self.fqfn, self.instance_id, &message);
        }
        if let Some(topic) = &self.log_topic {
            let mut line = OutMessage::new(message);
            line.properties = vec![
                ("loglevel".into(), level_name(level).into()),
                ("fqfn".into(), self.fqfn.to_string()),
                ("instance".into(), self.instance_id.to_string()),
            ];
            // Log lines are kept even when the message fails: they explain the failure.
            self.batch_outputs.push(PendingOutput::Ready(topic.clone(), line));
        }
    }
}

/// The output property naming the topic of the input message the output came from (Pulsar's name).
pub const INPUT_TOPIC_PROPERTY: &str = "__pfn_input_topic__";
/// The output property naming the id of the input message the output came from (Pulsar's name).
pub const INPUT_MESSAGE_ID_PROPERTY: &str = "__pfn_input_msg_id__";

/// Properties a dead letter gets besides the message's own.
const DEAD_LETTER_PROPERTIES: usize = 3;

/// `text` cut to at most `limit` bytes (at a character boundary), marked with `mark` if it was cut.
fn cut(mut text: String, limit: usize, mark: &str) -> String {
    if text.len() > limit {
        let mut end = limit.saturating_sub(mark.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str(mark);
    }
    text
}

fn check_key(key: &str) -> Result<(), ContextError> {
    crate::engine::state::check_user_key(key).map_err(ContextError::InvalidArgument)?;
    if key.len() > MAX_STATE_KEY_LEN {
        return Err(ContextError::LimitExceeded(format!(
            "state key is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
            key.len()
        )));
    }
    Ok(())
}

impl HostContext for MessageContext {
    fn min_log_level(&mut self) -> LogLevel {
        self.log_level
    }

    fn finish_message(&mut self, result: Result<Option<Vec<u8>>, ProcessError>, finished_at: Instant) -> bool {
        // A stopped instance takes no further message of the call; they come again.
        self.end_message(result, finished_at) && !self.stop_requested()
    }

    fn stop_requested(&self) -> bool {
        self.stop.load(AtomicOrdering::Relaxed)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_MESSAGE {
            if self.log_lines == MAX_LOG_LINES_PER_MESSAGE + 1 {
                self.write_log(
                    LogLevel::Warn,
                    format!(
                        "further log lines of this message are dropped: the limit (MAX_LOG_LINES_PER_MESSAGE) is {MAX_LOG_LINES_PER_MESSAGE}"
                    ),
                );
            }
            return;
        }
        self.write_log(level, message);
    }

    fn record_metric(&mut self, name: String, value: f64) {
        if name.len() > MAX_METRIC_NAME_LEN
            || (self.metrics.len() >= MAX_METRICS_PER_INSTANCE && !self.metrics.contains_key(&name))
        {
            self.write_log(
                LogLevel::Warn,
                format!(
                    "metric `{}` dropped: names are limited to MAX_METRIC_NAME_LEN ({MAX_METRIC_NAME_LEN}) bytes and MAX_METRICS_PER_INSTANCE ({MAX_METRICS_PER_INSTANCE}) names",
                    name.chars().take(64).collect::<String>()
                ),
            );
            return;
        }
        let entry = self.metrics.entry(name).or_default();
        entry.0 += 1;
        entry.1 += value;
    }

    fn get_state(&mut self, key: String) -> Result<Option<Vec<u8>>, ContextError> {
        check_key(&key)?;
        Ok(self.current(&key)?.map(StateValue::into_bytes))
    }

    fn put_state(&mut self, key: String, value: Vec<u8>) -> Result<(), ContextError> {
        check_key(&key)?;
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(ContextError::LimitExceeded(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        self.spend(key.len() + value.len())?;
        self.message_state.record(key, Change::Put(value));
        Ok(())
    }

    fn delete_state(&mut self, key: String) -> Result<(), ContextError> {
        check_key(&key)?;
        self.message_state.record(key, Change::Delete);
        Ok(())
    }

    fn incr_counter(&mut self, key: String, amount: i64) -> Result<i64, ContextError> {
        check_key(&key)?;
        let current = match self.current(&key)? {
            None => 0,
            Some(StateValue::Counter(value)) => value,
            Some(StateValue::Bytes(_)) => {
                return Err(ContextError::WrongKind(format!(
                    "state key `{key}` holds bytes, not a counter; delete it before counting under it"
                )));
            }
        };
        self.message_state.record(key, Change::Add(amount));
        Ok(current.wrapping_add(amount))
    }

    fn get_counter(&mut self, key: String) -> Result<i64, ContextError> {
        check_key(&key)?;
        match self.current(&key)? {
            None => Ok(0),
            Some(StateValue::Counter(value)) => Ok(value),
            Some(StateValue::Bytes(_)) => Err(ContextError::WrongKind(format!(
                "state key `{key}` holds bytes, not a counter; read it with get-state"
            ))),
        }
    }

    fn publish(
        &mut self,
        topic: String,
        value: Vec<u8>,
        key: Option<String>,
        properties: Vec<(String, String)>,
    ) -> Result<(), ContextError> {
        if self.publishes >= MAX_PUBLISHES_PER_MESSAGE {
            return Err(ContextError::LimitExceeded(format!(
                "more than MAX_PUBLISHES_PER_MESSAGE ({MAX_PUBLISHES_PER_MESSAGE}) publishes while processing one message"
            )));
        }
        let topic = self.topic(&topic)?;
        let message = OutMessage { value, key, properties, event_time: None };
        check_message(&message).map_err(ContextError::LimitExceeded)?;
        self.spend(message.value.len() + message.key.as_ref().map_or(0, String::len))?;
        self.publishes += 1;
        self.message_outputs.push(PendingOutput::Ready(topic, message));
        Ok(())
    }

    fn ack(&mut self) {
        // Only MANUAL reads this; under the other guarantees every message is acknowledged anyway.
        self.acked = true;
    }
}

/// Checks a message against the size limits; the error names the limit.
pub fn check_message(message: &OutMessage) -> Result<(), String> {
    let properties = message.properties.iter().map(|(name, value)| (name.as_str(), value.as_str()));
    check_parts(message.value.len(), message.key.as_deref(), message.properties.len(), properties)
}

/// [`check_message`] of a message with a value of `value_len` bytes, `key`, and `count` properties.
fn check_parts<'a>(
    value_len: usize,
    key: Option<&str>,
    count: usize,
    properties: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), String> {
    if value_len > MAX_MESSAGE_SIZE {
        return Err(format!("message value is {value_len} bytes; the limit (MAX_MESSAGE_SIZE) is {MAX_MESSAGE_SIZE}"));
    }
    if let Some(key) = key
        && key.len() > MAX_MESSAGE_KEY_LEN
    {
        return Err(format!(
            "message key is {} bytes; the limit (MAX_MESSAGE_KEY_LEN) is {MAX_MESSAGE_KEY_LEN}",
            key.len()
        ));
    }
    if count > MAX_PROPERTIES {
        return Err(format!("message has {count} properties; the limit (MAX_PROPERTIES) is {MAX_PROPERTIES}"));
    }
    if properties.into_iter().any(|(name, value)| name.len() > MAX_PROPERTY_LEN || value.len() > MAX_PROPERTY_LEN) {
        return Err(format!("a property name or value is longer than MAX_PROPERTY_LEN ({MAX_PROPERTY_LEN}) bytes"));
    }
    Ok(())
}

/// Pulsar's properties naming the input a result came from; trigger looks for them.
fn result_properties(origin: &GuestMessage) -> [(&'static str, &str); 2] {
    [(INPUT_TOPIC_PROPERTY, &origin.topic), (INPUT_MESSAGE_ID_PROPERTY, &origin.message_id)]
}

/// An output of a batch, as processing records it.
enum PendingOutput {
    /// A message to append as it is: published by the function, a log line or a dead letter.
    Ready(TopicName, OutMessage),
    /// The function's result for message `index` of `batch`, for the output topic.
    Result { value: Vec<u8>, batch: Arc<[GuestMessage]>, index: usize },
}

/// A batch's effects as processing leaves them.
///
/// The processing thread bounds the pipeline while the commit thread has time to spare, so
/// [`PendingBatch::into_effects`] turns results into output messages on the commit thread, which
/// also frees the batch's messages.
pub(crate) struct PendingBatch {
    acks: Acks,
    outputs: Vec<PendingOutput>,
    output_topic: Option<TopicName>,
    state: Option<(Fqfn, Arc<StateChanges>)>,
    retired: Retired,
}

/// Memory a [`MessageContext`] is done with, held only to be freed by a commit thread.
#[derive(Default)]
struct Retired {
    /// Fetched batches whose calls are over.
    _batches: Vec<Arc<[GuestMessage]>>,
    /// The changes of a batch whose commit ended.
    _changes: Option<Arc<StateChanges>>,
}

impl PendingBatch {
    fn into_effects(self) -> Effects {
        let Self { acks, outputs, output_topic, state, retired } = self;
        let outputs = outputs
            .into_iter()
            .filter_map(|output| match output {
                PendingOutput::Ready(topic, message) => Some((topic, message)),
                PendingOutput::Result { value, batch, index } => {
                    let origin = &batch[index];
                    let properties =
                        result_properties(origin).map(|(name, value)| (name.to_owned(), value.to_owned())).into();
                    let message = OutMessage { value, key: origin.key.clone(), properties, event_time: None };
                    Some((output_topic.clone()?, message))
                }
            })
            .collect();
        drop(retired);
        Effects { acks, outputs, state }
    }
}

/// Something that processes messages with a [`MessageContext`]: a wasm instance or a native function.
pub trait Executor: Send {
    /// Processes the messages of `batch` in `call`, in order, stopping after the first that
    /// fails; returns how each message it reached went (at least one).
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome>;
    /// The context the executor's effects are gathered in.
    fn context(&mut self) -> &mut MessageContext;
    /// How many times the executor was restarted after a system exception.
    fn restarts(&self) -> u64 {
        0
    }
    /// The rest the latest system exception cost the instance, once, for its log line; the rest
    /// itself is [`Executor::resting_until`].
    fn take_rest(&mut self) -> Option<Rest> {
        None
    }
    /// Until when the instance rests, so that a function that keeps trapping or running out of
    /// time cannot keep a core from its neighbours: its next call waits for it.
    fn resting_until(&self) -> Option<Instant> {
        None
    }
    /// Runs a window function on the records of `window`; its context calls go to [`Executor::context`].
    fn process_window(
        &mut self,
        _window: GuestWindow,
        _records: &[GuestMessage],
    ) -> Result<Option<Vec<u8>>, ProcessError> {
        Err(ProcessError::System("this executor runs message functions, not window functions".into()))
    }
    /// A window function's own event time for each of `records`, where it reads one from them.
    fn event_times(&mut self, records: &[GuestMessage]) -> Result<Vec<Option<u64>>, ProcessError> {
        Ok(vec![None; records.len()])
    }
}

/// The rests an instance owes after system exceptions.
///
/// After a system exception that is the n-th within [`COOL_DOWN_MEMORY_MS`], the instance rests
/// 2^(n-1) times as long as the failed message ran, at most [`MAX_COOL_DOWN_FACTOR`] times and
/// [`MAX_COOL_DOWN_MS`]: a function that keeps failing that way gets an ever smaller share of a
/// core, even when it succeeds in between, and one that fails now and then hardly notices.
#[derive(Debug, Default)]
struct CoolDown {
    /// When the latest system exceptions within [`COOL_DOWN_MEMORY_MS`] happened, oldest first.
    recent: VecDeque<Instant>,
    /// The latest rest, until it is reported.
    owed: Option<Rest>,
    /// When the latest rest ends.
    until: Option<Instant>,
}

impl CoolDown {
    /// Notes a system exception at `now` from a message that ran for `ran`, and owes its rest.
    fn failed(&mut self, ran: Duration, now: Instant) {
        let memory = Duration::from_millis(COOL_DOWN_MEMORY_MS);
        // Only as many failures as it takes to reach the largest factor are worth keeping.
        let kept = MAX_COOL_DOWN_FACTOR.ilog2() as usize + 1;
        while self.recent.front().is_some_and(|&failed| now.saturating_duration_since(failed) > memory)
            || self.recent.len() >= kept
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        let factor = (1u32 << (self.recent.len() - 1)).min(MAX_COOL_DOWN_FACTOR);
        let duration = ran.saturating_mul(factor).min(Duration::from_millis(MAX_COOL_DOWN_MS));
        self.owed = Some(Rest { duration, factor });
        self.until = Some(now + duration);
    }
}

/// A rest an instance takes before its next call, after a system exception.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rest {
    /// How long.
    pub duration: Duration,
    /// How many times as long as the failed message ran.
    pub factor: u32,
}

impl std::fmt::Display for Rest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "the instance rests {:?} ({}x the failed message's time; see MAX_COOL_DOWN_FACTOR)",
            self.duration, self.factor
        )
    }
}

/// Runs a wasm component, replacing its instance after every trap, and resting after each
/// system exception (see [`MAX_COOL_DOWN_FACTOR`]).
pub struct WasmExecutor {
    function: PreparedFunction<MessageContext>,
    details: Arc<FunctionDetails>,
    limits: InstanceLimits,
    instance: Option<Instance<MessageContext>>,
    /// The context while no instance holds it (after an instantiation failed).
    parked: Option<MessageContext>,
    restarts: u64,
    cool_down: CoolDown,
}

impl WasmExecutor {
    /// Instantiates the function; fails if the first instance cannot start.
    pub fn start(
        function: PreparedFunction<MessageContext>,
        details: Arc<FunctionDetails>,
        limits: InstanceLimits,
        context: MessageContext,
    ) -> Result<Self, ProcessError> {
        let instance = function.instantiate(context, details.clone(), limits).map_err(|(_, error)| error)?;
        Ok(Self {
            function,
            details,
            limits,
            instance: Some(instance),
            parked: None,
            restarts: 0,
            cool_down: CoolDown::default(),
        })
    }

    /// Makes one call into the instance, starting one first if the last was lost, and replacing
    /// it after a system exception.
    fn call<T>(
        &mut self,
        call: impl FnOnce(&mut Instance<MessageContext>) -> Result<T, ProcessError>,
    ) -> Result<T, ProcessError> {
        if self.instance.is_none() {
            self.replace_instance();
        }
        let started = Instant::now();
        let result = match self.instance.as_mut() {
            Some(instance) => call(instance),
            None => Err(ProcessError::System("the instance could not be restarted".into())),
        };
        if matches!(result, Err(ProcessError::System(_))) {
            self.cool_down.failed(started.elapsed(), Instant::now());
            if self.instance.is_some() {
                self.replace_instance();
            }
        }
        result
    }

    fn replace_instance(&mut self) {
        let context = match (self.instance.take(), self.parked.take()) {
            (Some(instance), _) => instance.into_host(),
            (None, Some(context)) => context,
            (None, None) => unreachable!("the context is always held by the instance or parked"),
        };
        self.restarts += 1;
        match self.function.instantiate(context, self.details.clone(), self.limits) {
            Ok(instance) => self.instance = Some(instance),
            Err((context, error)) => {
                tracing::error!("cannot restart an instance of {}: {error}", context.fqfn);
                self.parked = Some(context);
            }
        }
    }
}

impl Executor for WasmExecutor {
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome> {
        if self.instance.is_none() {
            self.replace_instance();
        }
        self.context().begin_call(batch, call.clone());
        let failure = match self.instance.as_mut() {
            Some(instance) => instance.process_batch(&batch[call]).err(),
            None => Some(ProcessError::System("the instance could not be restarted".into())),
        };
        if let Some(error) = failure {
            // The failure belongs to the first message the function did not finish.
            let context = self.context();
            context.end_message(Err(error), Instant::now());
            let ran = context.outcomes.last().map_or(Duration::ZERO, |outcome| outcome.elapsed);
            self.cool_down.failed(ran, Instant::now());
            if self.instance.is_some() {
                self.replace_instance();
            }
        }
        std::mem::take(&mut self.context().outcomes)
    }

    fn take_rest(&mut self) -> Option<Rest> {
        self.cool_down.owed.take()
    }

    fn resting_until(&self) -> Option<Instant> {
        self.cool_down.until
    }

    fn context(&mut self) -> &mut MessageContext {
        match (&mut self.instance, &mut self.parked) {
            (Some(instance), _) => instance.host_mut(),
            (None, Some(context)) => context,
            (None, None) => unreachable!("the context is always held by the instance or parked"),
        }
    }

    fn restarts(&self) -> u64 {
        self.restarts
    }

    fn process_window(
        &mut self,
        window: GuestWindow,
        records: &[GuestMessage],
    ) -> Result<Option<Vec<u8>>, ProcessError> {
        self.call(|instance| instance.process_window(window, records))
    }

    fn event_times(&mut self, records: &[GuestMessage]) -> Result<Vec<Option<u64>>, ProcessError> {
        self.call(|instance| instance.event_times(records))
    }
}

/// A function written in Rust inside the host: the same pipeline without the sandbox.
pub struct NativeExecutor<F> {
    function: F,
    context: MessageContext,
}

impl<F> NativeExecutor<F>
where
    F: FnMut(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String>,
{
    /// Wraps a native function.
    pub fn new(function: F, context: MessageContext) -> Self {
        Self { function, context }
    }
}

impl<F> Executor for NativeExecutor<F>
where
    F: FnMut(&GuestMessage, &mut MessageContext) -> Result<Option<Vec<u8>>, String> + Send,
{
    fn process_batch(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) -> Vec<Outcome> {
        self.context.begin_call(batch, call.clone());
        for message in &batch[call] {
            let result = (self.function)(message, &mut self.context).map_err(ProcessError::User);
            if !self.context.end_message(result, Instant::now()) {
                break;
            }
        }
        std::mem::take(&mut self.context.outcomes)
    }

    fn context(&mut self) -> &mut MessageContext {
        &mut self.context
    }
}

/// When the loop stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunUntil {
    /// When the stop flag is set.
    Stopped,
    /// When the inputs have no more messages (or the stop flag is set).
    Idle,
}

/// Why the loop stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Topics failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// State failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The stop flag, and whether another instance of the function failed.
struct Halt<'a> {
    stop: &'a AtomicBool,
    failed: &'a AtomicBool,
}

impl Halt<'_> {
    fn halted(&self) -> bool {
        self.stop.load(AtomicOrdering::Relaxed) || self.failed.load(AtomicOrdering::Relaxed)
    }

    /// Waits until the executor's rest is over, or until the instance is halted.
    fn rest(&self, executor: &dyn Executor) {
        let Some(until) = executor.resting_until() else { return };
        while !self.halted() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(HALT_CHECK_INTERVAL));
        }
    }
}

/// How often a resting instance checks whether it was told to stop.
const HALT_CHECK_INTERVAL: Duration = Duration::from_millis(10);

/// Checks that `function` is the kind of function `config` runs: a window function exactly when
/// the config has window settings.
pub fn check_kind(function: &PreparedFunction<MessageContext>, config: &FunctionConfig) -> Result<(), String> {
    match (function.is_window_function(), config.window.is_some()) {
        (true, false) => Err("the component is a window function (it exports process-window): give its window settings, --window-length-count or --window-length-duration-ms".into()),
        (false, true) => Err("window settings were given, but the component is not a window function (it exports process-batch): export it with the SDK's window API, or leave out the window settings".into()),
        _ => Ok(()),
    }
}

/// Runs one loop per executor, each an instance of the function with its own consumer of the
/// function's subscription, until told to stop; returns each instance's stats, in instance order.
///
/// If one instance fails, the others stop and the first error is returned.
pub fn run(
    broker: &dyn Broker,
    config: &FunctionConfig,
    executors: Vec<Box<dyn Executor>>,
    until: RunUntil,
    stop: &AtomicBool,
) -> Result<Vec<Stats>, RunError> {
    let count = executors.len() as u32;
    // Every consumer joins before any fetches, so that the first cannot take what the others would get.
    let consumers = (0..count)
        .map(|instance_id| broker.subscribe(config.subscription_spec(instance_id, count)))
        .collect::<Result<Vec<_>, _>>()?;
    let failed = AtomicBool::new(false);
    let halt = Halt { stop, failed: &failed };
    let halt = &halt;
    std::thread::scope(|scope| {
        let instances: Vec<_> = executors
            .into_iter()
            .zip(consumers)
            .enumerate()
            .map(|(instance_id, (mut executor, consumer))| {
                std::thread::Builder::new()
                    .name(format!("{}#{instance_id}", config.fqfn.name()))
                    .spawn_scoped(scope, move || {
                        let metrics = InstanceMetrics::default();
                        let result = run_instance(consumer.as_ref(), config, executor.as_mut(), &metrics, until, halt);
                        if result.is_err() {
                            halt.failed.store(true, AtomicOrdering::Relaxed);
                        }
                        // The consumer leaves here, so that what it did not acknowledge goes to the others.
                        drop(consumer);
                        result.map(|()| metrics.snapshot())
                    })
                    .expect("the system can start a thread")
            })
            .collect();
        instances
            .into_iter()
            .map(|instance| instance.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    })
}

/// An instance started by [`spawn`]: its thread, and the flag that asks it to stop.
pub struct RunningInstance {
    stop: Arc<AtomicBool>,
    wake: FetchWaker,
    thread: std::thread::JoinHandle<Result<(), RunError>>,
}

impl RunningInstance {
    /// Asks the instance to stop after the batch it is processing; [`RunningInstance::join`] waits for it.
    pub fn request_stop(&self) {
        self.stop.store(true, AtomicOrdering::Relaxed);
        (self.wake)();
    }

    /// True once the instance's loop has ended (stopped or failed).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the instance: it finishes and commits the batch it is processing, then its consumer
    /// leaves the subscription. Returns how its loop ended.
    pub fn stop(self) -> Result<(), RunError> {
        self.request_stop();
        self.join()
    }

    /// Waits for the loop to end and returns how it ended.
    pub fn join(self) -> Result<(), RunError> {
        self.thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Starts one instance on a thread of its own, consuming through `consumer` (which the caller
/// created, so that all of a function's consumers can join before any fetches), until stopped.
pub fn spawn(
    config: Arc<FunctionConfig>,
    instance_id: u32,
    consumer: Box<dyn Subscription>,
    mut executor: Box<dyn Executor>,
    metrics: Arc<InstanceMetrics>,
) -> RunningInstance {
    // The context's flag: a stop both ends the loop and interrupts the guest it is running.
    let stop = executor.context().stop.clone();
    let flag = stop.clone();
    let wake = consumer.waker();
    let thread = std::thread::Builder::new()
        .name(format!("{}#{instance_id}", config.fqfn.name()))
        .spawn(move || {
            let failed = AtomicBool::new(false);
            let halt = Halt { stop: &flag, failed: &failed };
            let span = tracing::info_span!("instance", fqfn = %config.fqfn, instance_id);
            let _entered = span.enter();
            let result =
                run_instance(consumer.as_ref(), &config, executor.as_mut(), &metrics, RunUntil::Stopped, &halt);
            if let Err(error) = &result {
                tracing::error!("instance stopped: {error}");
            }
            result
        })
        .expect("the system can start a thread");
    RunningInstance { stop, wake, thread }
}

/// One instance's loop: fetch, process, commit.
///
/// Under every guarantee but ATMOST_ONCE, a full batch (a backlog) is processed while a second
/// thread commits the previous batch and then fetches the next one, so that neither the commit
/// nor the fetch waits on the processing thread, which bounds the pipeline. Commits stay in fetch
/// order, one at a time; besides the batch being processed, at most one batch is fetched ahead
/// and one is unacknowledged in memory. A loop that stops with a batch fetched ahead gives it back
/// ([`Subscription::release`]).
/// A short batch (the instance keeps up) is committed as soon as it is processed, on this thread:
/// overlapping would make each of its messages wait for the previous batch's commit as well.
/// Under ATMOST_ONCE, the commit that acknowledges a batch also carries the previous batch's
/// effects, and processing waits for it.
fn run_instance(
    subscription: &dyn Subscription,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    metrics: &InstanceMetrics,
    until: RunUntil,
    halt: &Halt<'_>,
) -> Result<(), RunError> {
    if let Some(window) = &config.window {
        return window_loop::run_window_instance(subscription, config, window, executor, metrics, until, halt);
    }
    let at_most_once = config.guarantee == ProcessingGuarantee::AtMostOnce;
    std::thread::scope(|scope| -> Result<(), RunError> {
        let mut ahead: Vec<Message> = Vec::new();
        // The last processed batch's effects and its message count, until a commit takes them.
        let mut uncommitted: Option<(PendingBatch, usize)> = None;
        let mut wait_for_more = until == RunUntil::Stopped;
        while !halt.halted() {
            let messages = if ahead.is_empty() {
                // Never sleep on an empty topic while effects wait to be committed: their
                // acknowledgements and log lines would wait for nothing.
                if let Some((effects, messages)) = uncommitted.take() {
                    let committed = subscription.commit(effects.into_effects());
                    after_commit(committed, messages, config, executor)?;
                }
                let pending = at_most_once && executor.context().has_batch();
                let wait = if pending || !wait_for_more { Duration::ZERO } else { IDLE_WAIT };
                if !wait.is_zero() {
                    // No commit comes to free them while the instance idles.
                    executor.context().retired = Retired::default();
                }
                let messages = subscription.fetch(config.batch_size, wait)?;
                if messages.is_empty() {
                    if pending {
                        commit_now(subscription, Acks::default(), 0, config, executor)?;
                    } else if until == RunUntil::Idle {
                        if subscription.drained() {
                            break;
                        }
                        // Redeliveries or messages held for this instance are still to come.
                        wait_for_more = true;
                    }
                    continue;
                }
                messages
            } else {
                std::mem::take(&mut ahead)
            };
            wait_for_more = until == RunUntil::Stopped;
            if at_most_once {
                commit_now(subscription, Acks::of(&messages), messages.len(), config, executor)?;
                process_batch(messages, config, executor, metrics, halt);
                continue;
            }
            let count = messages.len();
            if count < config.batch_size {
                // A short batch means the instance keeps up with its input, so latency matters more
                // than overlap: committing this batch behind the next one's processing (below) would
                // add a commit to the path of every message.
                if let Some((effects, messages)) = uncommitted.take() {
                    let committed = subscription.commit(effects.into_effects());
                    after_commit(committed, messages, config, executor)?;
                }
                let acks = process_batch(messages, config, executor, metrics, halt);
                commit_now(subscription, acks, count, config, executor)?;
                continue;
            }
            let (previous, previous_count) = uncommitted.take().unzip();
            let batch_size = config.batch_size;
            let commit_and_fetch = scope.spawn(move || {
                let committed = previous.map(|effects| subscription.commit(effects.into_effects()));
                let fetched = match committed {
                    Some(Err(_)) => Ok(Vec::new()),
                    _ => subscription.fetch(batch_size, Duration::ZERO),
                };
                (committed, fetched)
            });
            let acks = process_batch(messages, config, executor, metrics, halt);
            let (committed, fetched) = commit_and_fetch.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            if let (Some(committed), Some(messages)) = (committed, previous_count) {
                after_commit(committed, messages, config, executor)?;
            }
            ahead = fetched?;
            uncommitted = Some((executor.context().take_batch(acks)?, count));
        }
        if let Some((effects, messages)) = uncommitted.take() {
            let committed = subscription.commit(effects.into_effects());
            after_commit(committed, messages, config, executor)?;
        }
        if executor.context().has_batch() {
            commit_now(subscription, Acks::default(), 0, config, executor)?;
        }
        if !ahead.is_empty() {
            subscription.release(ahead);
        }
        Ok(())
    })
}

/// Commits the batch's effects with `acks` (of `messages` messages) on this thread.
fn commit_now(
    subscription: &dyn Subscription,
    acks: Acks,
    messages: usize,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
) -> Result<(), RunError> {
    let effects = executor.context().take_batch(acks)?;
    let committed = subscription.commit(effects.into_effects());
    after_commit(committed, messages, config, executor)
}

/// Writes out the log lines of a batch (of `messages` messages) once its commit has returned `result`.
fn after_commit(
    result: Result<(), BrokerError>,
    messages: usize,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
) -> Result<(), RunError> {
    executor.context().logs.flush();
    result?;
    tracing::debug!(fqfn = %config.fqfn, messages, "committed a batch");
    Ok(())
}

/// Processes a batch, trying each failed message again up to the retry limit and then sending it
/// to the dead-letter topic; adds what happened to `metrics` and returns the messages to acknowledge.
fn process_batch(
    messages: Vec<Message>,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    metrics: &InstanceMetrics,
    halt: &Halt<'_>,
) -> Acks {
    let restarts_before = executor.restarts();
    let mut stats = Stats::default();
    let acks = process_messages(messages, config, executor, &mut stats, halt);
    executor.context().end_batch();
    stats.restarts = executor.restarts() - restarts_before;
    stats.last_invocation = Some(crate::engine::clock::now_millis());
    stats.user_metrics = std::mem::take(&mut executor.context().metrics);
    metrics.record_batch(&stats);
    acks
}

/// The most messages one call of the function's `process-batch` export gets.
///
/// A call's fixed cost (entering the guest, a JavaScript promise and event loop, Python's
/// interpreter entry) is spread over its messages, but a call must not be too long either:
/// componentize-js (0.23) keeps every allocation made during a call in a list that each free
/// searches, so a JavaScript call's cost grows with the square of its messages.
/// Calls of 64 made the JavaScript session function 9% (interpreted) and 66% (ahead of time)
/// faster than whole fetched batches of 4,096, and left Rust and Python within the noise
/// (docs/BENCHMARKS.md).
pub const MESSAGES_PER_CALL: usize = 64;

fn process_messages(
    messages: Vec<Message>,
    config: &FunctionConfig,
    executor: &mut dyn Executor,
    stats: &mut Stats,
    halt: &Halt<'_>,
) -> Acks {
    let manual = config.guarantee == ProcessingGuarantee::Manual;
    let mut acks = Acks::default();
    let mut positions = Vec::with_capacity(messages.len());
    let mut guests = Vec::with_capacity(messages.len());
    for message in messages {
        stats.received += 1;
        let Message { topic, sequence, body, redelivery_count } = message;
        let guest = to_guest(&topic, sequence, body);
        // Under MANUAL a redelivery means the function did not acknowledge the message in time;
        // it gets as many deliveries as a failing message gets tries. (Under the other guarantees a
        // redelivery only means that another instance left without finishing the message.)
        if manual && redelivery_count > config.max_message_retries {
            let reason = format!(
                "not acknowledged after {} deliveries (MANUAL, --max-message-retries {})",
                redelivery_count, config.max_message_retries
            );
            let context = executor.context();
            context.write_log(
                LogLevel::Error,
                format!(
                    "message {} from {}: {reason}; sent to {}",
                    guest.message_id, guest.topic, config.dead_letter_topic
                ),
            );
            context.dead_letter(&config.dead_letter_topic, &guest, &reason);
            stats.dead_lettered += 1;
            acks.add(&topic, sequence);
            continue;
        }
        positions.push((topic, sequence));
        guests.push(guest);
    }
    // The function gets the messages in calls of up to MESSAGES_PER_CALL and stops at the first
    // failure, which is tried again on its own before the messages after it: each key's messages
    // keep their order.
    let guests: Arc<[GuestMessage]> = guests.into();
    let mut next = 0;
    while next < guests.len() && !halt.halted() {
        let call = next..guests.len().min(next + MESSAGES_PER_CALL);
        halt.rest(executor);
        for outcome in executor.process_batch(&guests, call) {
            let (topic, sequence) = &positions[next];
            let guest = &guests[next];
            next += 1;
            let mut outcome = outcome;
            for attempt in 1.. {
                // A failure while stopping is the stop's interruption, not the message's fault:
                // the message and the ones after it are left unacknowledged, for the next delivery.
                if outcome.result.is_err() && halt.halted() {
                    return acks;
                }
                stats.record_latency(outcome.elapsed);
                let error = match outcome.result {
                    Ok(acked) => {
                        stats.succeeded += 1;
                        if acked || !manual {
                            acks.add(topic, *sequence);
                        }
                        break;
                    }
                    Err(error) => error,
                };
                let tries = config.max_message_retries + 1;
                let text = format!(
                    "message {} from {} failed (try {attempt} of {tries}) after {:?}: {error}",
                    guest.message_id, guest.topic, outcome.elapsed,
                );
                stats.record_exception(matches!(error, ProcessError::User(_)), text.clone());
                let rest = executor.take_rest().map(|rest| format!("; {rest}")).unwrap_or_default();
                let context = executor.context();
                if attempt < tries {
                    context.write_log(LogLevel::Warn, format!("{text}; trying again{rest}"));
                    halt.rest(executor);
                    outcome = executor.process_batch(&guests, next - 1..next).pop().unwrap_or_else(|| Outcome {
                        result: Err(ProcessError::System("the message was not processed".into())),
                        elapsed: Duration::ZERO,
                    });
                    continue;
                }
                context.write_log(LogLevel::Error, format!("{text}; sent to {}{rest}", config.dead_letter_topic));
                context.dead_letter(&config.dead_letter_topic, guest, &error.to_string());
                stats.dead_lettered += 1;
                acks.add(topic, *sequence);
                break;
            }
        }
    }
    acks
}

fn to_guest(topic: &TopicName, sequence: u64, body: MessageBody) -> GuestMessage {
    GuestMessage {
        value: body.value,
        key: body.key,
        properties: body.properties,
        event_time: body.event_time,
        publish_time: body.publish_time,
        message_id: message_id(sequence),
        topic: topic.as_str().to_owned(),
        partition_key: body.partition_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::engine::broker::{Broker, FetchWaker, OutMessage, Position, SubscriptionSpec};
    use crate::engine::state::StateStore;
    use crate::names::SubscriptionName;

    /// What the loop asked of its subscription, in order.
    #[derive(Debug, PartialEq)]
    enum Call {
        /// A fetch, with the sequences it returned.
        Fetch(Vec<u64>),
        /// A commit, with what it acknowledged.
        Commit(Acks),
    }

    /// A subscription that notes each fetch and commit before passing it on.
    struct Recording {
        inner: Box<dyn Subscription>,
        calls: Mutex<Vec<Call>>,
    }

    impl Subscription for Recording {
        fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
            let messages = self.inner.fetch(max, wait)?;
            let sequences = messages.iter().map(|message| message.sequence).collect();
            self.calls.lock().unwrap().push(Call::Fetch(sequences));
            Ok(messages)
        }

        fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
            self.calls.lock().unwrap().push(Call::Commit(effects.acks.clone()));
            self.inner.commit(effects)
        }

        fn drained(&self) -> bool {
            self.inner.drained()
        }

        fn release(&self, messages: Vec<Message>) {
            self.inner.release(messages);
        }

        fn waker(&self) -> FetchWaker {
            self.inner.waker()
        }
    }

    fn acks(topic: &TopicName, sequences: Range<u64>) -> Acks {
        let mut acks = Acks::default();
        for sequence in sequences {
            acks.add(topic, sequence);
        }
        acks
    }

    /// Full batches are processed while the previous one commits and the next one is fetched; a
    /// short batch is committed before anything else is fetched, so its messages wait for one
    /// commit only.
    #[test]
    fn full_batches_overlap_their_commits_and_a_short_batch_commits_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let input = TopicName::parse("in").unwrap();
        store.produce(&input, (0..5).map(|n| OutMessage::new(n.to_string().into_bytes())).collect()).unwrap();
        let config =
            FunctionConfig { batch_size: 2, ..FunctionConfig::new(Fqfn::parse("a/b/c").unwrap(), vec![input.clone()]) };
        let context = MessageContext::new(&config, 0, store.table(&config.fqfn).unwrap(), LogSink::default());
        let mut executor = NativeExecutor::new(|_: &GuestMessage, _: &mut MessageContext| Ok(None), context);
        let subscription = Recording {
            inner: store
                .subscribe(SubscriptionSpec::single(
                    vec![input.clone()],
                    Some(SubscriptionName::on_topic(&input, "s").unwrap()),
                    Position::Earliest,
                ))
                .unwrap(),
            calls: Mutex::new(Vec::new()),
        };
        let stop = AtomicBool::new(false);
        let failed = AtomicBool::new(false);
        let halt = Halt { stop: &stop, failed: &failed };
        run_instance(&subscription, &config, &mut executor, &InstanceMetrics::default(), RunUntil::Idle, &halt)
            .unwrap();

        let expected = vec![
            Call::Fetch(vec![0, 1]),
            // Fetched ahead while [0, 1] is processed.
            Call::Fetch(vec![2, 3]),
            // Committed, and [4] fetched, while [2, 3] is processed.
            Call::Commit(acks(&input, 0..2)),
            Call::Fetch(vec![4]),
            // [4] is short: the batch before it commits, then [4] is processed and committed.
            Call::Commit(acks(&input, 2..4)),
            Call::Commit(acks(&input, 4..5)),
            Call::Fetch(vec![]),
        ];
        assert_eq!(subscription.calls.into_inner().unwrap(), expected);
    }

    #[test]
    fn each_system_exception_within_the_memory_doubles_the_rest_up_to_its_limits() {
        let mut cool_down = CoolDown::default();
        let start = Instant::now();
        let ran = Duration::from_millis(10);
        let mut factors = Vec::new();
        for failure in 0..9u64 {
            cool_down.failed(ran, start + Duration::from_secs(failure));
            let rest = cool_down.owed.take().unwrap();
            assert_eq!(rest.duration, ran * rest.factor);
            factors.push(rest.factor);
        }
        assert_eq!(factors, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        assert!(cool_down.owed.is_none(), "a rest is owed once");

        // Failures older than the memory no longer count.
        cool_down.failed(ran, start + Duration::from_secs(9) + Duration::from_millis(COOL_DOWN_MEMORY_MS));
        assert_eq!(cool_down.owed.map(|rest| rest.factor), Some(1));

        // However long the failed message ran, the rest has a ceiling.
        cool_down.failed(Duration::from_secs(3_600), start + Duration::from_secs(200));
        assert_eq!(cool_down.owed.map(|rest| rest.duration), Some(Duration::from_millis(MAX_COOL_DOWN_MS)));
    }

    /// An executor that rests for an hour.
    struct Resting;

    impl Executor for Resting {
        fn process_batch(&mut self, _batch: &Arc<[GuestMessage]>, _call: Range<usize>) -> Vec<Outcome> {
            Vec::new()
        }
        fn context(&mut self) -> &mut MessageContext {
            unreachable!("resting needs no context")
        }
        fn resting_until(&self) -> Option<Instant> {
            Some(Instant::now() + Duration::from_secs(3_600))
        }
    }

    #[test]
    fn a_stopped_instance_does_not_wait_out_its_rest() {
        let stop = AtomicBool::new(true);
        let failed = AtomicBool::new(false);
        let halt = Halt { stop: &stop, failed: &failed };
        // Returns at once; waiting out the hour would hang the test.
        halt.rest(&Resting);
    }
}
