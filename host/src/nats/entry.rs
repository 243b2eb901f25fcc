//! Batched entries: many fnhost messages in one JetStream message, as Pulsar's producers batch.
//!
//! A JetStream message costs the server the same whether it holds one small message or a
//! thousand: a stream write, a delivery and an acknowledgement. So a produce call and a commit's
//! outputs to one topic go out as few entries as their size allows. An entry's headers say how
//! many messages it holds and in which format; a JetStream message without them is one message.
//!
//! A message's position in its topic is its entry's stream sequence and its index in the entry
//! (Pulsar's entry id and batch index), packed into one number that grows in append order, so
//! acknowledgement ranges, commit intents and message ids work on positions as they did on
//! sequences.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::codec::{decode, encode};
use crate::engine::broker::{MessageBody, key_route};

/// The header holding how many messages an entry has.
pub(super) const COUNT_HEADER: &str = "Fnhost-Entry-Count";
/// The header naming an entry's format.
pub(super) const FORMAT_HEADER: &str = "Fnhost-Entry-Format";
/// The one entry format: the bodies as one record in fnhost's binary form (`codec`).
pub(super) const FORMAT: &str = "bodies-bincode-1";
/// How many low bits of a position are the index in the entry.
const INDEX_BITS: u32 = 16;
/// Most messages in one entry: as many as the index bits can number.
pub const MAX_ENTRY_MESSAGES: usize = 1 << INDEX_BITS;
/// What a message costs an entry beyond its value, key and properties (the record's framing and
/// publish time), for the size bound; a bound, not an exact figure.
const FRAMING_BYTES: usize = 32;

/// The position of message `index` of the entry at stream sequence `stream_sequence` (from 1).
pub(super) fn position(stream_sequence: u64, index: u32) -> u64 {
    ((stream_sequence - 1) << INDEX_BITS) | u64::from(index)
}

/// The stream sequence of the entry holding the message at `position`, and its index there.
pub(super) fn entry_of(position: u64) -> (u64, u32) {
    ((position >> INDEX_BITS) + 1, (position & (MAX_ENTRY_MESSAGES as u64 - 1)) as u32)
}

/// The key-shared routing hash of message `index` of the entry at `stream_sequence`: its
/// partition key's or key's; a keyless message's spreads keyless messages over the shares.
pub(super) fn route(body: &MessageBody, stream_sequence: u64, index: u32) -> u64 {
    match body.partition_key.as_deref().or(body.key.as_deref()) {
        Some(key) => key_route(key),
        None => stream_sequence.wrapping_add(u64::from(index)),
    }
}

/// One entry ready to publish: its headers and payload.
pub(super) struct Packed {
    pub(super) headers: HeaderMap,
    pub(super) payload: Bytes,
    /// How many messages it holds.
    pub(super) count: u32,
}

/// Packs `bodies` into entries, in order, each of at most `max_bytes` (a message larger than
/// that goes alone) and [`MAX_ENTRY_MESSAGES`] messages. The packing depends only on the bodies'
/// values, keys and properties, so a commit that is repeated packs its outputs the same way and
/// its entries keep their message ids.
pub(super) fn pack(bodies: &[MessageBody], max_bytes: usize) -> Vec<Packed> {
    let mut entries = Vec::new();
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len() && end - start < MAX_ENTRY_MESSAGES {
            let size = approximate_size(&bodies[end]);
            if end > start && bytes + size > max_bytes {
                break;
            }
            bytes += size;
            end += 1;
        }
        entries.push(packed(&bodies[start..end]));
        start = end;
    }
    entries
}

fn approximate_size(body: &MessageBody) -> usize {
    let properties: usize = body.properties.iter().map(|(name, value)| name.len() + value.len() + 2).sum();
    body.value.len() + body.key.as_ref().map_or(0, String::len) + properties + FRAMING_BYTES
}

fn packed(bodies: &[MessageBody]) -> Packed {
    let mut headers = HeaderMap::new();
    headers.insert(COUNT_HEADER, bodies.len().to_string().as_str());
    headers.insert(FORMAT_HEADER, FORMAT);
    let count = u32::try_from(bodies.len()).expect("an entry holds at most MAX_ENTRY_MESSAGES");
    Packed { headers, payload: encode(&bodies).into(), count }
}

