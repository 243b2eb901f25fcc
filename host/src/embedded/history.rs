//! The embedded engine's history of each function: a commit's state step carries, beside its
//! record of final values, a [`StoredHistory`] (`stored_history`): each changed key's value before
//! the commit, and what each message of the batch changed. Reading it back scans the log from the
//! point asked for.
//!
//! The state at a point is the current state with, for every key a later step changed, the value
//! before the first such step: so it needs the steps from that point on, which the cleaner keeps
//! while it keeps the input messages of a function that keeps history (`Inner::history_inputs`).

use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::journal::{StateStep, for_each_step, unreadable};
use super::state::{FunctionTable, Record};
use super::stored_history::{Changed, StoredHistory, head, whole};
use super::{EmbeddedStore, lock};
use crate::engine::broker::{Message, message_id};
use crate::engine::history::{HistoryError, HistoryPoint, PastTable, Provenance, StateHistory, Writer};
use crate::engine::state::{KeyMap, KeyPage, StateError, StateTable, Versioned, live};
use crate::names::{Fqfn, TopicName};

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
    /// The point's time, in milliseconds since the epoch: a value that had expired by then reads
    /// as absent.
    at: u64,
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
        // Expired or not now: what counts is whether it had expired at the point.
        let current = self.current.current(&mut lock(&self.current.values), key)?;
        // A step made durable before that read is in the log by now: read it, so that a key the
        // read saw changed is known to have changed.
        let mut past = lock(&self.past);
        let from = past.next;
        let next = self
            .store
            .scan_history(&self.fqfn, from, |_, entry| past.later(entry).map(|()| true))
            .map_err(|error| StateError::Storage(error.to_string()))?;
        past.next = next;
        let value = match past.before.get(key) {
            Some(before) => before.clone(),
            None => current,
        };
        Ok(live(value, past.at))
    }

    fn list(&self, _page: &KeyPage) -> Result<Vec<String>, StateError> {
        // A replay runs on one message's state, which its keys are enough for; listing the past
        // would need the whole table as it was, which the history does not keep.
        Err(StateError::Storage(
            "a replay cannot list the state keys of the past: list-state-keys is not available while replaying".into(),
        ))
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
                            found = Some((ids.start, Past { at: *time, ..Past::default() }));
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
        let at = match point {
            HistoryPoint::AtTime(time) => *time,
            HistoryPoint::BeforeMessage { .. } => crate::engine::clock::now_millis(),
        };
        let past = found.unwrap_or(Past { at, ..Past::default() });
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
                    change.committed(value.take(), version, history.time)
                }
            };
        }
    }
    Past { before, next, at: history.time }
}

#[cfg(test)]
mod tests {
    use bincode::Encode;

    use super::*;
    use crate::engine::state::{Change, StateValue};

    /// A history as fnhost wrote it before `MessageChange::Sole`: an `Option` of a batch whose
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
        let record: Record = vec![("a".into(), Some(Versioned::lasting(StateValue::Counter(2), 9)))];
        let changes = vec![("a".to_owned(), Change::Add(1, None)), ("a".to_owned(), Change::Add(1, None))];
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
