//! pulsar-admin's topic and namespace verbs on the embedded engine ([`TopicAdmin`]).
//!
//! A cursor moved by a verb is one step of the log, as a commit's cursor moves are. On a
//! subscription with consumers it is taken under the subscription's `commit_lock`, and what the
//! consumers were given and had not acknowledged is delivered again from the new position.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::cursor::RangeSet;
use super::dispatch::SharedSubscription;
use super::journal::{CursorMove, Step};
use super::topic::{Topic, TopicTable};
use super::{EmbeddedStore, lock, storage};
use crate::engine::broker::{BrokerError, Message, Position};
use crate::engine::topics::{CursorTarget, NamespacePolicies, SubscriptionStats, TopicAdmin, TopicStats};
use crate::limits::MAX_TOPICS_PER_NAMESPACE;
use crate::names::{SubscriptionName, TopicName};

/// How a cursor moves.
#[derive(Clone, Copy, Debug)]
pub(super) enum CursorChange {
    /// Everything from this sequence on is unacknowledged (reset-cursor, either way).
    Reset(u64),
    /// Everything before this sequence is acknowledged (clear-backlog, message TTL, eviction).
    AcknowledgeBefore(u64),
    /// The next this many unacknowledged messages are acknowledged.
    Skip(u64),
}

impl CursorChange {
    /// The cursor `(mark, acked)` after the change, on a topic of `length` messages whose first
    /// kept one is `first_kept`.
    fn apply(self, mut mark: u64, mut acked: RangeSet, first_kept: u64, length: u64) -> (u64, RangeSet) {
        match self {
            Self::Reset(sequence) => return (sequence.clamp(first_kept.min(length), length), RangeSet::default()),
            Self::AcknowledgeBefore(sequence) => acked.insert(mark, sequence.min(length)),
            Self::Skip(mut count) => {
                let mut position = mark;
                for (start, end) in acked.ranges().into_iter().chain(std::iter::once((length, length))) {
                    let taken = count.min(start.saturating_sub(position));
                    acked.insert(position, position + taken);
                    count -= taken;
                    position = end.max(position);
                    if count == 0 || position >= length {
                        break;
                    }
                }
            }
        }
        acked.advance(&mut mark);
        (mark, acked)
    }
}

impl EmbeddedStore {
    /// The topic `name`, or [`BrokerError::NoSuchTopic`].
    fn known_topic(&self, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        self.existing_topic(name).ok_or_else(|| BrokerError::NoSuchTopic(name.clone()))
    }

    /// The open subscription `name` and the index of its cursor on `topic`, if it has consumers.
    fn open_cursor(&self, name: &SubscriptionName, topic: &TopicName) -> Option<(Arc<SharedSubscription>, usize)> {
        let shared = lock(&self.inner.subscriptions).get(name).cloned()?;
        let index = lock(&shared.state).cursors.iter().position(|cursor| cursor.topic.name == *topic)?;
        Some((shared, index))
    }

    /// The cursor of `name` on `topic` as it is now: from its consumers, or as stored.
    fn current_cursor(&self, name: &SubscriptionName, topic: &Topic) -> Result<(u64, RangeSet), BrokerError> {
        if let Some((shared, index)) = self.open_cursor(name, &topic.name) {
            let state = lock(&shared.state);
            let cursor = &state.cursors[index];
            return Ok((cursor.mark, cursor.acked.clone()));
        }
        self.stored_cursor(name, &topic.name)?
            .ok_or_else(|| BrokerError::NoSuchSubscription { subscription: name.clone(), topic: topic.name.clone() })
    }

