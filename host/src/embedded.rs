//! The embedded engine: topics, subscriptions and state in one sled database in the data directory.
//!
//! A topic is a sled tree of segments: each value holds consecutive messages and its key is the
//! sequence number of the first, so an append of a batch is one sled write.
//! It implements both [`Broker`] and [`StateStore`] because its commit is a single sled transaction
//! across the cursor tree, the function's state tree and every output topic's tree: after a crash,
//! sled recovers either all of a commit or none of it.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use crate::broker::{
    Acks, Broker, BrokerError, Effects, Message, MessageBody, OutMessage, Position, Subscription, SubscriptionSpec,
};
use crate::names::{Fqfn, TopicName};
use crate::state::{Change, StateError, StateStore, StateTable, Versioned};

const TOPIC_TREE_PREFIX: &str = "topic:";
/// A segment (one sled value holding consecutive messages) is closed once it holds this many bytes
/// of message values; one sled operation per segment rather than per message is what makes appends fast.
const SEGMENT_BYTES: usize = 1024 * 1024;
const STATE_TREE_PREFIX: &str = "state:";
const CURSOR_TREE: &str = "cursors";
/// Most state values cached per function; past it the cache starts over.
const STATE_CACHE_ENTRIES: usize = 65_536;

/// Committed values of one function's state table, as last committed or read (`None`: absent).
/// Commits are the only writers and update it, so it never holds a value older than the store's.
type StateCache = Arc<Mutex<HashMap<String, Option<Versioned>>>>;

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
    topics: Mutex<HashMap<TopicName, Arc<Topic>>>,
    state_caches: Mutex<HashMap<Fqfn, StateCache>>,
    /// Bumped after every append, so that waiting subscriptions wake up.
    appends: Mutex<u64>,
    appended: Condvar,
}

