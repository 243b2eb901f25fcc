//! The one binary form of stored records (bincode's standard configuration), for the embedded
//! store's topics, cursors and state, window records and the NATS engine's records.
//!
//! A stored record is read back from storage that a crash, a disk or a person may have damaged.
//! Its length prefixes are not trusted: the decoder may reserve at most
//! [`RESERVED_BYTES_PER_RECORD_BYTE`] times the record's own size, so a damaged prefix gives an
//! error instead of a request for terabytes.

use bincode::config::{Configuration, Limit};
use bincode::de::Decoder;
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{Decode, Encode};

use crate::engine::broker::MessageBody;
use crate::engine::history::MessageChange;
use crate::engine::state::{Change, StateValue, Versioned};

/// How many bytes the decoder may reserve per byte of the record it decodes.
///
/// Every element of a stored sequence takes at least one byte, and no stored element type is
/// larger than this in memory, so an intact record never reaches the bound.
pub const RESERVED_BYTES_PER_RECORD_BYTE: usize = 1024;

/// Encodes a record.
pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode::config::standard()).expect("encoding into a Vec cannot fail")
}

/// Encodes a record after `prefix`, in one buffer (a header the record is stored behind).
pub fn encode_after<T: Encode>(prefix: &[u8], value: &T) -> Vec<u8> {
    let mut bytes = prefix.to_vec();
    bincode::encode_into_std_write(value, &mut bytes, bincode::config::standard())
        .expect("encoding into a Vec cannot fail");
    bytes
}

/// Decodes a record, reserving at most [`RESERVED_BYTES_PER_RECORD_BYTE`] times its size (rounded
/// up to a power of 16) on the way.
pub fn decode<T: Decode<()>>(bytes: &[u8]) -> Result<T, DecodeError> {
    decode_leading(bytes).map(|(value, _)| value)
}

/// Decodes the record at the start of `bytes`, as [`decode`] does, and returns it with the bytes
/// after it (a record may be followed by another that older readers do not know of).
pub fn decode_leading<T: Decode<()>>(bytes: &[u8]) -> Result<(T, &[u8]), DecodeError> {
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

fn decode_within<T: Decode<()>, const LIMIT: usize>(bytes: &[u8]) -> Result<(T, &[u8]), DecodeError> {
    let config: Configuration<_, _, Limit<LIMIT>> = bincode::config::standard().with_limit::<LIMIT>();
    bincode::decode_from_slice(bytes, config).map(|(value, used)| (value, &bytes[used..]))
}

// The engine's stored types, encoded here rather than derived in the ports: field by field, in
// declaration order, and an enum as its variant's index (a u32) then its fields, which is what
// bincode's derive wrote, so stored data reads back the same.

impl Encode for MessageBody {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.value.encode(encoder)?;
        self.key.encode(encoder)?;
        self.properties.encode(encoder)?;
        self.event_time.encode(encoder)?;
        self.publish_time.encode(encoder)?;
        self.partition_key.encode(encoder)
    }
}

impl<Context> Decode<Context> for MessageBody {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        Ok(Self {
            value: Decode::decode(decoder)?,
            key: Decode::decode(decoder)?,
            properties: Decode::decode(decoder)?,
            event_time: Decode::decode(decoder)?,
            publish_time: Decode::decode(decoder)?,
            partition_key: Decode::decode(decoder)?,
        })
    }
}

const BYTES_VARIANT: u32 = 0;
const COUNTER_VARIANT: u32 = 1;

impl Encode for StateValue {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Bytes(bytes) => {
                BYTES_VARIANT.encode(encoder)?;
                bytes.encode(encoder)
            }
            Self::Counter(count) => {
                COUNTER_VARIANT.encode(encoder)?;
                count.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for StateValue {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        match u32::decode(decoder)? {
            BYTES_VARIANT => Ok(Self::Bytes(Decode::decode(decoder)?)),
            COUNTER_VARIANT => Ok(Self::Counter(Decode::decode(decoder)?)),
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "StateValue",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: BYTES_VARIANT, max: COUNTER_VARIANT },
                found,
            }),
        }
    }
}

/// The variants of a value that expires ([`encode_expiring`]).
const EXPIRING_BYTES_VARIANT: u32 = 2;
const EXPIRING_COUNTER_VARIANT: u32 = 3;