    /// Moves the cursor of `name` on `topic` durably, and then in memory.
    pub(super) fn change_cursor(
        &self,
        topic: &Arc<Topic>,
        name: &SubscriptionName,
        change: CursorChange,
    ) -> Result<(), BrokerError> {
        // Held throughout, so that no consumer opens the subscription from a cursor this replaces.
        let subscriptions = lock(&self.inner.subscriptions);
        let open = subscriptions.get(name).cloned().and_then(|shared| {
            let index = lock(&shared.state).cursors.iter().position(|cursor| cursor.topic.name == topic.name)?;
            Some((shared, index))
        });
        let commit_guard = open.as_ref().map(|(shared, _)| lock(&shared.commit_lock));
        let (mark, acked) = match &open {
            Some((shared, index)) => {
                let state = lock(&shared.state);
                (state.cursors[*index].mark, state.cursors[*index].acked.clone())
            }
            None => self.stored_cursor(name, &topic.name)?.ok_or_else(|| BrokerError::NoSuchSubscription {
                subscription: name.clone(),
                topic: topic.name.clone(),
            })?,
        };
        let length = topic.length.load(Ordering::Acquire);
        let (mark, acked) = change.apply(mark, acked, topic.first_kept(), length);
        let step = Step { cursors: vec![CursorMove::new(name, &topic.name, Some((mark, &acked)))], ..Step::default() };
        let ids = self.submit(&step)?;
        self.durable(&ids)?;
        self.cursor_moved(name, topic, ids.start, Some((mark, acked.clone())));
        if let Some((shared, index)) = &open {
            shared.reposition(*index, mark, acked);
        }
        drop(commit_guard);
        drop(subscriptions);
        if let Some((shared, _)) = open {
            shared.signal.notify();
        }
        Ok(())
    }

    /// Makes topic `name` in `topics` (the locked map), counting against its namespace's limit.
    fn make_topic(&self, topics: &mut TopicTable, name: &TopicName) -> Result<Arc<Topic>, BrokerError> {
        if topics.in_namespace(name.tenant(), name.namespace()) >= MAX_TOPICS_PER_NAMESPACE {
            return Err(BrokerError::NamespaceFull {
                namespace: format!("{}/{}", name.tenant(), name.namespace()),
                limit: MAX_TOPICS_PER_NAMESPACE,
            });
        }
        Ok(self.insert_topic(topics, name))
    }

    /// Refuses an append that would make a new topic in a namespace at its topic limit.
    pub(super) fn check_new_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        let mut topics = lock(&self.inner.topics);
        if !topics.contains_key(name) {
            self.make_topic(&mut topics, name)?;
        }
        Ok(())
    }
}

impl TopicAdmin for EmbeddedStore {
    fn list_topics(&self, tenant: &str, namespace: &str) -> Result<Vec<TopicName>, BrokerError> {
        let mut topics: Vec<TopicName> = lock(&self.inner.topics)
            .keys()
            .filter(|topic| topic.tenant() == tenant && topic.namespace() == namespace)
            .cloned()
            .collect();
        topics.sort();
        Ok(topics)
    }

    fn create_topic(&self, name: &TopicName) -> Result<(), BrokerError> {
        let mut topics = lock(&self.inner.topics);
        if topics.contains_key(name) {
            return Err(BrokerError::TopicExists(name.clone()));
        }
        let topic = self.make_topic(&mut topics, name)?;
        drop(topics);
        // Its end in the topic-ends tree is what makes a topic without messages outlive a restart.
        self.inner.topic_ends.insert(name.as_str().as_bytes(), &0u64.to_be_bytes()).map_err(storage)?;
        self.inner.topic_ends.flush().map_err(storage)?;
        topic.set_saved_end(0);
        Ok(())
    }

