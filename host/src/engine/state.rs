//! Function state: one table per fully qualified function name, read through [`StateStore`].
//!
//! Writes are never applied directly by a function: the instance loop gathers them into
//! [`StateChanges`], which the broker commits atomically with the batch that caused them.

use std::collections::HashMap;

use indexmap::IndexMap;
use indexmap::map::Entry;

use crate::engine::clock::Clock;
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
    /// When the value expires, in milliseconds since the Unix epoch (its time to live from the
    /// commit that wrote it); `None`: it lives until it is deleted or written again.
    pub expires_at: Option<u64>,
}

impl Versioned {
    /// A value that does not expire.
    pub fn lasting(value: StateValue, version: u64) -> Self {
        Self { value, version, expires_at: None }
    }

    /// Whether the value has expired at `now` (milliseconds since the Unix epoch): from its
    /// expiry on, it reads as absent everywhere.
    pub fn expired_at(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|expires_at| expires_at <= now)
    }
}

/// The value as it reads at `now`: absent once it has expired.
pub fn live(stored: Option<Versioned>, now: u64) -> Option<Versioned> {
    stored.filter(|versioned| !versioned.expired_at(now))
}

/// One key's pending change. A write carries its time to live in milliseconds (`None`: none),
/// which the commit that makes it durable turns into an expiry, so that a key lives its whole
/// time to live from the moment others can read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replace the key with bytes.
    Put(Vec<u8>, Option<u64>),
    /// Remove the key.
    Delete,
    /// Add to the counter as stored when the change commits (so concurrent instances do not lose increments).
    Add(i64, Option<u64>),
    /// Set the counter outright (an increment after a delete in the same batch).
    SetCounter(i64, Option<u64>),
}

impl Change {
    /// The change equivalent to `self` followed by `next`. The later write's time to live wins.
    pub fn then(self, next: Change) -> Change {
        match (self, next) {
            (Change::Add(a, _), Change::Add(b, ttl)) => Change::Add(a.wrapping_add(b), ttl),
            (Change::SetCounter(a, _), Change::Add(b, ttl)) => Change::SetCounter(a.wrapping_add(b), ttl),
            (Change::Delete, Change::Add(b, ttl)) => Change::SetCounter(b, ttl),
            (_, next) => next,
        }
    }

    /// The value after applying this change to `stored` (which the caller read as live).
    pub fn apply(&self, stored: Option<StateValue>) -> Option<StateValue> {
        match self {
            Change::Put(bytes, _) => Some(StateValue::Bytes(bytes.clone())),
            Change::Delete => None,
            Change::SetCounter(value, _) => Some(StateValue::Counter(*value)),
            Change::Add(delta, _) => match stored {
                Some(StateValue::Counter(value)) => Some(StateValue::Counter(value.wrapping_add(*delta))),
                // The overlay refuses increments on byte values, so bytes here means another writer
                // replaced the counter meanwhile; the increment then starts a fresh counter.
                _ => Some(StateValue::Counter(*delta)),
            },
        }
    }

    /// The written value's time to live in milliseconds, if it has one.
    pub fn ttl(&self) -> Option<u64> {
        match self {
            Change::Put(_, ttl) | Change::Add(_, ttl) | Change::SetCounter(_, ttl) => *ttl,
            Change::Delete => None,
        }
    }

    /// When the value this change writes expires, if committed at `now`.
    pub fn expires_at(&self, now: u64) -> Option<u64> {
        self.ttl().map(|ttl| now.saturating_add(ttl))
    }

    /// Whether the change adds to the counter as stored (rather than setting the key outright).
    pub fn is_add(&self) -> bool {
        matches!(self, Change::Add(..))
    }

