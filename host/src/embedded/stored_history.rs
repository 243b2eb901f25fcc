//! How the embedded engine stores a commit's history in its state step: [`StoredHistory`], read
//! by `history` (the reading layer), by recovery and by the cleaner (its input topics first).
//!
//! A batch's messages name the keys they alone changed by index in the step's record
//! ([`MessageChange::Sole`]); histories written before that ([`ListedBatch`]) still read.

use std::collections::HashSet;

use bincode::{Decode, Encode};

use super::state::Record;
use crate::engine::broker::BrokerError;
use crate::engine::history::{BatchHistory, HistoryError, MessageChange};
use crate::engine::state::{Change, Versioned};
use crate::names::TopicName;

/// A commit's history as its step stores it (written as [`HistoryToStore`]).
#[derive(Decode)]
pub(super) struct StoredHistory {
    /// The input topics of the batch's messages, each named once (first, so that recovery reads
    /// them without the rest).
    topics: Vec<String>,
    /// When the step committed (milliseconds since the Unix epoch).
    pub(super) time: u64,
    /// Each key of the step's record with its value before the step, in the record's order.
    pub(super) before: Vec<Option<Versioned>>,
    /// Who made the changes.
    source: StoredSource,
}

/// The part of [`StoredHistory`] that recovery reads.
#[derive(Decode)]
pub(super) struct HistoryTopics {
    pub(super) topics: Vec<String>,
}

/// The part of [`StoredHistory`] before its source: what reading the state at an earlier point
/// needs of every later step.
#[derive(Decode)]
pub(super) struct HistoryHead {
    _topics: Vec<String>,
    pub(super) time: u64,
    pub(super) before: Vec<Option<Versioned>>,
}

/// Who made a step's changes.
enum StoredSource {
    /// An operator's putstate.
    Operator,
    /// A function's batch.
    Batch(StoredBatch),
}

// How a [`StoredSource`] is tagged: the first two as the `Option` of a [`ListedBatch`] that fnhost
// wrote before the third existed, so that those histories still read.
const OPERATOR_SOURCE: u32 = 0;
const LISTED_SOURCE: u32 = 1;
const INDEXED_SOURCE: u32 = 2;

impl<Context> Decode<Context> for StoredSource {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        match u32::decode(decoder)? {
            OPERATOR_SOURCE => Ok(Self::Operator),
            LISTED_SOURCE => Ok(Self::Batch(ListedBatch::decode(decoder)?.into())),
            INDEXED_SOURCE => Ok(Self::Batch(StoredBatch::decode(decoder)?)),
            found => Err(bincode::error::DecodeError::UnexpectedVariant {
                type_name: "StoredSource",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: OPERATOR_SOURCE, max: INDEXED_SOURCE },
                found,
            }),
        }
    }
}

bincode::impl_borrow_decode!(StoredSource);

/// A batch as fnhost wrote it before [`MessageChange::Sole`]: every message's changes written out.
#[derive(Decode)]
struct ListedBatch {
    instance_id: u32,
    code_digest: String,
    messages: Vec<ListedMessage>,
    changes: Vec<(String, Change)>,
}

#[derive(Decode)]
struct ListedMessage {
    topic: u32,
    message_id: String,
    changes_end: u64,
}

#[derive(Decode)]
pub(super) struct StoredBatch {
    pub(super) instance_id: u32,
    pub(super) code_digest: String,
    messages: Vec<StoredMessage>,
    /// The messages' changes, one message's after another's.
    changes: Vec<MessageChange>,
}

impl From<ListedBatch> for StoredBatch {
    fn from(listed: ListedBatch) -> Self {
        let ListedBatch { instance_id, code_digest, messages, changes } = listed;
        let messages = messages
            .into_iter()
            .map(|ListedMessage { topic, message_id, changes_end }| StoredMessage {
                topic,
                // Every id written was a sequence; one that is not names no message.
                sequence: message_id.parse().unwrap_or(u64::MAX),
                changes_end,
            })
            .collect();
        let changes = changes.into_iter().map(|(key, change)| MessageChange::Own(key, change)).collect();
        Self { instance_id, code_digest, messages, changes }
    }
}

#[derive(Decode)]
struct StoredMessage {
    /// Its index in [`StoredHistory::topics`].
    topic: u32,
    /// Its sequence in its topic.
    sequence: u64,
    /// Where its changes end in [`StoredBatch::changes`].
    changes_end: u64,
}

/// [`StoredHistory`] borrowed from what it is made of, encoded the same way: a commit writes it
/// without copying its batch's changes.
#[derive(Encode)]
struct HistoryToStore<'a> {
    topics: Vec<&'a str>,
    time: u64,
    before: &'a [Option<Versioned>],
    source: SourceToStore<'a>,
}

