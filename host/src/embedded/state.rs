//! Function state in the embedded store: changes travel in the log's steps and are checkpointed
//! into one sled tree per function.
//!
//! Writing every changed key into the function's tree at every commit cost about 7 µs a key in
//! sled, and held a stateful pipeline near 100,000 messages per second. So a commit's step in the
//! log carries a state record instead: the final value of each key it changed.
//! Those values stay in memory (`pending`, with the id of the log record that carries them) until a
//! checkpoint writes the newest value of each key into the function's tree, once, and then notes
//! in the `state-applied` tree the id of the newest record it covered; a key changed by every
//! batch is written to its tree once per checkpoint instead of once per commit, as Kafka Streams'
//! record cache does in front of its changelog. The log's segments are kept while any function has
//! a pending value from them.
//! When the store opens, the records after each function's applied id are read back into `pending`.
//!
//! Checkpoints run on a thread of their own ([`Checkpointer`]), in chunks of `CHECKPOINT_CHUNK`
//! keys: a tree write holds sled's store-wide write lock.
//!
//! Invariant: a function's tree holds the effect of its records up to its applied id (or more,
//! mid-checkpoint), and the log holds every record after it. A record holds final values, so
//! applying records again in id order is harmless, and that is all recovery does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::lock;
use crate::engine::clock::Clock;
use crate::engine::state::{KeyMap, KeyPage, StateChanges, StateError, StateTable, StateValue, Versioned, live};
use crate::names::Fqfn;

pub(super) const STATE_TREE_PREFIX: &str = "state:";
/// The tree of the functions whose tree holds values that expire (see [`super::expiry`]).
pub(super) const STATE_EXPIRING_TREE: &str = "state-expiring";
/// The tree of each function's applied id: the newest log record its own tree holds.
pub(super) const STATE_APPLIED_TREE: &str = "state-applied";
/// Most values read from a function's tree kept in memory; past it they are dropped and read again.
const CLEAN_ENTRIES: usize = 65_536;
/// Keys changed since a function's last checkpoint after which a checkpoint runs: bounds memory.
/// Otherwise a function is checkpointed only when the cleaner wants a segment its values are in:
/// the log already holds every change durably, and a checkpoint's sled writes and flushes compete
/// with the log's `fdatasync` for the disk (checkpoints every 64 commits put the p99 of a commit
/// at 10,000 messages per second several times higher).
const CHECKPOINT_KEYS: usize = 65_536;
/// Keys a checkpoint writes to its tree per sled batch: each batch holds sled's store-wide write
/// lock (about 7 µs a key), which every commit and append then waits for.
pub(super) const CHECKPOINT_CHUNK: usize = 64;

/// One function's state: its sled tree, and in memory what is newer than the tree or read from it.
pub(super) struct FunctionTable {
    pub(super) fqfn: Fqfn,
    tree: sled::Tree,
    /// The tree of functions with values that expire, which the sweep visits ([`super::expiry`]).
    expiring: sled::Tree,
    /// Whether this function is in `expiring`.
    marked_expiring: AtomicBool,
    /// Where the next sweep of the tree starts (`None`: at its first key).
    pub(super) sweep_from: Mutex<Option<Vec<u8>>>,
    /// What decides when a value expires: the store's.
    clock: Clock,
    pub(super) values: Mutex<Values>,
    /// Whether the table waits in the checkpointer's queue, so that it waits there once.
    queued: AtomicBool,
}

#[derive(Default)]
pub(super) struct Values {
    /// Values of log records not yet checkpointed, newest per key; never dropped until checkpointed.
    pending: KeyMap<Pending>,
    /// Values read from the tree (`None`: absent), which no pending value overrides.
    clean: KeyMap<Option<Versioned>>,
    checkpointing: bool,
}

struct Pending {
    /// The log record that carries it.
    log_id: u64,
    value: Option<Versioned>,
}

