//! The effect buffer behind [`HostContext`]: what one instance's function has done in the
//! current message and batch, kept until the message ends and handed to the commit as [`Effects`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use super::checks::{DEAD_LETTER_PROPERTIES, check_key, check_message, check_parts, cut, result_properties};
use super::history::HistoryBuffer;
use super::log::{LogBudget, LogSink, level_name, level_rank};
use super::pending::{PendingBatch, PendingOutput, Retired};
use super::trace::{MessageSpan, TracedOutcome};
use crate::engine::broker::{Acks, OutMessage};
use crate::engine::state::{Change, KeyMap, KeyPage, KeyPageError, StateChanges, StateError, StateTable, StateValue};
use crate::function::{FunctionConfig, SharedLogLevel};
use crate::limits::{
    MAX_LOG_LINE_LEN, MAX_LOG_LINES_PER_MESSAGE, MAX_METRIC_NAME_LEN, MAX_METRICS_PER_INSTANCE, MAX_PROPERTIES,
    MAX_PROPERTY_LEN, MAX_PUBLISHES_PER_MESSAGE, MAX_STATE_TTL_MS, MAX_STATE_VALUE_SIZE,
    MAX_WORKER_LOG_LINES_PER_SECOND, MAX_WRITTEN_BYTES_PER_MESSAGE,
};
use crate::names::{Fqfn, TopicAccess, TopicName};
use crate::runtime::{ContextError, GuestMessage, GuestReads, HostContext, LogLevel, ProcessError};
use crate::telemetry::{TRACEPARENT, set_traceparent};

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
    log_level: SharedLogLevel,
    /// The time to live of a write that gives none, in milliseconds (`--state-ttl`).
    state_ttl_ms: Option<u64>,
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
    /// What the batch processed, for the function's history: kept when the context knows its
    /// code ([`MessageContext::keeping_history`]).
    history: Option<HistoryBuffer>,
    /// The spans of `batch`'s messages, by index, while tracing is on.
    spans: Vec<MessageSpan>,
    /// The spans of the messages processed since the last commit.
    processed_spans: Vec<MessageSpan>,
}

/// How one try of a message went, and how long it took.
#[derive(Debug)]
pub struct Outcome {
    /// Whether the function acknowledged the message, or why the message failed.
    pub result: Result<bool, ProcessError>,
    /// From the start of the message to its end.
    pub elapsed: Duration,
    /// Whether it read the clock or random numbers.
    pub reads: GuestReads,
}

impl MessageContext {
    /// The function this context is an instance of.
    pub(super) fn fqfn(&self) -> &Fqfn {
        &self.fqfn
    }

    /// Which instance of the function this context is.
    pub(super) fn instance_id(&self) -> u32 {
        self.instance_id
    }

    /// The flag a stop sets: it both ends the loop and interrupts the guest the loop is running.
    pub(super) fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// How the last message the function finished went.
    pub(super) fn last_outcome(&self) -> Option<&Outcome> {
        self.outcomes.last()
    }

