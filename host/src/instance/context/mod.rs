//! The effect buffer behind [`HostContext`]: what one instance's function has done in the
//! current message and batch, kept until the message ends and handed to the commit as [`Effects`].

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::checks::{DEAD_LETTER_PROPERTIES, check_parts, cut, result_properties};
use super::history::HistoryBuffer;
use super::log::{LogBudget, LogSink, level_name, level_rank};
use super::pending::{PendingBatch, PendingOutput, Retired};
use super::trace::{MessageSpan, TracedOutcome};
use crate::engine::broker::{Acks, OutMessage};
use crate::engine::state::{KeyMap, StateChanges, StateError, StateTable, StateValue};
use crate::function::{FunctionConfig, SharedLogLevel};
use crate::limits::{MAX_LOG_LINE_LEN, MAX_PROPERTIES, MAX_PROPERTY_LEN, MAX_WORKER_LOG_LINES_PER_SECOND};
use crate::names::{Fqfn, TopicAccess, TopicName};
use crate::runtime::{GuestMessage, GuestReads, LogLevel, ProcessError};
use crate::telemetry::{TRACEPARENT, Tracing};

mod host;
mod state;

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
    /// The spans of `batch`'s sampled messages, by index, while tracing is on.
    spans: Vec<Option<MessageSpan>>,
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
        self.processed_spans.extend(self.spans.drain(..).flatten());
    }

    /// Starts the spans of `batch`'s messages that `tracing`'s sampler keeps, each delivered as
    /// often before as `redeliveries` says.
    pub(super) fn trace_batch(&mut self, tracing: &Tracing, batch: &[GuestMessage], redeliveries: &[u32]) {
        self.spans = batch
            .iter()
            .zip(redeliveries)
            .map(|(message, &redeliveries)| {
                MessageSpan::start(tracing, &self.fqfn, self.instance_id, message, redeliveries)
            })
            .collect();
    }

    /// Notes on message `index`'s span how it ended.
    pub(super) fn trace_outcome(&mut self, index: usize, outcome: TracedOutcome, tries: u32, elapsed: Duration) {
        if let Some(Some(span)) = self.spans.get_mut(index) {
            span.processed(outcome, tries, elapsed);
        }
    }

    /// The `traceparent` that what message `index` of the batch sends carries: its span's while
    /// tracing is on and it is sampled, else its own, so that a trace goes on through a worker
    /// that does not trace.
    fn traceparent(&self, index: usize) -> Option<String> {
        if let Some(traceparent) = self.spans.get(index).and_then(Option::as_ref).and_then(MessageSpan::traceparent) {
            return Some(traceparent);
        }
        let properties = &self.batch.get(index)?.properties;
        properties.iter().find(|(name, _)| name == TRACEPARENT).map(|(_, value)| value.clone())
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
                        let traceparent = self.traceparent(index);
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

    /// Adds a message to the batch's outputs.
    pub(super) fn stage_output(&mut self, topic: TopicName, message: OutMessage) {
        self.batch_outputs.push(PendingOutput::Ready(topic, message));
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

    /// Writes a line to the log, as the function's own logging does.
    pub fn write_log(&mut self, level: LogLevel, message: String) {
        if level_rank(level) < level_rank(self.log_level.get()) {
            return;
        }
        let message = cut(message, MAX_LOG_LINE_LEN, " [cut at MAX_LOG_LINE_LEN]");
        match &self.logs {
            // The live log keeps every line; the worker's log, which every tenant shares, a budget.
            LogSink::Worker(live) => {
                live.push(self.instance_id, level, &message);
                if let Some(left_out) = self.worker_log_budget.take(Instant::now()) {
                    if left_out > 0 {
                        let note = format!(
                            "{left_out} log lines of this instance were left out of the worker's log (MAX_WORKER_LOG_LINES_PER_SECOND is {MAX_WORKER_LOG_LINES_PER_SECOND}); its log topic, if it has one, has them all"
                        );
                        self.logs.write_line(LogLevel::Warn, &self.fqfn, self.instance_id, &note);
                    }
                    self.logs.write_line(level, &self.fqfn, self.instance_id, &message);
                }
            }
            logs => logs.write_line(level, &self.fqfn, self.instance_id, &message),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::KeyPage;
    use crate::engine::state::Versioned;
    use crate::runtime::{ContextError, HostContext};

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
