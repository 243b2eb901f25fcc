//! The state values of one function this process last read or wrote: what spares an instance a
//! round trip to the bucket's leader for each read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::state::Versioned;

/// Most state keys a function's [`ValueCache`] holds; past it the cache starts again empty.
pub(super) const MAX_CACHED_KEYS: usize = 65_536;

/// The state values of one function this process last read or wrote, by key (`None`: no value).
///
/// A read from a bucket is a round trip to the stream's leader, several times what the rest of a
/// message costs; an instance of an ordered subscription is its keys' only writer, so what it
/// wrote is what it would read. The cache of a function is emptied whenever an instance of it
/// starts in this process, which is when its keys may have changed hands.
pub(crate) type ValueCache = Arc<Mutex<CachedValues>>;

/// What a [`ValueCache`] holds.
pub(crate) struct CachedValues {
    values: HashMap<String, Option<Versioned>>,
    /// Most keys held: past it the cache starts again empty.
    most: usize,
    /// How many times the cache was emptied (full, or for a table opening).
    emptied: u64,
    /// How many of those the function's view has been brought up to date after: a value emptied
    /// from the cache may be in the changelog and not yet in the view, which must not be read
    /// before it is.
    caught_up: u64,
}

impl CachedValues {
    pub(super) fn new(most: usize) -> Self {
        Self { values: HashMap::new(), most, emptied: 0, caught_up: 0 }
    }

    /// The value of `key` this process last read or wrote, if it is still held.
    pub(crate) fn get(&self, key: &str) -> Option<&Option<Versioned>> {
        self.values.get(key)
    }

    /// Empties the cache; returns the emptying to give [`CachedValues::view_caught_up`] once
    /// the view is brought up to date.
    pub(crate) fn empty(&mut self) -> u64 {
        self.values.clear();
        self.emptied += 1;
        self.emptied
    }

    /// The emptying the view must be brought up to date after before a key missing from the
    /// cache is read from it, if any.
    pub(crate) fn view_behind(&self) -> Option<u64> {
        (self.caught_up < self.emptied).then_some(self.emptied)
    }

    /// Notes that the view was brought up to date after emptying `emptied`.
    pub(crate) fn view_caught_up(&mut self, emptied: u64) {
        self.caught_up = self.caught_up.max(emptied);
    }
}

/// Records `value` as `key`'s in `cache`; window records (NUL-prefixed keys) are not kept twice.
pub(crate) fn remember(cache: &ValueCache, key: &str, value: Option<Versioned>) {
    if key.starts_with('\0') {
        return;
    }
    let mut cache = cache.lock().unwrap();
    if cache.values.len() >= cache.most && !cache.values.contains_key(key) {
        cache.empty();
    }
    cache.values.insert(key.to_owned(), value);
}
