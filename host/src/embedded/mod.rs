//! The embedded engine: topics, subscriptions and state in one sled database in the data directory.
//!
//! A topic is a sled tree of segments: each value holds consecutive messages and its key is the
//! sequence number of the first, so an append of a batch is one sled write.
//! It implements both [`Broker`] and [`StateStore`] because its commit is a single sled transaction
//! across the cursor tree, the function's state tree and every output topic's tree: after a crash,
//! sled recovers either all of a commit or none of it.
//!
//! A durable subscription keeps, per topic, a cursor record: the mark (every message before it is
//! acknowledged) and the acknowledged ranges after it, as Pulsar's managed ledger keeps its
//! mark-delete position and individually deleted messages.
//! Which consumer gets which message, and which delivered messages are still unacknowledged, lives
//! in memory only: after a restart every unacknowledged message is simply delivered again.
//!
//! The files: `topic.rs` (a topic's segments), `cursor.rs` (a cursor's stored form),
//! `dispatch.rs` (a shared subscription's delivery state), `consumer.rs` (one consumer's fetch,
//! commit and leave), `metadata.rs` (records and packages), `state.rs` (function state and its
//! checkpoints). Locks are taken in the order ARCHITECTURE.md gives ("Invariants").

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::engine::broker::{
    Broker, BrokerError, Inputs, MessageBody, OutMessage, Position, Subscription, SubscriptionSpec,
};
use crate::engine::clock::now_millis;
use crate::engine::state::{StateError, StateStore, StateTable, StateValue, Versioned};
use crate::limits::MAX_BATCH_MESSAGES;
use crate::names::{Fqfn, SubscriptionName, TopicName, TopicPattern};

mod consumer;
mod cursor;
mod dispatch;
mod metadata;
mod state;
mod topic;

pub(crate) use state::Record as StateLogRecord;

use consumer::EmbeddedConsumer;
use cursor::{RangeSet, cursor_key, decode_cursor, encode_cursor};
use dispatch::{Cursor, SharedSubscription};
use state::{Checkpointer, EmbeddedTable, FunctionTable, STATE_LOG_TREE};
use topic::{Topic, decode_segment, decode_sequence, segments};

const TOPIC_TREE_PREFIX: &str = "topic:";
/// A segment (one sled value holding consecutive messages) is closed once its messages take about
/// this many bytes; one sled operation per segment rather than per message is what makes appends fast.
/// Sled writes a page over a quarter of its 512 KiB log segment as a file of its own, created and
/// synced: segments of 1 MiB made every append and every split of a topic's tree such a file, and
/// 96 KiB segments took the stateless guest pipeline from 234,000 to 382,000 messages per second.
const SEGMENT_BYTES: usize = 96 * 1024;
const CURSOR_TREE: &str = "cursors";
const METADATA_TREE: &str = "metadata";
/// Function components, by digest.
const PACKAGE_TREE: &str = "packages";
/// Most messages of a key-shared subscription read ahead for consumers that have not fetched them
/// yet, per consumer: bounds memory when one consumer is slower than the others.
const HELD_PER_KEY_SHARE: usize = 2 * MAX_BATCH_MESSAGES;
/// How often a waiting consumer looks again without being woken. Every change that can give it
/// messages wakes it (an append, another consumer leaving or reading ahead for it, acknowledgements
/// below the unacknowledged limit), so this is only a safety net; a short poll made thousands of
/// idle consumers cost whole cores.
const CONSUMER_POLL: Duration = Duration::from_secs(1);

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database's lock.
    #[error(
        "the data directory {0} is in use by another fnhost process; stop that process or pass a different --data-dir"
    )]
    Locked(String),
    /// Anything else sled reported.
    #[error("cannot open the data directory {path}: {reason}")]
    Other {
        /// The directory.
        path: String,
        /// What sled said.
        reason: String,
    },
}

