//! The embedded engine: topics, subscriptions' cursors and state changes in fnhost's own log
//! ([`crate::seglog`]), and function state tables, records and packages in sled, all in the data
//! directory (the log in its `log` folder).
//!
//! Every durable step is one record of the log (`journal::Step`): a producer's append, or a
//! commit's outputs, cursor moves and state changes together, so that after a crash either all of
//! a commit is there or none of it. Steps from every thread share the log's group commit (one
//! write and one `fdatasync` per group). A step's messages become readable, and its cursor moves
//! and state changes visible, only once it is durable.
//!
//! A durable subscription keeps, per topic, a cursor: the mark (every message before it is
//! acknowledged) and the acknowledged ranges after it, as Pulsar's managed ledger keeps its
//! mark-delete position and individually deleted messages. The newest cursor of each is in the
//! log until the cleaner checkpoints it into the cursor tree.
//! Which consumer gets which message, and which delivered messages are still unacknowledged, lives
//! in memory only: after a restart every unacknowledged message is simply delivered again.
//!
//! Retention (`cleaner.rs`): a segment is deleted once nothing in it is needed: every durable
//! subscription of each topic in it has acknowledged its messages (a topic with no subscription
//! keeps its messages until one comes), and its cursors and state changes are checkpointed.
//!
//! The files: `journal.rs` (the log's steps), `topic.rs` (where a topic's messages are),
//! `cursor.rs` (a cursor's stored form), `dispatch.rs` (a shared subscription's delivery state),
//! `consumer.rs` (one consumer's fetch, commit and leave), `metadata.rs` (records and packages),
//! `state.rs` (function state and its checkpoints), `recover.rs` (reading the log back at open),
//! `cleaner.rs` (checkpoints and segment deletion), `migrate.rs` (the sled-only layout of
//! earlier releases). Locks are taken in the order ARCHITECTURE.md gives ("Invariants").

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crate::engine::broker::{
    Broker, BrokerError, Inputs, MessageBody, OutMessage, Position, Subscription, SubscriptionSpec,
};
use crate::engine::clock::{Clock, now_millis};
use crate::engine::history::BatchHistory;
use crate::engine::state::{StateError, StateStore, StateTable, StateValue, Versioned};
use crate::limits::{DEFAULT_LOG_SEGMENT_BYTES, MAX_BATCH_MESSAGES};
use crate::names::{Fqfn, SubscriptionName, TopicName, TopicPattern};
use crate::seglog::SegmentLog;

mod admin;
mod cleaner;
mod consumer;
mod cursor;
mod dispatch;
mod expiry;
pub use expiry::MAX_KEYS_SCANNED_PER_SWEEP;
mod history;
mod journal;
mod metadata;
mod migrate;
mod policy;
mod recover;
mod state;
mod stored_history;
mod topic;

pub(crate) use state::Record as StateLogRecord;

use cleaner::Cleaner;
use consumer::EmbeddedConsumer;
use cursor::{RangeSet, cursor_key, decode_cursor};
use dispatch::{Cursor, SharedSubscription};
use journal::{Append, CursorMove, StateStep, Step, log_failed};
use state::{Checkpointer, EmbeddedTable, FunctionTable, STATE_APPLIED_TREE};
use stored_history::StoredHistory;
use topic::{Extent, Topic, TopicTable};

/// The log's folder in the store's directory.
const LOG_DIR: &str = "log";
const CURSOR_TREE: &str = "cursors";
/// Each topic's next sequence number, written before segments are deleted.
const TOPIC_ENDS_TREE: &str = "topic-ends";
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
/// How often the cleaner looks for segments to delete.
const CLEAN_INTERVAL: Duration = Duration::from_secs(1);

/// Why the data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Another process holds the database's lock.
    #[error(
        "the data directory {0} is in use by another fnhost process; stop that process or pass a different --data-dir"
    )]
    Locked(String),
    /// Anything else sled or the log reported.
    #[error("cannot open the data directory {path}: {reason}")]
    Other {
        /// The directory.
        path: String,
        /// What was wrong.
        reason: String,
    },
}

/// The embedded engine. Cheap to clone; every clone shares one database.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// How the store is opened.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// The size after which the log starts a new segment (the unit in which disk is freed).
    pub log_segment_bytes: u64,
    /// How often the cleaner looks for segments to delete.
    pub clean_interval: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self { log_segment_bytes: DEFAULT_LOG_SEGMENT_BYTES, clean_interval: CLEAN_INTERVAL }
    }
}

