//! Function state in the embedded store: a log of committed values, checkpointed into one sled tree per function.
//!
//! Writing every changed key into the function's tree at every commit cost about 7 µs a key in
//! sled, transaction or batch alike, and held a stateful pipeline near 100,000 messages per second.
//! So a commit writes one record to the state log instead, in the same sled transaction as its
//! outputs and cursors: the final value of each key it changed.
//! Those values stay in memory (`pending`) until a checkpoint writes the newest value of each key
//! into the function's tree, once, and removes the records it covered; a key changed by every batch
//! is written to its tree once per checkpoint instead of once per commit, as Kafka Streams' record
//! cache does in front of its changelog.
//! When the store opens, records left by a crash are applied before anything reads.
//!
//! Checkpoints run on a thread of their own ([`Checkpointer`]), in chunks of
//! `CHECKPOINT_CHUNK` keys: a tree write holds sled's store-wide write lock, and a checkpoint of a
//! few hundred keys inside the commit that asked for it held up that pipeline's next commit and
//! every other writer for about 5 ms (the p99 of a commit at 10,000 messages per second).
//!
//! Invariant: a function's tree holds the effect of a prefix of its log records in id order (or
//! more, mid-checkpoint), and the log holds every record after that prefix. A record holds final
//! values, so applying records again in id order is harmless, and that is all recovery does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::lock;
use crate::engine::state::{KeyMap, StateChanges, StateError, StateTable, StateValue, Versioned};
use crate::names::Fqfn;

pub(super) const STATE_TREE_PREFIX: &str = "state:";
/// The tree of state log records, keyed by the function's name, a 0 byte and the record's id.
pub(super) const STATE_LOG_TREE: &str = "state-log";
/// Most values read from a function's tree kept in memory; past it they are dropped and read again.
const CLEAN_ENTRIES: usize = 65_536;
/// A function's log records (commits with state changes) after which a checkpoint runs.
pub(super) const CHECKPOINT_RECORDS: usize = 64;
/// Keys changed since a function's last checkpoint after which a checkpoint runs: bounds memory.
const CHECKPOINT_KEYS: usize = 65_536;
/// Keys a checkpoint writes to its tree per sled batch: each batch holds sled's store-wide write
/// lock (about 7 µs a key), which every commit and append then waits for.
pub(super) const CHECKPOINT_CHUNK: usize = 64;

/// One function's state: its sled tree, and in memory what is newer than the tree or read from it.
pub(super) struct FunctionTable {
    fqfn: Fqfn,
    tree: sled::Tree,
    values: Mutex<Values>,
    /// Whether the table waits in the checkpointer's queue, so that it waits there once.
    queued: AtomicBool,
}

#[derive(Default)]
struct Values {
    /// Values of log records not yet checkpointed, newest per key; never dropped until checkpointed.
    pending: KeyMap<Pending>,
    /// Values read from the tree (`None`: absent), which no pending value overrides.
    clean: KeyMap<Option<Versioned>>,
    /// Records written since the last checkpoint began.
    records: usize,
    checkpointing: bool,
}

struct Pending {
    record: u64,
    value: Option<Versioned>,
}

/// A record: each changed key with its value after the commit (`None`: deleted).
pub(crate) type Record = Vec<(String, Option<Versioned>)>;

/// A commit's state part, prepared under the function's lock, which it holds until the commit is
/// applied in memory, so that records are written and seen in the order of their ids.
pub(super) struct StateWrite<'a> {
    values: MutexGuard<'a, Values>,
    id: u64,
    log_key: Vec<u8>,
    encoded: Vec<u8>,
    record: Record,
}

impl StateWrite<'_> {
    /// The record's key in the state log tree.
    pub(super) fn log_key(&self) -> &[u8] {
        &self.log_key
    }

    /// The record, encoded.
    pub(super) fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// Records in memory that the record was committed; true when the function is due a checkpoint.
    pub(super) fn committed(mut self) -> bool {
        let id = self.id;
        let values = &mut *self.values;
        values.records += 1;
        for (key, value) in self.record {
            values.clean.remove(&key);
            values.pending.insert(key, Pending { record: id, value });
        }
        values.records >= CHECKPOINT_RECORDS || values.pending.len() >= CHECKPOINT_KEYS
    }
}

