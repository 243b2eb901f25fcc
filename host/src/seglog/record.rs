//! One record on disk: a header (payload length, CRC, id) and the payload.
//!
//! ```text
//! [len: u32 LE] [crc: u32 LE, CRC-32 of id ++ payload] [id: u64 LE] [payload: len bytes]
//! ```
//!
//! The CRC covers the id, so that a record copied whole to the wrong place is caught as surely
//! as a flipped bit.

use crate::limits::MAX_LOG_RECORD_BYTES;

/// Bytes before a record's payload.
pub(super) const HEADER_BYTES: usize = 16;

/// Appends the record `id` with `payload` to `buffer`.
pub(super) fn encode(buffer: &mut Vec<u8>, id: u64, payload: &[u8]) {
    buffer.reserve(HEADER_BYTES + payload.len());
    buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buffer.extend_from_slice(&checksum(id, payload).to_le_bytes());
    buffer.extend_from_slice(&id.to_le_bytes());
    buffer.extend_from_slice(payload);
}

/// The CRC a record with this id and payload carries.
fn checksum(id: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// What the bytes at some offset of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Scanned {
    /// A whole record: its id, and where its payload lies in the bytes given.
    Record { id: u64, payload: std::ops::Range<usize>, len: usize },
    /// The bytes end here, exactly at a record boundary.
    End,
    /// What is here is not a whole, valid record: a torn write or damage, and why.
    Damaged(String),
}

/// Reads the record that starts at `offset` of `bytes`.
pub(super) fn scan(bytes: &[u8], offset: usize) -> Scanned {
    let rest = &bytes[offset..];
    if rest.is_empty() {
        return Scanned::End;
    }
    if rest.len() < HEADER_BYTES {
        return Scanned::Damaged(format!("{} bytes of a {HEADER_BYTES}-byte header", rest.len()));
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("four bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("four bytes"));
    let id = u64::from_le_bytes(rest[8..16].try_into().expect("eight bytes"));
    if len > MAX_LOG_RECORD_BYTES {
        return Scanned::Damaged(format!(
            "a length of {len} bytes, over MAX_LOG_RECORD_BYTES ({MAX_LOG_RECORD_BYTES})"
        ));
    }
    if rest.len() < HEADER_BYTES + len {
        return Scanned::Damaged(format!("{} of the record's {len} payload bytes", rest.len() - HEADER_BYTES));
    }
    let payload = offset + HEADER_BYTES..offset + HEADER_BYTES + len;
    if checksum(id, &bytes[payload.clone()]) != crc {
        return Scanned::Damaged("a CRC that does not match the record".into());
    }
    Scanned::Record { id, payload, len: HEADER_BYTES + len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_any_flipped_bit_is_caught() {
        let mut bytes = Vec::new();
        encode(&mut bytes, 7, b"payload");
        assert_eq!(scan(&bytes, 0), Scanned::Record { id: 7, payload: HEADER_BYTES..HEADER_BYTES + 7, len: 23 });
        assert_eq!(scan(&bytes, bytes.len()), Scanned::End);
        for bit in 0..bytes.len() * 8 {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(matches!(scan(&flipped, 0), Scanned::Damaged(_)), "bit {bit} went unnoticed");
        }
        for cut in 1..bytes.len() {
            assert!(matches!(scan(&bytes[..cut], 0), Scanned::Damaged(_)), "a cut at {cut} went unnoticed");
        }
    }
}