struct Inner {
    db: sled::Db,
    log: Arc<SegmentLog>,
    /// Cursors checkpointed from the log.
    cursors: sled::Tree,
    metadata: sled::Tree,
    packages: sled::Tree,
    topics: Mutex<TopicTable>,
    topic_ends: sled::Tree,
    /// Each function's applied id (see [`state`]).
    state_applied: sled::Tree,
    /// The state of every function read or written since the store opened.
    state_tables: Mutex<HashMap<Fqfn, Arc<FunctionTable>>>,
    checkpointer: Checkpointer,
    /// Cursors whose newest form is in the log and not yet in the cursor tree: the id of its
    /// step, and its mark and ranges (`None`: removed).
    unsaved_cursors: Mutex<HashMap<(SubscriptionName, TopicName), UnsavedCursor>>,
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
    policies: policy::Policies,
    cleaner: Cleaner,
    /// The input topics of every function whose commits carry history: the cleaner keeps the log
    /// from their kept messages on, so that the history of what they processed is kept as long.
    history_inputs: Mutex<HashSet<String>>,
    /// What decides when state values expire (see [`expiry`]).
    clock: Clock,
}

/// A cursor's newest form, in log record `log_id`.
#[derive(Clone)]
struct UnsavedCursor {
    log_id: u64,
    position: Option<(u64, RangeSet)>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cleaner.close();
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
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        Self::open_with(dir, &StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir` with `options`.
    pub fn open_with(dir: &Path, options: &StoreOptions) -> Result<Self, OpenError> {
        let shown = dir.display().to_string();
        let other = |reason: String| OpenError::Other { path: shown.clone(), reason };
        let db = sled::Config::new().path(dir).open().map_err(|error| match &error {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                OpenError::Locked(shown.clone())
            }
            _ => other(error.to_string()),
        })?;
        let open_tree = |name: &str| db.open_tree(name).map_err(|error| other(error.to_string()));
        let cursors = open_tree(CURSOR_TREE)?;
        let metadata = open_tree(METADATA_TREE)?;
        let packages = open_tree(PACKAGE_TREE)?;
        let state_applied = open_tree(STATE_APPLIED_TREE)?;
        let topic_ends = open_tree(TOPIC_ENDS_TREE)?;
        let log_dir = dir.join(LOG_DIR);
        migrate::convert_sled_layout(&db, &log_dir).map_err(&other)?;
        let (log, _cut) =
            SegmentLog::open(&log_dir, options.log_segment_bytes).map_err(|error| other(error.to_string()))?;
        let checkpointer = Checkpointer::start(&db, &state_applied).map_err(|error| other(error.to_string()))?;
        let policies = policy::Policies::open(&db).map_err(&other)?;
        let store = Self {
            inner: Arc::new(Inner {
                db,
                log: Arc::new(log),
                cursors,
                metadata,
                packages,
                topics: Mutex::new(TopicTable::default()),
                topic_ends,
                state_applied,
                state_tables: Mutex::new(HashMap::new()),
                checkpointer,
                unsaved_cursors: Mutex::new(HashMap::new()),
                subscriptions: Mutex::new(HashMap::new()),
                opened_topics: Mutex::new(Vec::new()),
                topic_generation: AtomicU64::new(0),
                live: Mutex::new(Vec::new()),
                policies,
                cleaner: Cleaner::default(),
                history_inputs: Mutex::new(HashSet::new()),
                clock: Clock::default(),
            }),
        };
        recover::recover(&store).map_err(|error| other(error.to_string()))?;
        store
            .inner
            .cleaner
            .start(Arc::downgrade(&store.inner), options.clean_interval)
            .map_err(|error| other(error.to_string()))?;
        Ok(store)
    }

    /// Submits `step` to the log and returns the ids of its records (one, unless it is long); the
    /// caller holds the locks that order it, and waits for it with [`EmbeddedStore::durable`].
    fn submit(&self, step: &Step) -> Result<Range<u64>, BrokerError> {
        self.inner.log.submit_with(step.records(), journal::stamp).map_err(log_failed)
    }

    /// Returns once the records `ids` are durable.
    fn durable(&self, ids: &Range<u64>) -> Result<(), BrokerError> {
        self.inner.log.wait(ids.end).map_err(log_failed)
    }

    /// Notes the input topics of a batch whose commit carries history (see `Inner::history_inputs`).
    fn note_history_inputs(&self, history: &BatchHistory) {
        let mut known = lock(&self.inner.history_inputs);
        for topic in &history.topics {
            if !known.contains(topic.as_str()) {
                known.insert(topic.as_str().to_owned());
            }
        }
    }

    /// The topic `name`, made if the store has never seen it.
    fn topic(&self, name: &TopicName) -> Arc<Topic> {
        let mut topics = lock(&self.inner.topics);
        match topics.get(name) {
            Some(topic) => topic.clone(),
            None => self.insert_topic(&mut topics, name),
        }
    }

    /// Makes topic `name` in `topics` (the locked map), which does not hold it.
    fn insert_topic(&self, topics: &mut TopicTable, name: &TopicName) -> Arc<Topic> {
        let topic = Arc::new(Topic::new(name.clone(), self.inner.log.clone()));
        topics.insert(topic.clone());
        let mut opened = lock(&self.inner.opened_topics);
        opened.push(name.clone());
        self.inner.topic_generation.store(opened.len() as u64, Ordering::Release);
        topic
    }

    /// Every topic in the store that `pattern` matches.
    fn topics_matching(&self, pattern: &TopicPattern) -> Vec<TopicName> {
        lock(&self.inner.topics).keys().filter(|topic| pattern.matches(topic)).cloned().collect()
    }

    /// A cursor over `topic` for subscription `name`, from its record or, for a new one, at
    /// `position` (made durable before it returns).
    fn cursor(
        &self,
        name: Option<&SubscriptionName>,
        topic: &TopicName,
        position: Position,
    ) -> Result<Cursor, BrokerError> {
        let topic = self.topic(topic);
        let start = match position {
            Position::Earliest => topic.first_kept(),
            Position::Latest => topic.length.load(Ordering::Acquire),
        };
        let (mark, acked) = match name {
            Some(name) => match self.stored_cursor(name, &topic.name)? {
                Some(stored) => stored,
                None => {
                    let acked = RangeSet::default();
                    let step = Step {
                        cursors: vec![CursorMove::new(name, &topic.name, Some((start, &acked)))],
                        ..Step::default()
                    };
                    let ids = self.submit(&step)?;
                    self.durable(&ids)?;
                    self.cursor_moved(name, &topic, ids.start, Some((start, acked.clone())));
                    (start, acked)
                }
            },
            None => (start, RangeSet::default()),
        };
        Ok(Cursor { topic, fetched: mark, mark, acked, delivered: BTreeMap::new() })
    }

    /// Notes a durable cursor move (in log record `log_id`) for the cleaner and for retention.
    fn cursor_moved(&self, name: &SubscriptionName, topic: &Topic, log_id: u64, position: Option<(u64, RangeSet)>) {
        topic.set_mark(name, position.as_ref().map(|(mark, _)| *mark));
        lock(&self.inner.unsaved_cursors)
            .insert((name.clone(), topic.name.clone()), UnsavedCursor { log_id, position });
    }

    /// The durable cursor of subscription `name` on `topic`: its mark and acknowledged ranges.
    fn stored_cursor(
        &self,
        name: &SubscriptionName,
        topic: &TopicName,
    ) -> Result<Option<(u64, RangeSet)>, BrokerError> {
        if let Some(unsaved) = lock(&self.inner.unsaved_cursors).get(&(name.clone(), topic.clone())) {
            return Ok(unsaved.position.clone());
        }
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
        let table = Arc::new(FunctionTable::open(&self.inner.db, fqfn, &self.inner.clock)?);
        tables.insert(fqfn.clone(), table.clone());
        Ok(table)
    }

    /// Checkpoints a function's state now (see [`state`]); commits queue theirs on the checkpointer.
    #[cfg(test)]
    fn checkpoint(&self, table: &FunctionTable) -> Result<(), sled::Error> {
        table.checkpoint(&self.inner.db, &self.inner.state_applied)
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

    /// Bytes the log's segments take on disk.
    pub fn log_bytes(&self) -> u64 {
        self.inner.log.disk_bytes()
    }

    /// Appends `bodies` to topic `name` and returns their sequence numbers once durable; `None`
    /// if the topic was deleted while this waited for it (the caller looks it up again).
    fn append(&self, name: &TopicName, bodies: &[MessageBody]) -> Result<Option<Vec<u64>>, BrokerError> {
        let topic = self.topic(name);
        let count = bodies.len() as u64;
        let mut next = lock(&topic.next);
        if topic.deleted.load(Ordering::Acquire) {
            return Ok(None);
        }
        let first = *next;
        let step = Step { appends: vec![Append::new(&topic.name, first, bodies)], ..Step::default() };
        let ids = self.submit(&step)?;
        let bytes = step.appends[0].messages.len() as u64;
        topic.record(Extent::of(&step.appends[0], &ids));
        *next += count;
        drop(next);
        self.durable(&ids)?;
        topic.published(first + count, count, bytes);
        self.notify_appended([&topic.name]);
        Ok(Some((first..first + count).collect()))
    }

    /// The topic `name` if the store has it, without making it.
    fn existing_topic(&self, name: &TopicName) -> Option<Arc<Topic>> {
        lock(&self.inner.topics).get(name).cloned()
    }
}

impl Broker for EmbeddedStore {
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError> {
        self.check_new_topic(topic)?;
        self.hold_for_backlog_quota(topic)?;
        let publish_time = now_millis();
        let bodies: Vec<MessageBody> = messages.into_iter().map(|message| message.stamp(publish_time)).collect();
        loop {
            if let Some(sequences) = self.append(topic, &bodies)? {
                return Ok(sequences);
            }
        }
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
                self.register(&shared);
                subscriptions.insert(name, shared.clone());
                shared
            }
        };
        let id = shared.join(&spec)?;
        Ok(Box::new(EmbeddedConsumer::new(self.clone(), shared, id)))
    }

    fn delete_subscription(&self, name: &SubscriptionName, inputs: &Inputs) -> Result<(), BrokerError> {
        let subscriptions = lock(&self.inner.subscriptions);
        if subscriptions.contains_key(name) {
            return Err(BrokerError::InUse { name: name.clone() });
        }
        let mut topics: Vec<TopicName> = lock(&self.inner.unsaved_cursors)
            .iter()
            .filter(|((subscription, _), unsaved)| subscription == name && unsaved.position.is_some())
            .map(|((_, topic), _)| topic.clone())
            .collect();
        let mut prefix = name.to_string().into_bytes();
        prefix.push(0);
        for entry in self.inner.cursors.scan_prefix(&prefix) {
            let key = entry.map_err(storage)?.0;
            if let Some((_, topic)) = cursor::parse_cursor_key(&key)
                && self.stored_cursor(name, &topic)?.is_some()
            {
                topics.push(topic);
            }
        }
        topics.retain(|topic| inputs.covers(topic));
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Ok(());
        }
        let step = Step {
            cursors: topics.iter().map(|topic| CursorMove::new(name, topic, None)).collect(),
            ..Step::default()
        };
        let ids = self.submit(&step)?;
        self.durable(&ids)?;
        for topic in &topics {
            self.cursor_moved(name, &self.topic(topic), ids.start, None);
        }
        drop(subscriptions);
        Ok(())
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
        let table = self.state_table(fqfn).map_err(|error| StateError::Storage(error.to_string()))?;
        let (write, versioned) = table.prepare_put(&self.inner.db, key, value)?;
        let history = StoredHistory::encode(now_millis(), write.before(), None);
        let step = Step {
            state: Some(StateStep::Recorded { fqfn: fqfn.to_string(), record: write.encode(), history }),
            ..Step::default()
        };
        let ids = self.submit(&step).map_err(broker_failed)?;
        self.durable(&ids).map_err(broker_failed)?;
        if write.committed(ids.start) {
            self.inner.checkpointer.request(&table);
        }
        Ok(versioned)
    }

    fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    fn delete_table(&self, fqfn: &Fqfn) -> Result<(), StateError> {
        let failed = |error: sled::Error| StateError::Storage(error.to_string());
        let table = self.state_table(fqfn).map_err(failed)?;
        let values = table.lock_for_delete();
        let ids = self
            .submit(&Step { state: Some(StateStep::Dropped { fqfn: fqfn.to_string() }), ..Step::default() })
            .map_err(broker_failed)?;
        self.durable(&ids).map_err(broker_failed)?;
        table.delete(values, &self.inner.db, &self.inner.state_applied).map_err(failed)?;
        lock(&self.inner.state_tables).remove(fqfn);
        self.inner.db.flush().map(drop).map_err(failed)
    }
}

fn broker_failed(error: BrokerError) -> StateError {
    StateError::Storage(error.to_string())
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
