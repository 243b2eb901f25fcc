//! Replay: runs input messages through a function again, against its state as it was just before
//! the first of them (read from the engine's history), and reports what each would do, committing
//! nothing. Each message of a range sees the state changes the replay made for the ones before it.

use std::sync::{Arc, Mutex};

use super::context::MessageContext;
use super::executor::{Executor, WasmExecutor};
use super::log::LogSink;
use super::pending::ReplayedEffects;
use super::pipeline::to_guest;
use crate::engine::broker::{Acks, Message, OutMessage};
use crate::engine::history::{HistoryError, HistoryPoint, StateHistory};
use crate::engine::state::{KeyMap, KeyPage, StateError, StateTable, StateValue, Versioned};
use crate::function::FunctionConfig;
use crate::limits::{MAX_REPLAY_ANSWER_BYTES, MAX_REPLAY_MESSAGES};
use crate::names::TopicName;
use crate::runtime::{GuestMessage, GuestReads, LogLevel, PreparedFunction, ProcessError};

/// Why a replay could not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The history could not give the messages or the state.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The replay's state reads failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The request was wrong: no messages, too many, or a component of the wrong kind.
    #[error("{0}")]
    Refused(String),
    /// The function could not start.
    #[error("the function could not start for the replay: {0}")]
    Start(ProcessError),
}

/// What a replayed message would do.
#[derive(Debug)]
pub struct ReplayedMessage {
    /// Its topic.
    pub topic: TopicName,
    /// Its id.
    pub message_id: String,
    /// What it returned for the output topic (when the function has one).
    pub output: Option<Vec<u8>>,
    /// The messages it published, each with its topic.
    pub published: Vec<(TopicName, OutMessage)>,
    /// Its log lines, at or above the function's log level.
    pub logs: Vec<(LogLevel, String)>,
    /// Each key it changed, with the value before and after.
    pub state: Vec<StateDiff>,
    /// The exception it raised; its output, publishes and state changes are then dropped.
    pub exception: Option<ProcessError>,
    /// Whether it read the clock or random numbers: unless the function is deterministic, its
    /// first run may have read other values, and done otherwise.
    pub reads: GuestReads,
}

/// One key's change in a replay.
#[derive(Debug, PartialEq, Eq)]
pub struct StateDiff {
    /// The key.
    pub key: String,
    /// Its value before the message.
    pub before: Option<StateValue>,
    /// Its value after (`None`: deleted).
    pub after: Option<StateValue>,
}

/// A replay's results.
#[derive(Debug)]
pub struct Replay {
    /// Whether the function had processed the first message: when it had not, the replay ran on
    /// its current state, which is what that message will see.
    pub first_processed: bool,
    /// Each message's results, in order.
    pub messages: Vec<ReplayedMessage>,
    /// Whether the function is deterministic (its clocks and random numbers depend on the
    /// message alone), so that the replay read what the first run read.
    pub deterministic: bool,
}

/// The state a replay reads: its own changes over the function's past state.
struct ReplayState {
    past: Box<dyn StateTable>,
    changes: KeyMap<Option<Versioned>>,
}

impl ReplayState {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        match self.changes.get(key) {
            Some(changed) => Ok(changed.clone()),
            None => self.past.get(key),
        }
    }
}

/// [`ReplayState`] as the replay's context reads it, shared with the replay, which adds each
/// message's changes.
struct ReplayTable(Arc<Mutex<ReplayState>>);

impl ReplayTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, ReplayState> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl StateTable for ReplayTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        self.lock().get(key)
    }

    fn list(&self, page: &KeyPage) -> Result<Vec<String>, StateError> {
        self.lock().past.list(page)
    }
}