/// The embedded engine. Cheap to clone; every clone shares one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    cursors: sled::Tree,
    metadata: sled::Tree,
    packages: sled::Tree,
    topics: Mutex<HashMap<TopicName, Arc<Topic>>>,
    /// Records of state changes not yet checkpointed into the functions' trees (see [`state`]).
    state_log: sled::Tree,
    /// The state of every function read or written since the store opened.
    state_tables: Mutex<HashMap<Fqfn, Arc<FunctionTable>>>,
    checkpointer: Checkpointer,
    /// Durable subscriptions with at least one consumer, by name.
    subscriptions: Mutex<HashMap<SubscriptionName, Arc<SharedSubscription>>>,
    /// Every topic opened since the store opened, in order: a pattern subscription matches the
    /// ones it has not seen yet, never every topic again.
    opened_topics: Mutex<Vec<TopicName>>,
    /// How many topics `opened_topics` holds, readable without its lock.
    topic_generation: AtomicU64,
    /// Every subscription opened and not yet dropped, durable or not: an append wakes those that
    /// read its topic.
    live: Mutex<Vec<Weak<SharedSubscription>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.checkpointer.close();
    }
}

/// Wakes the waiting consumers of one subscription.
#[derive(Default)]
struct Signal {
    /// Bumped at every change that may give a consumer messages.
    generation: Mutex<u64>,
    changed: Condvar,
}

impl Signal {
    fn notify(&self) {
        *lock(&self.generation) += 1;
        self.changed.notify_all();
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let shown = dir.display().to_string();
        let db = sled::Config::new().path(dir).open().map_err(|error| match &error {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                OpenError::Locked(shown.clone())
            }
            _ => OpenError::Other { path: shown.clone(), reason: error.to_string() },
        })?;
        let open_tree = |name: &str| {
            db.open_tree(name).map_err(|error| OpenError::Other { path: shown.clone(), reason: error.to_string() })
        };
        let cursors = open_tree(CURSOR_TREE)?;
        let metadata = open_tree(METADATA_TREE)?;
        let packages = open_tree(PACKAGE_TREE)?;
        let state_log = open_tree(STATE_LOG_TREE)?;
        state::replay(&db, &state_log).map_err(|reason| OpenError::Other { path: shown.clone(), reason })?;
        let checkpointer = Checkpointer::start(&db, &state_log)
            .map_err(|error| OpenError::Other { path: shown.clone(), reason: error.to_string() })?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                cursors,
                metadata,
                packages,
                topics: Mutex::new(HashMap::new()),
                state_log,
                state_tables: Mutex::new(HashMap::new()),
                checkpointer,
                subscriptions: Mutex::new(HashMap::new()),
                opened_topics: Mutex::new(Vec::new()),
                topic_generation: AtomicU64::new(0),
                live: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Makes everything written so far durable.
    fn flush(&self) -> Result<(), BrokerError> {
        self.inner.db.flush().map(drop).map_err(storage)
    }