/// What a sweep's scan of a tree found: the keys that expired, how many keys it read, and the
/// key it stopped at (`None`: the end).
pub(super) type Scanned = (Vec<String>, usize, Option<Vec<u8>>);

/// A record: each changed key with its value after the commit (`None`: deleted).
pub(crate) type Record = Vec<(String, Option<Versioned>)>;

/// A commit's state part, prepared under the function's lock, which it holds until the commit is
/// durable and applied in memory, so that a function's records are in the log in the order they
/// are seen, and nobody sees a value before it is durable.
pub(super) struct StateWrite<'a> {
    values: MutexGuard<'a, Values>,
    record: Record,
    /// Each key's value before the write, in the record's order, for the function's history.
    before: Vec<Option<Versioned>>,
}

impl StateWrite<'_> {
    /// The record, encoded, for the commit's step.
    pub(super) fn encode(&self) -> Vec<u8> {
        crate::codec::encode(&self.record)
    }

    /// Each key's value before the write, in the record's order.
    pub(super) fn before(&self) -> &[Option<Versioned>] {
        &self.before
    }

    /// Records in memory that the record, in log record `log_id`, is durable; true when the
    /// function is due a checkpoint.
    pub(super) fn committed(mut self, log_id: u64) -> bool {
        self.values.add(log_id, self.record)
    }
}

impl Values {
    fn add(&mut self, log_id: u64, record: Record) -> bool {
        for (key, value) in record {
            self.clean.remove(&key);
            self.pending.insert(key, Pending { log_id, value });
        }
        self.pending.len() >= CHECKPOINT_KEYS
    }
}

impl FunctionTable {
    pub(super) fn open(db: &sled::Db, fqfn: &Fqfn, clock: &Clock) -> Result<Self, sled::Error> {
        Ok(Self {
            fqfn: fqfn.clone(),
            tree: db.open_tree(format!("{STATE_TREE_PREFIX}{fqfn}"))?,
            expiring: db.open_tree(STATE_EXPIRING_TREE)?,
            marked_expiring: AtomicBool::new(db.open_tree(STATE_EXPIRING_TREE)?.contains_key(fqfn.to_string())?),
            sweep_from: Mutex::new(None),
            clock: clock.clone(),
            values: Mutex::new(Values::default()),
            queued: AtomicBool::new(false),
        })
    }