    /// The change applied to `stored` at `now`, as the table keeps it: versioned `version`, with
    /// its expiry. `stored` is read as live at `now`.
    pub fn committed(&self, stored: Option<Versioned>, version: u64, now: u64) -> Option<Versioned> {
        let stored = live(stored, now).map(|versioned| versioned.value);
        self.apply(stored).map(|value| Versioned { value, version, expires_at: self.expires_at(now) })
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

    /// The clock that decides when values expire: what a commit's time to live counts from, and
    /// what a read compares expiries with. A test advances it to see a time to live pass.
    fn clock(&self) -> &Clock;

    /// Brings every function's state view up to its latest commit, for an engine that applies
    /// commits to a view after the fact (the cluster engine's changelogs); a cluster's leader
    /// calls it every half second, and the engine sweeps expired values then. An engine whose
    /// commits write the tables themselves (the embedded one) keeps this default.
    fn materialise_views(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// One function's state table.
pub trait StateTable: Send {
    /// The committed value of `key`, unless it has expired.
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError>;

    /// The page's committed keys: live (not expired), never the host's, in byte order.
    fn list(&self, page: &KeyPage) -> Result<Vec<String>, StateError>;
}

/// A page of a table's keys: those that start with `prefix`, after `after` (exclusive) when
/// given, at most `limit` of them. The host's own keys are in no page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPage {
    /// What every key of the page starts with.
    pub prefix: String,
    /// The page starts after this key: the last key of the page before.
    pub after: Option<String>,
    /// Most keys in the page.
    pub limit: usize,
}

/// Why a page of keys cannot be listed.
#[derive(Debug, thiserror::Error)]
pub enum KeyPageError {
    /// A named limit was passed.
    #[error("{0}")]
    LimitExceeded(String),
    /// The prefix or the key to start after cannot be a user key.
    #[error("{0}")]
    Invalid(String),
}

impl KeyPage {
    /// The page a function or a client asks for, checked against the limits and the host's keyspace.
    pub fn new(prefix: String, after: Option<String>, limit: usize) -> Result<Self, KeyPageError> {
        use crate::limits::{MAX_STATE_KEY_LEN, MAX_STATE_KEYS_LISTED};
        if !(1..=MAX_STATE_KEYS_LISTED).contains(&limit) {
            return Err(KeyPageError::LimitExceeded(format!(
                "a page of {limit} keys was asked for; give from 1 to {MAX_STATE_KEYS_LISTED} (MAX_STATE_KEYS_LISTED) and ask again after the last key for more"
            )));
        }
        for (what, given) in [("prefix", Some(&prefix)), ("key to list after", after.as_ref())] {
            let Some(given) = given else { continue };
            if given.len() > MAX_STATE_KEY_LEN {
                return Err(KeyPageError::LimitExceeded(format!(
                    "the {what} is {} bytes; the limit (MAX_STATE_KEY_LEN) is {MAX_STATE_KEY_LEN}",
                    given.len()
                )));
            }
        }
        check_user_key(&prefix).map_err(KeyPageError::Invalid)?;
        Ok(Self { prefix, after, limit })
    }

    /// Whether `key` is in the page's range (whatever the limit).
    pub fn holds(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
            && self.after.as_deref().is_none_or(|after| key > after)
            && !key.starts_with(HOST_KEY_PREFIX)
    }

    /// Where a scan in byte order starts: the page's first key is this or after it. The host's
    /// keys start with NUL, below every other key, so a scan starts past them.
    pub fn scan_from(&self) -> &str {
        const PAST_HOST_KEYS: &str = "\u{1}";
        let from = self.after.as_deref().unwrap_or(&self.prefix).max(self.prefix.as_str());
        from.max(PAST_HOST_KEYS)
    }

    /// The page, from keys in byte order that are in its range: the first `limit`.
    pub fn of(&self, keys: impl IntoIterator<Item = String>) -> Vec<String> {
        keys.into_iter().filter(|key| self.holds(key)).take(self.limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_compose_in_order() {
        let cases = [
            (vec![Change::Add(2, None), Change::Add(3, None)], Some(StateValue::Counter(15))),
            (vec![Change::Delete, Change::Add(3, None)], Some(StateValue::Counter(3))),
            (vec![Change::Add(3, None), Change::Delete], None),
            (vec![Change::Add(3, None), Change::Put(b"x".to_vec(), None)], Some(StateValue::Bytes(b"x".to_vec()))),
            (
                vec![Change::Put(b"x".to_vec(), None), Change::Delete, Change::Add(-1, None), Change::Add(-1, None)],
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