struct Topic {
    name: TopicName,
    tree: sled::Tree,
    /// The next sequence number; held locked from allocation until the append commits, so that
    /// readers never see a later message before an earlier one.
    next: Mutex<u64>,
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
        let cursors =
            db.open_tree(CURSOR_TREE).map_err(|error| OpenError::Other { path: shown, reason: error.to_string() })?;
        Ok(Self {
            inner: Arc::new(Inner {
                db,
                cursors,
                topics: Mutex::new(HashMap::new()),
                state_caches: Mutex::new(HashMap::new()),
                appends: Mutex::new(0),
                appended: Condvar::new(),
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
        let topic = Arc::new(Topic { name: name.clone(), tree, next: Mutex::new(next) });
        topics.insert(name.clone(), topic.clone());
        Ok(topic)
    }

    fn state_tree(&self, fqfn: &Fqfn) -> Result<sled::Tree, sled::Error> {
        self.inner.db.open_tree(format!("{STATE_TREE_PREFIX}{fqfn}"))
    }

    fn state_cache(&self, fqfn: &Fqfn) -> StateCache {
        lock(&self.inner.state_caches).entry(fqfn.clone()).or_default().clone()
    }

    fn notify_appended(&self) {
        *lock(&self.inner.appends) += 1;
        self.inner.appended.notify_all();
    }
}

impl Broker for EmbeddedStore {
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError> {
        let topic = self.topic(topic)?;
        let publish_time = now_millis();
        let mut next = lock(&topic.next);
        let bodies: Vec<MessageBody> = messages.into_iter().map(|message| stamp(message, publish_time)).collect();
        let sequences: Vec<u64> = (*next..*next + bodies.len() as u64).collect();
        let mut batch = sled::Batch::default();
        for (first, segment) in segments(*next, &bodies) {
            batch.insert(&first.to_be_bytes(), segment);
        }
        topic.tree.apply_batch(batch).map_err(storage)?;
        self.flush()?;
        *next += bodies.len() as u64;
        drop(next);
        self.notify_appended();
        Ok(sequences)
    }

    fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BrokerError> {
        let mut cursors = Vec::with_capacity(spec.topics.len());
        for name in &spec.topics {
            let topic = self.topic(name)?;
            let start = match spec.initial_position {
                Position::Earliest => topic.tree.first().map_err(storage)?.map_or(0, |(key, _)| decode_sequence(&key)),
                Position::Latest => *lock(&topic.next),
            };
            let durable = match &spec.name {
                Some(subscription) => {
                    let key = cursor_key(subscription, name);
                    match self.inner.cursors.get(&key).map_err(storage)? {
                        Some(stored) => decode_sequence(&stored),
                        None => {
                            self.inner.cursors.insert(key, &start.to_be_bytes()).map_err(storage)?;
                            start
                        }
                    }
                }
                None => start,
            };
            cursors.push(Cursor { topic, fetched: durable, durable });
        }
        if spec.name.is_some() {
            self.flush()?;
        }
        let reading = Mutex::new(Reading { cursors, rotation: 0 });
        Ok(Box::new(EmbeddedSubscription { store: self.clone(), name: spec.name, reading }))
    }
}

impl StateStore for EmbeddedStore {
    fn table(&self, fqfn: &Fqfn) -> Result<Box<dyn StateTable>, StateError> {
        let tree = self.state_tree(fqfn).map_err(|error| StateError::Storage(error.to_string()))?;
        Ok(Box::new(EmbeddedTable { fqfn: fqfn.clone(), tree, cache: self.state_cache(fqfn) }))
    }
}

struct EmbeddedTable {
    fqfn: Fqfn,
    tree: sled::Tree,
    cache: StateCache,
}

impl StateTable for EmbeddedTable {
    fn get(&self, key: &str) -> Result<Option<Versioned>, StateError> {
        if let Some(cached) = lock(&self.cache).get(key) {
            return Ok(cached.clone());
        }
        let stored = match self.tree.get(key).map_err(|error| StateError::Storage(error.to_string()))? {
            Some(bytes) => Some(decode_state(&bytes).map_err(|reason| StateError::Corrupt {
                fqfn: self.fqfn.clone(),
                key: key.into(),
                reason,
            })?),
            None => None,
        };
        let mut cache = lock(&self.cache);
        if cache.len() >= STATE_CACHE_ENTRIES {
            cache.clear();
        }
        // A commit that ran since the read above has put the newer value; keep it.
        cache.entry(key.to_owned()).or_insert_with(|| stored.clone());
        Ok(stored)
    }
}

struct Cursor {
    topic: Arc<Topic>,
    /// The next sequence to fetch.
    fetched: u64,
    /// The next sequence not yet acknowledged durably.
    durable: u64,
}

struct EmbeddedSubscription {
    store: EmbeddedStore,
    name: Option<String>,
    reading: Mutex<Reading>,
}

struct Reading {
    cursors: Vec<Cursor>,
    /// Which topic is read first on the next fetch, so that no topic starves the others.
    rotation: usize,
}

impl Reading {
    fn read_available(&mut self, max: usize) -> Result<Vec<Message>, BrokerError> {
        let mut messages = Vec::new();
        let count = self.cursors.len();
        for index in 0..count {
            let cursor = &mut self.cursors[(self.rotation + index) % count];
            let tree = &cursor.topic.tree;
            // The segment holding the cursor starts at or before it.
            let start = match tree.range(..=cursor.fetched.to_be_bytes()).next_back() {
                Some(entry) => entry.map_err(storage)?.0,
                None => sled::IVec::from(&cursor.fetched.to_be_bytes()),
            };
            for entry in tree.range(start..) {
                if messages.len() == max {
                    break;
                }
                let (key, value) = entry.map_err(storage)?;
                let first = decode_sequence(&key);
                let segment = decode_segment(&value).map_err(|reason| BrokerError::Corrupt {
                    topic: cursor.topic.name.clone(),
                    sequence: first,
                    reason,
                })?;
                for (sequence, body) in (first..).zip(segment) {
                    if sequence < cursor.fetched {
                        continue;
                    }
                    if messages.len() == max {
                        break;
                    }
                    messages.push(Message { topic: cursor.topic.name.clone(), sequence, body });
                    cursor.fetched = sequence + 1;
                }
            }
        }
        self.rotation = (self.rotation + 1) % count.max(1);
        Ok(messages)
    }
}

impl Subscription for EmbeddedSubscription {
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
        let deadline = Instant::now() + wait;
        loop {
            let seen = *lock(&self.store.inner.appends);
            let messages = lock(&self.reading).read_available(max)?;
            let now = Instant::now();
            if !messages.is_empty() || now >= deadline {
                return Ok(messages);
            }
            let appends = lock(&self.store.inner.appends);
            if *appends == seen {
                let _ = self.store.inner.appended.wait_timeout(appends, deadline - now);
            }
        }
    }

    fn commit(&self, effects: Effects) -> Result<(), BrokerError> {
        let acked = self.acknowledge(&effects.acks);
        if effects.is_empty() && (acked.is_empty() || self.name.is_none()) {
            self.mark_durable(&effects.acks);
            return Ok(());
        }
        let store = &self.store;

        // Group outputs by topic and lock the topics in name order, so that concurrent commits cannot deadlock.
        let publish_time = now_millis();
        let mut by_topic: BTreeMap<TopicName, Vec<MessageBody>> = BTreeMap::new();
        for (topic, message) in effects.outputs {
            by_topic.entry(topic).or_default().push(stamp(message, publish_time));
        }
        let topics: Vec<Arc<Topic>> = by_topic.keys().map(|name| store.topic(name)).collect::<Result<_, _>>()?;
        let mut nexts: Vec<MutexGuard<'_, u64>> = topics.iter().map(|topic| lock(&topic.next)).collect();
        let appends: Vec<Vec<(u64, Vec<u8>)>> =
            by_topic.values().zip(&nexts).map(|(bodies, next)| segments(**next, bodies)).collect();

        let state = match &effects.state {
            Some((fqfn, changes)) if !changes.is_empty() => {
                Some((store.state_tree(fqfn).map_err(storage)?, changes, store.state_cache(fqfn)))
            }
            _ => None,
        };
        // The values this commit leaves, for the cache once it has committed.
        let written: Mutex<Vec<(&str, Option<Versioned>)>> = Mutex::new(Vec::new());
        let version = store.inner.db.generate_id().map_err(storage)?;

        let mut trees: Vec<&sled::Tree> = vec![&store.inner.cursors];
        if let Some((tree, _, _)) = &state {
            trees.push(tree);
        }
        let first_topic_tree = trees.len();
        trees.extend(topics.iter().map(|topic| &topic.tree));

        let cursor_writes: Vec<(Vec<u8>, u64)> = match &self.name {
            Some(subscription) => acked.iter().map(|(topic, upto)| (cursor_key(subscription, topic), *upto)).collect(),
            None => Vec::new(),
        };

        let result: Result<(), TransactionError<String>> =
            trees.as_slice().transaction(|views: &Vec<sled::transaction::TransactionalTree>| {
                for (key, sequence) in &cursor_writes {
                    views[0].insert(key.as_slice(), &sequence.to_be_bytes())?;
                }
                if let Some((_, changes, _)) = &state {
                    let view = &views[1];
                    let mut written = lock(&written);
                    written.clear();
                    for (key, change) in changes.iter() {
                        // Only an increment depends on the committed value; nothing else needs to read it.
                        let stored = match change {
                            Change::Add(_) => match view.get(key.as_bytes())? {
                                Some(bytes) => {
                                    Some(decode_state(&bytes).map_err(ConflictableTransactionError::Abort)?.value)
                                }
                                None => None,
                            },
                            _ => None,
                        };
                        match change.apply(stored) {
                            Some(value) => {
                                let versioned = Versioned { value, version };
                                view.insert(key.as_bytes(), encode_state(&versioned))?;
                                written.push((key.as_str(), Some(versioned)));
                            }
                            None => {
                                view.remove(key.as_bytes())?;
                                written.push((key.as_str(), None));
                            }
                        }
                    }
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
            TransactionError::Abort(reason) => BrokerError::Storage(format!("state could not be decoded: {reason}")),
            TransactionError::Storage(error) => storage(error),
        })?;
        for (next, bodies) in nexts.iter_mut().zip(by_topic.values()) {
            **next += bodies.len() as u64;
        }
        drop(nexts);
        if let Some((_, _, cache)) = &state {
            let mut cache = lock(cache);
            if cache.len() >= STATE_CACHE_ENTRIES {
                cache.clear();
            }
            for (key, value) in written.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner()) {
                cache.insert(key.to_owned(), value);
            }
        }
        store.flush()?;
        self.mark_durable(&effects.acks);
        if !by_topic.is_empty() {
            store.notify_appended();
        }
        Ok(())
    }
}

impl EmbeddedSubscription {
    /// The acknowledgements that move a durable cursor forward.
    fn acknowledge<'a>(&self, acks: &'a Acks) -> Vec<&'a (TopicName, u64)> {
        let reading = lock(&self.reading);
        acks.iter()
            .filter(|(topic, upto)| {
                reading.cursors.iter().any(|cursor| cursor.topic.name == *topic && cursor.durable < *upto)
            })
            .collect()
    }