    /// Takes the function's lock and computes the record of `changes`, with a new version from `db`.
    pub(super) fn prepare(&self, db: &sled::Db, changes: &StateChanges) -> Result<StateWrite<'_>, StateError> {
        let mut values = lock(&self.values);
        let id = db.generate_id().map_err(|error| StateError::Storage(error.to_string()))?;
        // Read under the function's lock, as the commit's moment: a key that expires after it and
        // is written in it lives on from it.
        let now = self.clock.now_millis();
        let mut record = Vec::with_capacity(changes.len());
        let mut before = Vec::with_capacity(changes.len());
        // In the changes' order: a batch's history names a key by its index there.
        for (key, change) in changes.iter() {
            let current = live(self.current(&mut values, key)?, now);
            record.push((key.clone(), change.committed(current.clone(), id, now)));
            before.push(current);
        }
        Ok(StateWrite { values, record, before })
    }

    /// A record read back from the log at open, newer than the function's tree.
    pub(super) fn replayed(&self, log_id: u64, record: Record) {
        lock(&self.values).add(log_id, record);
    }

    /// The id of the oldest log record holding a value not yet in the function's tree.
    pub(super) fn oldest_pending(&self) -> Option<u64> {
        lock(&self.values).pending.values().map(|pending| pending.log_id).min()
    }

    /// The newest value of `key`, expired or not.
    pub(super) fn current(&self, values: &mut Values, key: &str) -> Result<Option<Versioned>, StateError> {
        if let Some(pending) = values.pending.get(key) {
            return Ok(pending.value.clone());
        }
        if let Some(clean) = values.clean.get(key) {
            return Ok(clean.clone());
        }
        let stored = match self.tree.get(key).map_err(|error| StateError::Storage(error.to_string()))? {
            Some(bytes) => Some(self.decode(key, &bytes)?),
            None => None,
        };
        if values.clean.len() >= CLEAN_ENTRIES {
            values.clean.clear();
        }
        values.clean.insert(key.to_owned(), stored.clone());
        Ok(stored)
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<Versioned, StateError> {
        decode_state(bytes).map_err(|reason| StateError::Corrupt { fqfn: self.fqfn.clone(), key: key.into(), reason })
    }

    /// The page's live keys: the tree's, under what is pending, in byte order.
    fn list(&self, page: &KeyPage) -> Result<Vec<String>, StateError> {
        let values = lock(&self.values);
        let now = self.clock.now_millis();
        // Pending values decide their keys; the tree holds only what is older.
        let pending: std::collections::BTreeMap<&String, bool> = values
            .pending
            .iter()
            .filter(|(key, _)| page.holds(key))
            .map(|(key, pending)| (key, pending.value.as_ref().is_some_and(|value| !value.expired_at(now))))
            .collect();
        let mut keys = Vec::with_capacity(page.limit.min(1024));
        for entry in self.tree.range(page.scan_from().as_bytes()..) {
            if keys.len() == page.limit {
                break;
            }
            let (key, bytes) = entry.map_err(|error| StateError::Storage(error.to_string()))?;
            let Ok(key) = String::from_utf8(key.to_vec()) else { continue };
            if !key.starts_with(&page.prefix) {
                // Keys with the prefix are together in byte order, and the scan started among them.
                break;
            }
            if !page.holds(&key) || pending.contains_key(&key) {
                continue;
            }
            if !self.decode(&key, &bytes)?.expired_at(now) {
                keys.push(key);
            }
        }
        keys.extend(pending.into_iter().filter(|(_, live)| *live).map(|(key, _)| key.clone()));
        keys.sort_unstable();
        keys.truncate(page.limit);
        Ok(keys)
    }

    /// Up to `most` keys of the tree from `from` on whose value has expired at `now`, and where
    /// the scan stopped (`None`: it reached the end). Reads only: no lock is held.
    pub(super) fn expired_in_tree(&self, from: Option<&[u8]>, most: usize, now: u64) -> Result<Scanned, StateError> {
        let mut expired = Vec::new();
        let mut scanned = 0;
        let entries = match from {
            Some(from) => self.tree.range(from..),
            None => self.tree.iter(),
        };
        for entry in entries {
            let (key, bytes) = entry.map_err(|error| StateError::Storage(error.to_string()))?;
            if scanned == most {
                return Ok((expired, scanned, Some(key.to_vec())));
            }
            scanned += 1;
            let Ok(key) = std::str::from_utf8(&key) else { continue };
            if self.decode(key, &bytes)?.expired_at(now) {
                expired.push(key.to_owned());
            }
        }
        Ok((expired, scanned, None))
    }

    /// Takes the function's lock and prepares the removal of those of `keys` that have expired at
    /// `now`, in a record of its own (a sweep): the caller logs it, then calls
    /// [`StateWrite::committed`]. `None` when none has expired (each was written again since).
    /// Under the lock no commit writes a key between this read and the removal.
    pub(super) fn prepare_expiry(&self, keys: &[&str], now: u64) -> Result<Option<StateWrite<'_>>, StateError> {
        let values = lock(&self.values);
        let mut record = Vec::new();
        let mut before = Vec::new();
        for key in keys {
            // Read past the value cache, which the sweep would otherwise fill with keys about to go.
            let current = match (values.pending.get(*key), values.clean.get(*key)) {
                (Some(pending), _) => pending.value.clone(),
                (None, Some(clean)) => clean.clone(),
                (None, None) => match self.tree.get(key).map_err(|error| StateError::Storage(error.to_string()))? {
                    Some(bytes) => Some(self.decode(key, &bytes)?),
                    None => None,
                },
            };
            if let Some(value) = current
                && value.expired_at(now)
            {
                record.push(((*key).to_owned(), None));
                before.push(Some(value));
            }
        }
        if record.is_empty() {
            return Ok(None);
        }
        Ok(Some(StateWrite { values, record, before }))
    }

    /// Writes the newest pending value of each key into the tree, then notes the newest log
    /// record it covered as applied. Does nothing while another checkpoint of this function runs.
    /// A value that has expired by then is removed instead; the first that will expire enters
    /// the function in the tree of those the sweep visits.
    pub(super) fn checkpoint(&self, db: &sled::Db, applied: &sled::Tree) -> Result<(), sled::Error> {
        let (snapshot, last) = {
            let mut values = lock(&self.values);
            if values.checkpointing || values.pending.is_empty() {
                return Ok(());
            }
            values.checkpointing = true;
            let snapshot: Vec<(String, u64, Option<Versioned>)> = values
                .pending
                .iter()
                .map(|(key, pending)| (key.clone(), pending.log_id, pending.value.clone()))
                .collect();
            let last = snapshot.iter().map(|(_, log_id, _)| *log_id).max().unwrap_or_default();
            (snapshot, last)
        };
        let now = self.clock.now_millis();
        let written = (|| {
            for chunk in snapshot.chunks(CHECKPOINT_CHUNK) {
                let expires = chunk.iter().any(|(_, _, value)| {
                    value.as_ref().and_then(|value| value.expires_at).is_some_and(|expires_at| expires_at > now)
                });
                if expires && !self.marked_expiring.load(Ordering::Acquire) {
                    self.expiring.insert(self.fqfn.to_string(), &[])?;
                    self.marked_expiring.store(true, Ordering::Release);
                }
                let live_values =
                    chunk.iter().map(|(key, _, value)| (key, value.as_ref().filter(|value| !value.expired_at(now))));
                self.tree.apply_batch(tree_batch(live_values))?;
            }
            // The values must be durable before the records that carry them may go.
            db.flush()?;
            applied.insert(self.fqfn.to_string().as_bytes(), &last.to_be_bytes())?;
            db.flush().map(drop)
        })();
        let mut values = lock(&self.values);
        values.checkpointing = false;
        if written.is_ok() {
            for (key, log_id, value) in snapshot {
                if values.pending.get(&key).is_some_and(|pending| pending.log_id == log_id) {
                    values.pending.remove(&key);
                    if values.clean.len() < CLEAN_ENTRIES {
                        values.clean.insert(key, value);
                    }
                }
            }
        }
        written
    }

    /// Takes the function's lock for deleting its table: the caller logs the deletion while it
    /// holds it, then calls [`FunctionTable::delete`].
    pub(super) fn lock_for_delete(&self) -> MutexGuard<'_, Values> {
        lock(&self.values)
    }

    /// Removes the function's tree and applied id and forgets its values; the caller removes the
    /// table from the store.
    pub(super) fn delete(
        &self,
        mut values: MutexGuard<'_, Values>,
        db: &sled::Db,
        applied: &sled::Tree,
    ) -> Result<(), sled::Error> {
        drop_table(db, applied, &self.fqfn.to_string())?;
        *values = Values::default();
        Ok(())
    }

    /// Prepares `value` for `key` in a record of its own, outside any commit (the admin API's
    /// state put): the caller logs it, then calls [`StateWrite::committed`].
    pub(super) fn prepare_put(
        &self,
        db: &sled::Db,
        key: &str,
        value: StateValue,
    ) -> Result<(StateWrite<'_>, Versioned), StateError> {
        let mut values = lock(&self.values);
        let versioned =
            Versioned::lasting(value, db.generate_id().map_err(|error| StateError::Storage(error.to_string()))?);
        let before = vec![live(self.current(&mut values, key)?, self.clock.now_millis())];
        Ok((StateWrite { values, record: vec![(key.to_owned(), Some(versioned.clone()))], before }, versioned))
    }
}

