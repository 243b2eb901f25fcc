//! The embedded store's records in fnhost's own log ([`crate::seglog`]): one [`Step`] per durable
//! step (a producer's append; a commit's outputs, cursor moves and state changes; a cursor made or
//! removed; a state write from the admin API), so that after a crash a step is there whole or not
//! at all.

use bincode::{Decode, Encode};

use super::cursor::RangeSet;
use crate::engine::broker::{BrokerError, MessageBody};
use crate::names::{SubscriptionName, TopicName};
use crate::seglog::{LogError, SegmentLog};

/// One durable step: everything in it is in the log, or none of it.
#[derive(Debug, Default, Encode, Decode)]
pub(super) struct Step {
    pub(super) appends: Vec<Append>,
    pub(super) cursors: Vec<CursorMove>,
    pub(super) state: Option<StateStep>,
    /// Topics deleted (`fnhost topics delete`): their messages before this step are gone.
    pub(super) deleted_topics: Vec<String>,
}

/// Consecutive messages appended to one topic.
#[derive(Debug, Encode, Decode)]
pub(super) struct Append {
    pub(super) topic: String,
    /// The sequence number of the first.
    pub(super) first: u64,
    pub(super) count: u32,
    /// When they were published (milliseconds since the Unix epoch), for retention and message TTL.
    pub(super) publish_time: u64,
    /// The messages, encoded apart, so that a reader of one topic decodes only its own.
    pub(super) messages: Vec<u8>,
}

impl Append {
    pub(super) fn new(topic: &TopicName, first: u64, bodies: &[MessageBody]) -> Self {
        Self {
            topic: topic.as_str().to_owned(),
            first,
            count: bodies.len() as u32,
            publish_time: bodies.iter().map(|body| body.publish_time).max().unwrap_or_default(),
            messages: crate::codec::encode(&bodies),
        }
    }

    pub(super) fn bodies(&self) -> Result<Vec<MessageBody>, String> {
        let bodies: Vec<MessageBody> = crate::codec::decode(&self.messages).map_err(|error| error.to_string())?;
        if bodies.len() != self.count as usize {
            return Err(format!("{} messages where the record says {}", bodies.len(), self.count));
        }
        Ok(bodies)
    }
}

/// A subscription's cursor on a topic, as it is after the step.
#[derive(Debug, Encode, Decode)]
pub(super) struct CursorMove {
    /// The subscription's tenant, namespace and local name.
    pub(super) subscription: (String, String, String),
    pub(super) topic: String,
    /// Its mark and acknowledged ranges; `None`: the cursor was removed.
    pub(super) position: Option<(u64, Vec<(u64, u64)>)>,
}

impl CursorMove {
    pub(super) fn new(subscription: &SubscriptionName, topic: &TopicName, position: Option<(u64, &RangeSet)>) -> Self {
        Self {
            subscription: (
                subscription.tenant().to_owned(),
                subscription.namespace().to_owned(),
                subscription.local().to_owned(),
            ),
            topic: topic.as_str().to_owned(),
            position: position.map(|(mark, acked)| (mark, acked.ranges())),
        }
    }

    /// The subscription and topic it names, checked as names are.
    pub(super) fn names(&self) -> Result<(SubscriptionName, TopicName), String> {
        let (tenant, namespace, local) = &self.subscription;
        let subscription = SubscriptionName::new(tenant, namespace, local).map_err(|error| error.to_string())?;
        let topic = TopicName::parse(&self.topic).map_err(|error| error.to_string())?;
        Ok((subscription, topic))
    }
}

/// A function's state changes.
#[derive(Debug, Encode, Decode)]
pub(super) enum StateStep {
    /// The values of the keys a commit (or an admin write) changed, encoded as a state record.
    Changes { fqfn: String, record: Vec<u8> },
    /// The function's whole table was deleted.
    Dropped { fqfn: String },
    /// The values of the keys a commit (or an admin write) changed, as in `Changes`, with the
    /// function's history: an encoded `stored_history::StoredHistory`.
    Recorded { fqfn: String, record: Vec<u8>, history: Vec<u8> },
}

