//! The shapes a function's state changelog and view hold (`changelog`): a change as logged, a
//! value with its expiry, and a view entry. Each is stored as older fnhosts stored it when it
//! has no expiry, so that their changelogs, views, intents and history read the same.

use bincode::{Decode, Encode};

use crate::engine::state::{Change, StateValue, Versioned};

/// What a key holds in the view: a value, and when it expires (`None`: never). Stored as a
/// `StateValue` was before values could expire, so older entries, intents and history read as
/// values that do not expire ([`crate::codec::encode_expiring`]).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Held {
    pub(crate) value: StateValue,
    pub(crate) expires_at: Option<u64>,
}

impl Held {
    /// A value that does not expire.
    pub(crate) fn lasting(value: StateValue) -> Self {
        Self { value, expires_at: None }
    }

    /// The value as the state port reads it, with `version`.
    pub(crate) fn versioned(self, version: u64) -> Versioned {
        Versioned { value: self.value, version, expires_at: self.expires_at }
    }

    /// Whether the value has expired at `now`.
    pub(crate) fn expired_at(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }
}

impl From<Versioned> for Held {
    fn from(versioned: Versioned) -> Self {
        Self { value: versioned.value, expires_at: versioned.expires_at }
    }
}

impl Encode for Held {
    fn encode<E: bincode::enc::Encoder>(&self, encoder: &mut E) -> Result<(), bincode::error::EncodeError> {
        crate::codec::encode_expiring(&self.value, self.expires_at, encoder)
    }
}

impl<Context> Decode<Context> for Held {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let (value, expires_at) = crate::codec::decode_expiring(decoder)?;
        Ok(Self { value, expires_at })
    }
}

bincode::impl_borrow_decode!(Held);

/// One change, as the changelog holds it. A time to live is held as the expiry it gives, fixed
/// when the change is logged; variants that expiry added come after the older ones, so that a
/// changelog written before reads the same.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) enum Logged {
    /// The key holds these bytes.
    Put(Vec<u8>),
    /// The key holds nothing.
    Delete,
    /// The counter grows by this (written before expiry existed).
    Add(i64),
    /// The counter holds this.
    SetCounter(i64),
    /// The key holds these bytes until the expiry.
    PutExpiring(Vec<u8>, u64),
    /// The counter holds this until the expiry.
    SetCounterExpiring(i64, u64),
    /// The counter, as it was live at the commit's time, grows by this, and expires then if given.
    AddAt {
        /// How much it grows by.
        delta: i64,
        /// When the commit was logged, in milliseconds since the epoch.
        committed_at: u64,
        /// When the new value expires.
        expires_at: Option<u64>,
    },
    /// Removes the key if it had expired by then (a sweep of the expiry index): a write logged
    /// before it that gave the key a new life keeps it.
    Expire(u64),
}

impl Logged {
    /// The change as logged at `now`: its time to live becomes an expiry.
    pub(super) fn of(change: &Change, now: u64) -> Self {
        let expires_at = change.expires_at(now);
        match (change, expires_at) {
            (Change::Put(bytes, _), None) => Self::Put(bytes.clone()),
            (Change::Put(bytes, _), Some(at)) => Self::PutExpiring(bytes.clone(), at),
            (Change::Delete, _) => Self::Delete,
            (Change::Add(delta, _), _) => Self::AddAt { delta: *delta, committed_at: now, expires_at },
            (Change::SetCounter(value, _), None) => Self::SetCounter(*value),
            (Change::SetCounter(value, _), Some(at)) => Self::SetCounterExpiring(*value, at),
        }
    }

    /// The change that leaves `held` (`None`: nothing).
    pub(super) fn to(held: Option<&Held>) -> Self {
        match held {
            Some(Held { value: StateValue::Bytes(bytes), expires_at: None }) => Self::Put(bytes.clone()),
            Some(Held { value: StateValue::Bytes(bytes), expires_at: Some(at) }) => {
                Self::PutExpiring(bytes.clone(), *at)
            }
            Some(Held { value: StateValue::Counter(count), expires_at: None }) => Self::SetCounter(*count),
            Some(Held { value: StateValue::Counter(count), expires_at: Some(at) }) => {
                Self::SetCounterExpiring(*count, *at)
            }
            None => Self::Delete,
        }
    }