impl FunctionTable {
    pub(super) fn open(db: &sled::Db, fqfn: &Fqfn) -> Result<Self, sled::Error> {
        Ok(Self {
            fqfn: fqfn.clone(),
            tree: db.open_tree(format!("{STATE_TREE_PREFIX}{fqfn}"))?,
            values: Mutex::new(Values::default()),
            queued: AtomicBool::new(false),
        })
    }

    /// Takes the function's lock and computes the record of `changes`, with a new id from `db`:
    /// ids are taken under the lock, so that a function's records are in id order.
    pub(super) fn prepare(&self, db: &sled::Db, changes: &StateChanges) -> Result<StateWrite<'_>, StateError> {
        let mut values = lock(&self.values);
        let id = db.generate_id().map_err(|error| StateError::Storage(error.to_string()))?;
        let mut record = Vec::with_capacity(changes.len());
        for (key, change) in changes.iter() {
            let current = self.current(&mut values, key)?.map(|versioned| versioned.value);
            record.push((key.clone(), change.apply(current).map(|value| Versioned { value, version: id })));
        }
        Ok(self.write(values, id, record))
    }

    fn write<'a>(&self, values: MutexGuard<'a, Values>, id: u64, record: Record) -> StateWrite<'a> {
        let encoded = crate::codec::encode(&record);
        StateWrite { values, id, log_key: log_key(&self.fqfn, id), encoded, record }
    }

    fn current(&self, values: &mut Values, key: &str) -> Result<Option<Versioned>, StateError> {
        if let Some(pending) = values.pending.get(key) {
            return Ok(pending.value.clone());
        }
        if let Some(clean) = values.clean.get(key) {
            return Ok(clean.clone());
        }
        let stored = match self.tree.get(key).map_err(|error| StateError::Storage(error.to_string()))? {
            Some(bytes) => Some(decode_state(&bytes).map_err(|reason| StateError::Corrupt {
                fqfn: self.fqfn.clone(),
                key: key.into(),
                reason,
            })?),
            None => None,
        };
        if values.clean.len() >= CLEAN_ENTRIES {
            values.clean.clear();
        }
        values.clean.insert(key.to_owned(), stored.clone());
        Ok(stored)
    }

    /// Writes the newest pending value of each key into the tree, then removes the log records
    /// that are now in it. Does nothing while another checkpoint of this function runs.
    pub(super) fn checkpoint(&self, db: &sled::Db, log: &sled::Tree) -> Result<(), sled::Error> {
        let (snapshot, last) = {
            let mut values = lock(&self.values);
            if values.checkpointing || values.pending.is_empty() {
                return Ok(());
            }
            values.checkpointing = true;
            values.records = 0;
            let snapshot: Vec<(String, u64, Option<Versioned>)> = values
                .pending
                .iter()
                .map(|(key, pending)| (key.clone(), pending.record, pending.value.clone()))
                .collect();
            let last = snapshot.iter().map(|(_, record, _)| *record).max().unwrap_or_default();
            (snapshot, last)
        };
        let written = (|| {
            for chunk in snapshot.chunks(CHECKPOINT_CHUNK) {
                self.tree.apply_batch(tree_batch(chunk.iter().map(|(key, _, value)| (key, value))))?;
            }
            // The values must be durable before the records that carry them are removed.
            db.flush()?;
            let mut removals = sled::Batch::default();
            for entry in log.range(log_key(&self.fqfn, 0)..=log_key(&self.fqfn, last)) {
                removals.remove(entry?.0);
            }
            log.apply_batch(removals)
        })();
        let mut values = lock(&self.values);
        values.checkpointing = false;
        if written.is_ok() {
            for (key, record, value) in snapshot {
                if values.pending.get(&key).is_some_and(|pending| pending.record == record) {
                    values.pending.remove(&key);
                    if values.clean.len() < CLEAN_ENTRIES {
                        values.clean.insert(key, value);
                    }
                }
            }
        }
        written
    }

    /// Removes the function's log records and its tree; the caller removes the table from the store.
    pub(super) fn delete(&self, db: &sled::Db, log: &sled::Tree) -> Result<(), sled::Error> {
        let mut values = lock(&self.values);
        let mut removals = sled::Batch::default();
        for entry in log.scan_prefix(log_prefix(&self.fqfn)) {
            removals.remove(entry?.0);
        }
        log.apply_batch(removals)?;
        db.drop_tree(format!("{STATE_TREE_PREFIX}{}", self.fqfn))?;
        *values = Values::default();
        Ok(())
    }

    /// Writes `value` to `key` in a record of its own, outside any commit (the admin API's state
    /// put). Returns the value with its version, and whether the function is due a checkpoint.
    pub(super) fn put(
        &self,
        db: &sled::Db,
        log: &sled::Tree,
        key: &str,
        value: StateValue,
    ) -> Result<(Versioned, bool), StateError> {
        let failed = |error: sled::Error| StateError::Storage(error.to_string());
        let values = lock(&self.values);
        let versioned = Versioned { value, version: db.generate_id().map_err(failed)? };
        let write = self.write(values, versioned.version, vec![(key.to_owned(), Some(versioned.clone()))]);
        log.insert(write.log_key(), write.encoded()).map_err(failed)?;
        Ok((versioned, write.committed()))
    }
}