/// The most bytes of a step one record holds: a longer step (a commit of many large outputs) is
/// split over several consecutive records, written in one group, each naming the first.
const STEP_RECORD_BYTES: usize = 64 << 20;
/// The first byte of a record holding a whole step.
const WHOLE: u8 = 0;
/// The first byte of a record holding part of a step, after which come the first record's id
/// (u64), the part's index and the number of parts (u32 each), then the part's bytes.
const PART: u8 = 1;
const PART_HEADER_BYTES: usize = 1 + 8 + 4 + 4;

impl Step {
    /// The step as the log's records: one, or its parts (see [`stamp`]).
    pub(super) fn records(&self) -> Vec<Vec<u8>> {
        Self::records_of(crate::codec::encode_after(&[WHOLE], self), STEP_RECORD_BYTES)
    }

    /// `whole` (a step encoded behind the `WHOLE` byte) as one record, or split into parts of at
    /// most `most` bytes of the step.
    fn records_of(whole: Vec<u8>, most: usize) -> Vec<Vec<u8>> {
        if whole.len() <= most {
            return vec![whole];
        }
        let parts = whole[1..].chunks(most);
        let count = parts.len() as u32;
        parts
            .enumerate()
            .map(|(index, part)| {
                let mut record = Vec::with_capacity(PART_HEADER_BYTES + part.len());
                record.push(PART);
                record.extend_from_slice(&[0; 8]);
                record.extend_from_slice(&(index as u32).to_le_bytes());
                record.extend_from_slice(&count.to_le_bytes());
                record.extend_from_slice(part);
                record
            })
            .collect()
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::codec::decode(bytes).map_err(|error| error.to_string())
    }
}

/// Writes the first record's id into each part of a split step; the log calls it under its lock.
pub(super) fn stamp(first_id: u64, records: &mut [Vec<u8>]) {
    for record in records.iter_mut().filter(|record| record.first() == Some(&PART)) {
        record[1..9].copy_from_slice(&first_id.to_le_bytes());
    }
}

/// Puts steps back together from records read in id order. The parts of a step written by a
/// group that a crash cut short are dropped: that step was never acknowledged.
#[derive(Default)]
pub(super) struct Assembler {
    partial: Option<Partial>,
}

struct Partial {
    first_id: u64,
    count: u32,
    bytes: Vec<u8>,
}

/// A whole step: the ids of its records and its encoded bytes.
pub(super) struct Assembled {
    pub(super) ids: std::ops::Range<u64>,
    pub(super) bytes: Vec<u8>,
    /// Where the step starts in `bytes`.
    pub(super) start: usize,
}

impl Assembled {
    pub(super) fn step(&self) -> Result<Step, String> {
        Step::decode(&self.bytes[self.start..])
    }
}

impl Assembler {
    /// Takes the next record; returns the step it completes, if any.
    pub(super) fn push(&mut self, id: u64, payload: Vec<u8>) -> Result<Option<Assembled>, String> {
        match payload.first() {
            Some(&WHOLE) => {
                self.drop_partial();
                Ok(Some(Assembled { ids: id..id + 1, bytes: payload, start: 1 }))
            }
            Some(&PART) if payload.len() >= PART_HEADER_BYTES => {
                let first_id = u64::from_le_bytes(payload[1..9].try_into().expect("eight bytes"));
                let index = u32::from_le_bytes(payload[9..13].try_into().expect("four bytes"));
                let count = u32::from_le_bytes(payload[13..17].try_into().expect("four bytes"));
                if index == 0 {
                    self.drop_partial();
                    self.partial = Some(Partial { first_id, count, bytes: Vec::new() });
                }
                let expected = self.partial.as_ref().is_some_and(|partial| {
                    partial.first_id == first_id && partial.count == count && id == first_id + u64::from(index)
                });
                if !expected {
                    self.drop_partial();
                    return Ok(None);
                }
                let partial = self.partial.as_mut().expect("checked above");
                partial.bytes.extend_from_slice(&payload[PART_HEADER_BYTES..]);
                if index + 1 < count {
                    return Ok(None);
                }
                let partial = self.partial.take().expect("checked above");
                Ok(Some(Assembled { ids: first_id..id + 1, bytes: partial.bytes, start: 0 }))
            }
            _ => Err(format!("log record {id} is neither a step nor part of one")),
        }
    }

