//! Reading a function's history in cluster mode (the `StateHistory` port): the state just
//! before a message or at a time, and who wrote a value, from the history stream `history` keeps.
//!
//! The state just before changelog message `s`, for a key, is the view's value when the view
//! entry is older than `s`, else the key's value before the first recorded message from `s` on
//! that changed it. A message is found from its publish time (less [`CLOCK_SKEW_MILLIS`]) by
//! halving the history stream, then reading on to the first commit that processed it or, its own
//! commit having changed no state, a later message of its topic; a time, and a key's last writer,
//! by halving too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_nats::jetstream::{kv, stream};

use super::history::{HISTORY_BYTES_PER_FUNCTION, HistoryRecord, LoggedBatch, Source};
use super::logged::Held;
use super::{Inner, NatsEngine, decode, entry, state_storage, storage};
use crate::engine::broker::Message;
use crate::engine::history::{HistoryError, HistoryPoint, PastTable, Provenance, StateHistory, Writer};
use crate::engine::state::{KeyPage, StateError, StateTable, Versioned, live};
use crate::names::{Fqfn, TopicName};

/// How far a worker's clock (which times commits) may be behind the servers' (which time
/// messages) when a message's commit is looked for from its publish time.
const CLOCK_SKEW_MILLIS: u64 = 60_000;
/// How many history messages a reader asks for at once.
const READS_AT_ONCE: u64 = 64;

fn beyond(what: impl std::fmt::Display) -> HistoryError {
    HistoryError::BeyondRetention(format!(
        "{what}: cluster mode keeps each function's newest {} MiB of history (and a replay needs the input messages, which `fnhost namespaces set-retention` keeps)",
        HISTORY_BYTES_PER_FUNCTION >> 20
    ))
}

/// Who made the commit of `record`, which is part 0 of a changelog message's record.
fn source(fqfn: &Fqfn, record: &HistoryRecord) -> Result<Option<Source>, StateError> {
    record.source().map_err(|reason| {
        StateError::Storage(format!(
            "the history of {fqfn}'s changelog message {} cannot be decoded: {reason}",
            record.changelog
        ))
    })
}

fn corrupt(fqfn: &Fqfn, sequence: u64, reason: impl std::fmt::Display) -> StateError {
    StateError::Storage(format!("history message {sequence} of {fqfn} cannot be decoded: {reason}"))
}

/// A function's history stream, read by sequence.
struct Records {
    fqfn: Fqfn,
    stream: stream::Stream,
    /// The stream's first and last sequences when it was opened.
    first: u64,
    last: u64,
}

impl Records {
    async fn read(&self, sequence: u64) -> Result<Option<HistoryRecord>, StateError> {
        let Ok(message) = self.stream.get_raw_message(sequence).await else { return Ok(None) };
        decode(&message.payload).map(Some).map_err(|reason| corrupt(&self.fqfn, sequence, reason))
    }

    /// The records from `from` to `last` (both included), at most [`READS_AT_ONCE`], in order.
    async fn chunk(&self, from: u64, last: u64) -> Result<Vec<(u64, HistoryRecord)>, StateError> {
        let reads = (from..=last.min(from + READS_AT_ONCE - 1)).map(|sequence| async move {
            self.read(sequence).await.map(|record| record.map(|record| (sequence, record)))
        });
        let read = futures_util::future::try_join_all(reads).await?;
        Ok(read.into_iter().flatten().collect())
    }

    /// The first sequence whose record holds `after`, if any (records hold it from some point on).
    async fn first_where(&self, after: impl Fn(&HistoryRecord) -> bool) -> Result<Option<u64>, StateError> {
        let (mut low, mut high) = (self.first, self.last + 1);
        while low < high {
            let middle = low + (high - low) / 2;
            match self.read(middle).await? {
                Some(record) if after(&record) => high = middle,
                // Gone below the stream's new first sequence: as old as it gets.
                _ => low = middle + 1,
            }
        }
        Ok((low <= self.last).then_some(low))
    }

    /// Whether the stream still holds the function's history from its first changelog message.
    async fn whole(&self) -> Result<bool, StateError> {
        Ok(self.read(self.first).await?.is_some_and(|record| record.changelog == 1 && record.part == 0))
    }
}

/// The state at a point of a function's history: the values known so far, and how far the
/// history has been read to learn more.
struct Past {
    /// The point: just before this changelog message (`u64::MAX`: now).
    point: u64,
    /// The point's time, in milliseconds since the epoch: a value that had expired by then reads
    /// as absent.
    time: u64,
    before: HashMap<String, Option<Held>>,
    /// The next history sequence to read.
    next: u64,
    /// The last changelog message and part read, and whether that part was its last.
    read_up_to: Option<(u64, u32, bool)>,
}

