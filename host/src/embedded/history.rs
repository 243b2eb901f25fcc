//! The embedded engine's history of each function: a commit's state step carries, beside its
//! record of final values, a [`StoredHistory`]: each changed key's value before the commit, and
//! what each message of the batch changed. Reading it back scans the log from the point asked for.
//!
//! The state at a point is the current state with, for every key a later step changed, the value
//! before the first such step: so it needs the steps from that point on, which the cleaner keeps
//! while it keeps the input messages of a function that keeps history (`Inner::history_inputs`).

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use bincode::{Decode, Encode};

use super::journal::{StateStep, for_each_step, unreadable};
use super::state::{EmbeddedTable, FunctionTable, Record};
use super::{EmbeddedStore, lock};
use crate::engine::broker::{BrokerError, Message, message_id};
use crate::engine::history::{
    BatchHistory, HistoryError, HistoryPoint, MessageChange, PastTable, Provenance, StateHistory, Writer,
};
use crate::engine::state::{Change, KeyMap, StateError, StateTable, Versioned};
use crate::names::{Fqfn, TopicName};

/// A commit's history as its step stores it (written as [`HistoryToStore`]).
#[derive(Decode)]
pub(super) struct StoredHistory {
    /// The input topics of the batch's messages, each named once (first, so that recovery reads
    /// them without the rest).
    topics: Vec<String>,
    /// When the step committed (milliseconds since the Unix epoch).
    time: u64,
    /// Each key of the step's record with its value before the step, in the record's order.
    before: Vec<Option<Versioned>>,
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
struct HistoryHead {
    _topics: Vec<String>,
    time: u64,
    before: Vec<Option<Versioned>>,
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
struct StoredBatch {
    instance_id: u32,
    code_digest: String,
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
enum Changed<'a> {
    By(&'a Change),
    To(&'a Option<Versioned>),
}

/// A message of a stored batch: its topic, its id and its changes.
struct StoredView<'a> {
    topic: &'a str,
    sequence: u64,
    changes: &'a [MessageChange],
}

impl StoredView<'_> {
    /// The message's changes, the keys it alone changed read from the step's `record`.
    fn changes<'a>(&'a self, record: &'a Record) -> impl Iterator<Item = (&'a str, Changed<'a>)> {
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

    fn batch(&self) -> Option<&StoredBatch> {
        match &self.source {
            StoredSource::Batch(batch) => Some(batch),
            StoredSource::Operator => None,
        }
    }

    /// The batch's messages, in processing order.
    fn messages(&self) -> impl Iterator<Item = StoredView<'_>> {
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

/// One state step of a function, as history reads it.
enum Entry {
    /// A step with history: its record, and its history as stored, decoded as far as the reader
    /// needs ([`head`], [`whole`]).
    Recorded(Record, Vec<u8>),
    /// A step of an fnhost that kept no history: its final values only.
    Unrecorded(Record),
    /// The function's table was deleted.
    Dropped,
}

/// A stored history that does not decode: the log record is damaged.
fn undecodable(reason: impl std::fmt::Display) -> HistoryError {
    HistoryError::Broker(BrokerError::Storage(format!(
        "a commit's history in the log cannot be decoded ({reason}); restore the data directory from a backup"
    )))
}

/// The head of a stored history.
fn head(history: &[u8]) -> Result<HistoryHead, HistoryError> {
    crate::codec::decode(history).map_err(undecodable)
}

/// A stored history, whole.
fn whole(history: &[u8]) -> Result<StoredHistory, HistoryError> {
    crate::codec::decode(history).map_err(undecodable)
}

impl EmbeddedStore {
    /// Visits the state steps of `fqfn` in the log from record `from` on, with the ids of their
    /// records, until `visit` says to stop; returns where the next scan should start.
    fn scan_history(
        &self,
        fqfn: &Fqfn,
        from: u64,
        mut visit: impl FnMut(Range<u64>, Entry) -> Result<bool, HistoryError>,
    ) -> Result<u64, HistoryError> {
        let name = fqfn.to_string();
        for_each_step(&self.inner.log, from, |ids, step| {
            let corrupt = |reason: bincode::error::DecodeError| unreadable(ids.start, reason);
            let entry = match step.state {
                Some(StateStep::Recorded { fqfn, record, history }) if fqfn == name => {
                    Entry::Recorded(crate::codec::decode(&record).map_err(corrupt)?, history)
                }
                Some(StateStep::Changes { fqfn, record }) if fqfn == name => {
                    Entry::Unrecorded(crate::codec::decode(&record).map_err(corrupt)?)
                }
                Some(StateStep::Dropped { fqfn }) if fqfn == name => Entry::Dropped,
                _ => return Ok(true),
            };
            visit(ids, entry)
        })
    }