    /// What the key holds after this change, if it held `held` before.
    pub(super) fn apply(&self, held: Option<Held>) -> Option<Held> {
        let counter = |held: Option<Held>| match held.map(|held| held.value) {
            Some(StateValue::Counter(count)) => count,
            // Bytes here means another writer replaced the counter: the increment starts afresh.
            _ => 0,
        };
        match self {
            Self::Put(bytes) => Some(Held::lasting(StateValue::Bytes(bytes.clone()))),
            Self::PutExpiring(bytes, at) => {
                Some(Held { value: StateValue::Bytes(bytes.clone()), expires_at: Some(*at) })
            }
            Self::Delete => None,
            Self::SetCounter(value) => Some(Held::lasting(StateValue::Counter(*value))),
            Self::SetCounterExpiring(value, at) => {
                Some(Held { value: StateValue::Counter(*value), expires_at: Some(*at) })
            }
            Self::Add(delta) => Some(Held::lasting(StateValue::Counter(counter(held).wrapping_add(*delta)))),
            Self::AddAt { delta, committed_at, expires_at } => {
                let live = held.filter(|held| !held.expired_at(*committed_at));
                Some(Held { value: StateValue::Counter(counter(live).wrapping_add(*delta)), expires_at: *expires_at })
            }
            Self::Expire(at) => held.filter(|held| !held.expired_at(*at)),
        }
    }
}

/// A view entry: what a key holds and the changelog sequence that last changed it. A removed
/// key keeps its entry, with no value, so that a late applier knows the removal is newer.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
pub(super) struct ViewEntry {
    pub(super) value: Option<Held>,
    pub(super) sequence: u64,
}

impl ViewEntry {
    /// The entry as the state port reads it: the value, versioned by its changelog sequence.
    pub(super) fn versioned(self) -> Option<Versioned> {
        let sequence = self.sequence;
        self.value.map(|held| held.versioned(sequence))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn a_logged_change_and_a_view_entry_survive_their_encoding() {
        let changes = [
            Logged::Put(b"v".to_vec()),
            Logged::Delete,
            Logged::Add(-3),
            Logged::SetCounter(9),
            Logged::PutExpiring(b"v".to_vec(), 5),
            Logged::SetCounterExpiring(1, 6),
            Logged::AddAt { delta: 2, committed_at: 7, expires_at: Some(8) },
            Logged::Expire(9),
        ];
        for change in changes {
            let record = vec![("key".to_owned(), change)];
            assert_eq!(decode::<Vec<(String, Logged)>>(&encode(&record)).unwrap(), record);
        }
        let entry = ViewEntry { value: Some(Held::lasting(StateValue::Counter(4))), sequence: 12 };
        assert_eq!(decode::<ViewEntry>(&encode(&entry)).unwrap(), entry);
        assert_eq!(entry.versioned(), Some(Versioned::lasting(StateValue::Counter(4), 12)));
        assert_eq!(ViewEntry { value: None, sequence: 13 }.versioned(), None);
        let expiring = ViewEntry {
            value: Some(Held { value: StateValue::Bytes(b"x".to_vec()), expires_at: Some(3) }),
            sequence: 1,
        };
        assert_eq!(decode::<ViewEntry>(&encode(&expiring)).unwrap(), expiring);
        // Older entries, intents and history hold an `Option<StateValue>` where a `Held` is now.
        let older = encode(&(Some(StateValue::Bytes(b"old".to_vec())), 4u64));
        assert_eq!(
            decode::<ViewEntry>(&older).unwrap().versioned(),
            Some(Versioned::lasting(StateValue::Bytes(b"old".to_vec()), 4))
        );
    }

    #[test]
    fn changes_apply_with_their_expiry_and_an_increment_sees_only_a_live_counter() {
        let counter = |count, expires_at| Some(Held { value: StateValue::Counter(count), expires_at });
        let add = |committed_at| Logged::AddAt { delta: 1, committed_at, expires_at: Some(committed_at + 10) };
        assert_eq!(add(5).apply(counter(4, Some(6))), counter(5, Some(15)), "rewritten before its expiry: lives on");
        assert_eq!(add(6).apply(counter(4, Some(6))), counter(1, Some(16)), "expired: starts afresh");
        assert_eq!(Logged::Expire(6).apply(counter(4, Some(6))), None);
        assert_eq!(Logged::Expire(6).apply(counter(4, Some(7))), counter(4, Some(7)), "written again: kept");
        assert_eq!(Logged::Expire(6).apply(counter(4, None)), counter(4, None));
        assert_eq!(Logged::of(&Change::Put(b"v".to_vec(), Some(10)), 100), Logged::PutExpiring(b"v".to_vec(), 110));
        assert_eq!(Logged::to(counter(2, Some(3)).as_ref()).apply(None), counter(2, Some(3)));
    }
}
