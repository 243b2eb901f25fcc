//! State that expires, in the embedded store: each function's expiry index, and the sweep that
//! removes expired values.
//!
//! A value read after its expiry reads as absent wherever it is (`engine::state::live`); the
//! sweep gives its space back. A checkpoint enters each value with an expiry in the function's
//! expiry index (a tree keyed by the expiry, big-endian, then the key) before it writes the value
//! itself, and writes a value that has already expired as a removal instead.
//! Each pass of the cleaner then takes the index's entries that are due, at most
//! [`MAX_EXPIRED_KEYS_PER_SWEEP`] of them, and removes the keys whose value has expired in one
//! state step per function, logged like a commit's: under the function's lock, so that a commit
//! that writes a key again comes wholly before the removal (which then leaves it) or after it; and
//! with each value before it, so that the function's history (replay, `querystate --as-of`) still
//! knows what was there. An entry whose key was written again since is stale: it is dropped, and
//! the newer value has an entry of its own.
//!
//! The index is written once per checkpoint per expiring key (not per commit), and a sweep reads
//! only entries that are due, so keys that never expire cost nothing.

use std::sync::Arc;

use super::journal::{StateStep, Step};
use super::state::{EXPIRY_TREE_PREFIX, FunctionTable};
use super::stored_history::StoredHistory;
use super::{EmbeddedStore, broker_failed};
use crate::engine::state::StateError;
use crate::names::Fqfn;

/// Most index entries one sweep takes, over all functions: bounds the time the cleaner's pass
/// spends (each is a read of the key under its function's lock).
pub const MAX_EXPIRED_KEYS_PER_SWEEP: usize = 10_000;

/// The expiry index's key of `key`, which expires at `expires_at`.
pub(super) fn index_key(expires_at: u64, key: &str) -> Vec<u8> {
    let mut entry = Vec::with_capacity(8 + key.len());
    entry.extend_from_slice(&expires_at.to_be_bytes());
    entry.extend_from_slice(key.as_bytes());
    entry
}

impl EmbeddedStore {
    /// Removes values that have expired, at most [`MAX_EXPIRED_KEYS_PER_SWEEP`] index entries'
    /// worth; returns how many keys it removed. The cleaner calls it every pass; the benchmark
    /// calls it to time a sweep.
    pub fn sweep_expired(&self) -> Result<usize, StateError> {
        let storage = |error: sled::Error| StateError::Storage(error.to_string());
        let now = self.inner.clock.now_millis();
        let mut budget = MAX_EXPIRED_KEYS_PER_SWEEP;
        let mut removed = 0;
        for name in self.inner.db.tree_names() {
            let Some(fqfn) = name.strip_prefix(EXPIRY_TREE_PREFIX.as_bytes()) else { continue };
            let Some(fqfn) = std::str::from_utf8(fqfn).ok().and_then(|fqfn| Fqfn::parse(fqfn).ok()) else { continue };
            if budget == 0 {
                break;
            }
            let table = self.state_table(&fqfn).map_err(storage)?;
            let (swept, taken) = self.sweep_table(&table, now, budget)?;
            removed += swept;
            budget -= taken;
        }
        Ok(removed)
    }

    /// Writes `fqfn`'s pending state values into its tree now, entering those that expire in its
    /// index (the checkpointer does this on its own; the benchmark asks, to sweep what it wrote).
    pub fn checkpoint_state(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let storage = |error: sled::Error| StateError::Storage(error.to_string());
        let table = self.state_table(fqfn).map_err(storage)?;
        table.checkpoint(&self.inner.db, &self.inner.state_applied).map_err(storage)
    }

    /// Takes up to `budget` due entries of `table`'s index and removes what expired; returns the
    /// keys removed and the entries taken.
    fn sweep_table(&self, table: &Arc<FunctionTable>, now: u64, budget: usize) -> Result<(usize, usize), StateError> {
        let storage = |error: sled::Error| StateError::Storage(error.to_string());
        let due: Vec<sled::IVec> = table
            .expiries
            .range(..index_key(now.saturating_add(1), "").as_slice())
            .keys()
            .take(budget)
            .collect::<Result<_, _>>()
            .map_err(storage)?;
        // An entry that is not an index key is dropped with the rest: nothing else writes there.
        let keys: Vec<&str> = due.iter().filter_map(|entry| std::str::from_utf8(entry.get(8..)?).ok()).collect();
        let mut removed = 0;
        if let Some(write) = table.prepare_expiry(&self.inner.db, &keys, now)? {
            removed = write.before().len();
            let history = StoredHistory::encode(now, write.before(), None);
            let step = Step {
                state: Some(StateStep::Recorded { fqfn: table.fqfn.to_string(), record: write.encode(), history }),
                ..Step::default()
            };
            let ids = self.submit(&step).map_err(broker_failed)?;
            self.durable(&ids).map_err(broker_failed)?;
            if write.committed(ids.start) {
                self.inner.checkpointer.request(table);
            }
        }
        // Only once the removal is durable: a crash before leaves the entries for the next sweep.
        let mut batch = sled::Batch::default();
        for entry in &due {
            batch.remove(entry);
        }
        table.expiries.apply_batch(batch).map_err(storage)?;
        Ok((removed, due.len()))
    }
}