/// Encodes `value`, which expires at `expires_at` if given: as a [`StateValue`] when it does not
/// expire, else with its variant's index moved past the plain ones, its fields, then its expiry.
/// So a value stored before expiry existed reads back unchanged.
pub(crate) fn encode_expiring<E: Encoder>(
    value: &StateValue,
    expires_at: Option<u64>,
    encoder: &mut E,
) -> Result<(), EncodeError> {
    let Some(expires_at) = expires_at else { return value.encode(encoder) };
    match value {
        StateValue::Bytes(bytes) => {
            EXPIRING_BYTES_VARIANT.encode(encoder)?;
            bytes.encode(encoder)?;
        }
        StateValue::Counter(count) => {
            EXPIRING_COUNTER_VARIANT.encode(encoder)?;
            count.encode(encoder)?;
        }
    }
    expires_at.encode(encoder)
}

/// Decodes what [`encode_expiring`] wrote: the value and its expiry.
pub(crate) fn decode_expiring<Context, D: Decoder<Context = Context>>(
    decoder: &mut D,
) -> Result<(StateValue, Option<u64>), DecodeError> {
    Ok(match u32::decode(decoder)? {
        BYTES_VARIANT => (StateValue::Bytes(Decode::decode(decoder)?), None),
        COUNTER_VARIANT => (StateValue::Counter(Decode::decode(decoder)?), None),
        EXPIRING_BYTES_VARIANT => (StateValue::Bytes(Decode::decode(decoder)?), Some(Decode::decode(decoder)?)),
        EXPIRING_COUNTER_VARIANT => (StateValue::Counter(Decode::decode(decoder)?), Some(Decode::decode(decoder)?)),
        found => {
            return Err(DecodeError::UnexpectedVariant {
                type_name: "StateValue",
                allowed: &bincode::error::AllowedEnumVariants::Range {
                    min: BYTES_VARIANT,
                    max: EXPIRING_COUNTER_VARIANT,
                },
                found,
            });
        }
    })
}

impl Encode for Versioned {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        encode_expiring(&self.value, self.expires_at, encoder)?;
        self.version.encode(encoder)
    }
}

impl<Context> Decode<Context> for Versioned {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let (value, expires_at) = decode_expiring(decoder)?;
        Ok(Self { value, version: Decode::decode(decoder)?, expires_at })
    }
}

const PUT_VARIANT: u32 = 0;
const DELETE_VARIANT: u32 = 1;
const ADD_VARIANT: u32 = 2;
const SET_COUNTER_VARIANT: u32 = 3;
/// A write with a time to live: its plain variant's index plus this, its fields, then the time
/// to live; a write without one is stored as before time to live existed.
const WITH_TTL: u32 = 4;

impl Encode for Change {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        let with_ttl = |variant: u32, ttl: Option<u64>| if ttl.is_some() { variant + WITH_TTL } else { variant };
        match self {
            Self::Put(bytes, ttl) => {
                with_ttl(PUT_VARIANT, *ttl).encode(encoder)?;
                bytes.encode(encoder)?;
            }
            Self::Delete => DELETE_VARIANT.encode(encoder)?,
            Self::Add(delta, ttl) => {
                with_ttl(ADD_VARIANT, *ttl).encode(encoder)?;
                delta.encode(encoder)?;
            }
            Self::SetCounter(value, ttl) => {
                with_ttl(SET_COUNTER_VARIANT, *ttl).encode(encoder)?;
                value.encode(encoder)?;
            }
        }
        match self.ttl() {
            Some(ttl) => ttl.encode(encoder),
            None => Ok(()),
        }
    }
}

impl<Context> Decode<Context> for Change {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        let variant = u32::decode(decoder)?;
        let (plain, has_ttl) = match variant.checked_sub(WITH_TTL) {
            Some(plain) => (plain, true),
            None => (variant, false),
        };
        fn ttl<Context, D: Decoder<Context = Context>>(
            decoder: &mut D,
            has_ttl: bool,
        ) -> Result<Option<u64>, DecodeError> {
            has_ttl.then(|| u64::decode(decoder)).transpose()
        }
        Ok(match (plain, has_ttl) {
            (PUT_VARIANT, _) => {
                let bytes = Decode::decode(decoder)?;
                Self::Put(bytes, ttl(decoder, has_ttl)?)
            }
            (DELETE_VARIANT, false) => Self::Delete,
            (ADD_VARIANT, _) => {
                let delta = Decode::decode(decoder)?;
                Self::Add(delta, ttl(decoder, has_ttl)?)
            }
            (SET_COUNTER_VARIANT, _) => {
                let value = Decode::decode(decoder)?;
                Self::SetCounter(value, ttl(decoder, has_ttl)?)
            }
            _ => {
                return Err(DecodeError::UnexpectedVariant {
                    type_name: "Change",
                    allowed: &bincode::error::AllowedEnumVariants::Range {
                        min: PUT_VARIANT,
                        max: WITH_TTL + SET_COUNTER_VARIANT,
                    },
                    found: variant,
                });
            }
        })
    }
}