/// The messages of an entry, from its headers and payload; an error says what is wrong with it.
pub(super) fn unpack(headers: Option<&HeaderMap>, payload: &[u8]) -> Result<Vec<MessageBody>, String> {
    let Some(count) = headers.and_then(|headers| headers.get(COUNT_HEADER)) else {
        return decode::<MessageBody>(payload).map(|body| vec![body]).map_err(|error| error.to_string());
    };
    let format = headers.and_then(|headers| headers.get(FORMAT_HEADER)).map(|value| value.as_str()).unwrap_or("");
    if format != FORMAT {
        return Err(format!("an entry of format `{format}`, which this fnhost cannot read (it reads `{FORMAT}`)"));
    }
    let count: usize = count.as_str().parse().map_err(|_| format!("an entry count of `{}`", count.as_str()))?;
    let bodies: Vec<MessageBody> = decode(payload).map_err(|error| error.to_string())?;
    if bodies.len() != count || count > MAX_ENTRY_MESSAGES {
        return Err(format!("an entry that says it has {count} messages and holds {}", bodies.len()));
    }
    Ok(bodies)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: &str) -> MessageBody {
        MessageBody {
            value: value.as_bytes().to_vec(),
            key: Some("k".into()),
            properties: vec![("p".into(), "v".into())],
            event_time: Some(7),
            publish_time: 9,
            partition_key: None,
        }
    }

    #[test]
    fn positions_keep_append_order_and_give_back_their_entry() {
        let positions = [position(1, 0), position(1, 1), position(1, 65_535), position(2, 0), position(3, 4)];
        assert!(positions.is_sorted());
        assert_eq!(positions[0], 0, "the first message of a topic is at 0, as on the embedded engine");
        for (stream_sequence, index) in [(1, 0), (1, 65_535), (2, 0), (1 << 40, 17)] {
            let at = position(stream_sequence, index);
            assert_eq!(entry_of(at), (stream_sequence, index));
            assert!(at < position(stream_sequence + 1, 0));
        }
    }

    #[test]
    fn packing_keeps_order_and_bounds_and_unpacking_gives_the_bodies_back() {
        let bodies: Vec<MessageBody> = (0..100).map(|index| body(&"x".repeat(index * 10))).collect();
        let entries = pack(&bodies, 4_096);
        assert!(entries.len() > 1, "100 messages of up to 1 KiB do not fit in one 4 KiB entry");
        let mut unpacked = Vec::new();
        for entry in &entries {
            assert!(entry.payload.len() <= 4_096 + 1_024, "an entry is at most its bound and one message");
            unpacked.extend(unpack(Some(&entry.headers), &entry.payload).unwrap());
        }
        assert_eq!(unpacked, bodies);
        // One message larger than the bound goes alone.
        let large = vec![body(&"y".repeat(10_000)), body("z")];
        assert_eq!(pack(&large, 4_096).len(), 2);
        // The packing is the same when repeated, whatever the publish times.
        let restamped: Vec<MessageBody> =
            bodies.iter().map(|body| MessageBody { publish_time: u64::MAX, ..body.clone() }).collect();
        let sizes = |entries: Vec<Packed>| -> Vec<usize> {
            entries.iter().map(|entry| unpack(Some(&entry.headers), &entry.payload).unwrap().len()).collect()
        };
        assert_eq!(sizes(pack(&bodies, 4_096)), sizes(pack(&restamped, 4_096)));
    }

    #[test]
    fn a_message_without_headers_is_one_message_and_a_damaged_entry_is_refused() {
        let one = body("v");
        assert_eq!(unpack(None, &encode(&one)).unwrap(), vec![one.clone()]);
        let entry = pack(&[one.clone(), one.clone()], 1 << 20).remove(0);
        let mut lying = entry.headers.clone();
        lying.insert(COUNT_HEADER, "3");
        assert!(unpack(Some(&lying), &entry.payload).unwrap_err().contains("says it has 3"));
        let mut unknown = entry.headers.clone();
        unknown.insert(FORMAT_HEADER, "bodies-bincode-9");
        assert!(unpack(Some(&unknown), &entry.payload).unwrap_err().contains("cannot read"));
        assert!(unpack(Some(&entry.headers), &entry.payload[..entry.payload.len() / 2]).is_err());
    }
}