/// Removes a function's tree, its mark for the sweep and its applied id.
pub(super) fn drop_table(db: &sled::Db, applied: &sled::Tree, fqfn: &str) -> Result<(), sled::Error> {
    match db.drop_tree(format!("{STATE_TREE_PREFIX}{fqfn}")) {
        // A function that never checkpointed has no tree.
        Ok(_) | Err(sled::Error::CollectionNotFound(_)) => {}
        Err(error) => return Err(error),
    }
    db.open_tree(STATE_EXPIRING_TREE)?.remove(fqfn.as_bytes())?;
    applied.remove(fqfn.as_bytes())?;
    Ok(())
}

/// The newest log record whose values a function's tree holds.
pub(super) fn applied_id(applied: &sled::Tree, fqfn: &str) -> Result<Option<u64>, sled::Error> {
    Ok(applied.get(fqfn.as_bytes())?.filter(|bytes| bytes.len() == 8).map(|bytes| {
        let mut id = [0; 8];
        id.copy_from_slice(&bytes);
        u64::from_be_bytes(id)
    }))
}

/// The thread that checkpoints functions' state when their commits ask for it, off the commits' path.
pub(super) struct Checkpointer {
    requests: Mutex<Option<Sender<Arc<FunctionTable>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub(super) fn start(db: &sled::Db, applied: &sled::Tree) -> std::io::Result<Self> {
        let (requests, queue) = std::sync::mpsc::channel();
        let (db, applied) = (db.clone(), applied.clone());
        let thread = std::thread::Builder::new()
            .name("fnhost-checkpoint".into())
            .spawn(move || checkpoint_until_closed(&queue, &db, &applied))?;
        Ok(Self { requests: Mutex::new(Some(requests)), thread: Mutex::new(Some(thread)) })
    }

