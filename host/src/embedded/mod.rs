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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use sled::Transactional;
use sled::transaction::TransactionError;

use crate::engine::broker::{
    Acks, Broker, BrokerError, Effects, FetchWaker, Inputs, Message, MessageBody, OutMessage, Position, Subscription,
    SubscriptionSpec, SubscriptionType,
};
use crate::engine::clock::now_millis;
use crate::engine::metadata::{MetadataError, MetadataStore};
use crate::engine::state::{StateError, StateStore, StateTable, StateValue, Versioned};
use crate::limits::{MAX_BATCH_MESSAGES, MAX_SUBSCRIPTION_TOPICS, MAX_UNACKED_MESSAGES};
use crate::names::{Fqfn, SubscriptionName, TopicName, TopicPattern};

mod state;

pub(crate) use state::Record as StateLogRecord;

use state::{Checkpointer, EmbeddedTable, FunctionTable, STATE_LOG_TREE};

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

struct Topic {
    name: TopicName,
    tree: sled::Tree,
    /// The next sequence number; held locked from allocation until the append commits, so that
    /// readers never see a later message before an earlier one.
    next: Mutex<u64>,
    /// The number of committed messages, readable without waiting for an append in progress.
    length: AtomicU64,
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
            return Ok(Box::new(EmbeddedConsumer { store: self.clone(), shared, id, woken: Arc::default() }));
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
        Ok(Box::new(EmbeddedConsumer { store: self.clone(), shared, id, woken: Arc::default() }))
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

impl MetadataStore for EmbeddedStore {
    fn put_record(&self, key: &str, value: &[u8]) -> Result<(), MetadataError> {
        self.inner.metadata.insert(key.as_bytes(), value).map_err(metadata_error)?;
        self.inner.metadata.flush().map(drop).map_err(metadata_error)
    }

    fn remove_record(&self, key: &str) -> Result<(), MetadataError> {
        self.inner.metadata.remove(key.as_bytes()).map_err(metadata_error)?;
        self.inner.metadata.flush().map(drop).map_err(metadata_error)
    }

