//! What lets changes to different functions go on side by side: a change lock per function, and
//! one ledger of what every function reserves, checked and written in one step.
//!
//! No lock here is held while a component compiles or an instance drains, so that one tenant's
//! slow change never holds up another's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::lock;
use crate::function::FunctionConfig;
use crate::names::Fqfn;

/// What a function reserves of its tenant's quota and of the worker's capacity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Footprint {
    /// Its instances (`--parallelism`).
    pub instances: u32,
    /// The memory its instances may take together (`--ram` × `--parallelism`).
    pub memory_bytes: u64,
}

impl Footprint {
    pub fn of(config: &FunctionConfig) -> Self {
        Self { instances: config.parallelism, memory_bytes: u64::from(config.parallelism) * config.limits.memory_bytes }
    }
}

/// One lock per function name, taken by every change to that function (create, update, delete,
/// start, stop, restart, and a cluster round catching up with its record).
#[derive(Default)]
pub(super) struct ChangeLocks(Mutex<BTreeMap<Fqfn, Arc<Mutex<()>>>>);

impl ChangeLocks {
    /// The change lock of `fqfn`; the caller locks it.
    pub fn of(&self, fqfn: &Fqfn) -> Arc<Mutex<()>> {
        let mut locks = lock(&self.0);
        // Locks no one holds or waits for are dropped, so that names a tenant tried once do
        // not pile up.
        locks.retain(|_, change| Arc::strong_count(change) > 1);
        locks.entry(fqfn.clone()).or_default().clone()
    }
}

/// The footprint of every function the worker runs or is starting.
#[derive(Default)]
pub(super) struct Ledger(Mutex<BTreeMap<Fqfn, Footprint>>);

impl Ledger {
    /// Reserves `footprint` for `fqfn`, replacing what it held, if `admit` accepts it beside the
    /// others' reservations; returns what `fqfn` held before, for [`Ledger::restore`].
    pub fn reserve<E>(
        &self,
        fqfn: &Fqfn,
        footprint: Footprint,
        admit: impl FnOnce(&BTreeMap<Fqfn, Footprint>) -> Result<(), E>,
    ) -> Result<Option<Footprint>, E> {
        let mut reserved = lock(&self.0);
        admit(&reserved)?;
        Ok(reserved.insert(fqfn.clone(), footprint))
    }

    /// Puts back what [`Ledger::reserve`] replaced, after the change failed.
    pub fn restore(&self, fqfn: &Fqfn, previous: Option<Footprint>) {
        let mut reserved = lock(&self.0);
        match previous {
            Some(footprint) => reserved.insert(fqfn.clone(), footprint),
            None => reserved.remove(fqfn),
        };
    }

    /// Sets `fqfn`'s footprint without a check: for a cluster round, whose records were checked
    /// where they were written.
    pub fn set(&self, fqfn: &Fqfn, footprint: Footprint) {
        lock(&self.0).insert(fqfn.clone(), footprint);
    }

    /// Frees what `fqfn` reserved.
    pub fn release(&self, fqfn: &Fqfn) {
        lock(&self.0).remove(fqfn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fqfn(name: &str) -> Fqfn {
        Fqfn::parse(&format!("acme/ns/{name}")).unwrap()
    }

    #[test]
    fn a_refused_reservation_changes_nothing_and_a_restore_puts_back_the_old_one() {
        let ledger = Ledger::default();
        let small = Footprint { instances: 1, memory_bytes: 10 };
        let big = Footprint { instances: 5, memory_bytes: 50 };
        assert_eq!(ledger.reserve(&fqfn("a"), small, |_| Ok::<_, ()>(())), Ok(None));
        let refused = ledger.reserve(&fqfn("b"), big, |reserved| match reserved.len() {
            0 => Ok(()),
            _ => Err("full"),
        });
        assert_eq!(refused, Err("full"));
        assert_eq!(ledger.reserve(&fqfn("a"), big, |_| Ok::<_, ()>(())), Ok(Some(small)));
        ledger.restore(&fqfn("a"), Some(small));
        let seen = ledger.reserve(&fqfn("c"), small, |reserved| {
            assert_eq!(reserved.keys().cloned().collect::<Vec<_>>(), [fqfn("a")]);
            assert_eq!(reserved[&fqfn("a")], small);
            Ok::<_, ()>(())
        });
        assert_eq!(seen, Ok(None));
        ledger.release(&fqfn("c"));
        ledger.restore(&fqfn("a"), None);
        let empty = ledger.reserve(&fqfn("d"), small, |reserved| match reserved.is_empty() {
            true => Ok(()),
            false => Err("others are still reserved"),
        });
        assert_eq!(empty, Ok(None));
    }

    #[test]
    fn change_locks_are_one_per_name_and_dropped_when_unused() {
        let locks = ChangeLocks::default();
        let first = locks.of(&fqfn("a"));
        assert!(Arc::ptr_eq(&first, &locks.of(&fqfn("a"))), "one lock per name");
        assert!(!Arc::ptr_eq(&first, &locks.of(&fqfn("b"))));
        drop(first);
        let _held = locks.of(&fqfn("c"));
        assert_eq!(lock(&locks.0).keys().cloned().collect::<Vec<_>>(), [fqfn("c")], "unused locks are gone");
    }
}