    /// Refuses when a segment after record `from` was removed: the history from there is incomplete.
    fn check_complete_from(&self, from: u64, what: &dyn Fn() -> String) -> Result<(), HistoryError> {
        let segments = self.inner.log.segment_ids();
        let from_first = segments.iter().skip_while(|ids| ids.end <= from).collect::<Vec<_>>();
        let whole = from_first.first().is_some_and(|ids| ids.start <= from)
            && from_first.windows(2).all(|pair| pair[0].end == pair[1].start);
        match whole {
            true => Ok(()),
            false => Err(beyond_retention(&what())),
        }
    }

    /// The log id of the step that appended message `sequence` of `topic`, if it is still kept.
    fn append_id(&self, topic: &TopicName, sequence: u64) -> Result<u64, HistoryError> {
        let unknown = || HistoryError::UnknownMessage { topic: topic.clone(), message_id: sequence.to_string() };
        let Some(kept) = lock(&self.inner.topics).get(topic).cloned() else { return Err(unknown()) };
        if sequence >= kept.length.load(std::sync::atomic::Ordering::Acquire) {
            return Err(unknown());
        }
        kept.log_id_of(sequence).ok_or_else(|| {
            beyond_retention(&format!("message {sequence} of {topic} is no longer kept, nor the commits after it"))
        })
    }
}

fn beyond_retention(what: &str) -> HistoryError {
    HistoryError::BeyondRetention(format!(
        "{what}: the log keeps a function's history only as long as it keeps the function's input messages, and freed it; set a longer retention on the input topic's namespace (`fnhost namespaces set-retention --time …`) to replay further back"
    ))
}

fn unrecorded() -> HistoryError {
    HistoryError::BeyondRetention(
        "a commit after that point was written by an fnhost that kept no history, so the state before it is not known"
            .into(),
    )
}

/// The state at a point of a function's history, kept up to date with the log as it grows.
#[derive(Default)]
struct Past {
    /// For each key changed since the point, its value then.
    before: KeyMap<Option<Versioned>>,
    /// Where the scan goes on.
    next: u64,
}

impl Past {
    /// Notes the values before a later step of the function.
    fn later(&mut self, entry: Entry) -> Result<(), HistoryError> {
        match entry {
            Entry::Recorded(record, history) => {
                for ((key, _), before) in record.into_iter().zip(head(&history)?.before) {
                    self.before.entry(key).or_insert(before);
                }
                Ok(())
            }
            Entry::Unrecorded(record) if record.iter().all(|(key, _)| self.before.contains_key(key)) => Ok(()),
            Entry::Unrecorded(_) => Err(unrecorded()),
            Entry::Dropped => Err(HistoryError::BeyondRetention(
                "the function's state was deleted after that point (the function was deleted and made again)".into(),
            )),
        }
    }
}

/// A function's table as it was at a point of its history.
struct PastEmbeddedTable {
    store: EmbeddedStore,
    fqfn: Fqfn,
    current: Arc<FunctionTable>,
    past: Mutex<Past>,
}

impl StateTable for PastEmbeddedTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let current = EmbeddedTable(self.current.clone()).get(key)?;
        // A step made durable before that read is in the log by now: read it, so that a key the
        // read saw changed is known to have changed.
        let mut past = lock(&self.past);
        let from = past.next;
        let next = self
            .store
            .scan_history(&self.fqfn, from, |_, entry| past.later(entry).map(|()| true))
            .map_err(|error| StateError::Storage(error.to_string()))?;
        past.next = next;
        Ok(match past.before.get(key) {
            Some(before) => before.clone(),
            None => current,
        })
    }
}

impl StateHistory for EmbeddedStore {
    fn messages(&self, topic: &TopicName, first: &str, last: &str, most: usize) -> Result<Vec<Message>, HistoryError> {
        let sequence = |id: &str| {
            id.parse::<u64>()
                .map_err(|_| HistoryError::UnknownMessage { topic: topic.clone(), message_id: id.to_owned() })
        };
        let (start, end) = (sequence(first)?, sequence(last)?);
        if end < start {
            return Err(HistoryError::BadRange(format!(
                "message {last} comes before {first}: give the earlier one first"
            )));
        }
        if end - start >= most as u64 {
            return Err(HistoryError::BadRange(format!(
                "{first}..{last} is {} messages; at most {most} are replayed at once",
                end - start + 1
            )));
        }
        self.append_id(topic, start)?;
        self.append_id(topic, end)?;
        let Some(kept) = lock(&self.inner.topics).get(topic).cloned() else { return Ok(Vec::new()) };
        let sequences: Vec<u64> = (start..=end).collect();
        let found = kept.read_at(&sequences)?;
        if found.len() != sequences.len() {
            return Err(beyond_retention(&format!("messages {first}..{last} of {topic} are no longer all kept")));
        }
        Ok(found
            .into_iter()
            .map(|(sequence, body)| Message { topic: topic.clone(), sequence, body, redelivery_count: 0 })
            .collect())
    }

