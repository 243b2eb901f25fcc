//! A function's history in cluster mode: what each commit processed, and each changed key's
//! value before it, kept in a stream per function (`FNH-<fqfn>`) so that the state a message saw
//! can be read back (replay, `--as-of`) and a value traced to its writer (`--why`).
//!
//! A commit's changelog message carries its [`LoggedHistory`] after its changes (older readers
//! stop at the changes). The values *before* each change are known only in changelog order, which
//! is the appliers' (`changelog`): an applier writes a [`HistoryRecord`] for each changelog
//! message before it writes the view, and only for messages whose keys' view entries are older
//! than it (so that their values are the ones just before it). A message another applier got to
//! first was recorded by that applier, before its view writes; the stream drops a repeat within
//! its duplicate window, and readers skip a later one.
//!
//! The stream keeps a function's newest [`HISTORY_BYTES_PER_FUNCTION`]; a commit without state
//! changes writes no changelog message and leaves no history. `past` reads it.

use async_nats::jetstream::stream;
use bincode::{Decode, Encode};

use super::logged::{Held, Logged};
use super::names::token;
use super::{Inner, decode, encode, state_storage, storage};
use crate::engine::broker::{BrokerError, message_id};
use crate::engine::clock::now_millis;
use crate::engine::history::BatchHistory;
use crate::engine::state::{StateChanges, StateError, StateValue};
use crate::names::Fqfn;

/// Streams holding function histories are named this followed by the function's token.
pub const HISTORY_PREFIX: &str = "FNH-";
/// Most bytes of history the cluster keeps per function; past it, the oldest commits' go first.
pub const HISTORY_BYTES_PER_FUNCTION: i64 = 256 << 20;

/// What a changelog message carries after its changes.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) struct LoggedHistory {
    /// When its commit was made (milliseconds since the Unix epoch).
    pub(super) time: u64,
    /// Who made it.
    pub(super) source: Source,
}

/// Who made a commit, as its history records it.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) enum Source {
    /// An operator's putstate.
    Operator,
    /// A function's batch.
    Batch(LoggedBatch),
    /// The rest of the commit of the changelog message before (a commit larger than a message is
    /// logged in several).
    Continued,
    /// A function's batch whose record would not fit a message; what it processed is not kept.
    Unkept,
}

/// What a function's batch processed: each message, with the changes it made, in order.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) struct LoggedBatch {
    pub(super) instance_id: u32,
    pub(super) code_digest: String,
    topics: Vec<String>,
    /// Each message: its topic (index into `topics`), id, and where its changes end.
    messages: Vec<(u32, String, u32)>,
    changes: Vec<(String, Logged)>,
}

/// One message of a [`LoggedBatch`].
pub(super) struct LoggedMessage<'a> {
    pub(super) topic: &'a str,
    pub(super) message_id: &'a str,
    pub(super) changes: &'a [(String, Logged)],
}

impl LoggedBatch {
    /// What `batch` processed, which committed `state` at `now`.
    pub(super) fn of(batch: &BatchHistory, state: &StateChanges, now: u64) -> Self {
        let mut changes = Vec::with_capacity(batch.changes.len());
        let messages = batch
            .resolved(state)
            .map(|(message, changed)| {
                changes.extend(changed.map(|(key, change)| (key.to_owned(), Logged::of(change, now))));
                (message.topic, message_id(message.sequence), changes.len() as u32)
            })
            .collect();
        Self {
            instance_id: batch.instance_id,
            code_digest: batch.code_digest.to_string(),
            topics: batch.topics.iter().map(ToString::to_string).collect(),
            messages,
            changes,
        }
    }

    /// The batch's messages, in processing order.
    pub(super) fn messages(&self) -> impl Iterator<Item = LoggedMessage<'_>> {
        let mut start = 0;
        self.messages.iter().map(move |(topic, message_id, end)| {
            let end = (*end as usize).clamp(start, self.changes.len());
            let changes = &self.changes[start..end];
            start = end;
            LoggedMessage { topic: self.topics.get(*topic as usize).map_or("", String::as_str), message_id, changes }
        })
    }
}

/// A commit's [`LoggedHistory`], encoded once for each of its changelog messages.
pub(super) struct EncodedHistory {
    head: Vec<u8>,
    continued: Vec<u8>,
}

impl EncodedHistory {
    /// The history of a commit made at `time` by `source`; a batch whose record passes
    /// `max_bytes` is recorded as [`Source::Unkept`].
    pub(super) fn new(time: u64, source: Source, max_bytes: usize) -> Self {
        let mut head = encode(&LoggedHistory { time, source });
        if head.len() > max_bytes {
            head = encode(&LoggedHistory { time, source: Source::Unkept });
        }
        Self { head, continued: encode(&LoggedHistory { time, source: Source::Continued }) }
    }