    fn mark_durable(&self, acks: &Acks) {
        let mut reading = lock(&self.reading);
        for (topic, upto) in acks.iter() {
            if let Some(cursor) = reading.cursors.iter_mut().find(|cursor| cursor.topic.name == *topic) {
                cursor.durable = cursor.durable.max(*upto);
            }
        }
    }
}

fn stamp(message: OutMessage, publish_time: u64) -> MessageBody {
    MessageBody {
        value: message.value,
        key: message.key,
        properties: message.properties,
        event_time: message.event_time,
        publish_time,
        partition_key: None,
    }
}

fn cursor_key(subscription: &str, topic: &TopicName) -> Vec<u8> {
    let mut key = Vec::with_capacity(subscription.len() + 1 + topic.as_str().len());
    key.extend_from_slice(subscription.as_bytes());
    key.push(0);
    key.extend_from_slice(topic.as_str().as_bytes());
    key
}

fn bincode_config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Splits consecutive messages starting at sequence `first` into encoded segments of about
/// `SEGMENT_BYTES`, each with the sequence number of its first message.
fn segments(first: u64, bodies: &[MessageBody]) -> Vec<(u64, Vec<u8>)> {
    let mut encoded = Vec::new();
    let mut start = 0;
    while start < bodies.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < bodies.len() && (end == start || bytes + bodies[end].value.len() <= SEGMENT_BYTES) {
            bytes += bodies[end].value.len();
            end += 1;
        }
        let segment =
            bincode::encode_to_vec(&bodies[start..end], bincode_config()).expect("encoding into a Vec cannot fail");
        encoded.push((first + start as u64, segment));
        start = end;
    }
    encoded
}

