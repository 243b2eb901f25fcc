//! State that expires, in the embedded store: the sweep that removes expired values.
//!
//! A value read after its expiry reads as absent wherever it is (`engine::state::live`); the
//! sweep gives its space back. A checkpoint writes a value that has already expired as a removal,
//! and enters a function whose tree receives a value that will expire in the `state-expiring`
//! tree (once). Each pass of the cleaner then scans those functions' trees on from where the last
//! pass stopped, at most [`MAX_KEYS_SCANNED_PER_SWEEP`] keys in all (reads only, off every lock),
//! and removes, per function, the keys whose value has expired in one state step logged like a
//! commit's: prepared under the function's lock, which checks each value again, so that a commit
//! that wrote a key again in between keeps it; and with each value before it, so that the
//! function's history (replay, `querystate --as-of`) still knows what was there.
//!
//! So a write costs nothing more for having a time to live (an index written per expiring key
//! cost the pipeline as much again in sled writes), a function without expiring values is never
//! scanned, and a sweep's cost is bounded per pass: a table of a million keys is gone through in
//! two hundred passes of the cleaner (a little over three minutes), and at most 5,000 expired keys
//! a second are removed, which the benchmark weighed against what removing costs the pipeline.

use std::sync::Arc;

use super::journal::{StateStep, Step};
use super::state::{FunctionTable, STATE_EXPIRING_TREE};
use super::stored_history::StoredHistory;
use super::{EmbeddedStore, broker_failed, lock};
use crate::engine::state::StateError;
use crate::names::Fqfn;

/// Most keys one sweep reads, over all functions: bounds the time the cleaner's pass spends, and
/// the removals' share of the disk and the functions' locks (20,000 cost a pipeline whose keys
/// all expired 21% of its throughput; docs/BENCHMARKS.md).
pub const MAX_KEYS_SCANNED_PER_SWEEP: usize = 5_000;

impl EmbeddedStore {
    /// Removes values that have expired, reading at most [`MAX_KEYS_SCANNED_PER_SWEEP`] keys;
    /// returns how many it removed and how many it read. The cleaner calls it every pass; the
    /// benchmark calls it to time a sweep.
    pub fn sweep_expired(&self) -> Result<(usize, usize), StateError> {
        let storage = |error: sled::Error| StateError::Storage(error.to_string());
        let now = self.inner.clock.now_millis();
        let mut budget = MAX_KEYS_SCANNED_PER_SWEEP;
        let mut removed = 0;
        let expiring = self.inner.db.open_tree(STATE_EXPIRING_TREE).map_err(storage)?;
        for name in expiring.iter().keys() {
            let name = name.map_err(storage)?;
            let Some(fqfn) = std::str::from_utf8(&name).ok().and_then(|fqfn| Fqfn::parse(fqfn).ok()) else { continue };
            if budget == 0 {
                break;
            }
            let table = self.state_table(&fqfn).map_err(storage)?;
            let (swept, scanned) = self.sweep_table(&table, now, budget)?;
            removed += swept;
            budget -= scanned;
        }
        Ok((removed, MAX_KEYS_SCANNED_PER_SWEEP - budget))
    }

    /// Writes `fqfn`'s pending state values into its tree now (the checkpointer does this on its
    /// own; the benchmark asks, to sweep what it wrote).
    pub fn checkpoint_state(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let storage = |error: sled::Error| StateError::Storage(error.to_string());
        let table = self.state_table(fqfn).map_err(storage)?;
        table.checkpoint(&self.inner.db, &self.inner.state_applied).map_err(storage)
    }

    /// Scans up to `budget` keys of `table`'s tree from where its last sweep stopped, and removes
    /// those that expired; returns the keys removed and the keys read.
    fn sweep_table(&self, table: &Arc<FunctionTable>, now: u64, budget: usize) -> Result<(usize, usize), StateError> {
        let from = lock(&table.sweep_from).clone();
        let (expired, scanned, next) = table.expired_in_tree(from.as_deref(), budget, now)?;
        *lock(&table.sweep_from) = next;
        let keys: Vec<&str> = expired.iter().map(String::as_str).collect();
        let Some(write) = table.prepare_expiry(&keys, now)? else { return Ok((0, scanned)) };
        let removed = write.before().len();
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
        Ok((removed, scanned))
    }
}