    /// Queues a checkpoint of `table`, unless one is queued already.
    pub(super) fn request(&self, table: &Arc<FunctionTable>) {
        if table.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(requests) = lock(&self.requests).as_ref() {
            // The thread lives as long as the sender; a checkpoint missed at close is a replay at the next open.
            let _ = requests.send(table.clone());
        }
    }

    /// Lets the queued checkpoints finish and stops the thread, which holds the database open.
    pub(super) fn close(&self) {
        drop(lock(&self.requests).take());
        if let Some(thread) = lock(&self.thread).take() {
            let _ = thread.join();
        }
    }
}

fn checkpoint_until_closed(queue: &Receiver<Arc<FunctionTable>>, db: &sled::Db, applied: &sled::Tree) {
    for table in queue {
        table.queued.store(false, Ordering::Release);
        // The records stay in the log, so the next request (or the next open) tries again.
        if let Err(error) = table.checkpoint(db, applied) {
            tracing::error!("checkpointing the state of {} failed: {error}", table.fqfn);
        }
    }
}

/// A function's state table as the instance loop reads it.
pub(super) struct EmbeddedTable(pub(super) Arc<FunctionTable>);

impl StateTable for EmbeddedTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let table = &self.0;
        let current = table.current(&mut lock(&table.values), key)?;
        Ok(live(current, table.clock.now_millis()))
    }

    fn list(&self, page: &KeyPage) -> Result<Vec<String>, StateError> {
        self.0.list(page)
    }
}

/// The writes that leave a function's tree holding `values` (`None`: absent).
pub(super) fn tree_batch<'a>(values: impl Iterator<Item = (&'a String, Option<&'a Versioned>)>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in values {
        match value {
            Some(value) => batch.insert(key.as_bytes(), encode_state(value)),
            None => batch.remove(key.as_bytes()),
        }
    }
    batch
}

fn encode_state(value: &Versioned) -> Vec<u8> {
    crate::codec::encode(value)
}

fn decode_state(bytes: &[u8]) -> Result<Versioned, String> {
    crate::codec::decode(bytes).map_err(|error| error.to_string())
}