    /// How each message of the last call went, in order; the context keeps none of them.
    pub(super) fn take_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.outcomes)
    }

    /// The user metrics recorded since they were last taken.
    pub(super) fn take_metrics(&mut self) -> BTreeMap<String, (u64, f64)> {
        std::mem::take(&mut self.metrics)
    }

    /// Frees what the context is done with now, rather than with the next commit: an idle
    /// instance has no commit coming.
    pub(super) fn free_retired(&mut self) {
        self.retired = Retired::default();
    }

    /// Writes out the log lines the sink buffers.
    pub(super) fn flush_logs(&mut self) {
        self.logs.flush();
    }

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
            log_level: config.log_level.clone(),
            state_ttl_ms: config.state_ttl.map(|ttl| ttl.as_millis() as u64),
            logs,
            metrics: BTreeMap::new(),
            host_failure: None,
            output: config.output.clone(),
            batch: Arc::new([]),
            call: 0..0,
            retired: Retired::default(),
            outcomes: Vec::new(),
            message_started: Instant::now(),
            history: None,
            spans: Vec::new(),
            processed_spans: Vec::new(),
        }
    }

    /// The same context, keeping with each commit what it processed (the function's history),
    /// as processed by the component with SHA-256 `code_digest`.
    pub fn keeping_history(mut self, code_digest: &str) -> Self {
        self.history = Some(HistoryBuffer::new(code_digest));
        self
    }

    /// Starts a call: the function finishes the messages of `batch` in `call`, in order, through
    /// [`MessageContext::end_message`].
    pub(super) fn begin_call(&mut self, batch: &Arc<[GuestMessage]>, call: Range<usize>) {
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
    pub(super) fn end_batch(&mut self) {
        self.retired._batches.push(std::mem::replace(&mut self.batch, Arc::new([])));
        self.call = 0..0;
        self.processed_spans.append(&mut self.spans);
    }

    /// Starts the spans of `batch`'s messages, each delivered as often before as `redeliveries`
    /// says, when tracing is on.
    pub(super) fn trace_batch(&mut self, batch: &[GuestMessage], redeliveries: &[u32]) {
        let Some(tracer) = crate::telemetry::tracer() else { return };
        self.spans = batch
            .iter()
            .zip(redeliveries)
            .map(|(message, &redeliveries)| {
                MessageSpan::start(tracer, &self.fqfn, self.instance_id, message, redeliveries)
            })
            .collect();
    }

    /// Notes on message `index`'s span how it ended.
    pub(super) fn trace_outcome(&mut self, index: usize, outcome: TracedOutcome, tries: u32, elapsed: Duration) {
        if let Some(span) = self.spans.get_mut(index) {
            span.processed(outcome, tries, elapsed);
        }
    }

    /// The `traceparent` that what message `index` of the batch sends carries: its span's while
    /// tracing is on, else its own, so that a trace goes on through a worker that does not trace.
    fn traceparent(&self, index: usize) -> Option<&str> {
        match self.spans.get(index) {
            Some(span) => span.traceparent(),
            None => self
                .batch
                .get(index)?
                .properties
                .iter()
                .find(|(name, _)| name == TRACEPARENT)
                .map(|(_, value)| value.as_str()),
        }
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
    pub(super) fn end_message(
        &mut self,
        result: Result<Option<Vec<u8>>, ProcessError>,
        now: Instant,
        reads: GuestReads,
    ) -> bool {
        if self.outcomes.len() >= self.call.len() {
            return false;
        }
        let index = self.call.start + self.outcomes.len();
        let origin = &self.batch[index];
        let result = match (result, self.host_failure.take()) {
            (_, Some(failure)) => Err(ProcessError::Host(failure)),
            (Ok(Some(value)), None) if self.output.is_some() => {
                let properties = result_properties(origin);
                match check_parts(value.len(), origin.key.as_deref(), properties.len(), properties) {
                    Ok(()) => {
                        let traceparent = self.traceparent(index).map(str::to_owned);
                        Ok(Some(PendingOutput::Result { value, batch: self.batch.clone(), index, traceparent }))
                    }
                    Err(limit) => Err(ProcessError::System(format!("the output was refused: {limit}"))),
                }
            }
            (Ok(Some(_)), None) => Ok(None),
            (Ok(None), None) => Ok(None),
            (Err(error), None) => Err(error),
        };
        let result = match result {
            Ok(output) => Ok(self.keep_message(output, Some(index))),
            Err(error) => {
                self.drop_message();
                Err(error)
            }
        };
        let go_on = result.is_ok();
        self.outcomes.push(Outcome { result, elapsed: now.saturating_duration_since(self.message_started), reads });
        self.begin_message(now);
        go_on && self.outcomes.len() < self.call.len()
    }

    /// Moves the current call's effects into the batch, with its output if it has one: those of
    /// the batch's message `index`, or of a call no message made (a window's); returns whether
    /// the function acknowledged the message.
    fn keep_message(&mut self, output: Option<PendingOutput>, index: Option<usize>) -> bool {
        match (&mut self.history, index) {
            (Some(history), Some(index)) => {
                history.kept(&self.batch, index, &mut self.batch_state, &mut self.message_state);
            }
            (Some(history), None) => history.absorbed(&mut self.batch_state, &mut self.message_state),
            (None, _) => self.batch_state.absorb(&mut self.message_state),
        }
        self.batch_outputs.append(&mut self.message_outputs);
        self.batch_outputs.extend(output);
        self.acked
    }

    /// True when the batch has effects not yet handed over for commit.
    pub(super) fn has_batch(&self) -> bool {
        !self.batch_state.is_empty() || !self.batch_outputs.is_empty()
    }

    /// Adds `message`, which failed with `reason`, to the batch's outputs on the dead-letter topic,
    /// with Pulsar's dead-letter properties and the reason.
    pub(super) fn dead_letter(&mut self, topic: &TopicName, message: &GuestMessage, reason: &str) {
        if let Some(history) = &mut self.history {
            history.dead_lettered(message);
        }
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
    pub(super) fn begin_window(&mut self) {
        self.begin_message(Instant::now());
    }

    /// Ends a window function's call with what it returned: on success its effects and its output
    /// join the batch, on failure they are dropped.
    pub(super) fn end_window(&mut self, result: Result<Option<Vec<u8>>, ProcessError>) -> Result<(), ProcessError> {
        let result = match (result, self.host_failure.take()) {
            (_, Some(failure)) => Err(ProcessError::Host(failure)),
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
                self.keep_message(output, None);
                Ok(())
            }
            Err(error) => {
                self.drop_message();
                Err(error)
            }
        }
    }

    /// Adds a host change to the batch (a window record stored or deleted), committed with it.
    pub(super) fn stage(&mut self, key: String, change: Change) {
        match &mut self.history {
            Some(history) => history.staged(&mut self.batch_state, key, change),
            None => self.batch_state.record(key, change),
        }
    }

    /// Adds a message to the batch's outputs.
    pub(super) fn stage_output(&mut self, topic: TopicName, message: OutMessage) {
        self.batch_outputs.push(PendingOutput::Ready(topic, message));
    }

    /// The bytes under `key` as the next commit will leave them.
    pub(super) fn read(&mut self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.current(key).map(|value| value.map(StateValue::into_bytes)).map_err(|_| {
            StateError::Storage(self.host_failure.take().unwrap_or_else(|| format!("cannot read `{key:?}`")))
        })
    }

    /// Hands the batch's effects over for commit, keeping its changes (shared with the commit) so
    /// that the next batch reads them while the commit runs. The previous commit must have finished.
    pub(super) fn take_batch(&mut self, acks: Acks) -> Result<PendingBatch, StateError> {
        self.in_flight_counters.clear();
        let outputs = self.batch_outputs.len();
        // The next batch likely changes as many keys: its map then grows without rehashing.
        let keys = self.batch_state.len();
        let changes = Arc::new(std::mem::replace(&mut self.batch_state, StateChanges::with_capacity(keys)));
        for (key, change) in changes.iter() {
            if change.is_add() {
                let counter = change.apply(self.state.get(key)?.map(|versioned| versioned.value));
                self.in_flight_counters.insert(key.clone(), counter);
            }
        }
        let committed = std::mem::replace(&mut self.in_flight, changes.clone());
        self.retired._changes = Some(committed);
        let history = self.history.as_mut().map(|history| history.take(self.instance_id));
        Ok(PendingBatch {
            acks,
            outputs: std::mem::replace(&mut self.batch_outputs, Vec::with_capacity(outputs)),
            output_topic: self.output.clone(),
            state: Some((self.fqfn.clone(), changes)),
            history,
            retired: std::mem::take(&mut self.retired),
            spans: std::mem::take(&mut self.processed_spans),
        })
    }

    /// The value of `key` as this message sees it: its own changes, then the batch's, then the store.
    fn current(&mut self, key: &str) -> Result<Option<StateValue>, ContextError> {
        let message = self.message_state.get(key);
        if let Some(change) = message
            && !change.is_add()
        {
            return Ok(change.apply(None));
        }
        let base = match self.batch_state.get(key) {
            Some(change) if !change.is_add() => change.apply(None),
            batch => {
                let committed = match self.in_flight.get(key) {
                    Some(Change::Add(..)) => self.in_flight_counters.get(key).cloned().flatten(),
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

    /// Stores `value` under `key`, to live `ttl_ms` from the commit when given.
    fn put(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), ContextError> {
        check_key(&key)?;
        if value.len() > MAX_STATE_VALUE_SIZE {
            return Err(ContextError::LimitExceeded(format!(
                "state value is {} bytes; the limit (MAX_STATE_VALUE_SIZE) is {MAX_STATE_VALUE_SIZE}",
                value.len()
            )));
        }
        self.spend(key.len() + value.len())?;
        self.message_state.record(key, Change::Put(value, ttl_ms));
        Ok(())
    }

    /// The page as this message sees it: the committed keys under the changes not yet committed
    /// (the batch being committed, this batch's, this message's), newest last.
    fn list(&mut self, page: &KeyPage) -> Result<Vec<String>, ContextError> {
        let mut pending: BTreeMap<&str, bool> = BTreeMap::new();
        for changes in [&*self.in_flight, &self.batch_state, &self.message_state] {
            for (key, change) in changes.iter().filter(|(key, _)| page.holds(key)) {
                pending.insert(key, !matches!(change, Change::Delete));
            }
        }
        // A pending removal may hide a committed key: ask for one more key per removal.
        let removed = pending.values().filter(|exists| !**exists).count();
        let committed_page = KeyPage { limit: page.limit + removed, ..page.clone() };
        let committed = match self.state.list(&committed_page) {
            Ok(keys) => keys,
            Err(error) => return Err(self.fail_host(error.to_string())),
        };
        let mut keys: Vec<String> =
            committed.into_iter().filter(|key| pending.get(key.as_str()).is_none_or(|exists| *exists)).collect();
        keys.extend(pending.iter().filter(|(_, exists)| **exists).map(|(key, _)| (*key).to_owned()));
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(page.limit);
        Ok(keys)
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

    /// Records a host failure: the message fails as the host's failure whatever the function does next.
    fn fail_host(&mut self, reason: String) -> ContextError {
        self.host_failure = Some(reason.clone());
        ContextError::HostFailure(reason)
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
        if level_rank(level) < level_rank(self.log_level.get()) {
            return;
        }
        let message = cut(message, MAX_LOG_LINE_LEN, " [cut at MAX_LOG_LINE_LEN]");
        if let LogSink::Worker(live) = &self.logs {
            live.push(self.instance_id, level, &message);
        }
        if !matches!(self.logs, LogSink::Worker(_)) {
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

impl HostContext for MessageContext {
    fn min_log_level(&mut self) -> LogLevel {
        self.log_level.get()
    }

    fn finish_message(
        &mut self,
        result: Result<Option<Vec<u8>>, ProcessError>,
        finished_at: Instant,
        reads: GuestReads,
    ) -> bool {
        // A stopped instance takes no further message of the call; they come again.
        self.end_message(result, finished_at, reads) && !self.stop_requested()
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
        self.put(key, value, self.state_ttl_ms)
    }

    fn put_state_ttl(&mut self, key: String, value: Vec<u8>, ttl_ms: u64) -> Result<(), ContextError> {
        if !(1..=MAX_STATE_TTL_MS).contains(&ttl_ms) {
            return Err(ContextError::InvalidArgument(format!(
                "a time to live of {ttl_ms} ms is out of range: give from 1 ms to {MAX_STATE_TTL_MS} ms, ten years (MAX_STATE_TTL_MS)"
            )));
        }
        self.put(key, value, Some(ttl_ms))
    }

    fn list_state_keys(
        &mut self,
        prefix: String,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<String>, ContextError> {
        let page = KeyPage::new(prefix, after, limit as usize).map_err(|error| match error {
            KeyPageError::LimitExceeded(reason) => ContextError::LimitExceeded(reason),
            KeyPageError::Invalid(reason) => ContextError::InvalidArgument(reason),
        })?;
        self.list(&page)
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
        self.message_state.record(key, Change::Add(amount, self.state_ttl_ms));
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
        let mut message = OutMessage { value, key, properties, event_time: None };
        check_message(&message).map_err(ContextError::LimitExceeded)?;
        // The host's own property, past the guest's MAX_PROPERTIES, as a result's are.
        if let Some(traceparent) = self.traceparent(self.call.start + self.outcomes.len()) {
            set_traceparent(&mut message.properties, traceparent.to_owned());
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::Versioned;

    /// A state table whose storage has failed.
    struct FailedStorage;

    impl StateTable for FailedStorage {
        fn get(&self, _key: &str) -> Result<Option<Versioned>, StateError> {
            Err(StateError::Storage("the disk is gone".into()))
        }

        fn list(&self, _page: &KeyPage) -> Result<Vec<String>, StateError> {
            Err(StateError::Storage("the disk is gone".into()))
        }
    }

    /// A storage failure reaches the function as `host-failure`, not as a refusal it caused, and
    /// the call fails as the host's failure even when the function handles the error and returns.
    #[test]
    fn a_storage_failure_is_a_host_failure_and_fails_the_call_whatever_the_function_returns() {
        let config = FunctionConfig::new(Fqfn::parse("a/b/c").unwrap(), vec![TopicName::parse("in").unwrap()]);
        let mut context = MessageContext::new(&config, 0, Box::new(FailedStorage), LogSink::default());
        context.begin_window();
        match context.get_state("k".into()) {
            Err(ContextError::HostFailure(reason)) => assert!(reason.contains("the disk is gone"), "{reason}"),
            other => panic!("expected a host failure, got {other:?}"),
        }
        match context.end_window(Ok(None)) {
            Err(ProcessError::Host(reason)) => assert!(reason.contains("the disk is gone"), "{reason}"),
            other => panic!("expected a host failure, got {other:?}"),
        }
        // The next call starts clean.
        context.begin_window();
        assert!(context.end_window(Ok(None)).is_ok());
    }
}