fn decode_segment(bytes: &[u8]) -> Result<Vec<MessageBody>, String> {
    bincode::decode_from_slice(bytes, bincode_config()).map(|(bodies, _)| bodies).map_err(|error| error.to_string())
}

fn encode_state(value: &Versioned) -> Vec<u8> {
    bincode::encode_to_vec(value, bincode_config()).expect("encoding into a Vec cannot fail")
}

fn decode_state(bytes: &[u8]) -> Result<Versioned, String> {
    bincode::decode_from_slice(bytes, bincode_config()).map(|(value, _)| value).map_err(|error| error.to_string())
}

fn decode_sequence(bytes: &[u8]) -> u64 {
    let mut buffer = [0; 8];
    buffer.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(buffer)
}

fn storage(error: sled::Error) -> BrokerError {
    BrokerError::Storage(error.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked while holding it; the data it guards (counters and
    // handles) is still consistent, because every update to it is a single assignment.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{StateChanges, StateValue};

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name).unwrap()
    }

    fn spec(topics: &[&str], name: Option<&str>, position: Position) -> SubscriptionSpec {
        SubscriptionSpec {
            topics: topics.iter().map(|t| topic(t)).collect(),
            name: name.map(str::to_owned),
            initial_position: position,
        }
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
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
            let store = EmbeddedStore::open(dir.path()).unwrap();
            produce(&store, "t", &["a", "b", "c"]);
            let subscription = store.subscribe(spec(&["t"], Some("s"), Position::Earliest)).unwrap();
            let first = subscription.fetch(1, Duration::ZERO).unwrap();
            assert_eq!(values(&first), ["a"]);
            subscription.commit(Effects { acks: Acks::of(&first), ..Effects::default() }).unwrap();
            assert_eq!(values(&subscription.fetch(10, Duration::ZERO).unwrap()), ["b", "c"]);
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
            let store = EmbeddedStore::open(dir.path()).unwrap();
            produce(&store, "in", &["x"]);
            let subscription = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
            let fetched = subscription.fetch(10, Duration::ZERO).unwrap();
            let mut changes = StateChanges::default();
            changes.record("k".into(), Change::Put(b"v".to_vec()));
            changes.record("n".into(), Change::Add(5));
            let effects = Effects {
                acks: Acks::of(&fetched),
                outputs: vec![(topic("out"), OutMessage::new("y")), (topic("other"), OutMessage::new("z"))],
                state: Some((fqfn.clone(), changes)),
            };
            subscription.commit(effects).unwrap();
        }
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(store.table(&fqfn).unwrap().get("k").unwrap().unwrap().value, StateValue::Bytes(b"v".to_vec()));
        assert_eq!(store.table(&fqfn).unwrap().get("n").unwrap().unwrap().value, StateValue::Counter(5));
        let out = store.subscribe(spec(&["out", "other"], None, Position::Earliest)).unwrap();
        let mut seen = values(&out.fetch(10, Duration::ZERO).unwrap());
        seen.sort();
        assert_eq!(seen, ["y", "z"]);
        let input = store.subscribe(spec(&["in"], Some("s"), Position::Earliest)).unwrap();
        assert!(input.fetch(10, Duration::ZERO).unwrap().is_empty(), "the input was acknowledged");
    }

    #[test]
    fn counters_add_to_the_committed_value_and_deletes_remove_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
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
            subscription.commit(Effects { state: Some((fqfn.clone(), changes)), ..Effects::default() }).unwrap();
            assert_eq!(table.get("c").unwrap().map(|v| v.value), expected, "{change:?}");
        }
    }
}
