//! One consumer of a shared subscription: what a function instance or a REST call fetches
//! through, commits with and leaves.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use super::dispatch::SharedSubscription;
use super::journal::{Append, CursorMove, StateStep, Step};
use super::state::Record;
use super::stored_history::StoredHistory;
use super::topic::{Extent, Topic};
use super::{CONSUMER_POLL, EmbeddedStore, lock, state_failed, storage};
use crate::engine::broker::{BrokerError, Effects, FetchWaker, Inputs, Message, MessageBody, Subscription};
use crate::engine::clock::now_millis;
use crate::names::TopicName;

/// One consumer of a [`SharedSubscription`].
pub(super) struct EmbeddedConsumer {
    store: EmbeddedStore,
    shared: Arc<SharedSubscription>,
    id: u64,
    /// Set by the waker: the waiting fetch returns.
    woken: Arc<AtomicBool>,
}

impl EmbeddedConsumer {
    /// Consumer `id` of `shared`, which it has joined.
    pub(super) fn new(store: EmbeddedStore, shared: Arc<SharedSubscription>, id: u64) -> Self {
        Self { store, shared, id, woken: Arc::default() }
    }
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
                self.shared.count_delivered(&messages);
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
        // Held until the commit's cursor moves are applied in memory, so that the next commit's
        // cursors are computed from this one's, and logged after it.
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
        let topics: Vec<Arc<Topic>> = by_topic.keys().map(|name| store.topic(name)).collect();
        let mut nexts: Vec<MutexGuard<'_, u64>> = topics.iter().map(|topic| lock(&topic.next)).collect();
        if let Some(deleted) = topics.iter().find(|topic| topic.deleted.load(Ordering::Acquire)) {
            // Nothing was written: the batch is delivered again, and its outputs make the topic anew.
            return Err(BrokerError::Unavailable(format!(
                "output topic {} was deleted while the batch committed",
                deleted.name
            )));
        }

        let table = match &effects.state {
            Some((fqfn, changes)) if !changes.is_empty() => {
                Some((store.state_table(fqfn).map_err(storage)?, fqfn, changes))
            }
            _ => None,
        };
        // Holds the function's state lock until the commit is durable and applied in memory.
        let state_write = match &table {
            Some((table, _, changes)) => Some(table.prepare(&store.inner.db, changes).map_err(state_failed)?),
            None => None,
        };

        let mut step = Step {
            appends: topics
                .iter()
                .zip(&nexts)
                .zip(by_topic.values())
                .map(|((topic, next), bodies)| Append::new(&topic.name, **next, bodies))
                .collect(),
            ..Step::default()
        };
        if let Some(name) = &shared.name {
            let cursors = lock(&shared.state);
            step.cursors = updates
                .iter()
                .map(|(index, mark, acked)| {
                    CursorMove::new(name, &cursors.cursors[*index].topic.name, Some((*mark, acked)))
                })
                .collect();
        }
        match (&effects.state, &state_write, &effects.history) {
            (Some((fqfn, _)), write, Some(batch)) if shared.name.is_some() => {
                let (record, before) = match write {
                    Some(write) => (write.encode(), write.before()),
                    None => (crate::codec::encode(&Record::new()), &[][..]),
                };
                let history = StoredHistory::encode(publish_time, before, Some(batch));
                store.note_history_inputs(batch);
                step.state = Some(StateStep::Recorded { fqfn: fqfn.to_string(), record, history });
            }
            (Some((fqfn, _)), Some(write), _) => {
                step.state = Some(StateStep::Changes { fqfn: fqfn.to_string(), record: write.encode() });
            }
            _ => {}
        }
        let ids = store.submit(&step)?;
        let log_id = ids.start;
        for (topic, append) in topics.iter().zip(&step.appends) {
            topic.record(Extent::of(append, &ids));
        }
        let mut published = Vec::with_capacity(topics.len());
        for (next, bodies) in nexts.iter_mut().zip(by_topic.values()) {
            let count = bodies.len() as u64;
            **next += count;
            published.push(**next);
        }
        // Other appends to these topics may join the same group from here on.
        drop(nexts);
        store.durable(&ids)?;

        let checkpoint_due = state_write.is_some_and(|write| write.committed(log_id));
        // Outputs become readable before the acknowledgements show, so whoever sees a message
        // acknowledged (trigger) also finds its output.
        for ((topic, end), append) in topics.iter().zip(published).zip(&step.appends) {
            topic.published(end, u64::from(append.count), append.messages.len() as u64);
        }
        if let Some(name) = &shared.name {
            let cursors = lock(&shared.state);
            for (index, mark, acked) in &updates {
                store.cursor_moved(name, &cursors.cursors[*index].topic, log_id, Some((*mark, acked.clone())));
            }
        }
        let released = shared.apply(updates, &effects.acks);
        drop(commit_guard);
        if released {
            shared.signal.notify();
        }
        if !by_topic.is_empty() {
            store.notify_appended(by_topic.keys());
        }
        if let Some((table, _, _)) = table.filter(|_| checkpoint_due) {
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
pub(super) fn asked_inputs(inputs: &Inputs) -> (Vec<TopicName>, Option<String>) {
    let mut topics = inputs.topics.clone();
    topics.sort();
    topics.dedup();
    (topics, inputs.pattern.as_ref().map(ToString::to_string))
}
