//! Function state: one table per fully qualified function name, read through [`StateStore`].
//!
//! Writes are never applied directly by a function: the instance loop gathers them into
//! [`StateChanges`], which the broker commits atomically with the batch that caused them.

use std::collections::HashMap;

use indexmap::IndexMap;
use indexmap::map::Entry;

use crate::names::Fqfn;

/// A stored value: plain bytes, or a 64-bit counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateValue {
    /// Bytes, as the function put them.
    Bytes(Vec<u8>),
    /// A counter, changed by `incr-counter`.
    Counter(i64),
}

impl StateValue {
    /// The value as `get-state` returns it: a counter reads as 8 big-endian bytes, as in Pulsar.
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Self::Bytes(bytes) => bytes,
            Self::Counter(value) => value.to_be_bytes().to_vec(),
        }
    }
}

/// A value with the version at which it was last written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The value.
    pub value: StateValue,
    /// A number that grows with every write to the table (not necessarily by one).
    pub version: u64,
}

/// One key's pending change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replace the key with bytes.
    Put(Vec<u8>),
    /// Remove the key.
    Delete,
    /// Add to the counter as stored when the change commits (so concurrent instances do not lose increments).
    Add(i64),
    /// Set the counter outright (an increment after a delete in the same batch).
    SetCounter(i64),
}

impl Change {
    /// The change equivalent to `self` followed by `next`.
    pub fn then(self, next: Change) -> Change {
        match (self, next) {
            (Change::Add(a), Change::Add(b)) => Change::Add(a.wrapping_add(b)),
            (Change::SetCounter(a), Change::Add(b)) => Change::SetCounter(a.wrapping_add(b)),
            (Change::Delete, Change::Add(b)) => Change::SetCounter(b),
            (_, next) => next,
        }
    }

    /// The value after applying this change to `stored`.
    pub fn apply(&self, stored: Option<StateValue>) -> Option<StateValue> {
        match self {
            Change::Put(bytes) => Some(StateValue::Bytes(bytes.clone())),
            Change::Delete => None,
            Change::SetCounter(value) => Some(StateValue::Counter(*value)),
            Change::Add(delta) => match stored {
                Some(StateValue::Counter(value)) => Some(StateValue::Counter(value.wrapping_add(*delta))),
                // The overlay refuses increments on byte values, so bytes here means another writer
                // replaced the counter meanwhile; the increment then starts a fresh counter.
                _ => Some(StateValue::Counter(*delta)),
            },
        }
    }
}

/// A map keyed by state keys, which guests choose: foldhash is several times faster than the
/// standard SipHash on short keys, and its per-process random seed keeps chosen collisions out.
/// What starts every key the host keeps in a function's table (a window function's records and
/// progress): no key a function or a client gives may start with it, so those keys are a keyspace
/// of the host's own that no context call and no admin call reaches.
pub const HOST_KEY_PREFIX: char = '\0';

/// Refuses a key that a function or a client gives when it would reach the host's keys.
pub fn check_user_key(key: &str) -> Result<(), String> {
    match key.starts_with(HOST_KEY_PREFIX) {
        true => Err("state keys starting with a NUL character are the host's own (a window function's records); choose another key".into()),
        false => Ok(()),
    }
}

pub(crate) type KeyMap<V> = HashMap<String, V, foldhash::quality::RandomState>;

/// Pending changes to one state table, keyed by state key, in the order their keys were first
/// changed: a key's index stays its own until the changes are cleared, which lets a batch's
/// history name a key by its index ([`crate::engine::history::MessageChange::Sole`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChanges(IndexMap<String, Change, foldhash::quality::RandomState>);

impl StateChanges {
    /// Records `change` after whatever is already pending for `key`.
    pub fn record(&mut self, key: String, change: Change) {
        self.record_noting(key, change, |_, _, _, _| {});
    }