    fn past_table(&self, fqfn: &Fqfn, point: &HistoryPoint) -> Result<PastTable, HistoryError> {
        let current = self.state_table(fqfn).map_err(|error| StateError::Storage(error.to_string()))?;
        let (from, found, processed) = match point {
            HistoryPoint::BeforeMessage { topic, message_id } => {
                let unknown = || HistoryError::UnknownMessage { topic: topic.clone(), message_id: message_id.clone() };
                let sequence: u64 = message_id.parse().map_err(|_| unknown())?;
                let appended = self.append_id(topic, sequence)?;
                self.check_complete_from(appended, &|| format!("the commits after message {message_id} of {topic}"))?;
                let mut found: Option<Past> = None;
                let next = self.scan_history(fqfn, appended, |ids, entry| {
                    if let Some(past) = &mut found {
                        // Only the values before each later step are needed: its head.
                        past.later(entry)?;
                        return Ok(true);
                    }
                    if let Entry::Recorded(record, history) = &entry {
                        let history = whole(history)?;
                        // The first time the function processed it. (A cursor moved back makes it
                        // process the message again, on another state; replay shows the first.)
                        if let Some(position) = history
                            .messages()
                            .position(|message| message.topic == topic.as_str() && message.sequence == sequence)
                        {
                            found = Some(within_batch(record, &history, position, ids.end));
                        }
                    }
                    Ok(true)
                })?;
                let processed = found.is_some();
                (next, found, processed)
            }
            HistoryPoint::AtTime(time) => {
                let first = self.inner.log.first_id();
                let mut found: Option<(u64, Past)> = None;
                // The time of the oldest commit of the function still kept.
                let mut reach: Option<u64> = None;
                let next = self.scan_history(fqfn, first, |ids, entry| {
                    if let Entry::Recorded(_, history) = &entry
                        && (reach.is_none() || found.is_none())
                    {
                        let time_committed = head(history)?.time;
                        reach.get_or_insert(time_committed);
                        if found.is_none() && time_committed > *time {
                            found = Some((ids.start, Past::default()));
                        }
                    }
                    match &mut found {
                        Some((_, past)) => past.later(entry),
                        None => Ok(()),
                    }
                    .map(|()| true)
                })?;
                let since = || format!("the commits of {fqfn} after {time} (milliseconds since the epoch)");
                if let Some((start, _)) = &found {
                    self.check_complete_from(*start, &since)?;
                }
                let whole_log = first == 0 && self.check_complete_from(0, &since).is_ok();
                if !whole_log && reach.is_none_or(|reach| reach > *time) {
                    return Err(beyond_retention(&since()));
                }
                (next, found.map(|(_, past)| past), true)
            }
        };
        let past = found.unwrap_or_default();
        let past = Past { next: from, ..past };
        Ok(PastTable {
            table: Box::new(PastEmbeddedTable {
                store: self.clone(),
                fqfn: fqfn.clone(),
                current,
                past: Mutex::new(past),
            }),
            processed,
        })
    }