    fn records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, MetadataError> {
        self.inner
            .metadata
            .scan_prefix(prefix.as_bytes())
            .map(|entry| {
                let (key, value) = entry.map_err(metadata_error)?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn put_package(&self, digest: &str, bytes: &[u8]) -> Result<(), MetadataError> {
        if self.inner.packages.contains_key(digest).map_err(metadata_error)? {
            return Ok(());
        }
        self.inner.packages.insert(digest, bytes).map_err(metadata_error)?;
        self.inner.packages.flush().map(drop).map_err(metadata_error)
    }

    fn package(&self, digest: &str) -> Result<Option<Vec<u8>>, MetadataError> {
        Ok(self.inner.packages.get(digest).map_err(metadata_error)?.map(|bytes| bytes.to_vec()))
    }

    fn remove_package(&self, digest: &str) -> Result<(), MetadataError> {
        self.inner.packages.remove(digest).map_err(metadata_error)?;
        self.inner.packages.flush().map(drop).map_err(metadata_error)
    }
}

fn metadata_error(error: sled::Error) -> MetadataError {
    MetadataError(error.to_string())
}

/// Sequence numbers as disjoint, non-adjacent ranges `[start, end)`, keyed by start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct RangeSet(BTreeMap<u64, u64>);

impl RangeSet {
    fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        if let Some((&before, &before_end)) = self.0.range(..=start).next_back()
            && before_end >= start
        {
            start = before;
            end = end.max(before_end);
            self.0.remove(&before);
        }
        while let Some((&after, &after_end)) = self.0.range(start..).next() {
            if after > end {
                break;
            }
            end = end.max(after_end);
            self.0.remove(&after);
        }
        self.0.insert(start, end);
    }

    fn contains(&self, sequence: u64) -> bool {
        self.0.range(..=sequence).next_back().is_some_and(|(_, &end)| sequence < end)
    }

    /// Moves `mark` past the ranges that reach it, which it then covers.
    fn advance(&mut self, mark: &mut u64) {
        while let Some((&start, &end)) = self.0.first_key_value() {
            if start > *mark {
                break;
            }
            *mark = (*mark).max(end);
            self.0.remove(&start);
        }
    }
}

/// One topic of a subscription.
struct Cursor {
    topic: Arc<Topic>,
    /// The next message never read by this subscription (in this process).
    fetched: u64,
    /// Every message before it is acknowledged.
    mark: u64,
    /// Acknowledged messages after the mark.
    acked: RangeSet,
    /// Messages given to a consumer and not yet acknowledged, by sequence.
    delivered: BTreeMap<u64, Delivered>,
}

/// The consumer of released messages: no consumer has this id, so they are orphans.
const NOBODY: u64 = u64::MAX;

struct Delivered {
    consumer: u64,
    /// Times delivered so far.
    deliveries: u32,
    /// When it is delivered again if still unacknowledged.
    due: Option<Instant>,
    /// The key-shared routing hash (0 for the other types).
    route: u64,
}

/// A subscription as all its consumers in this process share it.
struct SharedSubscription {
    name: Option<SubscriptionName>,
    /// The topics it was opened with, sorted, and its pattern: a consumer asking for others is refused.
    asked: (Vec<TopicName>, Option<String>),
    subscription_type: SubscriptionType,
    pattern: Option<TopicPattern>,
    ack_timeout: Option<Duration>,
    key_share_count: u32,
    state: Mutex<SubscriptionState>,
    /// Wakes its consumers waiting in `fetch`.
    signal: Signal,
    /// Held from computing a commit's cursor records until they are written, so that two consumers'
    /// commits cannot each write a record missing the other's acknowledgements.
    commit_lock: Mutex<()>,
}

struct ConsumerState {
    key_share: u32,
    /// Messages delivered to it and not yet acknowledged.
    outstanding: usize,
}

struct SubscriptionState {
    cursors: Vec<Cursor>,
    /// Which topic is read first on the next fetch, so that no topic starves the others.
    rotation: usize,
    /// The store's topic generation when the pattern was last applied.
    topic_generation: u64,
    /// Open consumers, by id (ids grow, so the first is the oldest).
    consumers: BTreeMap<u64, ConsumerState>,
    next_consumer: u64,
    /// Key-shared: messages read for a key share whose consumer has not fetched them yet, with
    /// their cursor and routing hash.
    held: HashMap<u32, VecDeque<(usize, u64, Message)>>,
    held_count: usize,
    /// Delivered and unacknowledged messages over all cursors.
    unacked: usize,
    /// A consumer left with unacknowledged messages, which go to the others.
    orphans: bool,
}

impl SubscriptionState {
    fn count_outstanding(&mut self, consumer: u64, change: isize) {
        if let Some(state) = self.consumers.get_mut(&consumer) {
            state.outstanding = state.outstanding.saturating_add_signed(change);
        }
    }
}

impl SharedSubscription {
    fn open(store: &EmbeddedStore, spec: &SubscriptionSpec) -> Result<Self, BrokerError> {
        let name = spec.name.as_ref();
        let topic_generation = store.inner.topic_generation.load(Ordering::Acquire);
        let mut topics = spec.inputs.topics.clone();
        if let Some(pattern) = &spec.inputs.pattern {
            topics.extend(store.topics_matching(pattern)?);
        }
        topics.sort();
        topics.dedup();
        if topics.len() > MAX_SUBSCRIPTION_TOPICS {
            return Err(BrokerError::TooManyTopics {
                name: name.map_or_else(|| "(reader)".into(), ToString::to_string),
                limit: MAX_SUBSCRIPTION_TOPICS,
            });
        }
        let cursors =
            topics.iter().map(|topic| store.cursor(name, topic, spec.initial_position)).collect::<Result<_, _>>()?;
        Ok(Self {
            name: spec.name.clone(),
            asked: asked_inputs(&spec.inputs),
            subscription_type: spec.subscription_type,
            pattern: spec.inputs.pattern.clone(),
            ack_timeout: spec.ack_timeout,
            key_share_count: spec.key_shares.1.max(1),
            signal: Signal::default(),
            state: Mutex::new(SubscriptionState {
                cursors,
                rotation: 0,
                topic_generation,
                consumers: BTreeMap::new(),
                next_consumer: 0,
                held: HashMap::new(),
                held_count: 0,
                unacked: 0,
                orphans: false,
            }),
            commit_lock: Mutex::new(()),
        })
    }

    /// Adds a consumer and returns its id.
    fn join(&self, spec: &SubscriptionSpec) -> Result<u64, BrokerError> {
        let (share, count) = spec.key_shares;
        let same = spec.subscription_type == self.subscription_type
            && asked_inputs(&spec.inputs) == self.asked
            && (self.subscription_type != SubscriptionType::KeyShared
                || (count == self.key_share_count && share < count));
        if !same && let Some(name) = &self.name {
            return Err(BrokerError::Mismatch { name: name.clone() });
        }
        let mut state = lock(&self.state);
        let id = state.next_consumer;
        state.next_consumer += 1;
        state.consumers.insert(id, ConsumerState { key_share: share, outstanding: 0 });
        Ok(id)
    }

    /// Picks up topics created since the pattern was last applied.
    fn discover(&self, store: &EmbeddedStore, state: &mut SubscriptionState) -> Result<(), BrokerError> {
        let Some(pattern) = &self.pattern else { return Ok(()) };
        let generation = store.inner.topic_generation.load(Ordering::Acquire);
        if generation == state.topic_generation {
            return Ok(());
        }
        let opened: Vec<TopicName> =
            lock(&store.inner.opened_topics)[state.topic_generation as usize..generation as usize].to_vec();
        state.topic_generation = generation;
        for topic in opened.into_iter().filter(|topic| pattern.matches(topic)) {
            if state.cursors.iter().any(|cursor| cursor.topic.name == topic) {
                continue;
            }
            if state.cursors.len() >= MAX_SUBSCRIPTION_TOPICS {
                return Err(BrokerError::TooManyTopics {
                    name: self.name.as_ref().map(ToString::to_string).unwrap_or_default(),
                    limit: MAX_SUBSCRIPTION_TOPICS,
                });
            }
            // A topic that appears after the subscription was made is read from its start: its
            // first messages were produced after the subscription, so they are all new to it.
            state.cursors.push(store.cursor(self.name.as_ref(), &topic, Position::Earliest)?);
        }
        Ok(())
    }

    /// Takes up to `max` messages for `consumer`; also returns when the next redelivery for it is due.
    fn take(
        &self,
        store: &EmbeddedStore,
        consumer: u64,
        max: usize,
    ) -> Result<(Vec<Message>, Option<Instant>), BrokerError> {
        let mut state = lock(&self.state);
        self.discover(store, &mut state)?;
        let Some(share) = state.consumers.get(&consumer).map(|consumer| consumer.key_share) else {
            return Ok((Vec::new(), None));
        };
        if self.subscription_type == SubscriptionType::Failover && state.consumers.keys().next() != Some(&consumer) {
            return Ok((Vec::new(), None));
        }
        let now = Instant::now();
        let mut taken = Vec::new();
        let next_due = self.redeliver(&mut state, consumer, share, max, now, &mut taken)?;
        if self.subscription_type == SubscriptionType::KeyShared {
            let mut held = state.held.remove(&share).unwrap_or_default();
            while taken.len() < max
                && let Some((index, hash, message)) = held.pop_front()
            {
                state.held_count -= 1;
                self.deliver(&mut state, (index, message.sequence, hash), consumer, now);
                taken.push(message);
            }
            if !held.is_empty() {
                state.held.insert(share, held);
            }
        }
        if taken.len() < max && state.unacked < MAX_UNACKED_MESSAGES {
            let limit = match self.subscription_type {
                // An equal part of the backlog for this consumer and each other idle one, so that a
                // small backlog is spread too.
                SubscriptionType::Shared => {
                    let backlog: u64 = state
                        .cursors
                        .iter()
                        .map(|cursor| cursor.topic.length.load(Ordering::Acquire).saturating_sub(cursor.fetched))
                        .sum();
                    let idle =
                        state.consumers.iter().filter(|&(&id, other)| id != consumer && other.outstanding == 0).count();
                    let part = backlog.div_ceil(1 + idle as u64).max(1);
                    max.min(taken.len() + part as usize)
                }
                _ => max.min(taken.len() + MAX_UNACKED_MESSAGES - state.unacked),
            };
            if self.read_new(&mut state, consumer, share, limit, now, &mut taken)? {
                self.signal.notify();
            }
        }
        Ok((taken, next_due))
    }

    /// Moves due redeliveries for `consumer` into `taken`; returns when the next one will be due.
    fn redeliver(
        &self,
        state: &mut SubscriptionState,
        consumer: u64,
        share: u32,
        max: usize,
        now: Instant,
        taken: &mut Vec<Message>,
    ) -> Result<Option<Instant>, BrokerError> {
        if self.ack_timeout.is_none() && !state.orphans {
            return Ok(None);
        }
        let mut next_due: Option<Instant> = None;
        let mut orphans_left = false;
        for index in 0..state.cursors.len() {
            let mut due = Vec::new();
            for (&sequence, delivered) in &state.cursors[index].delivered {
                let orphaned = !state.consumers.contains_key(&delivered.consumer);
                let eligible =
                    self.subscription_type != SubscriptionType::KeyShared || self.key_share(delivered.route) == share;
                if !eligible || taken.len() + due.len() >= max {
                    orphans_left |= orphaned;
                    continue;
                }
                match delivered.due {
                    _ if orphaned => due.push(sequence),
                    Some(at) if at <= now => due.push(sequence),
                    Some(at) if delivered.consumer == consumer => {
                        next_due = Some(next_due.map_or(at, |next: Instant| next.min(at)));
                    }
                    _ => {}
                }
            }
            if due.is_empty() {
                continue;
            }
            let topic = state.cursors[index].topic.clone();
            for (sequence, body) in topic.read_at(&due)? {
                let delivered =
                    state.cursors[index].delivered.get_mut(&sequence).expect("chosen from the delivered messages");
                let redelivery_count = delivered.deliveries;
                let previous = std::mem::replace(&mut delivered.consumer, consumer);
                delivered.deliveries += 1;
                delivered.due = self.ack_timeout.map(|timeout| now + timeout);
                state.count_outstanding(previous, -1);
                state.count_outstanding(consumer, 1);
                taken.push(Message { topic: topic.name.clone(), sequence, body, redelivery_count });
            }
        }
        state.orphans = orphans_left;
        Ok(next_due)
    }

    /// Reads messages never read before into `taken` (key-shared: holding other shares' messages)
    /// until it holds `limit`; returns whether messages were held for other consumers.
    fn read_new(
        &self,
        state: &mut SubscriptionState,
        consumer: u64,
        share: u32,
        limit: usize,
        now: Instant,
        taken: &mut Vec<Message>,
    ) -> Result<bool, BrokerError> {
        let count = state.cursors.len();
        let mut held_for_others = false;
        for step in 0..count {
            if taken.len() >= limit {
                break;
            }
            let index = (state.rotation + step) % count;
            let from = state.cursors[index].fetched;
            let topic = state.cursors[index].topic.clone();
            topic.scan(from, |sequence, body| {
                if taken.len() >= limit {
                    return false;
                }
                let cursor = &mut state.cursors[index];
                if cursor.acked.contains(sequence) || sequence < cursor.mark {
                    cursor.fetched = sequence + 1;
                    return true;
                }
                let message = Message { topic: topic.name.clone(), sequence, body, redelivery_count: 0 };
                let mut hash = 0;
                if self.subscription_type == SubscriptionType::KeyShared {
                    hash = route(&message);
                    let owner = self.key_share(hash);
                    if owner != share {
                        if state.held_count >= HELD_PER_KEY_SHARE * self.key_share_count as usize {
                            return false;
                        }
                        state.cursors[index].fetched = sequence + 1;
                        state.held.entry(owner).or_default().push_back((index, hash, message));
                        state.held_count += 1;
                        held_for_others = true;
                        return true;
                    }
                }
                state.cursors[index].fetched = sequence + 1;
                self.deliver(state, (index, sequence, hash), consumer, now);
                taken.push(message);
                true
            })?;
        }
        state.rotation = (state.rotation + 1) % count.max(1);
        Ok(held_for_others)
    }

    /// The key share whose consumer receives messages with routing hash `route`.
    fn key_share(&self, route: u64) -> u32 {
        (route % u64::from(self.key_share_count)) as u32
    }

    /// Records that the message at `sequence` of cursor `index`, with routing hash `route` (0 unless
    /// key-shared), was delivered to `consumer`.
    fn deliver(
        &self,
        state: &mut SubscriptionState,
        (index, sequence, route): (usize, u64, u64),
        consumer: u64,
        now: Instant,
    ) {
        // A reader without a subscription name is never redelivered anything, so it need not track what it read.
        if self.name.is_none() {
            return;
        }
        let delivered =
            Delivered { consumer, deliveries: 1, due: self.ack_timeout.map(|timeout| now + timeout), route };
        if let Some(before) = state.cursors[index].delivered.insert(sequence, delivered) {
            state.count_outstanding(before.consumer, -1);
        } else {
            state.unacked += 1;
        }
        state.count_outstanding(consumer, 1);
    }

    /// True when nothing is left for `consumer`: every message was read, none is held for it, and
    /// none it was given is unacknowledged.
    fn drained(&self, consumer: u64) -> bool {
        let state = lock(&self.state);
        let Some(me) = state.consumers.get(&consumer) else { return true };
        me.outstanding == 0
            && state.held.get(&me.key_share).is_none_or(VecDeque::is_empty)
            && state.cursors.iter().all(|cursor| cursor.fetched >= cursor.topic.length.load(Ordering::Acquire))
    }

    /// Whether it reads any of `topics`.
    fn reads_any<'a>(&self, topics: impl IntoIterator<Item = &'a TopicName>) -> bool {
        let state = lock(&self.state);
        topics.into_iter().any(|topic| state.cursors.iter().any(|cursor| cursor.topic.name == *topic))
    }

    /// See [`Subscription::release`]: each message `consumer` still holds goes to nobody, and its
    /// delivery is taken back.
    fn release(&self, consumer: u64, messages: &[Message]) {
        let mut state = lock(&self.state);
        let mut released = 0;
        for message in messages {
            let Some(cursor) = state.cursors.iter_mut().find(|cursor| cursor.topic.name == message.topic) else {
                continue;
            };
            if let Some(delivered) = cursor.delivered.get_mut(&message.sequence)
                && delivered.consumer == consumer
            {
                delivered.consumer = NOBODY;
                delivered.deliveries = delivered.deliveries.saturating_sub(1);
                released += 1;
            }
        }
        if released > 0 {
            state.count_outstanding(consumer, -released);
            state.orphans = true;
            drop(state);
            self.signal.notify();
        }
    }

    fn leave(&self, consumer: u64) {
        let mut state = lock(&self.state);
        state.consumers.remove(&consumer);
        state.orphans = state.cursors.iter().any(|cursor| {
            cursor.delivered.values().any(|delivered| !state.consumers.contains_key(&delivered.consumer))
        });
    }
}

/// The cursor records a commit writes: for each cursor it moves, its index, mark and acknowledged ranges.
type CursorUpdates = Vec<(usize, u64, RangeSet)>;

impl SharedSubscription {
    fn cursor_updates(&self, acks: &Acks) -> CursorUpdates {
        let state = lock(&self.state);
        let mut updates = Vec::new();
        for (topic, ranges) in acks.iter() {
            let Some(index) = state.cursors.iter().position(|cursor| cursor.topic.name == *topic) else { continue };
            let cursor = &state.cursors[index];
            let mut mark = cursor.mark;
            let mut acked = cursor.acked.clone();
            for &(start, end) in ranges {
                acked.insert(start.max(mark), end);
            }
            acked.advance(&mut mark);
            if mark != cursor.mark || acked != cursor.acked {
                updates.push((index, mark, acked));
            }
        }
        updates
    }