    fn delete_topic(&self, name: &TopicName, force: bool) -> Result<(), BrokerError> {
        let subscriptions = lock(&self.inner.subscriptions);
        let topic = self.known_topic(name)?;
        let attached = lock(&self.inner.live)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .any(|shared| shared.reads_any([name]) && !lock(&shared.state).consumers.is_empty());
        if attached {
            return Err(BrokerError::TopicInUse {
                topic: name.clone(),
                reason: "consumers are attached to it; stop the functions (or REST consumers) reading it first".into(),
            });
        }
        let marks = topic.marks();
        if !marks.is_empty() && !force {
            let names: Vec<String> = marks.iter().map(|(subscription, _)| subscription.to_string()).collect();
            return Err(BrokerError::TopicInUse {
                topic: name.clone(),
                reason: format!(
                    "it has subscriptions ({}); unsubscribe them, or delete with --force",
                    names.join(", ")
                ),
            });
        }
        let next = lock(&topic.next);
        let step = Step {
            cursors: marks.iter().map(|(subscription, _)| CursorMove::new(subscription, name, None)).collect(),
            deleted_topics: vec![name.as_str().to_owned()],
            ..Step::default()
        };
        let ids = self.submit(&step)?;
        self.durable(&ids)?;
        for (subscription, _) in &marks {
            self.cursor_moved(subscription, &topic, ids.start, None);
        }
        topic.clear();
        lock(&self.inner.topics).remove(name);
        drop(next);
        drop(subscriptions);
        self.inner.topic_ends.remove(name.as_str().as_bytes()).map_err(storage)?;
        self.inner.topic_ends.flush().map_err(storage)?;
        Ok(())
    }

    fn subscriptions(&self, name: &TopicName) -> Result<Vec<SubscriptionName>, BrokerError> {
        let topic = self.known_topic(name)?;
        let mut names = Vec::new();
        for (subscription, _) in topic.marks() {
            if self.open_cursor(&subscription, name).is_some() || self.stored_cursor(&subscription, name)?.is_some() {
                names.push(subscription);
            }
        }
        names.sort();
        Ok(names)
    }

    fn topic_stats(&self, name: &TopicName) -> Result<TopicStats, BrokerError> {
        let topic = self.known_topic(name)?;
        let length = topic.length.load(Ordering::Acquire);
        let traffic = {
            let traffic = lock(&topic.traffic);
            let rate = |field: usize| traffic.output.values().map(|meter| meter.rates[field]).sum::<f64>();
            let by_subscription: HashMap<SubscriptionName, [f64; 3]> =
                traffic.output.iter().filter_map(|(name, meter)| Some((name.clone()?, meter.rates))).collect();
            (traffic.input.rates, [rate(0), rate(1)], (traffic.input.messages, traffic.input.bytes), by_subscription)
        };
        let (rates_in, rates_out, counters_in, by_subscription) = traffic;
        let mut subscriptions = Vec::new();
        for (subscription, _) in topic.marks() {
            let (mark, acked) = match self.current_cursor(&subscription, &topic) {
                Ok(cursor) => cursor,
                Err(BrokerError::NoSuchSubscription { .. }) => continue,
                Err(error) => return Err(error),
            };
            let acked_after: u64 =
                acked.ranges().iter().map(|&(start, end)| end.min(length).saturating_sub(start.max(mark))).sum();
            let mut stats = SubscriptionStats {
                msg_backlog: length.saturating_sub(mark).saturating_sub(acked_after),
                ..SubscriptionStats::default()
            };
            if let Some((shared, index)) = self.open_cursor(&subscription, name) {
                let state = lock(&shared.state);
                stats.unacked_messages = state.cursors[index].delivered.len() as u64;
                stats.consumers = state.consumers.len() as u32;
                stats.subscription_type = Some(shared.subscription_type);
            }
            if let Some([messages, bytes, redelivered]) = by_subscription.get(&subscription) {
                (stats.msg_rate_out, stats.msg_throughput_out, stats.msg_rate_redeliver) =
                    (*messages, *bytes, *redelivered);
            }
            subscriptions.push((subscription, stats));
        }
        subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(TopicStats {
            msg_rate_in: rates_in[0],
            msg_throughput_in: rates_in[1],
            msg_rate_out: rates_out[0],
            msg_throughput_out: rates_out[1],
            msg_in_counter: counters_in.0,
            bytes_in_counter: counters_in.1,
            storage_size: topic.stored_bytes(),
            backlog_size: Self::backlog_bytes(&topic),
            subscriptions,
        })
    }

