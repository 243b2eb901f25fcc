//! A topic as a sled tree of segments, each holding consecutive messages under the sequence
//! number of its first.

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use super::{SEGMENT_BYTES, storage};
use crate::engine::broker::{BrokerError, MessageBody};
use crate::names::TopicName;

pub(super) struct Topic {
    pub(super) name: TopicName,
    pub(super) tree: sled::Tree,
    /// The next sequence number; held locked from allocation until the append commits, so that
    /// readers never see a later message before an earlier one.
    pub(super) next: Mutex<u64>,
    /// The number of committed messages, readable without waiting for an append in progress.
    pub(super) length: AtomicU64,
}

impl Topic {
    /// Calls `visit` with each message from sequence `from` on, until it returns false or the topic ends.
    pub(super) fn scan(&self, from: u64, mut visit: impl FnMut(u64, MessageBody) -> bool) -> Result<(), BrokerError> {
        // The segment holding `from` starts at or before it.
        let start = match self.tree.range(..=from.to_be_bytes()).next_back() {
            Some(entry) => entry.map_err(storage)?.0,
            None => sled::IVec::from(&from.to_be_bytes()),
        };
        for entry in self.tree.range(start..) {
            let (key, value) = entry.map_err(storage)?;
            let first = decode_sequence(&key);
            for (sequence, body) in (first..).zip(self.decode(first, &value)?) {
                if sequence >= from && !visit(sequence, body) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The messages at `sequences` (ascending), decoding each segment once.
    pub(super) fn read_at(&self, sequences: &[u64]) -> Result<Vec<(u64, MessageBody)>, BrokerError> {
        let mut found = Vec::with_capacity(sequences.len());
        let mut segment: Option<(u64, Vec<MessageBody>)> = None;
        for &sequence in sequences {
            let covered = segment
                .as_ref()
                .is_some_and(|(first, bodies)| sequence >= *first && sequence < *first + bodies.len() as u64);
            if !covered {
                let Some(entry) = self.tree.range(..=sequence.to_be_bytes()).next_back() else { continue };
                let (key, value) = entry.map_err(storage)?;
                let first = decode_sequence(&key);
                segment = Some((first, self.decode(first, &value)?));
            }
            if let Some((first, bodies)) = &segment
                && let Some(body) = bodies.get((sequence - first) as usize)
            {
                found.push((sequence, body.clone()));
            }
        }
        Ok(found)
    }

    pub(super) fn decode(&self, first: u64, value: &[u8]) -> Result<Vec<MessageBody>, BrokerError> {
        decode_segment(value).map_err(|reason| BrokerError::Corrupt {
            topic: self.name.clone(),
            sequence: first,
            reason,
        })
    }
}

/// Splits consecutive messages starting at sequence `first` into encoded segments of about
/// `SEGMENT_BYTES`, each with the sequence number of its first message.
pub(super) fn segments(first: u64, bodies: &[MessageBody]) -> Vec<(u64, Vec<u8>)> {
    let mut encoded = Vec::new();
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len() && (end == start || bytes + encoded_size(&bodies[end]) <= SEGMENT_BYTES) {
            bytes += encoded_size(&bodies[end]);
            end += 1;
        }
        let segment = crate::codec::encode(&&bodies[start..end]);
        encoded.push((first + start as u64, segment));
        start = end;
    }
    encoded
}

/// About how many bytes `body` takes in an encoded segment (its varint lengths and numbers aside).
pub(super) fn encoded_size(body: &MessageBody) -> usize {
    let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    body.value.len()
        + text(&body.key)
        + text(&body.partition_key)
        + body.properties.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
        + 32
}

pub(super) fn decode_segment(bytes: &[u8]) -> Result<Vec<MessageBody>, String> {
    crate::codec::decode(bytes).map_err(|error| error.to_string())
}

pub(super) fn decode_sequence(bytes: &[u8]) -> u64 {
    let mut buffer = [0; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buffer)
}