const SOLE_VARIANT: u32 = 0;
const OWN_VARIANT: u32 = 1;

impl Encode for MessageChange {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        match self {
            Self::Sole(index) => {
                SOLE_VARIANT.encode(encoder)?;
                index.encode(encoder)
            }
            Self::Own(key, change) => {
                OWN_VARIANT.encode(encoder)?;
                key.encode(encoder)?;
                change.encode(encoder)
            }
        }
    }
}

impl<Context> Decode<Context> for MessageChange {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Self, DecodeError> {
        match u32::decode(decoder)? {
            SOLE_VARIANT => Ok(Self::Sole(Decode::decode(decoder)?)),
            OWN_VARIANT => Ok(Self::Own(Decode::decode(decoder)?, Decode::decode(decoder)?)),
            found => Err(DecodeError::UnexpectedVariant {
                type_name: "MessageChange",
                allowed: &bincode::error::AllowedEnumVariants::Range { min: SOLE_VARIANT, max: OWN_VARIANT },
                found,
            }),
        }
    }
}

// Records that hold these types derive their decoding, which asks for the borrowing form too.
bincode::impl_borrow_decode!(Change);
bincode::impl_borrow_decode!(MessageChange);
bincode::impl_borrow_decode!(MessageBody);
bincode::impl_borrow_decode!(StateValue);
bincode::impl_borrow_decode!(Versioned);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_engines_types_are_stored_as_bincodes_derive_stored_them() {
        let body = MessageBody {
            value: b"v".to_vec(),
            key: Some("k".into()),
            properties: vec![("a".into(), "b".into())],
            event_time: Some(7),
            publish_time: 9,
            partition_key: None,
        };
        let as_fields =
            (&body.value, &body.key, &body.properties, body.event_time, body.publish_time, &body.partition_key);
        assert_eq!(encode(&body), encode(&as_fields));
        assert_eq!(encode(&StateValue::Bytes(b"x".to_vec())), encode(&(0u32, b"x".to_vec())));
        assert_eq!(encode(&StateValue::Counter(-3)), encode(&(1u32, -3i64)));
        let versioned = Versioned::lasting(StateValue::Counter(5), 11);
        assert_eq!(encode(&versioned), encode(&((1u32, 5i64), 11u64)));
        assert_eq!(decode::<Versioned>(&encode(&versioned)).unwrap(), versioned);
        assert_eq!(encode(&Change::Put(b"x".to_vec(), None)), encode(&(0u32, b"x".to_vec())));
        assert_eq!(encode(&Change::Add(-2, None)), encode(&(2u32, -2i64)));
        assert!(decode::<StateValue>(&encode(&(2u32, 0i64))).is_err(), "an unknown variant is an error");
    }

    #[test]
    fn values_and_changes_with_a_time_to_live_read_back_as_written() {
        let values = [
            Versioned { value: StateValue::Bytes(b"x".to_vec()), version: 3, expires_at: Some(1_700_000_000_000) },
            Versioned { value: StateValue::Counter(-9), version: 4, expires_at: Some(0) },
            Versioned::lasting(StateValue::Bytes(Vec::new()), 5),
        ];
        for value in values {
            assert_eq!(decode::<Versioned>(&encode(&value)).unwrap(), value);
        }
        let changes = [
            Change::Put(b"v".to_vec(), Some(3_600_000)),
            Change::Add(7, Some(1)),
            Change::SetCounter(-1, Some(u64::MAX)),
            Change::Put(b"v".to_vec(), None),
            Change::Add(7, None),
            Change::SetCounter(0, None),
            Change::Delete,
        ];
        for change in changes {
            assert_eq!(decode::<Change>(&encode(&change)).unwrap(), change);
        }
        assert!(decode::<Change>(&encode(&5u32)).is_err(), "a delete has no time to live");
        assert!(decode::<Change>(&encode(&8u32)).is_err(), "an unknown variant is an error");
    }

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
        assert!(matches!(error, DecodeError::LimitExceeded), "{error:?}");
        let error = decode::<Vec<MessageBody>>(&huge_bytes).unwrap_err();
        assert!(matches!(error, DecodeError::LimitExceeded), "{error:?}");
    }
}