    fn move_cursor(
        &self,
        name: &TopicName,
        subscription: &SubscriptionName,
        target: CursorTarget,
    ) -> Result<(), BrokerError> {
        let topic = self.known_topic(name)?;
        let change = match target {
            CursorTarget::Time(time) => CursorChange::Reset(topic.first_published_at(time)),
            CursorTarget::Sequence(sequence) => CursorChange::Reset(sequence),
            CursorTarget::Skip(count) => CursorChange::Skip(count),
            CursorTarget::End => CursorChange::AcknowledgeBefore(u64::MAX),
        };
        self.change_cursor(&topic, subscription, change)
    }

    fn peek(
        &self,
        name: &TopicName,
        subscription: &SubscriptionName,
        count: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let topic = self.known_topic(name)?;
        let (mark, acked) = self.current_cursor(subscription, &topic)?;
        let mut found = Vec::new();
        topic.scan(mark, |sequence, body| {
            if !acked.contains(sequence) {
                found.push(Message { topic: name.clone(), sequence, body, redelivery_count: 0 });
            }
            found.len() < count
        })?;
        Ok(found)
    }

    fn examine(&self, name: &TopicName, from: Position, offset: u64) -> Result<Option<Message>, BrokerError> {
        let topic = self.known_topic(name)?;
        let length = topic.length.load(Ordering::Acquire);
        let sequence = match from {
            Position::Earliest => topic.first_kept().checked_add(offset.saturating_sub(1)),
            Position::Latest => length.checked_sub(offset.max(1)),
        };
        let Some(sequence) = sequence.filter(|&sequence| sequence < length) else { return Ok(None) };
        Ok(topic.read_at(&[sequence])?.pop().map(|(sequence, body)| Message {
            topic: name.clone(),
            sequence,
            body,
            redelivery_count: 0,
        }))
    }

    fn set_policies(&self, tenant: &str, namespace: &str, policies: &NamespacePolicies) -> Result<(), BrokerError> {
        self.inner.policies.set(tenant, namespace, policies)
    }

    fn policies(&self, tenant: &str, namespace: &str) -> Result<NamespacePolicies, BrokerError> {
        Ok(self.inner.policies.get(tenant, namespace))
    }

    fn tenant_storage_bytes(&self, tenant: &str) -> Result<u64, BrokerError> {
        Ok(lock(&self.inner.topics)
            .values()
            .filter(|topic| topic.name.tenant() == tenant)
            .map(|topic| topic.stored_bytes())
            .sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_changes_move_the_mark_and_ranges_as_pulsar_does() {
        let acked = |ranges: &[(u64, u64)]| RangeSet::from_ranges(ranges.to_vec());
        // (change, mark, acked before) -> (mark, acked after), on 20 messages from 2 kept.
        let cases = [
            (CursorChange::Reset(5), 10, acked(&[(12, 14)]), 5, acked(&[])),
            (CursorChange::Reset(0), 10, acked(&[]), 2, acked(&[])),
            (CursorChange::Reset(50), 3, acked(&[]), 20, acked(&[])),
            (CursorChange::AcknowledgeBefore(u64::MAX), 3, acked(&[(5, 6)]), 20, acked(&[])),
            (CursorChange::AcknowledgeBefore(12), 3, acked(&[(14, 15)]), 12, acked(&[(14, 15)])),
            (CursorChange::AcknowledgeBefore(12), 3, acked(&[(12, 15)]), 15, acked(&[])),
            (CursorChange::Skip(3), 3, acked(&[(5, 6)]), 7, acked(&[])),
            (CursorChange::Skip(2), 3, acked(&[(8, 9)]), 5, acked(&[(8, 9)])),
            (CursorChange::Skip(100), 3, acked(&[(8, 9)]), 20, acked(&[])),
        ];
        for (change, mark, before, want_mark, want_acked) in cases {
            assert_eq!(change.apply(mark, before, 2, 20), (want_mark, want_acked), "{change:?} from {mark}");
        }
    }
}