    /// Records a commit's acknowledgements; returns whether consumers may be waiting for them
    /// (the subscription was at its unacknowledged limit).
    fn apply(&self, updates: CursorUpdates, acks: &Acks) -> bool {
        let mut state = lock(&self.state);
        let was_full = state.unacked >= MAX_UNACKED_MESSAGES;
        for (index, mark, acked) in updates {
            let cursor = &mut state.cursors[index];
            cursor.mark = mark;
            cursor.acked = acked;
        }
        let mut removed = Vec::new();
        for (topic, ranges) in acks.iter() {
            let Some(cursor) = state.cursors.iter_mut().find(|cursor| cursor.topic.name == *topic) else { continue };
            for &(start, end) in ranges {
                let sequences: Vec<u64> = cursor.delivered.range(start..end).map(|(&sequence, _)| sequence).collect();
                removed.extend(sequences.into_iter().filter_map(|sequence| cursor.delivered.remove(&sequence)));
            }
        }
        state.unacked -= removed.len();
        let released = was_full && !removed.is_empty();
        for delivered in removed {
            state.count_outstanding(delivered.consumer, -1);
        }
        released
    }
}

/// The key-shared routing hash: of the partition key, else the key; a message without either is
/// routed by its sequence number, so keyless messages are spread.
fn route(message: &Message) -> u64 {
    match message.body.partition_key.as_deref().or(message.body.key.as_deref()) {
        Some(key) => crate::engine::broker::key_route(key),
        None => message.sequence,
    }
}

impl Topic {
    /// Calls `visit` with each message from sequence `from` on, until it returns false or the topic ends.
    fn scan(&self, from: u64, mut visit: impl FnMut(u64, MessageBody) -> bool) -> Result<(), BrokerError> {
        // The segment holding `from` starts at or before it.
        let start = match self.tree.range(..=from.to_be_bytes()).next_back() {
            Some(entry) => entry.map_err(storage)?.0,
            None => sled::IVec::from(&from.to_be_bytes()),
        };
        for entry in self.tree.range(start..) {
            let (key, value) = entry.map_err(storage)?;
            let first = decode_sequence(&key);
            for (sequence, body) in (first..).zip(self.decode(first, &value)?) {
                if sequence >= from && !visit(sequence, body) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// The messages at `sequences` (ascending), decoding each segment once.
    fn read_at(&self, sequences: &[u64]) -> Result<Vec<(u64, MessageBody)>, BrokerError> {
        let mut found = Vec::with_capacity(sequences.len());
        let mut segment: Option<(u64, Vec<MessageBody>)> = None;
        for &sequence in sequences {
            let covered = segment
                .as_ref()
                .is_some_and(|(first, bodies)| sequence >= *first && sequence < *first + bodies.len() as u64);
            if !covered {
                let Some(entry) = self.tree.range(..=sequence.to_be_bytes()).next_back() else { continue };
                let (key, value) = entry.map_err(storage)?;
                let first = decode_sequence(&key);
                segment = Some((first, self.decode(first, &value)?));
            }
            if let Some((first, bodies)) = &segment
                && let Some(body) = bodies.get((sequence - first) as usize)
            {
                found.push((sequence, body.clone()));
            }
        }
        Ok(found)
    }

    fn decode(&self, first: u64, value: &[u8]) -> Result<Vec<MessageBody>, BrokerError> {
        decode_segment(value).map_err(|reason| BrokerError::Corrupt {
            topic: self.name.clone(),
            sequence: first,
            reason,
        })
    }
}

/// One consumer of a [`SharedSubscription`].
struct EmbeddedConsumer {
    store: EmbeddedStore,
    shared: Arc<SharedSubscription>,
    id: u64,
    /// Set by the waker: the waiting fetch returns.
    woken: Arc<AtomicBool>,
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        let mut subscriptions = lock(&self.store.inner.subscriptions);
        self.shared.leave(self.id);
        // The last consumer gone, the subscription is forgotten: its records are durable, and what
        // was delivered without acknowledgement is delivered again when it is next opened.
        if lock(&self.shared.state).consumers.is_empty()
            && let Some(name) = &self.shared.name
            && subscriptions.get(name).is_some_and(|shared| Arc::ptr_eq(shared, &self.shared))
        {
            subscriptions.remove(name);
        }
        drop(subscriptions);
        self.shared.signal.notify();
    }
}

impl Subscription for EmbeddedConsumer {
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = *lock(&self.shared.signal.generation);
            let (messages, next_due) = self.shared.take(&self.store, self.id, max)?;
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let mut pause = (deadline - now).min(CONSUMER_POLL);
            if let Some(due) = next_due {
                pause = pause.min(due.saturating_duration_since(now));
            }
            let generation = lock(&self.shared.signal.generation);
            if self.woken.swap(false, Ordering::AcqRel) {
                return Ok(messages);
            }
            if *generation == seen {
                let _ = self.shared.signal.changed.wait_timeout(generation, pause);
            }
        }
    }

