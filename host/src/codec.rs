//! The one binary form of stored records (bincode's standard configuration), for the embedded
//! store's topics, cursors and state, window records and the NATS engine's records.
//!
//! A stored record is read back from storage that a crash, a disk or a person may have damaged.
//! Its length prefixes are not trusted: the decoder may reserve at most
//! [`RESERVED_BYTES_PER_RECORD_BYTE`] times the record's own size, so a damaged prefix gives an
//! error instead of a request for terabytes.

use bincode::config::{Configuration, Limit};
use bincode::{Decode, Encode};

/// How many bytes the decoder may reserve per byte of the record it decodes.
///
/// Every element of a stored sequence takes at least one byte, and no stored element type is
/// larger than this in memory, so an intact record never reaches the bound.
pub const RESERVED_BYTES_PER_RECORD_BYTE: usize = 1024;

/// Encodes a record.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode::config::standard()).expect("encoding into a Vec cannot fail")
}

/// Decodes a record, reserving at most [`RESERVED_BYTES_PER_RECORD_BYTE`] times its size (rounded
/// up to a power of 16) on the way.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let reserve = bytes.len().max(1).saturating_mul(RESERVED_BYTES_PER_RECORD_BYTE);
    // The limit is a type parameter of bincode's configuration: one of a few sizes.
    if reserve <= 1 << 20 {
        decode_within::<T, { 1 << 20 }>(bytes)
    } else if reserve <= 1 << 24 {
        decode_within::<T, { 1 << 24 }>(bytes)
    } else if reserve <= 1 << 28 {
        decode_within::<T, { 1 << 28 }>(bytes)
    } else if reserve <= 1 << 32 {
        decode_within::<T, { 1 << 32 }>(bytes)
    } else if reserve <= 1 << 36 {
        decode_within::<T, { 1 << 36 }>(bytes)
    } else {
        decode_within::<T, { 1 << 40 }>(bytes)
    }
}

fn decode_within<T: Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<T, bincode::error::DecodeError> {
    let config: Configuration<_, _, Limit<LIMIT>> = bincode::config::standard().with_limit::<LIMIT>();
    bincode::decode_from_slice(bytes, config).map(|(value, _)| value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::broker::MessageBody;

    #[test]
    fn a_record_decodes_to_what_was_encoded() {
        let body = MessageBody {
            value: b"hello".to_vec(),
            key: Some("user1".into()),
            properties: vec![("a".into(), "b".into())],
            event_time: None,
            publish_time: 1_700_000_000_000,
            partition_key: Some("p".into()),
        };
        let empty = MessageBody { value: Vec::new(), key: None, properties: Vec::new(), ..body.clone() };
        let bodies = vec![body.clone(), empty, body];
        assert_eq!(decode::<Vec<MessageBody>>(&encode(&bodies)).unwrap(), bodies);
    }

    #[test]
    fn a_damaged_length_prefix_is_an_error_not_an_allocation() {
        // A byte vector that claims 2^62 bytes, then a sequence that claims 2^62 message bodies.
        let mut huge_bytes = vec![253];
        huge_bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let error = decode::<Vec<u8>>(&huge_bytes).unwrap_err();
        assert!(matches!(error, bincode::error::DecodeError::LimitExceeded), "{error:?}");
        let error = decode::<Vec<MessageBody>>(&huge_bytes).unwrap_err();
        assert!(matches!(error, bincode::error::DecodeError::LimitExceeded), "{error:?}");
    }
}