impl Past {
    fn at(point: u64, next: u64, time: u64) -> Self {
        Self { point, time, before: HashMap::new(), next, read_up_to: None }
    }

    /// Learns the values before the next record; a repeat is skipped, and a missing part or
    /// message refused.
    fn later(&mut self, fqfn: &Fqfn, record: HistoryRecord) -> Result<(), StateError> {
        let expected = match self.read_up_to {
            None => (self.point, 0),
            Some((changelog, part, false)) => (changelog, part + 1),
            Some((changelog, _, true)) => (changelog + 1, 0),
        };
        let position = (record.changelog, record.part);
        if position < expected {
            return Ok(());
        }
        if position != expected {
            return Err(StateError::Storage(format!(
                "the history of {fqfn} misses changelog message {} (part {}): an applier stopped between its writes or could not write the history then (the workers' log warns of it), so the state before it cannot be read back",
                expected.0, expected.1
            )));
        }
        self.read_up_to = Some((record.changelog, record.part, record.last_part));
        for (key, value) in record.before {
            // The first later change's value before is the value at the point.
            self.before.entry(key).or_insert(value);
        }
        Ok(())
    }
}

/// A function's state as it was at a point of its history.
struct PastNatsTable {
    inner: Arc<Inner>,
    view: kv::Store,
    records: Records,
    past: Mutex<Past>,
}

/// `held` as it read at `time`. A past value has no version of its own: versions order the
/// current values' writes.
fn unversioned(held: Option<Held>, time: u64) -> Option<Versioned> {
    live(held.map(|held| held.versioned(0)), time)
}

impl StateTable for PastNatsTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        {
            let past = self.past.lock().unwrap();
            if let Some(value) = past.before.get(key) {
                return Ok(unversioned(value.clone(), past.time));
            }
        }
        let inner = &self.inner;
        let fqfn = &self.records.fqfn;
        inner.block_on(async {
            // Read before the history: a commit recorded its history before its view write.
            let current = inner.view_entry(fqfn, &self.view, key).await?.map(|(entry, _)| entry);
            let (point, time) = {
                let past = self.past.lock().unwrap();
                (past.point, past.time)
            };
            let current = match current {
                Some(entry) if entry.sequence >= point => entry,
                unchanged => return Ok(unversioned(unchanged.and_then(|entry| entry.value), time)),
            };
            let mut last = self.records.last;
            loop {
                let next = self.past.lock().unwrap().next;
                if next > last {
                    let mut stream = self.records.stream.clone();
                    last = stream.info().await.map_err(state_storage)?.state.last_sequence;
                    if next > last {
                        return Err(StateError::Storage(format!(
                            "the history of {fqfn} does not reach changelog message {}, which last changed `{key}`",
                            current.sequence
                        )));
                    }
                }
                let chunk = self.records.chunk(next, last).await?;
                let mut past = self.past.lock().unwrap();
                past.next = next + READS_AT_ONCE.min(last + 1 - next);
                for (_, record) in chunk {
                    past.later(fqfn, record)?;
                }
                if let Some(value) = past.before.get(key) {
                    return Ok(unversioned(value.clone(), past.time));
                }
            }
        })
    }

    fn list(&self, _page: &KeyPage) -> Result<Vec<String>, StateError> {
        // As in the embedded engine: the history keeps the keys a commit changed, not the table.
        Err(StateError::Storage(
            "a replay cannot list the state keys of the past: list-state-keys is not available while replaying".into(),
        ))
    }
}

impl Inner {
    /// `fqfn`'s history, after its view and history were brought up to its changelog's end.
    async fn records(&self, fqfn: &Fqfn) -> Result<Records, HistoryError> {
        self.materialise(fqfn).await?;
        let mut stream = self.history(fqfn).await?;
        let state = stream.info().await.map_err(storage)?.state.clone();
        Ok(Records { fqfn: fqfn.clone(), stream, first: state.first_sequence, last: state.last_sequence })
    }

    /// Why `message_id` of `topic` is not in its stream: freed by retention, or never there.
    async fn missing(&self, stream: &stream::Stream, topic: &TopicName, message_id: &str) -> HistoryError {
        let unknown = HistoryError::UnknownMessage { topic: topic.clone(), message_id: message_id.to_owned() };
        let Ok(position) = message_id.parse::<u64>() else { return unknown };
        let mut stream = stream.clone();
        match stream.info().await {
            Ok(info) if entry::entry_of(position).0 < info.state.first_sequence => {
                beyond(format!("message {message_id} of {topic} is no longer kept"))
            }
            _ => unknown,
        }
    }
}