    fn waker(&self) -> FetchWaker {
        let (shared, woken) = (self.shared.clone(), self.woken.clone());
        Arc::new(move || {
            woken.store(true, Ordering::Release);
            shared.signal.notify();
        })
    }

    fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
        let shared = &self.shared;
        let store = &self.store;
        let commit_guard = lock(&shared.commit_lock);
        let updates = shared.cursor_updates(&effects.acks);
        if effects.is_empty() && (updates.is_empty() || shared.name.is_none()) {
            if shared.apply(updates, &effects.acks) {
                shared.signal.notify();
            }
            return Ok(());
        }

        // Group outputs by topic and lock the topics in name order, so that concurrent commits cannot deadlock.
        let publish_time = now_millis();
        let mut by_topic: BTreeMap<TopicName, Vec<MessageBody>> = BTreeMap::new();
        for (topic, message) in effects.outputs {
            by_topic.entry(topic).or_default().push(message.stamp(publish_time));
        }
        let topics: Vec<Arc<Topic>> = by_topic.keys().map(|name| store.topic(name)).collect::<Result<_, _>>()?;
        let mut nexts: Vec<MutexGuard<'_, u64>> = topics.iter().map(|topic| lock(&topic.next)).collect();
        let appends: Vec<Vec<(u64, Vec<u8>)>> =
            by_topic.values().zip(&nexts).map(|(bodies, next)| segments(**next, bodies)).collect();

