//! A function's history: what each of its commits processed, kept with the commit's state
//! changes, so that the state a message saw can be read back (`functions replay`,
//! `querystate --as-of`) and a key's current value traced to the message that wrote it
//! (`querystate --why`).
//!
//! History reaches as far back as the engine keeps the commits: the embedded engine keeps them
//! in its log for as long as it keeps the input messages they processed, which the namespace's
//! retention decides.

use std::sync::Arc;

use super::broker::{BrokerError, Message};
use super::state::{Change, StateChanges, StateError, StateTable};
use crate::names::{Fqfn, TopicName};

/// What one commit of a function processed: each message the function finished and kept, in the
/// order it processed them, with the state changes each made.
///
/// Laid out flat (the topics once, every message's changes in one list), because a commit of
/// thousands of messages builds it on the pipeline's path.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchHistory {
    /// The instance that processed the batch.
    pub instance_id: u32,
    /// The SHA-256 of the component that processed it.
    pub code_digest: Arc<str>,
    /// The input topics of its messages, each once.
    pub topics: Vec<TopicName>,
    /// The messages, in processing order.
    pub messages: Vec<ProcessedMessage>,
    /// The messages' changes, one message's after another's: each key a message changed, with
    /// its change (one per key, composed in order).
    pub changes: Vec<MessageChange>,
}

/// One key a message changed, and how.
///
/// Most keys of a batch are changed by one of its messages only, whose change is then the
/// batch's: the history names it by its index in the batch's [`StateChanges`] instead of copying
/// it, which keeps history nearly free on the pipeline's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageChange {
    /// The key at this index of the commit's changes, which no other message of the batch changed.
    Sole(u32),
    /// A key other messages of the batch changed too, with this message's change to it.
    Own(String, Change),
}

/// One message a commit processed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessedMessage {
    /// The topic it came from: an index into [`BatchHistory::topics`].
    pub topic: u32,
    /// Its sequence there (its id is [`message_id`](super::broker::message_id) of it).
    pub sequence: u64,
    /// Where its changes end in [`BatchHistory::changes`]; they start where the previous
    /// message's end.
    pub changes_end: usize,
}

impl BatchHistory {
    /// The history of a batch processed by instance `instance_id` of the component `code_digest`.
    pub fn new(instance_id: u32, code_digest: Arc<str>) -> Self {
        Self { instance_id, code_digest, ..Self::default() }
    }

    /// Adds the next message, `message_id` of `topic`, with its `changes`.
    pub fn push(&mut self, topic: &str, message_id: &str, changes: impl IntoIterator<Item = MessageChange>) {
        let changes = changes.into_iter();
        // Only messages a broker delivered reach here: their topics' names parse, and so do
        // their ids, which are their sequences (`message_id`).
        let (Some(index), Ok(sequence)) = (self.topic_index(topic), message_id.parse::<u64>()) else {
            changes.for_each(drop);
            return;
        };
        self.changes.extend(changes);
        self.messages.push(ProcessedMessage { topic: index, sequence, changes_end: self.changes.len() });
    }

    /// The index of `topic` in [`BatchHistory::topics`], added if it is new; `None` for a name
    /// that does not parse.
    fn topic_index(&mut self, topic: &str) -> Option<u32> {
        // A batch's messages come from a few topics, in runs: the last is the likely one.
        if let Some(index) = self.topics.iter().rposition(|known| known.as_str() == topic) {
            return Some(index as u32);
        }
        self.topics.push(TopicName::parse(topic).ok()?);
        Some(self.topics.len() as u32 - 1)
    }

    /// Each message with the keys it changed and its changes to them, given `state`, the changes
    /// the batch committed (which [`MessageChange::Sole`] names).
    pub fn resolved<'a>(
        &'a self,
        state: &'a StateChanges,
    ) -> impl Iterator<Item = (&'a ProcessedMessage, impl Iterator<Item = (&'a str, &'a Change)>)> {
        let mut start = 0;
        self.messages.iter().map(move |message| {
            let end = message.changes_end.clamp(start, self.changes.len());
            let changes = self.changes[start..end].iter().filter_map(move |change| match change {
                MessageChange::Sole(index) => {
                    state.get_index(*index as usize).map(|(key, change)| (key.as_str(), change))
                }
                MessageChange::Own(key, change) => Some((key.as_str(), change)),
            });
            start = end;
            (message, changes)
        })
    }
}

/// A point in a function's history at which to read its state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryPoint {
    /// Just before the function processed this message.
    BeforeMessage {
        /// The message's topic.
        topic: TopicName,
        /// Its id.
        message_id: String,
    },
    /// As the commits made up to this time (milliseconds since the Unix epoch) left it.
    AtTime(u64),
}

/// Who wrote a key's value: a function's commit, or an operator's putstate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provenance {
    /// When the write committed (milliseconds since the Unix epoch).
    pub time: u64,
    /// The message whose processing wrote it; `None` for an operator's write.
    pub writer: Option<Writer>,
}

/// The message and code behind a function's write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Writer {
    /// The message's topic.
    pub topic: TopicName,
    /// Its id.
    pub message_id: String,
    /// The instance that processed it.
    pub instance_id: u32,
    /// The SHA-256 of the component that processed it.
    pub code_digest: String,
}

/// A function's state table as it was at a point of its history.
pub struct PastTable {
    /// Reads of the state at that point.
    pub table: Box<dyn StateTable>,
    /// Whether the function has processed the message the point names; when it has not, the
    /// table is its current state, which is what that message will see.
    pub processed: bool,
}

/// Why history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The topic never had a message with that id.
    #[error(
        "{topic} has no message with id `{message_id}`; the ids of its messages are shown by `fnhost topics examine-message` and `peek-messages`"
    )]
    UnknownMessage {
        /// The topic.
        topic: TopicName,
        /// The id asked for.
        message_id: String,
    },
    /// A range of messages that is empty, or longer than the caller's limit.
    #[error("{0}")]
    BadRange(String),
    /// What was asked for is older than the history the engine still keeps.
    #[error("{0}")]
    BeyondRetention(String),
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The state store failed.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The port to a function's history.
pub trait StateHistory: Send + Sync {
    /// The messages of `topic` from `first` to `last` (ids, both included), as the function
    /// received them; refused when there are more than `most`.
    fn messages(&self, topic: &TopicName, first: &str, last: &str, most: usize) -> Result<Vec<Message>, HistoryError>;

    /// `fqfn`'s state table as it was at `point`.
    fn past_table(&self, fqfn: &Fqfn, point: &HistoryPoint) -> Result<PastTable, HistoryError>;

    /// Who wrote the current value of `key` in `fqfn`'s table, if a commit the engine still keeps
    /// did; `None` when the value (or its removal) is older than the history kept.
    fn last_write(&self, fqfn: &Fqfn, key: &str) -> Result<Option<Provenance>, HistoryError>;
}