    /// [`StateChanges::record`], first telling `note` the key's index, the key, the change
    /// already pending for it (if any) and the new change.
    #[inline]
    pub fn record_noting(
        &mut self,
        key: String,
        change: Change,
        note: impl FnOnce(usize, &str, Option<&Change>, &Change),
    ) {
        match self.0.entry(key) {
            Entry::Occupied(mut pending) => {
                note(pending.index(), pending.key(), Some(pending.get()), &change);
                let earlier = std::mem::replace(pending.get_mut(), Change::Delete);
                *pending.get_mut() = earlier.then(change);
            }
            Entry::Vacant(vacant) => {
                note(vacant.index(), vacant.key(), None, &change);
                vacant.insert(change);
            }
        }
    }

    /// No changes, with room for `keys` keys.
    pub fn with_capacity(keys: usize) -> Self {
        Self(IndexMap::with_capacity_and_hasher(keys, Default::default()))
    }

    /// The pending change for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Change> {
        self.0.get(key)
    }

    /// The key at `index` (in the order keys were first changed) and its pending change.
    pub fn get_index(&self, index: usize) -> Option<(&String, &Change)> {
        self.0.get_index(index)
    }

    /// Moves every change of `later` after the ones here, leaving `later` empty (with its memory).
    pub fn absorb(&mut self, later: &mut StateChanges) {
        self.absorb_noting(later, |_, _, _, _| {});
    }

    /// [`StateChanges::absorb`], telling `note` of each change as [`StateChanges::record_noting`] does.
    #[inline]
    pub fn absorb_noting(
        &mut self,
        later: &mut StateChanges,
        mut note: impl FnMut(usize, &str, Option<&Change>, &Change),
    ) {
        for (key, change) in later.0.drain(..) {
            self.record_noting(key, change, &mut note);
        }
    }

    /// How many keys change.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Drops everything pending.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The pending changes, in the order their keys were first changed.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Change)> {
        self.0.iter()
    }
}

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The underlying storage failed.
    #[error("state storage failed: {0}")]
    Storage(String),
    /// A stored value could not be decoded.
    #[error(
        "state key `{key}` of {fqfn} cannot be decoded ({reason}); the data directory is damaged or was written by an incompatible fnhost"
    )]
    Corrupt {
        /// The function.
        fqfn: Fqfn,
        /// The key.
        key: String,
        /// What the decoder said.
        reason: String,
    },
}

/// The committed state of functions: read by instances, written by their commits and by operators.
pub trait StateStore: Send + Sync {
    /// The state table of `fqfn`, opened once and read many times.
    fn table(&self, fqfn: &Fqfn) -> Result<Box<dyn StateTable>, StateError>;

    /// Sets `key` of `fqfn`'s table outside any function's commit (an operator's putstate), durably.
    fn put(&self, fqfn: &Fqfn, key: &str, value: StateValue) -> Result<Versioned, StateError>;

    /// Removes `fqfn`'s whole table.
    fn delete_table(&self, fqfn: &Fqfn) -> Result<(), StateError>;

    /// Brings every function's state view up to its latest commit, for an engine that applies
    /// commits to a view after the fact (the cluster engine's changelogs); a cluster's leader
    /// calls it every half second. An engine whose commits write the tables themselves (the
    /// embedded one) keeps this default.
    fn materialise_views(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// One function's state table.
pub trait StateTable: Send {
    /// The committed value of `key`.
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_compose_in_order() {
        let cases = [
            (vec![Change::Add(2), Change::Add(3)], Some(StateValue::Counter(15))),
            (vec![Change::Delete, Change::Add(3)], Some(StateValue::Counter(3))),
            (vec![Change::Add(3), Change::Delete], None),
            (vec![Change::Add(3), Change::Put(b"x".to_vec())], Some(StateValue::Bytes(b"x".to_vec()))),
            (
                vec![Change::Put(b"x".to_vec()), Change::Delete, Change::Add(-1), Change::Add(-1)],
                Some(StateValue::Counter(-2)),
            ),
        ];
        for (changes, expected) in cases {
            let mut pending = StateChanges::default();
            for change in changes.clone() {
                pending.record("k".into(), change);
            }
            let result = pending.get("k").unwrap().apply(Some(StateValue::Counter(10)));
            assert_eq!(result, expected, "{changes:?}");
        }
    }
}