        let table = match &effects.state {
            Some((fqfn, changes)) if !changes.is_empty() => Some((store.state_table(fqfn).map_err(storage)?, changes)),
            _ => None,
        };
        // Holds the function's state lock until the commit is applied in memory.
        let state_write = match &table {
            Some((table, changes)) => Some(table.prepare(&store.inner.db, changes).map_err(state_failed)?),
            None => None,
        };

        let mut trees: Vec<&sled::Tree> = vec![&store.inner.cursors, &store.inner.state_log];
        let first_topic_tree = trees.len();
        trees.extend(topics.iter().map(|topic| &topic.tree));

        let cursor_writes: Vec<(Vec<u8>, Vec<u8>)> = match &shared.name {
            Some(name) => {
                let cursors = lock(&shared.state);
                updates
                    .iter()
                    .map(|(index, mark, acked)| {
                        (cursor_key(name, &cursors.cursors[*index].topic.name), encode_cursor(*mark, acked))
                    })
                    .collect()
            }
            None => Vec::new(),
        };

        let result: Result<(), TransactionError<()>> =
            trees.as_slice().transaction(|views: &Vec<sled::transaction::TransactionalTree>| {
                for (key, record) in &cursor_writes {
                    views[0].insert(key.as_slice(), record.as_slice())?;
                }
                if let Some(write) = &state_write {
                    views[1].insert(write.log_key(), write.encoded())?;
                }
                for (offset, topic_segments) in appends.iter().enumerate() {
                    let view = &views[first_topic_tree + offset];
                    for (first, segment) in topic_segments {
                        view.insert(&first.to_be_bytes(), segment.as_slice())?;
                    }
                }
                Ok(())
            });
        result.map_err(|error| match error {
            TransactionError::Abort(()) => unreachable!("the commit's transaction never aborts"),
            TransactionError::Storage(error) => storage(error),
        })?;
        let checkpoint_due = state_write.is_some_and(|write| write.committed());
        // Outputs become readable before the acknowledgements show, so whoever sees a message
        // acknowledged (trigger) also finds its output.
        for ((next, bodies), topic) in nexts.iter_mut().zip(by_topic.values()).zip(&topics) {
            **next += bodies.len() as u64;
            topic.length.store(**next, Ordering::Release);
        }
        drop(nexts);
        let released = shared.apply(updates, &effects.acks);
        drop(commit_guard);
        store.flush()?;
        if released {
            shared.signal.notify();
        }
        if !by_topic.is_empty() {
            store.notify_appended(by_topic.keys());
        }
        if let Some((table, _)) = table.filter(|_| checkpoint_due) {
            store.inner.checkpointer.request(&table);
        }
        Ok(())
    }

    fn drained(&self) -> bool {
        self.shared.drained(self.id)
    }

    fn release(&self, messages: Vec<Message>) {
        self.shared.release(self.id, &messages);
    }
}

/// What a consumer asks to read, comparable: its named topics, sorted, and its pattern.
fn asked_inputs(inputs: &Inputs) -> (Vec<TopicName>, Option<String>) {
    let mut topics = inputs.topics.clone();
    topics.sort();
    topics.dedup();
    (topics, inputs.pattern.as_ref().map(ToString::to_string))
}

fn cursor_key(subscription: &SubscriptionName, topic: &TopicName) -> Vec<u8> {
    let subscription = subscription.to_string();
    let mut key = Vec::with_capacity(subscription.len() + 1 + topic.as_str().len());
    key.extend_from_slice(subscription.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}

fn encode_cursor(mark: u64, acked: &RangeSet) -> Vec<u8> {
    let ranges: Vec<(u64, u64)> = acked.0.iter().map(|(&start, &end)| (start, end)).collect();
    crate::codec::encode(&(mark, ranges))
}

fn decode_cursor(bytes: &[u8]) -> Result<(u64, RangeSet), String> {
    let (mark, ranges): (u64, Vec<(u64, u64)>) = crate::codec::decode(bytes).map_err(|error| error.to_string())?;
    Ok((mark, RangeSet(ranges.into_iter().collect())))
}

/// Splits consecutive messages starting at sequence `first` into encoded segments of about
/// `SEGMENT_BYTES`, each with the sequence number of its first message.
fn segments(first: u64, bodies: &[MessageBody]) -> Vec<(u64, Vec<u8>)> {
    let mut encoded = Vec::new();
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len() && (end == start || bytes + encoded_size(&bodies[end]) <= SEGMENT_BYTES) {
            bytes += encoded_size(&bodies[end]);
            end += 1;
        }
        let segment = crate::codec::encode(&&bodies[start..end]);
        encoded.push((first + start as u64, segment));
        start = end;
    }
    encoded
}

/// About how many bytes `body` takes in an encoded segment (its varint lengths and numbers aside).
fn encoded_size(body: &MessageBody) -> usize {
    let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    body.value.len()
        + text(&body.key)
        + text(&body.partition_key)
        + body.properties.iter().map(|(name, value)| name.len() + value.len()).sum::<usize>()
        + 32
}

fn decode_segment(bytes: &[u8]) -> Result<Vec<MessageBody>, String> {
    crate::codec::decode(bytes).map_err(|error| error.to_string())
}

fn decode_sequence(bytes: &[u8]) -> u64 {
    let mut buffer = [0; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buffer)
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
mod tests {
    use super::*;
    use crate::engine::state::{Change, StateChanges};

    /// Opens the store in `dir`. A store dropped a moment ago in this process may still hold the
    /// directory's lock (a reopen failed with `Locked` once under CI load): sled's background
    /// threads outlive the dropped handle.
    fn open(dir: &Path) -> EmbeddedStore {
        for _ in 0..100 {
            match EmbeddedStore::open(dir) {
                Err(OpenError::Locked(_)) => std::thread::sleep(Duration::from_millis(50)),
                opened => return opened.unwrap(),
            }
        }
        EmbeddedStore::open(dir).unwrap()
    }

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    fn spec(topics: &[&str], name: Option<&str>, position: Position) -> SubscriptionSpec {
        let name = name.map(|name| SubscriptionName::new("public", "default", name).unwrap());
        SubscriptionSpec::single(topics.iter().map(|t| topic(t)).collect(), name, position)
    }

    fn values(messages: &[Message]) -> Vec<String> {
        messages.iter().map(|m| String::from_utf8(m.body.value.clone()).unwrap()).collect()
    }

    fn produce(store: &EmbeddedStore, name: &str, values: &[&str]) -> Vec<u64> {
        store.produce(&topic(name), values.iter().map(|v| OutMessage::new(v.as_bytes())).collect()).unwrap()
    }

    #[test]
    fn appends_are_read_in_order_from_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        assert_eq!(produce(&store, "t", &["a", "b"]), vec![0, 1]);
        assert_eq!(produce(&store, "t", &["c"]), vec![2]);
        let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
        assert_eq!(values(&subscription.fetch(2, Duration::ZERO).unwrap()), ["a", "b"]);
        assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["c"]);
        assert!(subscription.fetch(10, Duration::ZERO).unwrap().is_empty());
    }