    /// The history of a function's commit that processed `batch` and committed `state`, made now.
    pub(super) fn of_batch(batch: Option<&BatchHistory>, state: &StateChanges, max_bytes: usize) -> Self {
        let now = now_millis();
        let source = batch.map_or(Source::Unkept, |batch| Source::Batch(LoggedBatch::of(batch, state, now)));
        Self::new(now, source, max_bytes)
    }

    /// The same commit's history without what its batch processed, for a record that would
    /// not fit a message otherwise.
    pub(super) fn unkept(&self) -> Self {
        let time = decode::<LoggedHistory>(&self.continued).map_or(0, |history| history.time);
        Self { head: encode(&LoggedHistory { time, source: Source::Unkept }), continued: self.continued.clone() }
    }

    /// The history as the first changelog message of its commit carries it.
    pub(super) fn head(&self) -> &[u8] {
        &self.head
    }

    /// The history from its head, as [`EncodedHistory::head`] gave it; `None` for what is not one
    /// (an intent of an older fnhost, which carried none).
    pub(super) fn from_head(head: &[u8]) -> Option<Self> {
        let history: LoggedHistory = decode(head).ok()?;
        Some(Self { head: head.to_vec(), continued: encode(&LoggedHistory { source: Source::Continued, ..history }) })
    }

    /// The history carried by the commit's changelog message `index` (from 0).
    pub(super) fn of_message(&self, index: usize) -> &[u8] {
        if index == 0 { &self.head } else { &self.continued }
    }
}

/// A changelog message's [`LoggedHistory`] as it carried it, with its time read.
pub(super) struct LoggedTrailer {
    pub(super) time: u64,
    bytes: Vec<u8>,
}

impl LoggedTrailer {
    /// The history `bytes` a changelog message carried after its changes.
    pub(super) fn read(bytes: &[u8]) -> Result<Self, String> {
        // Its first field: the rest is copied as it is.
        let (time, _) = crate::codec::decode_leading::<u64>(bytes).map_err(|error| error.to_string())?;
        Ok(Self { time, bytes: bytes.to_vec() })
    }
}

/// The history of one changelog message, or a part of it (`part` from 0; the values before are
/// split when they would not fit one message).
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) struct HistoryRecord {
    /// The changelog message's sequence.
    pub(super) changelog: u64,
    pub(super) part: u32,
    pub(super) last_part: bool,
    /// When its commit was made (milliseconds since the Unix epoch), in every part: readers look
    /// for a time by halving.
    pub(super) time: u64,
    /// Each key of this part and its value just before the changelog message.
    pub(super) before: Vec<(String, Option<Held>)>,
    /// The changelog message's [`LoggedHistory`], in part 0, as the message carried it: the
    /// applier copies it, and readers decode it when they need it.
    pub(super) history: Option<Vec<u8>>,
}