/// The state just before message `position` of the batch whose commit's head is `head`, at
/// history sequence `at`: the commit's values before (every part of its changelog messages, the
/// head's and its continuations'), with the changes of the batch's earlier messages applied in order.
async fn within_batch(
    records: &Records,
    at: u64,
    head: HistoryRecord,
    batch: &LoggedBatch,
    position: usize,
) -> Result<Past, StateError> {
    let mut past = Past::at(head.changelog, at + 1, head.time);
    past.later(&records.fqfn, head)?;
    'commit: while past.next <= records.last {
        let chunk = records.chunk(past.next, records.last).await?;
        past.next += READS_AT_ONCE.min(records.last + 1 - past.next);
        for (sequence, record) in chunk {
            let (changelog, _, whole) = past.read_up_to.expect("the head was read");
            // A commit changes a key once, so a continuation's values before are the commit's.
            let continues = record.changelog <= changelog
                || (whole
                    && record.changelog == changelog + 1
                    && source(&records.fqfn, &record)? == Some(Source::Continued));
            if !continues {
                past.next = sequence;
                break 'commit;
            }
            past.later(&records.fqfn, record)?;
        }
    }
    for message in batch.messages().take(position) {
        for (key, change) in message.changes {
            let value = past.before.entry(key.clone()).or_default();
            *value = change.apply(value.take());
        }
    }
    Ok(past)
}

impl NatsEngine {
    /// The past table of `fqfn` at `past`.
    async fn past(&self, records: Records, past: Past, processed: bool) -> Result<PastTable, HistoryError> {
        let view = self.inner.table(&records.fqfn).await?;
        let inner = self.inner.clone();
        Ok(PastTable { table: Box::new(PastNatsTable { inner, view, records, past: Mutex::new(past) }), processed })
    }
}

impl StateHistory for NatsEngine {
    fn messages(&self, topic: &TopicName, first: &str, last: &str, most: usize) -> Result<Vec<Message>, HistoryError> {
        let unknown = |id: &str| HistoryError::UnknownMessage { topic: topic.clone(), message_id: id.to_owned() };
        let (start, end): (u64, u64) =
            (first.parse().map_err(|_| unknown(first))?, last.parse().map_err(|_| unknown(last))?);
        if end < start {
            return Err(HistoryError::BadRange(format!(
                "message {last} comes before {first}: give the earlier one first"
            )));
        }
        let inner = &self.inner;
        inner.block_on(async {
            let stream = inner.stream_of(topic).await?;
            let mut found = Vec::new();
            let (first_entry, _) = entry::entry_of(start);
            let (last_entry, _) = entry::entry_of(end);
            for sequence in first_entry..=last_entry {
                let Some(messages) = inner.stored_entry(&stream, topic, sequence).await? else {
                    return Err(match sequence == first_entry {
                        true => inner.missing(&stream, topic, first).await,
                        false => beyond(format!("messages {first}..{last} of {topic} are no longer all kept")),
                    });
                };
                found.extend(messages.into_iter().filter(|message| (start..=end).contains(&message.sequence)));
                if found.len() > most {
                    return Err(HistoryError::BadRange(format!(
                        "{first}..{last} is more than {most} messages; at most {most} are replayed at once"
                    )));
                }
            }
            for (id, position) in [(first, start), (last, end)] {
                if !found.iter().any(|message| message.sequence == position) {
                    return Err(unknown(id));
                }
            }
            Ok(found)
        })
    }