    /// Ends the records: a step still missing parts is dropped.
    pub(super) fn finish(&mut self) {
        self.drop_partial();
    }

    fn drop_partial(&mut self) {
        if let Some(partial) = self.partial.take() {
            tracing::warn!(
                first_id = partial.first_id,
                parts = partial.count,
                "dropped a step whose write a crash cut short (it was never acknowledged)"
            );
        }
    }
}

/// Records read from the log per look while its steps are read back.
const RECORDS_PER_READ: usize = 4096;
/// Bytes read from the log per look, past its first record.
const BYTES_PER_READ: usize = 16 << 20;

/// A log record that does not read back as the step it was written as.
pub(super) fn unreadable(id: u64, reason: impl std::fmt::Display) -> BrokerError {
    BrokerError::Storage(format!(
        "log record {id} cannot be read back ({reason}); restore the data directory from a backup"
    ))
}

/// Reads the log's steps from record `from` on, in order, and gives each, with the ids of its
/// records, to `visit` until it says to stop; returns where a later read should go on.
pub(super) fn for_each_step<E: From<BrokerError>>(
    log: &SegmentLog,
    from: u64,
    mut visit: impl FnMut(std::ops::Range<u64>, Step) -> Result<bool, E>,
) -> Result<u64, E> {
    let mut assembler = Assembler::default();
    let mut next = from.max(log.first_id());
    loop {
        let records = log.read(next, RECORDS_PER_READ, BYTES_PER_READ).map_err(log_failed)?;
        let Some((last, _)) = records.last() else {
            assembler.finish();
            return Ok(next);
        };
        next = last + 1;
        for (id, payload) in records {
            let Some(whole) = assembler.push(id, payload).map_err(|reason| unreadable(id, reason))? else { continue };
            let step = whole.step().map_err(|reason| unreadable(id, reason))?;
            let end = whole.ids.end;
            if !visit(whole.ids, step)? {
                return Ok(end);
            }
        }
    }
}

pub(super) fn log_failed(error: LogError) -> BrokerError {
    BrokerError::Storage(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_step_is_split_over_records_and_put_back_together_and_a_cut_one_is_dropped() {
        let bytes: Vec<u8> = (0..1000u32).map(|byte| byte as u8).collect();
        let mut records = Step::records_of([&[WHOLE][..], &bytes].concat(), 300);
        assert_eq!(records.len(), 4);
        stamp(40, &mut records);
        let mut assembler = Assembler::default();
        // A cut-short step (two of its four parts) before it is dropped, not joined to it.
        for (id, record) in (30..).zip(records[..2].iter().cloned()) {
            let mut earlier = record;
            earlier[1..9].copy_from_slice(&30u64.to_le_bytes());
            assert!(assembler.push(id, earlier).unwrap().is_none());
        }
        let mut done = None;
        for (id, record) in (40..).zip(records) {
            done = assembler.push(id, record).unwrap();
        }
        let done = done.expect("the last part completes the step");
        assert_eq!((done.ids, &done.bytes[done.start..]), (40..44, &bytes[..]));
        let whole = Step::records_of([&[WHOLE][..], &[7; 10]].concat(), 300);
        let done = assembler.push(44, whole.into_iter().next().unwrap()).unwrap().unwrap();
        assert_eq!((done.ids, &done.bytes[done.start..]), (44..45, &[7u8; 10][..]));
    }
}