impl HistoryRecord {
    /// The parts recording changelog message `changelog`, each about `max_bytes` at most.
    pub(super) fn parts(
        changelog: u64,
        before: Vec<(String, Option<Held>)>,
        history: LoggedTrailer,
        max_bytes: usize,
    ) -> Vec<Self> {
        let mut parts: Vec<Self> = Vec::new();
        let mut bytes = history.bytes.len();
        let mut current = Vec::new();
        for (key, value) in before {
            let size = key.len()
                + match &value {
                    Some(Held { value: StateValue::Bytes(bytes), .. }) => bytes.len(),
                    _ => 0,
                }
                + 16;
            if bytes + size > max_bytes && !current.is_empty() {
                parts.push(Self::part(changelog, parts.len(), history.time, std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += size;
            current.push((key, value));
        }
        parts.push(Self::part(changelog, parts.len(), history.time, current));
        parts.last_mut().expect("one part at least").last_part = true;
        parts[0].history = Some(history.bytes);
        parts
    }

    fn part(changelog: u64, index: usize, time: u64, before: Vec<(String, Option<Held>)>) -> Self {
        Self { changelog, part: index as u32, last_part: false, time, before, history: None }
    }

    /// Who made the commit (in part 0; `None` in the others).
    pub(super) fn source(&self) -> Result<Option<Source>, String> {
        match &self.history {
            Some(bytes) => decode::<LoggedHistory>(bytes).map(|history| Some(history.source)),
            None => Ok(None),
        }
    }

    /// The history message id of this part: a repeat is dropped.
    pub(super) fn id(&self) -> String {
        format!("{}-{}", self.changelog, self.part)
    }
}

/// The history stream of `fqfn`.
fn history_stream(fqfn: &Fqfn) -> String {
    format!("{HISTORY_PREFIX}{}", token(&fqfn.to_string()))
}

pub(super) fn history_subject(fqfn: &Fqfn) -> String {
    format!("fnh.{}", token(&fqfn.to_string()))
}

impl Inner {
    /// The history stream of `fqfn`, created on first use.
    pub(super) async fn history(&self, fqfn: &Fqfn) -> Result<stream::Stream, BrokerError> {
        self.jetstream
            .get_or_create_stream(stream::Config {
                name: history_stream(fqfn),
                subjects: vec![history_subject(fqfn)],
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                duplicate_window: super::DUPLICATE_WINDOW,
                max_bytes: HISTORY_BYTES_PER_FUNCTION,
                discard: stream::DiscardPolicy::Old,
                ..Default::default()
            })
            .await
            .map_err(|error| storage(format!("cannot open the history of {fqfn}: {error}")))
    }

    /// Forgets `fqfn`'s history.
    pub(super) async fn delete_history(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        match self.jetstream.delete_stream(history_stream(fqfn)).await {
            Ok(_) => Ok(()),
            Err(error) if super::failure::is_not_found(&error) => Ok(()),
            Err(error) => Err(state_storage(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::history::MessageChange;
    use crate::engine::state::Change;

    #[test]
    fn large_values_before_are_split_into_parts_that_carry_the_history_once() {
        let before: Vec<(String, Option<Held>)> =
            (0..50).map(|index| (format!("k{index}"), Some(Held::lasting(StateValue::Bytes(vec![1; 100]))))).collect();
        let history = || LoggedTrailer::read(&encode(&LoggedHistory { time: 3, source: Source::Operator })).unwrap();
        let parts = HistoryRecord::parts(9, before.clone(), history(), 1_000);
        assert!(parts.len() > 1);
        assert_eq!(parts.iter().map(|part| part.part).collect::<Vec<_>>(), (0..parts.len() as u32).collect::<Vec<_>>());
        assert!(parts.iter().all(|part| part.changelog == 9 && part.time == 3));
        assert_eq!(parts.iter().filter(|part| part.last_part).count(), 1);
        assert!(parts.last().unwrap().last_part);
        assert_eq!(parts[0].source(), Ok(Some(Source::Operator)));
        assert!(parts[1..].iter().all(|part| part.source() == Ok(None)));
        assert_eq!(parts.iter().flat_map(|part| part.before.clone()).collect::<Vec<_>>(), before);
        let id = |part: &HistoryRecord| part.id();
        assert_eq!((id(&parts[0]), id(&parts[1])), ("9-0".to_owned(), "9-1".to_owned()));
        let one = HistoryRecord::parts(4, Vec::new(), history(), 1_000);
        assert_eq!(one.len(), 1, "a message without keys still has its record");
        assert!(one[0].last_part);
    }

    #[test]
    fn a_batch_history_is_logged_with_each_messages_changes_and_too_large_ones_are_unkept() {
        let mut state = StateChanges::default();
        state.record("a".into(), Change::Add(1, None));
        state.record("b".into(), Change::Put(b"only".to_vec(), None));
        state.record("a".into(), Change::Delete);
        let mut batch = BatchHistory::new(2, "digest".into());
        let topic = "persistent://public/default/in";
        batch.push(topic, "10", [MessageChange::Own("a".into(), Change::Add(1, None))]);
        batch.push(topic, "11", [MessageChange::Sole(1)]);
        batch.push(topic, "12", [MessageChange::Own("a".into(), Change::Delete)]);
        let logged = LoggedBatch::of(&batch, &state, 0);
        type Read<'a> = (&'a str, &'a str, Vec<(String, Logged)>);
        let messages: Vec<Read> =
            logged.messages().map(|message| (message.topic, message.message_id, message.changes.to_vec())).collect();
        let change = |key: &str, change: Change| (key.to_owned(), Logged::of(&change, 0));
        assert_eq!(
            messages,
            [
                (topic, "10", vec![change("a", Change::Add(1, None))]),
                (topic, "11", vec![change("b", Change::Put(b"only".to_vec(), None))]),
                (topic, "12", vec![change("a", Change::Delete)]),
            ],
            "a key one message alone changed is logged with the batch's change to it"
        );

        let encoded = EncodedHistory::of_batch(Some(&batch), &state, 1 << 20);
        let head: LoggedHistory = decode(encoded.head()).unwrap();
        assert_eq!(head.source, Source::Batch(LoggedBatch::of(&batch, &state, head.time)));
        assert_eq!(decode::<LoggedHistory>(encoded.of_message(1)).unwrap().source, Source::Continued);
        let again = EncodedHistory::from_head(encoded.head()).unwrap();
        assert_eq!((again.head(), again.of_message(3)), (encoded.head(), encoded.of_message(1)));
        assert!(EncodedHistory::from_head(&[]).is_none(), "an older intent carries no history");
        let unkept: LoggedHistory = decode(encoded.unkept().head()).unwrap();
        assert_eq!((unkept.time, unkept.source), (head.time, Source::Unkept));
        let small = EncodedHistory::of_batch(Some(&batch), &state, 8);
        assert_eq!(decode::<LoggedHistory>(small.head()).unwrap().source, Source::Unkept, "too large to keep");
    }
}