/// [`StoredSource`] as a commit writes it (a batch always indexed).
enum SourceToStore<'a> {
    Operator,
    Indexed(BatchToStore<'a>),
}

impl Encode for SourceToStore<'_> {
    fn encode<E: bincode::enc::Encoder>(&self, encoder: &mut E) -> Result<(), bincode::error::EncodeError> {
        match self {
            Self::Operator => OPERATOR_SOURCE.encode(encoder),
            Self::Indexed(batch) => {
                INDEXED_SOURCE.encode(encoder)?;
                batch.encode(encoder)
            }
        }
    }
}

#[derive(Encode)]
struct BatchToStore<'a> {
    instance_id: u32,
    code_digest: &'a str,
    messages: Vec<MessageToStore>,
    changes: &'a [MessageChange],
}

#[derive(Encode)]
struct MessageToStore {
    topic: u32,
    sequence: u64,
    changes_end: u64,
}

/// What a message did to one key: the change it made, or (when it alone changed the key in its
/// batch) the value the step left.
pub(super) enum Changed<'a> {
    By(&'a Change),
    To(&'a Option<Versioned>),
}

/// A message of a stored batch: its topic, its id and its changes.
pub(super) struct StoredView<'a> {
    pub(super) topic: &'a str,
    pub(super) sequence: u64,
    changes: &'a [MessageChange],
}

impl StoredView<'_> {
    /// The message's changes, the keys it alone changed read from the step's `record`.
    pub(super) fn changes<'a>(&'a self, record: &'a Record) -> impl Iterator<Item = (&'a str, Changed<'a>)> {
        self.changes.iter().filter_map(|change| match change {
            MessageChange::Own(key, change) => Some((key.as_str(), Changed::By(change))),
            MessageChange::Sole(index) => {
                record.get(*index as usize).map(|(key, value)| (key.as_str(), Changed::To(value)))
            }
        })
    }
}

impl StoredHistory {
    /// The history of a step committed at `time`, whose record's keys had the values `before`,
    /// made by `batch` (`None`: an operator's write).
    pub(super) fn encode(time: u64, before: &[Option<Versioned>], batch: Option<&BatchHistory>) -> Vec<u8> {
        let topics = batch.map_or_else(Vec::new, |batch| batch.topics.iter().map(TopicName::as_str).collect());
        let source = batch.map_or(SourceToStore::Operator, |batch| {
            SourceToStore::Indexed(BatchToStore {
                instance_id: batch.instance_id,
                code_digest: &batch.code_digest,
                messages: batch
                    .messages
                    .iter()
                    .map(|message| MessageToStore {
                        topic: message.topic,
                        sequence: message.sequence,
                        changes_end: message.changes_end as u64,
                    })
                    .collect(),
                changes: &batch.changes,
            })
        });
        crate::codec::encode(&HistoryToStore { topics, time, before, source })
    }

    /// The batch that made the changes; `None` for an operator's write.
    pub(super) fn batch(&self) -> Option<&StoredBatch> {
        match &self.source {
            StoredSource::Batch(batch) => Some(batch),
            StoredSource::Operator => None,
        }
    }

    /// The batch's messages, in processing order.
    pub(super) fn messages(&self) -> impl Iterator<Item = StoredView<'_>> {
        let topics = &self.topics;
        self.batch().into_iter().flat_map(move |batch| {
            let mut start = 0;
            batch.messages.iter().map(move |message| {
                let end = (message.changes_end as usize).clamp(start, batch.changes.len());
                let changes = &batch.changes[start..end];
                start = end;
                StoredView {
                    topic: topics.get(message.topic as usize).map_or("", String::as_str),
                    sequence: message.sequence,
                    changes,
                }
            })
        })
    }
}

/// A stored history that does not decode: the log record is damaged.
fn undecodable(reason: impl std::fmt::Display) -> HistoryError {
    HistoryError::Broker(BrokerError::Storage(format!(
        "a commit's history in the log cannot be decoded ({reason}); restore the data directory from a backup"
    )))
}

/// The head of a stored history.
pub(super) fn head(history: &[u8]) -> Result<HistoryHead, HistoryError> {
    crate::codec::decode(history).map_err(undecodable)
}

/// A stored history, whole.
pub(super) fn whole(history: &[u8]) -> Result<StoredHistory, HistoryError> {
    crate::codec::decode(history).map_err(undecodable)
}

/// The input topics named by a stored history, for the cleaner (see [`StoredHistory`]).
pub(super) fn input_topics(history: &[u8]) -> HashSet<String> {
    crate::codec::decode::<HistoryTopics>(history).map(|head| head.topics.into_iter().collect()).unwrap_or_default()
}
