//! A named subscription as all its consumers in the process share it: which messages went to
//! whom and are not yet acknowledged, key-shared messages read ahead, and due redeliveries.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::consumer::asked_inputs;
use super::cursor::RangeSet;
use super::topic::Topic;
use super::{EmbeddedStore, HELD_PER_KEY_SHARE, Signal, lock};
use crate::engine::broker::{Acks, BrokerError, Message, Position, SubscriptionSpec, SubscriptionType};
use crate::limits::{MAX_SUBSCRIPTION_TOPICS, MAX_UNACKED_MESSAGES};
use crate::names::{SubscriptionName, TopicName, TopicPattern};

/// One topic of a subscription.
pub(super) struct Cursor {
    pub(super) topic: Arc<Topic>,
    /// The next message never read by this subscription (in this process).
    pub(super) fetched: u64,
    /// Every message before it is acknowledged.
    pub(super) mark: u64,
    /// Acknowledged messages after the mark.
    pub(super) acked: RangeSet,
    /// Messages given to a consumer and not yet acknowledged, by sequence.
    pub(super) delivered: BTreeMap<u64, Delivered>,
}

/// The consumer of released messages: no consumer has this id, so they are orphans.
pub(super) const NOBODY: u64 = u64::MAX;

pub(super) struct Delivered {
    pub(super) consumer: u64,
    /// Times delivered so far.
    pub(super) deliveries: u32,
    /// When it is delivered again if still unacknowledged.
    pub(super) due: Option<Instant>,
    /// The key-shared routing hash (0 for the other types).
    pub(super) route: u64,
}

/// A subscription as all its consumers in this process share it.
pub(super) struct SharedSubscription {
    pub(super) name: Option<SubscriptionName>,
    /// The topics it was opened with, sorted, and its pattern: a consumer asking for others is refused.
    pub(super) asked: (Vec<TopicName>, Option<String>),
    pub(super) subscription_type: SubscriptionType,
    pub(super) pattern: Option<TopicPattern>,
    pub(super) ack_timeout: Option<Duration>,
    pub(super) key_share_count: u32,
    pub(super) state: Mutex<SubscriptionState>,
    /// Wakes its consumers waiting in `fetch`.
    pub(super) signal: Signal,
    /// Held from computing a commit's cursor records until they are written, so that two consumers'
    /// commits cannot each write a record missing the other's acknowledgements.
    pub(super) commit_lock: Mutex<()>,
}

pub(super) struct ConsumerState {
    pub(super) key_share: u32,
    /// Messages delivered to it and not yet acknowledged.
    pub(super) outstanding: usize,
}

pub(super) struct SubscriptionState {
    pub(super) cursors: Vec<Cursor>,
    /// Which topic is read first on the next fetch, so that no topic starves the others.
    pub(super) rotation: usize,
    /// The store's topic generation when the pattern was last applied.
    pub(super) topic_generation: u64,
    /// Open consumers, by id (ids grow, so the first is the oldest).
    pub(super) consumers: BTreeMap<u64, ConsumerState>,
    pub(super) next_consumer: u64,
    /// Key-shared: messages read for a key share whose consumer has not fetched them yet, with
    /// their cursor and routing hash.
    pub(super) held: HashMap<u32, VecDeque<(usize, u64, Message)>>,
    pub(super) held_count: usize,
    /// Delivered and unacknowledged messages over all cursors.
    pub(super) unacked: usize,
    /// A consumer left with unacknowledged messages, which go to the others.
    pub(super) orphans: bool,
}

impl SubscriptionState {
    pub(super) fn count_outstanding(&mut self, consumer: u64, change: isize) {
        if let Some(state) = self.consumers.get_mut(&consumer) {
            state.outstanding = state.outstanding.saturating_add_signed(change);
        }
    }
}