/// The thread that checkpoints functions' state when their commits ask for it, off the commits' path.
pub(super) struct Checkpointer {
    requests: Mutex<Option<Sender<Arc<FunctionTable>>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Checkpointer {
    pub(super) fn start(db: &sled::Db, log: &sled::Tree) -> std::io::Result<Self> {
        let (requests, queue) = std::sync::mpsc::channel();
        let (db, log) = (db.clone(), log.clone());
        let thread = std::thread::Builder::new()
            .name("fnhost-checkpoint".into())
            .spawn(move || checkpoint_until_closed(&queue, &db, &log))?;
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

fn checkpoint_until_closed(queue: &Receiver<Arc<FunctionTable>>, db: &sled::Db, log: &sled::Tree) {
    for table in queue {
        table.queued.store(false, Ordering::Release);
        // The records stay in the log, so the next request (or the next open) tries again.
        if let Err(error) = table.checkpoint(db, log) {
            tracing::error!("checkpointing the state of {} failed: {error}", table.fqfn);
        }
    }
}

/// A function's state table as the instance loop reads it.
pub(super) struct EmbeddedTable(pub(super) Arc<FunctionTable>);

impl StateTable for EmbeddedTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        let table = &self.0;
        table.current(&mut lock(&table.values), key)
    }
}

/// Applies every record in the state log to its function's tree, in id order, then empties the
/// log: what a crash left between a commit and its checkpoint.
pub(super) fn replay(db: &sled::Db, log: &sled::Tree) -> Result<(), String> {
    if log.is_empty() {
        return Ok(());
    }
    for entry in log.iter() {
        let (key, bytes) = entry.map_err(|error| error.to_string())?;
        let name = key.split(|byte| *byte == 0).next().unwrap_or_default();
        let name = String::from_utf8_lossy(name);
        let record: Record = crate::codec::decode(&bytes)
            .map_err(|error| format!("a state log record of {name} cannot be decoded: {error}"))?;
        let tree = db.open_tree(format!("{STATE_TREE_PREFIX}{name}")).map_err(|error| error.to_string())?;
        tree.apply_batch(tree_batch(record.iter().map(|(key, value)| (key, value))))
            .map_err(|error| error.to_string())?;
    }
    db.flush().map_err(|error| error.to_string())?;
    log.clear().map_err(|error| error.to_string())?;
    db.flush().map(drop).map_err(|error| error.to_string())
}

/// The writes that leave a function's tree holding `values` (`None`: absent).
fn tree_batch<'a>(values: impl Iterator<Item = (&'a String, &'a Option<Versioned>)>) -> sled::Batch {
    let mut batch = sled::Batch::default();
    for (key, value) in values {
        match value {
            Some(value) => batch.insert(key.as_bytes(), encode_state(value)),
            None => batch.remove(key.as_bytes()),
        }
    }
    batch
}

fn log_prefix(fqfn: &Fqfn) -> Vec<u8> {
    let mut key = fqfn.to_string().into_bytes();
    key.push(0);
    key
}

fn log_key(fqfn: &Fqfn, id: u64) -> Vec<u8> {
    let mut key = log_prefix(fqfn);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

fn encode_state(value: &Versioned) -> Vec<u8> {
    crate::codec::encode(value)
}

fn decode_state(bytes: &[u8]) -> Result<Versioned, String> {
    crate::codec::decode(bytes).map_err(|error| error.to_string())
}