    #[test]
    fn large_appends_span_several_segments_and_read_back_from_any_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let values: Vec<Vec<u8>> = (0..7u8).map(|i| vec![i; SEGMENT_BYTES / 3]).collect();
        store.produce(&topic("big"), values.iter().map(|v| OutMessage::new(v.clone())).collect()).unwrap();
        assert!(store.topic(&topic("big")).unwrap().tree.len() > 1, "the append was split into segments");
        let subscription = store.subscribe(spec(&["big"], Some("s"), Position::Earliest)).unwrap();
        let mut read = Vec::new();
        for max in [2, 3, 10] {
            read.extend(
                subscription.fetch(max, Duration::ZERO).unwrap().into_iter().map(|m| (m.sequence, m.body.value)),
            );
        }
        let expected: Vec<(u64, Vec<u8>)> = (0..).zip(values).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn unacknowledged_messages_are_redelivered_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            produce(&store, "t", &["a", "b", "c"]);
            let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
            let first = subscription.fetch(1, Duration::ZERO).unwrap();
            assert_eq!(values(&first), ["a"]);
            subscription.commit(Effects { acks: Acks::of(&first), ..Effects::default() }).unwrap();
            assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b", "c"]);
        }
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
        assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b", "c"]);
        let other = store.subscribe(spec(&["t"], Some("other"), Position::Latest)).unwrap();
        assert!(other.fetch(10, Duration::ZERO).unwrap().is_empty());
        produce(&store, "t", &["d"]);
        assert_eq!(values(&other.fetch(10, Duration::ZERO).unwrap()), ["d"]);
    }

    #[test]
    fn a_commit_writes_outputs_state_and_cursor_together() {
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        {
            let store = open(dir.path());
            produce(&store, "in", &["x"]);
            let subscription = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
            let fetched = subscription.fetch(10, Duration::ZERO).unwrap();
            let mut changes = StateChanges::default();
            changes.record("k".into(), Change::Put(b"v".to_vec()));
            changes.record("n".into(), Change::Add(5));
            let effects = Effects {
                acks: Acks::of(&fetched),
                outputs: vec![(topic("out"), OutMessage::new("y")), (topic("other"), OutMessage::new("z"))],
                state: Some((fqfn.clone(), changes.into())),
            };
            subscription.commit(effects).unwrap();
        }
        let store = open(dir.path());
        assert_eq!(store.table(&fqfn).unwrap().get("k").unwrap().unwrap().value, StateValue::Bytes(b"v".to_vec()));
        assert_eq!(store.table(&fqfn).unwrap().get("n").unwrap().unwrap().value, StateValue::Counter(5));
        let out = store.subscribe(spec(&["out", "other"], None, Position::Earliest)).unwrap();
        let mut seen = values(&out.fetch(10, Duration::ZERO).unwrap());
        seen.sort();
        assert_eq!(seen, ["y", "z"]);
        let input = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
        assert!(input.fetch(10, Duration::ZERO).unwrap().is_empty(), "the input was acknowledged");
    }

    fn consumer(store: &EmbeddedStore, kind: SubscriptionType, shares: (u32, u32)) -> Box<dyn Subscription> {
        let spec = SubscriptionSpec {
            subscription_type: kind,
            key_shares: shares,
            ..spec(&["t"], Some("s"), Position::Earliest)
        };
        store.subscribe(spec).unwrap()
    }

    fn ack(subscription: &dyn Subscription, messages: &[Message]) {
        subscription.commit(Effects { acks: Acks::of(messages), ..Effects::default() }).unwrap();
    }

    #[test]
    fn ranges_merge_and_the_mark_moves_over_them() {
        let mut set = RangeSet::default();
        for (start, end) in [(5, 7), (9, 10), (7, 9), (2, 3)] {
            set.insert(start, end);
        }
        assert_eq!(set.0.iter().map(|(&s, &e)| (s, e)).collect::<Vec<_>>(), [(2, 3), (5, 10)]);
        assert!(set.contains(9) && !set.contains(10) && !set.contains(4));
        let mut mark = 3;
        set.advance(&mut mark);
        assert_eq!(mark, 3, "the mark does not jump a gap");
        set.insert(3, 5);
        set.advance(&mut mark);
        assert_eq!((mark, set.0.len()), (10, 0));
    }

    #[test]
    fn individual_acknowledgements_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path());
            produce(&store, "t", &["a", "b", "c", "d"]);
            let subscription = consumer(&store, SubscriptionType::Shared, (0, 1));
            let fetched = subscription.fetch(10, Duration::ZERO).unwrap();
            ack(subscription.as_ref(), &[fetched[0].clone(), fetched[2].clone()]);
            assert!(!subscription.drained(), "b and d are unacknowledged");
        }
        let store = open(dir.path());
        let subscription = consumer(&store, SubscriptionType::Shared, (0, 1));
        let again = subscription.fetch(10, Duration::ZERO).unwrap();
        assert_eq!(values(&again), ["b", "d"]);
        ack(subscription.as_ref(), &again);
        assert!(subscription.drained());
    }

    #[test]
    fn shared_consumers_split_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        produce(&store, "t", &["a", "b", "c", "d"]);
        let first = consumer(&store, SubscriptionType::Shared, (0, 2));
        let second = consumer(&store, SubscriptionType::Shared, (1, 2));
        assert_eq!(values(&first.fetch(10, Duration::ZERO).unwrap()), ["a", "b"]);
        assert_eq!(values(&second.fetch(10, Duration::ZERO).unwrap()), ["c", "d"]);
    }

    #[test]
    fn key_shared_consumers_each_get_all_of_their_keys_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let keyed: Vec<OutMessage> = (0..40)
            .map(|i| OutMessage { key: Some(format!("k{}", i % 5)), ..OutMessage::new(format!("{i}")) })
            .collect();
        store.produce(&topic("t"), keyed).unwrap();
        let consumers = [
            consumer(&store, SubscriptionType::KeyShared, (0, 2)),
            consumer(&store, SubscriptionType::KeyShared, (1, 2)),
        ];
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut last: HashMap<String, i32> = HashMap::new();
        let mut seen = 0;
        for _ in 0..10 {
            for (index, consumer) in consumers.iter().enumerate() {
                for message in consumer.fetch(3, Duration::ZERO).unwrap() {
                    let key = message.body.key.clone().unwrap();
                    let value: i32 = String::from_utf8(message.body.value).unwrap().parse().unwrap();
                    assert_eq!(*owner.entry(key.clone()).or_insert(index), index, "{key} stays on one consumer");
                    assert!(last.insert(key, value).is_none_or(|before| before < value), "in order");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 40);
        assert_eq!(owner.values().collect::<std::collections::HashSet<_>>().len(), 2, "both consumers got keys");
    }

    #[test]
    fn failover_gives_everything_to_the_first_consumer_and_its_leftovers_to_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        produce(&store, "t", &["a", "b", "c"]);
        let active = consumer(&store, SubscriptionType::Failover, (0, 2));
        let standby = consumer(&store, SubscriptionType::Failover, (1, 2));
        let fetched = active.fetch(2, Duration::ZERO).unwrap();
        assert!(standby.fetch(10, Duration::ZERO).unwrap().is_empty());
        ack(active.as_ref(), &fetched[..1]);
        drop(active);
        let taken_over = standby.fetch(10, Duration::ZERO).unwrap();
        assert_eq!(values(&taken_over), ["b", "c"]);
        assert_eq!(taken_over.iter().map(|m| m.redelivery_count).collect::<Vec<_>>(), [1, 0]);
    }

    #[test]
    fn unacknowledged_messages_come_back_after_the_ack_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        produce(&store, "t", &["a", "b"]);
        let spec = SubscriptionSpec {
            subscription_type: SubscriptionType::Shared,
            ack_timeout: Some(Duration::from_millis(20)),
            ..spec(&["t"], Some("s"), Position::Earliest)
        };
        let subscription = store.subscribe(spec).unwrap();
        let first = subscription.fetch(10, Duration::ZERO).unwrap();
        ack(subscription.as_ref(), &first[1..]);
        let again = subscription.fetch(10, Duration::from_secs(5)).unwrap();
        assert_eq!((values(&again), again[0].redelivery_count), (vec!["a".to_owned()], 1));
        ack(subscription.as_ref(), &again);
        assert!(subscription.drained());
    }

    #[test]
    fn released_messages_go_to_the_next_fetch_as_first_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        produce(&store, "t", &["a", "b", "c"]);
        let first = consumer(&store, SubscriptionType::Shared, (0, 1));
        let fetched = first.fetch(10, Duration::ZERO).unwrap();
        ack(first.as_ref(), &fetched[..1]);
        assert!(!first.drained());
        first.release(fetched[1..].to_vec());
        assert!(first.drained(), "released messages are no longer this consumer's");
        let second = consumer(&store, SubscriptionType::Shared, (0, 1));
        let again = second.fetch(10, Duration::ZERO).unwrap();
        assert_eq!(values(&again), ["b", "c"]);
        assert_eq!(again.iter().map(|m| m.redelivery_count).collect::<Vec<_>>(), [0, 0]);
        // A release takes back only a delivery the consumer holds.
        first.release(again.clone());
        ack(second.as_ref(), &again);
        assert!(second.drained());
    }

    #[test]
    fn a_pattern_subscription_finds_topics_created_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        produce(&store, "in-1", &["a"]);
        let pattern = TopicPattern::parse("in-.*", "public", "default").unwrap();
        let spec = SubscriptionSpec {
            inputs: Inputs { topics: Vec::new(), pattern: Some(pattern) },
            ..spec(&[], Some("s"), Position::Latest)
        };
        let subscription = store.subscribe(spec).unwrap();
        assert!(subscription.fetch(10, Duration::ZERO).unwrap().is_empty(), "in-1 is read from the latest message");
        produce(&store, "in-2", &["b"]);
        produce(&store, "other", &["c"]);
        assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b"], "in-2 is read from its start");
    }

    #[test]
    fn counters_add_to_the_committed_value_and_deletes_remove_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        // One table read across commits: its cache must follow every commit.
        let table = store.table(&fqfn).unwrap();
        assert_eq!(table.get("c").unwrap(), None);
        for (change, expected) in [
            (Change::Add(2), Some(StateValue::Counter(2))),
            (Change::Add(-5), Some(StateValue::Counter(-3))),
            (Change::Delete, None),
            (Change::Put(b"p".to_vec()), Some(StateValue::Bytes(b"p".to_vec()))),
        ] {
            let mut changes = StateChanges::default();
            changes.record("c".into(), change.clone());
            subscription.commit(Effects { state: Some((fqfn.clone(), changes.into())), ..Effects::default() }).unwrap();
            assert_eq!(table.get("c").unwrap().map(|v| v.value), expected, "{change:?}");
        }
    }

    /// Commits `changes` to `fqfn`'s state through `subscription`, as one batch.
    fn commit_state(subscription: &dyn Subscription, fqfn: &Fqfn, changes: &[(&str, Change)]) {
        let mut state = StateChanges::default();
        for (key, change) in changes {
            state.record((*key).to_owned(), change.clone());
        }
        subscription.commit(Effects { state: Some((fqfn.clone(), state.into())), ..Effects::default() }).unwrap();
    }

    fn value(store: &EmbeddedStore, fqfn: &Fqfn, key: &str) -> Option<StateValue> {
        store.table(fqfn).unwrap().get(key).unwrap().map(|versioned| versioned.value)
    }

    fn log_records(store: &EmbeddedStore) -> usize {
        store.inner.state_log.len()
    }

    /// The values in a function's sled tree, as a checkpoint or a replay left them.
    fn tree_values(store: &EmbeddedStore, fqfn: &Fqfn) -> BTreeMap<String, Vec<u8>> {
        let tree = store.inner.db.open_tree(format!("{}{fqfn}", state::STATE_TREE_PREFIX)).unwrap();
        tree.iter()
            .map(|entry| entry.unwrap())
            .map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), v.to_vec()))
            .collect()
    }

    /// What the commits of [`several_commits`] leave: `a` deleted, `b` = "b3", `n` = 6.
    fn several_commits(subscription: &dyn Subscription, fqfn: &Fqfn) {
        commit_state(subscription, fqfn, &[("a", Change::Put(b"a1".to_vec())), ("n", Change::Add(1))]);
        commit_state(subscription, fqfn, &[("b", Change::Put(b"b1".to_vec())), ("n", Change::Add(2))]);
        commit_state(subscription, fqfn, &[("a", Change::Delete), ("b", Change::Put(b"b3".to_vec()))]);
        commit_state(subscription, fqfn, &[("n", Change::Add(3))]);
    }

    fn assert_several_commits(store: &EmbeddedStore, fqfn: &Fqfn) {
        assert_eq!(value(store, fqfn, "a"), None);
        assert_eq!(value(store, fqfn, "b"), Some(StateValue::Bytes(b"b3".to_vec())));
        assert_eq!(value(store, fqfn, "n"), Some(StateValue::Counter(6)));
    }

    #[test]
    fn state_committed_before_a_checkpoint_is_read_back_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        {
            let store = open(dir.path());
            let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
            several_commits(subscription.as_ref(), &fqfn);
            assert_eq!(log_records(&store), 4, "no checkpoint yet: one record per commit");
            assert!(tree_values(&store, &fqfn).is_empty());
            assert_several_commits(&store, &fqfn);
        }
        let store = open(dir.path());
        assert_eq!(log_records(&store), 0, "opening applies the log");
        assert_eq!(tree_values(&store, &fqfn).len(), 2);
        assert_several_commits(&store, &fqfn);
    }

    #[test]
    fn a_checkpoint_moves_the_newest_values_into_the_tree_and_empties_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        for round in 0..state::CHECKPOINT_RECORDS - 1 {
            commit_state(subscription.as_ref(), &fqfn, &[("k", Change::Put(format!("v{round}").into_bytes()))]);
        }
        assert_eq!(log_records(&store), state::CHECKPOINT_RECORDS - 1);
        commit_state(subscription.as_ref(), &fqfn, &[("k", Change::Put(b"last".to_vec())), ("n", Change::Add(7))]);
        // The checkpoint runs on the checkpointer's thread.
        let deadline = Instant::now() + Duration::from_secs(30);
        while log_records(&store) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(log_records(&store), 0);
        let tree = tree_values(&store, &fqfn);
        assert_eq!(tree.keys().collect::<Vec<_>>(), ["k", "n"]);
        assert_eq!(value(&store, &fqfn, "k"), Some(StateValue::Bytes(b"last".to_vec())));
        // Values read after the checkpoint come from the tree, and later commits still build on them.
        commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(1))]);
        drop((subscription, store));
        let store = open(dir.path());
        assert_eq!(value(&store, &fqfn, "n"), Some(StateValue::Counter(8)));
        assert_eq!(value(&store, &fqfn, "k"), Some(StateValue::Bytes(b"last".to_vec())));
    }

    #[test]
    fn a_checkpoint_of_more_keys_than_a_chunk_writes_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        let store = open(dir.path());
        let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
        let keys: Vec<String> = (0..2 * state::CHECKPOINT_CHUNK + 1).map(|i| format!("k{i}")).collect();
        let changes: Vec<(&str, Change)> = keys.iter().map(|key| (key.as_str(), Change::Add(1))).collect();
        commit_state(subscription.as_ref(), &fqfn, &changes);
        store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
        assert_eq!(log_records(&store), 0);
        assert_eq!(tree_values(&store, &fqfn).len(), keys.len());
    }

    #[test]
    fn records_applied_again_over_a_checkpointed_tree_leave_the_same_state() {
        // A crash between a checkpoint's tree writes and its removal of the records leaves both.
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        {
            let store = open(dir.path());
            let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
            several_commits(subscription.as_ref(), &fqfn);
            let records: Vec<_> = store.inner.state_log.iter().map(|entry| entry.unwrap()).collect();
            store.checkpoint(&store.state_table(&fqfn).unwrap()).unwrap();
            assert_eq!(log_records(&store), 0);
            for (key, record) in records {
                store.inner.state_log.insert(key, record).unwrap();
            }
            store.inner.db.flush().unwrap();
        }
        let store = open(dir.path());
        assert_several_commits(&store, &fqfn);
    }

    #[test]
    fn deleting_a_table_removes_its_records_too() {
        let dir = tempfile::tempdir().unwrap();
        let (deleted, kept) = (Fqfn::parse("t/ns/f").unwrap(), Fqfn::parse("t/ns/f2").unwrap());
        {
            let store = open(dir.path());
            let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
            several_commits(subscription.as_ref(), &deleted);
            several_commits(subscription.as_ref(), &kept);
            store.delete_table(&deleted).unwrap();
            assert_eq!(value(&store, &deleted, "b"), None);
        }
        let store = open(dir.path());
        assert_eq!(value(&store, &deleted, "b"), None);
        assert_eq!(value(&store, &deleted, "n"), None);
        assert_several_commits(&store, &kept);
    }

    #[test]
    fn a_state_put_outside_commits_is_ordered_with_them() {
        let dir = tempfile::tempdir().unwrap();
        let fqfn = Fqfn::parse("t/ns/f").unwrap();
        {
            let store = open(dir.path());
            let subscription = store.subscribe(spec(&["in"], None, Position::Earliest)).unwrap();
            commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(1))]);
            let put = store.put(&fqfn, "n", StateValue::Counter(10)).unwrap();
            assert_eq!(put.value, StateValue::Counter(10));
            commit_state(subscription.as_ref(), &fqfn, &[("n", Change::Add(5))]);
            assert_eq!(value(&store, &fqfn, "n"), Some(StateValue::Counter(15)));
        }
        assert_eq!(value(&open(dir.path()), &fqfn, "n"), Some(StateValue::Counter(15)));
    }
}