impl SharedSubscription {
    pub(super) fn open(store: &EmbeddedStore, spec: &SubscriptionSpec) -> Result<Self, BrokerError> {
        let name = spec.name.as_ref();
        let topic_generation = store.inner.topic_generation.load(Ordering::Acquire);
        let mut topics = spec.inputs.topics.clone();
        if let Some(pattern) = &spec.inputs.pattern {
            topics.extend(store.topics_matching(pattern));
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
    pub(super) fn join(&self, spec: &SubscriptionSpec) -> Result<u64, BrokerError> {
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
    pub(super) fn discover(&self, store: &EmbeddedStore, state: &mut SubscriptionState) -> Result<(), BrokerError> {
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
    pub(super) fn take(
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
    pub(super) fn redeliver(
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
    pub(super) fn read_new(
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
    pub(super) fn key_share(&self, route: u64) -> u32 {
        (route % u64::from(self.key_share_count)) as u32
    }

    /// Records that the message at `sequence` of cursor `index`, with routing hash `route` (0 unless
    /// key-shared), was delivered to `consumer`.
    pub(super) fn deliver(
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
    pub(super) fn drained(&self, consumer: u64) -> bool {
        let state = lock(&self.state);
        let Some(me) = state.consumers.get(&consumer) else { return true };
        me.outstanding == 0
            && state.held.get(&me.key_share).is_none_or(VecDeque::is_empty)
            && state.cursors.iter().all(|cursor| cursor.fetched >= cursor.topic.length.load(Ordering::Acquire))
    }

    /// Whether it reads any of `topics`.
    pub(super) fn reads_any<'a>(&self, topics: impl IntoIterator<Item = &'a TopicName>) -> bool {
        let state = lock(&self.state);
        topics.into_iter().any(|topic| state.cursors.iter().any(|cursor| cursor.topic.name == *topic))
    }

    /// See [`Subscription::release`]: each message `consumer` still holds goes to nobody, and its
    /// delivery is taken back.
    pub(super) fn release(&self, consumer: u64, messages: &[Message]) {
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

    /// Puts cursor `index` at `mark` with `acked` (moved by an admin verb): what its consumers
    /// were given and had not acknowledged, and what was read ahead for them, is read again from there.
    pub(super) fn reposition(&self, index: usize, mark: u64, acked: RangeSet) {
        let mut state = lock(&self.state);
        let delivered = std::mem::take(&mut state.cursors[index].delivered);
        state.unacked -= delivered.len();
        for given in delivered.into_values() {
            state.count_outstanding(given.consumer, -1);
        }
        let mut dropped = 0;
        for held in state.held.values_mut() {
            let before = held.len();
            held.retain(|(cursor, _, _)| *cursor != index);
            dropped += before - held.len();
        }
        state.held_count -= dropped;
        let cursor = &mut state.cursors[index];
        cursor.mark = mark;
        cursor.acked = acked;
        cursor.fetched = mark;
    }

    /// Counts `messages`, just delivered, in their topics' traffic.
    pub(super) fn count_delivered(&self, messages: &[Message]) {
        let mut counts: HashMap<&TopicName, [u64; 3]> = HashMap::new();
        for message in messages {
            let count = counts.entry(&message.topic).or_default();
            count[0] += 1;
            count[1] += message.body.value.len() as u64;
            count[2] += u64::from(message.redelivery_count > 0);
        }
        let topics: Vec<Arc<Topic>> = {
            let state = lock(&self.state);
            counts
                .keys()
                .filter_map(|name| state.cursors.iter().find(|cursor| cursor.topic.name == **name))
                .map(|cursor| cursor.topic.clone())
                .collect()
        };
        for topic in topics {
            let [count, bytes, redelivered] = counts[&topic.name];
            topic.delivered(self.name.as_ref(), count, bytes, redelivered);
        }
    }

    pub(super) fn leave(&self, consumer: u64) {
        let mut state = lock(&self.state);
        state.consumers.remove(&consumer);
        state.orphans = state.cursors.iter().any(|cursor| {
            cursor.delivered.values().any(|delivered| !state.consumers.contains_key(&delivered.consumer))
        });
    }
}

/// The cursor records a commit writes: for each cursor it moves, its index, mark and acknowledged ranges.
pub(super) type CursorUpdates = Vec<(usize, u64, RangeSet)>;

impl SharedSubscription {
    pub(super) fn cursor_updates(&self, acks: &Acks) -> CursorUpdates {
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
    pub(super) fn apply(&self, updates: CursorUpdates, acks: &Acks) -> bool {
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
pub(super) fn route(message: &Message) -> u64 {
    match message.body.partition_key.as_deref().or(message.body.key.as_deref()) {
        Some(key) => crate::engine::broker::key_route(key),
        None => message.sequence,
    }
}