    fn last_write(&self, fqfn: &Fqfn, key: &str) -> Result<Option<Provenance>, HistoryError> {
        // The last step that wrote the key, decoded whole only once it is known to be the last.
        let mut last: Option<(Record, Vec<u8>)> = None;
        self.scan_history(fqfn, 0, |_, entry| {
            match entry {
                Entry::Recorded(record, history) if record.iter().any(|(changed, _)| changed == key) => {
                    last = Some((record, history));
                }
                Entry::Unrecorded(record) if record.iter().any(|(changed, _)| changed == key) => last = None,
                Entry::Dropped => last = None,
                _ => {}
            }
            Ok(true)
        })?;
        let Some((record, history)) = last else { return Ok(None) };
        let history = whole(&history)?;
        let writer = history.batch().and_then(|batch| {
            let message = history
                .messages()
                .filter(|message| message.changes(&record).any(|(changed, _)| changed == key))
                .last()?;
            Some(Writer {
                topic: TopicName::parse(message.topic).ok()?,
                message_id: message_id(message.sequence),
                instance_id: batch.instance_id,
                code_digest: batch.code_digest.clone(),
            })
        });
        Ok(Some(Provenance { time: history.time, writer }))
    }
}

/// The state just before message `position` of a step's batch: each key of the step at its value
/// before the step, with the changes of the batch's earlier messages applied in order.
fn within_batch(record: &Record, history: &StoredHistory, position: usize, next: u64) -> Past {
    let mut before: KeyMap<Option<Versioned>> = KeyMap::default();
    for ((key, _), value) in record.iter().zip(&history.before) {
        before.insert(key.clone(), value.clone());
    }
    for message in history.messages().take(position) {
        for (key, changed) in message.changes(record) {
            let value = before.entry(key.to_owned()).or_default();
            *value = match changed {
                Changed::To(after) => after.clone(),
                Changed::By(change) => {
                    let version = value.as_ref().map_or(0, |value| value.version);
                    change.apply(value.take().map(|value| value.value)).map(|value| Versioned { value, version })
                }
            };
        }
    }
    Past { before, next }
}

/// The input topics named by a stored history, for the cleaner (see [`StoredHistory`]).
pub(super) fn input_topics(history: &[u8]) -> HashSet<String> {
    crate::codec::decode::<HistoryTopics>(history).map(|head| head.topics.into_iter().collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::StateValue;

    /// A history as fnhost wrote it before [`MessageChange::Sole`]: an `Option` of a batch whose
    /// messages' changes were all written out.
    #[derive(Encode)]
    struct ListedHistory<'a> {
        topics: Vec<&'a str>,
        time: u64,
        before: Vec<Option<Versioned>>,
        batch: Option<Listed<'a>>,
    }

    #[derive(Encode)]
    struct Listed<'a> {
        instance_id: u32,
        code_digest: &'a str,
        messages: Vec<(u32, &'a str, u64)>,
        changes: Vec<(String, Change)>,
    }

    #[test]
    fn a_history_written_before_keys_were_kept_by_index_still_reads() {
        let topic = "persistent://public/default/in";
        let record: Record = vec![("a".into(), Some(Versioned { value: StateValue::Counter(2), version: 9 }))];
        let changes = vec![("a".to_owned(), Change::Add(1)), ("a".to_owned(), Change::Add(1))];
        let old = crate::codec::encode(&ListedHistory {
            topics: vec![topic],
            time: 5,
            before: vec![None],
            batch: Some(Listed {
                instance_id: 4,
                code_digest: "digest",
                messages: vec![(0, "7", 1), (0, "8", 2)],
                changes,
            }),
        });
        let history = whole(&old).unwrap();
        assert_eq!(head(&old).unwrap().time, 5);
        let batch = history.batch().expect("the batch reads");
        assert_eq!((batch.instance_id, batch.code_digest.as_str()), (4, "digest"));
        let read: Vec<(u64, usize)> =
            history.messages().map(|message| (message.sequence, message.changes(&record).count())).collect();
        assert_eq!(read, [(7, 1), (8, 1)]);
        let before_second = within_batch(&record, &history, 1, 0);
        assert_eq!(before_second.before["a"].as_ref().map(|value| &value.value), Some(&StateValue::Counter(1)));

        let operator =
            crate::codec::encode(&ListedHistory { topics: vec![], time: 6, before: vec![None], batch: None });
        assert!(whole(&operator).unwrap().batch().is_none(), "an operator's write");
    }
}