    fn past_table(&self, fqfn: &Fqfn, point: &HistoryPoint) -> Result<PastTable, HistoryError> {
        let inner = &self.inner;
        inner.block_on(async {
            let records = inner.records(fqfn).await?;
            let now = Past::at(u64::MAX, records.last + 1, inner.clock.now_millis());
            match point {
                HistoryPoint::AtTime(time) => {
                    let reach = records.read(records.first).await?.map(|record| record.time);
                    if reach.is_none_or(|reach| reach > *time) && !records.whole().await? {
                        return Err(beyond(format!(
                            "the commits of {fqfn} after {time} (milliseconds since the epoch)"
                        )));
                    }
                    let past = match records.first_where(|record| record.time > *time).await? {
                        Some(at) => match records.read(at).await? {
                            Some(head) => Past::at(head.changelog, at, *time),
                            None => return Err(beyond("the history moved on while it was read")),
                        },
                        None => now,
                    };
                    self.past(records, past, true).await
                }
                HistoryPoint::BeforeMessage { topic, message_id } => {
                    let unknown =
                        || HistoryError::UnknownMessage { topic: topic.clone(), message_id: message_id.clone() };
                    let position: u64 = message_id.parse().map_err(|_| unknown())?;
                    let stream = inner.stream_of(topic).await?;
                    let (sequence, index) = entry::entry_of(position);
                    let start = match inner.stored_entry(&stream, topic, sequence).await? {
                        Some(messages) => {
                            let published = messages.get(index as usize).ok_or_else(unknown)?.body.publish_time;
                            let since = published.saturating_sub(CLOCK_SKEW_MILLIS);
                            records.first_where(|record| record.time >= since).await?
                        }
                        // Freed from its topic (which the history does not need), or never there.
                        None => match inner.missing(&stream, topic, message_id).await {
                            HistoryError::BeyondRetention(_) => Some(records.first),
                            unknown => return Err(unknown),
                        },
                    };
                    if start == Some(records.first) && !records.whole().await? {
                        return Err(beyond(format!("the commits of {fqfn} around message {message_id} of {topic}")));
                    }
                    let mut next = start.unwrap_or(records.last + 1);
                    while next <= records.last {
                        let chunk = records.chunk(next, records.last).await?;
                        next += READS_AT_ONCE.min(records.last + 1 - next);
                        for (at, record) in chunk {
                            let Some(Source::Batch(batch)) = source(fqfn, &record)? else { continue };
                            // The first message of the topic at or after it: the message itself,
                            // or (its own commit changed no state, so left no history) the next
                            // one of an ordered subscription.
                            let found = batch.messages().position(|message| {
                                message.topic == topic.as_str()
                                    && message.message_id.parse::<u64>().is_ok_and(|id| id >= position)
                            });
                            if let Some(found) = found {
                                let past = within_batch(&records, at, record, &batch, found).await?;
                                return self.past(records, past, true).await;
                            }
                        }
                    }
                    self.past(records, now, false).await
                }
            }
        })
    }

    fn last_write(&self, fqfn: &Fqfn, key: &str) -> Result<Option<Provenance>, HistoryError> {
        let inner = &self.inner;
        inner.block_on(async {
            let records = inner.records(fqfn).await?;
            let view = inner.table(fqfn).await?;
            let Some((entry, _)) = inner.view_entry(fqfn, &view, key).await? else { return Ok(None) };
            // The commit's head: the first of its changelog messages.
            let mut changelog = entry.sequence;
            loop {
                let Some(at) = records.first_where(|record| record.changelog >= changelog).await? else {
                    return Ok(None);
                };
                let Some(record) = records.read(at).await? else { return Ok(None) };
                if record.changelog != changelog {
                    return Ok(None);
                }
                let writer = match source(fqfn, &record)? {
                    Some(Source::Continued) if changelog > 1 => {
                        changelog -= 1;
                        continue;
                    }
                    Some(Source::Batch(batch)) => batch
                        .messages()
                        .filter(|message| message.changes.iter().any(|(changed, _)| changed == key))
                        .last()
                        .and_then(|message| {
                            Some(Writer {
                                topic: TopicName::parse(message.topic).ok()?,
                                message_id: message.message_id.to_owned(),
                                instance_id: batch.instance_id,
                                code_digest: batch.code_digest.clone(),
                            })
                        }),
                    _ => None,
                };
                return Ok(Some(Provenance { time: record.time, writer }));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::state::StateValue;

    fn fqfn() -> Fqfn {
        Fqfn::parse("public/default/f").unwrap()
    }

    fn record(changelog: u64, part: u32, last_part: bool, before: &[(&str, i64)]) -> HistoryRecord {
        HistoryRecord {
            changelog,
            part,
            last_part,
            time: 7,
            before: before
                .iter()
                .map(|(key, value)| ((*key).to_owned(), Some(Held::lasting(StateValue::Counter(*value)))))
                .collect(),
            history: None,
        }
    }

    #[test]
    fn a_past_takes_each_keys_first_later_value_skips_repeats_and_refuses_gaps() {
        let mut past = Past::at(5, 1, 0);
        past.later(&fqfn(), record(5, 0, false, &[("a", 1)])).unwrap();
        past.later(&fqfn(), record(5, 1, true, &[("b", 2)])).unwrap();
        past.later(&fqfn(), record(5, 1, true, &[("b", 99)])).unwrap();
        past.later(&fqfn(), record(6, 0, true, &[("a", 50), ("c", 3)])).unwrap();
        let value = |key: &str| past.before.get(key).cloned().flatten().map(|held| held.value);
        assert_eq!(value("a"), Some(StateValue::Counter(1)), "the first later change's value before");
        assert_eq!(value("b"), Some(StateValue::Counter(2)), "a repeated part is skipped");
        assert_eq!(value("c"), Some(StateValue::Counter(3)));
        let gap = past.later(&fqfn(), record(8, 0, true, &[("d", 4)])).unwrap_err();
        assert!(gap.to_string().contains("misses changelog message 7"), "{gap}");
        let mut past = Past::at(5, 1, 0);
        assert!(past.later(&fqfn(), record(5, 1, true, &[])).is_err(), "a message read from its second part");
    }
}