    fn topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        let mut topics = lock(&self.inner.topics);
        if let Some(topic) = topics.get(name) {
            return Ok(topic.clone());
        }
        let tree = self.inner.db.open_tree(format!("{TOPIC_TREE_PREFIX}{name}")).map_err(storage)?;
        let next = match tree.last().map_err(storage)? {
            Some((key, value)) => {
                let first = decode_sequence(&key);
                let segment = decode_segment(&value).map_err(|reason| BrokerError::Corrupt {
                    topic: name.clone(),
                    sequence: first,
                    reason,
                })?;
                first + segment.len() as u64
            }
            None => 0,
        };
        let topic = Arc::new(Topic { name: name.clone(), tree, next: Mutex::new(next), length: AtomicU64::new(next) });
        topics.insert(name.clone(), topic.clone());
        let mut opened = lock(&self.inner.opened_topics);
        opened.push(name.clone());
        self.inner.topic_generation.store(opened.len() as u64, Ordering::Release);
        Ok(topic)
    }

    /// Every topic in the database that `pattern` matches.
    fn topics_matching(&self, pattern: &TopicPattern) -> Result<Vec<TopicName>, BrokerError> {
        let mut names = Vec::new();
        for tree in self.inner.db.tree_names() {
            let Some(name) = std::str::from_utf8(&tree).ok().and_then(|tree| tree.strip_prefix(TOPIC_TREE_PREFIX))
            else {
                continue;
            };
            if let Ok(topic) = TopicName::parse(name)
                && pattern.matches(&topic)
            {
                names.push(topic);
            }
        }
        Ok(names)
    }

    /// A cursor over `topic` for subscription `name`, from its record or, for a new one, at `position`.
    fn cursor(
        &self,
        name: Option<&SubscriptionName>,
        topic: &TopicName,
        position: Position,
    ) -> Result<Cursor, BrokerError> {
        let topic = self.topic(topic)?;
        let start = match position {
            Position::Earliest => topic.tree.first().map_err(storage)?.map_or(0, |(key, _)| decode_sequence(&key)),
            Position::Latest => topic.length.load(Ordering::Acquire),
        };
        let (mark, acked) = match name {
            Some(name) => match self.stored_cursor(name, &topic.name)? {
                Some(stored) => stored,
                None => {
                    let key = cursor_key(name, &topic.name);
                    self.inner.cursors.insert(key, encode_cursor(start, &RangeSet::default())).map_err(storage)?;
                    (start, RangeSet::default())
                }
            },
            None => (start, RangeSet::default()),
        };
        Ok(Cursor { topic, fetched: mark, mark, acked, delivered: BTreeMap::new() })
    }

    /// The durable cursor record of subscription `name` on `topic`: its mark and acknowledged ranges.
    fn stored_cursor(
        &self,
        name: &SubscriptionName,
        topic: &TopicName,
    ) -> Result<Option<(u64, RangeSet)>, BrokerError> {
        let Some(record) = self.inner.cursors.get(cursor_key(name, topic)).map_err(storage)? else { return Ok(None) };
        decode_cursor(&record).map(Some).map_err(|reason| BrokerError::Corrupt {
            topic: topic.clone(),
            sequence: 0,
            reason: format!("the cursor of subscription `{name}`: {reason}"),
        })
    }

    fn state_table(&self, fqfn: &Fqfn) -> Result<Arc<FunctionTable>, sled::Error> {
        let mut tables = lock(&self.inner.state_tables);
        if let Some(table) = tables.get(fqfn) {
            return Ok(table.clone());
        }
        let table = Arc::new(FunctionTable::open(&self.inner.db, fqfn)?);
        tables.insert(fqfn.clone(), table.clone());
        Ok(table)
    }

    /// Checkpoints a function's state now (see [`state`]); commits queue theirs on the checkpointer.
    #[cfg(test)]
    fn checkpoint(&self, table: &FunctionTable) -> Result<(), sled::Error> {
        table.checkpoint(&self.inner.db, &self.inner.state_log)
    }

    /// Wakes the subscriptions that read `topics`, and those with a pattern, which may read them now.
    fn notify_appended<'a>(&self, topics: impl IntoIterator<Item = &'a TopicName> + Clone) {
        let mut live = lock(&self.inner.live);
        live.retain(|weak| match weak.upgrade() {
            Some(shared) => {
                if shared.pattern.is_some() || shared.reads_any(topics.clone()) {
                    shared.signal.notify();
                }
                true
            }
            None => false,
        });
    }

    fn register(&self, shared: &Arc<SharedSubscription>) {
        lock(&self.inner.live).push(Arc::downgrade(shared));
    }
}

impl Broker for EmbeddedStore {
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError> {
        let topic = self.topic(topic)?;
        let publish_time = now_millis();
        let mut next = lock(&topic.next);
        let bodies: Vec<MessageBody> = messages.into_iter().map(|message| message.stamp(publish_time)).collect();
        let sequences: Vec<u64> = (*next..*next + bodies.len() as u64).collect();
        let mut batch = sled::Batch::default();
        for (first, segment) in segments(*next, &bodies) {
            batch.insert(&first.to_be_bytes(), segment);
        }
        topic.tree.apply_batch(batch).map_err(storage)?;
        self.flush()?;
        *next += bodies.len() as u64;
        topic.length.store(*next, Ordering::Release);
        drop(next);
        self.notify_appended([&topic.name]);
        Ok(sequences)
    }

    fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        let Some(name) = spec.name.clone() else {
            let shared = Arc::new(SharedSubscription::open(self, &spec)?);
            self.register(&shared);
            let id = shared.join(&spec)?;
            return Ok(Box::new(EmbeddedConsumer::new(self.clone(), shared, id)));
        };
        let mut subscriptions = lock(&self.inner.subscriptions);
        let shared = match subscriptions.get(&name) {
            Some(shared) => shared.clone(),
            None => {
                let shared = Arc::new(SharedSubscription::open(self, &spec)?);
                self.flush()?;
                self.register(&shared);
                subscriptions.insert(name, shared.clone());
                shared
            }
        };
        let id = shared.join(&spec)?;
        Ok(Box::new(EmbeddedConsumer::new(self.clone(), shared, id)))
    }

    fn delete_subscription(&self, name: &SubscriptionName, inputs: &Inputs) -> Result<(), BrokerError> {
        if lock(&self.inner.subscriptions).contains_key(name) {
            return Err(BrokerError::InUse { name: name.clone() });
        }
        let mut prefix = name.to_string().into_bytes();
        prefix.push(0);
        let mut batch = sled::Batch::default();
        for entry in self.inner.cursors.scan_prefix(&prefix) {
            let key = entry.map_err(storage)?.0;
            let topic = std::str::from_utf8(&key[prefix.len()..]).ok().and_then(|topic| TopicName::parse(topic).ok());
            if topic.is_some_and(|topic| inputs.covers(&topic)) {
                batch.remove(key);
            }
        }
        self.inner.cursors.apply_batch(batch).map_err(storage)?;
        self.flush()
    }

    fn is_acknowledged(
        &self,
        subscription: &SubscriptionName,
        topic: &TopicName,
        sequence: u64,
    ) -> Result<bool, BrokerError> {
        // The in-memory cursors of an open subscription change only after their commit is durable.
        let open = lock(&self.inner.subscriptions).get(subscription).cloned();
        if let Some(shared) = open {
            let state = lock(&shared.state);
            if let Some(cursor) = state.cursors.iter().find(|cursor| cursor.topic.name == *topic) {
                return Ok(sequence < cursor.mark || cursor.acked.contains(sequence));
            }
        }
        Ok(self
            .stored_cursor(subscription, topic)?
            .is_some_and(|(mark, acked)| sequence < mark || acked.contains(sequence)))
    }
}

impl StateStore for EmbeddedStore {
    fn table(&self, fqfn: &Fqfn) -> Result<Box<dyn StateTable>, StateError> {
        let table = self.state_table(fqfn).map_err(|error| StateError::Storage(error.to_string()))?;
        Ok(Box::new(EmbeddedTable(table)))
    }

    fn put(&self, fqfn: &Fqfn, key: &str, value: StateValue) -> Result<Versioned, StateError> {
        let failed = |error: sled::Error| StateError::Storage(error.to_string());
        let table = self.state_table(fqfn).map_err(failed)?;
        let (versioned, due) = table.put(&self.inner.db, &self.inner.state_log, key, value)?;
        self.inner.db.flush().map_err(failed)?;
        if due {
            self.inner.checkpointer.request(&table);
        }
        Ok(versioned)
    }

    fn delete_table(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let failed = |error: sled::Error| StateError::Storage(error.to_string());
        let table = self.state_table(fqfn).map_err(failed)?;
        table.delete(&self.inner.db, &self.inner.state_log).map_err(failed)?;
        lock(&self.inner.state_tables).remove(fqfn);
        self.inner.db.flush().map(drop).map_err(failed)
    }
}

fn state_failed(error: StateError) -> BrokerError {
    BrokerError::Storage(error.to_string())
}

fn storage(error: sled::Error) -> BrokerError {
    BrokerError::Storage(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the data it guards (counters and
    // handles) is still consistent, because every update to it is a single assignment.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests;