/// Replays `messages` (in order; at most [`MAX_REPLAY_MESSAGES`]) through `function` (the
/// component with digest `digest`) under `config`, on the state `history` had just before the first.
pub fn replay(
    config: &FunctionConfig,
    function: PreparedFunction<MessageContext>,
    digest: &str,
    history: &dyn StateHistory,
    messages: Vec<Message>,
) -> Result<Replay, ReplayError> {
    let Some(first) = messages.first() else {
        return Err(ReplayError::Refused("nothing to replay: name a message".into()));
    };
    if messages.len() > MAX_REPLAY_MESSAGES {
        return Err(ReplayError::Refused(format!(
            "{} messages to replay; the limit (MAX_REPLAY_MESSAGES) is {MAX_REPLAY_MESSAGES}: replay a shorter range",
            messages.len()
        )));
    }
    config.check_kind(function.kind()).map_err(ReplayError::Refused)?;
    let point = HistoryPoint::BeforeMessage { topic: first.topic.clone(), message_id: first.id() };
    let past = history.past_table(&config.fqfn, &point)?;
    let state = ReplayTable(Arc::new(Mutex::new(ReplayState { past: past.table, changes: KeyMap::default() })));
    let table = ReplayTable(state.0.clone());
    // Log lines come back with the results rather than going to the log topic.
    let mut config = config.clone();
    config.log_topic = None;
    let lines: Arc<Mutex<Vec<(LogLevel, String)>>> = Arc::default();
    let context = MessageContext::new(&config, 0, Box::new(table), LogSink::Capture(lines.clone()));
    let details = Arc::new(config.details(digest, 0, 1));
    let mut executor = WasmExecutor::start(function, details, config.limits, context).map_err(ReplayError::Start)?;

    let mut results = Vec::with_capacity(messages.len());
    let mut answer_bytes = 0;
    for message in messages {
        let (topic, message_id) = (message.topic.clone(), message.id());
        let guest: Arc<[GuestMessage]> = Arc::new([to_guest(&message.topic, message.sequence, message.body)]);
        let outcome = executor.process_batch(&guest, 0..1).pop();
        let reads = outcome.as_ref().map(|outcome| outcome.reads).unwrap_or_default();
        let context = executor.context();
        context.end_batch();
        context.flush_logs();
        let batch = context.take_batch(Acks::default())?;
        let ReplayedEffects { result: output, published, changes } = batch.into_replayed();
        let exception = match outcome.map(|outcome| outcome.result) {
            Some(Ok(_)) => None,
            Some(Err(error)) => Some(error),
            None => Some(ProcessError::System("the function returned without finishing the message".into())),
        };
        let mut diffs = Vec::new();
        if let Some(changes) = changes {
            let mut state = state.lock();
            for (key, change) in changes.iter() {
                let before = state.get(key)?.map(|versioned| versioned.value);
                let after = change.apply(before.clone());
                state.changes.insert(key.clone(), after.clone().map(|value| Versioned::lasting(value, 0)));
                diffs.push(StateDiff { key: key.clone(), before, after });
            }
        }
        diffs.sort_by(|a, b| a.key.cmp(&b.key));
        let logs = std::mem::take(&mut *lines.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        let value_bytes =
            |value: &Option<StateValue>| value.as_ref().map_or(0, |value| value.clone().into_bytes().len());
        answer_bytes += output.as_ref().map_or(0, Vec::len)
            + published.iter().map(|(_, message)| message.value.len()).sum::<usize>()
            + logs.iter().map(|(_, line)| line.len()).sum::<usize>()
            + diffs
                .iter()
                .map(|diff| diff.key.len() + value_bytes(&diff.before) + value_bytes(&diff.after))
                .sum::<usize>();
        if answer_bytes > MAX_REPLAY_ANSWER_BYTES {
            return Err(ReplayError::Refused(format!(
                "the replay's results pass {MAX_REPLAY_ANSWER_BYTES} bytes (MAX_REPLAY_ANSWER_BYTES) at message {message_id} of {topic}: replay a shorter range"
            )));
        }
        results.push(ReplayedMessage { topic, message_id, output, published, logs, state: diffs, exception, reads });
    }
    Ok(Replay { first_processed: past.processed, messages: results, deterministic: config.deterministic })
}
