//! pulsar-admin's topic and namespace verbs on JetStream: a topic is its stream, a subscription
//! its durable consumers, and a namespace's policies a record in the metadata bucket that is
//! also written into its streams' limits where JetStream has one (`docs/CLUSTER.md` maps each).
//!
//! JetStream cannot move a durable consumer's acknowledgement floor back or forward, nor hold a
//! producer, so `move_cursor` and the producer_request_hold quota are refused as unsupported.

use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind, stream};

use super::failure::Failure;
use super::names::{token, topic_stream, untoken};
use super::{Inner, NatsEngine, decode, delivery, entry, storage};
use crate::engine::broker::{BrokerError, Message, Position};
use crate::engine::topics::{
    BacklogPolicy, CursorTarget, NamespacePolicies, StoredPolicies, SubscriptionStats, TopicAdmin, TopicStats,
};
use crate::names::{SubscriptionName, TopicName};

/// Metadata records holding namespace policies start with this, followed by `tenant/namespace`.
const POLICY_PREFIX: &str = "policies/";

fn policy_key(tenant: &str, namespace: &str) -> String {
    format!("{POLICY_PREFIX}{tenant}/{namespace}")
}

/// The subscription whose durable consumer (or key-shared consumer, `<durable>_k…`) is `consumer`.
/// A token never holds `_k`, since its escapes are `_` and two hex digits.
pub(super) fn consumer_subscription(consumer: &str) -> Option<SubscriptionName> {
    let durable = consumer.split("_k").next()?;
    let name = untoken(durable)?;
    let mut parts = name.splitn(3, '/');
    SubscriptionName::new(parts.next()?, parts.next()?, parts.next()?).ok()
}

/// Writes `policies` into a topic stream's limits: the message TTL is the stream's maximum age,
/// and a backlog quota of producer_exception or consumer_backlog_eviction its maximum bytes,
/// refusing new messages or discarding the oldest past it.
pub(super) fn apply_to_config(config: &mut stream::Config, policies: &NamespacePolicies) {
    config.max_age = policies.message_ttl.unwrap_or_default();
    match policies.backlog_quota {
        Some(quota) => {
            config.max_bytes = i64::try_from(quota.limit_bytes).unwrap_or(i64::MAX);
            config.discard = match quota.policy {
                BacklogPolicy::ConsumerBacklogEviction => stream::DiscardPolicy::Old,
                BacklogPolicy::ProducerException | BacklogPolicy::ProducerRequestHold => stream::DiscardPolicy::New,
            };
        }
        None => {
            config.max_bytes = -1;
            config.discard = stream::DiscardPolicy::Old;
        }
    }
}

impl Inner {
    /// The policies of `tenant/namespace`, the defaults if none were set.
    pub(super) async fn namespace_policies(
        &self,
        tenant: &str,
        namespace: &str,
    ) -> Result<NamespacePolicies, BrokerError> {
        let Some(bytes) =
            self.metadata.get(super::names::kv_key(&policy_key(tenant, namespace))).await.map_err(storage)?
        else {
            return Ok(NamespacePolicies::default());
        };
        decode::<StoredPolicies>(&bytes)
            .and_then(StoredPolicies::policies)
            .map_err(|reason| BrokerError::Storage(format!("the policies of namespace {tenant}/{namespace}: {reason}")))
    }

    /// `topic`'s stream, or `None` if it has none.
    pub(super) async fn existing_stream(&self, topic: &TopicName) -> Result<Option<stream::Stream>, BrokerError> {
        match self.jetstream.get_stream(topic_stream(topic)).await {
            Ok(stream) => Ok(Some(stream)),
            Err(error)
                if matches!(error.kind(), GetStreamErrorKind::JetStream(ref api)
                    if api.error_code() == ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(error) => Err(storage(Failure::of(&error).while_(format!("cannot look up {topic}")))),
        }
    }

    pub(super) async fn stream_of(&self, topic: &TopicName) -> Result<stream::Stream, BrokerError> {
        self.existing_stream(topic).await?.ok_or_else(|| BrokerError::NoSuchTopic(topic.clone()))
    }

    /// The messages of the entry at `stream_sequence` of `topic`, or `None` if it is gone.
    pub(super) async fn stored_entry(
        &self,
        stream: &stream::Stream,
        topic: &TopicName,
        stream_sequence: u64,
    ) -> Result<Option<Vec<Message>>, BrokerError> {
        let Ok(raw) = stream.get_raw_message(stream_sequence).await else { return Ok(None) };
        let bodies = entry::unpack(Some(&raw.headers), &raw.payload).map_err(|reason| BrokerError::Corrupt {
            topic: topic.clone(),
            sequence: entry::position(stream_sequence, 0),
            reason,
        })?;
        let messages = (0..)
            .zip(bodies)
            .map(|(index, body)| Message {
                topic: topic.clone(),
                sequence: entry::position(stream_sequence, index),
                body,
                redelivery_count: 0,
            })
            .collect();
        Ok(Some(messages))
    }
}

impl TopicAdmin for NatsEngine {
    fn list_topics(&self, tenant: &str, namespace: &str) -> Result<Vec<TopicName>, BrokerError> {
        let inner = &self.inner;
        let mut topics: Vec<TopicName> = inner
            .block_on(inner.topics())?
            .into_iter()
            .filter(|topic| topic.tenant() == tenant && topic.namespace() == namespace)
            .collect();
        topics.sort();
        Ok(topics)
    }

    fn create_topic(&self, topic: &TopicName) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.block_on(async {
            if inner.existing_stream(topic).await?.is_some() {
                return Err(BrokerError::TopicExists(topic.clone()));
            }
            inner.topic_stream(topic).await.map(drop)
        })
    }

    fn delete_topic(&self, topic: &TopicName, force: bool) -> Result<(), BrokerError> {
        let inner = &self.inner;
        inner.block_on(async {
            let mut stream = inner.stream_of(topic).await?;
            let consumers = stream.info().await.map_err(storage)?.state.consumer_count;
            if consumers > 0 && !force {
                return Err(BrokerError::TopicInUse {
                    topic: topic.clone(),
                    reason: format!("it has {consumers} durable consumer(s); unsubscribe them, or delete with --force"),
                });
            }
            inner.streams.lock().unwrap().remove(topic);
            inner.jetstream.delete_stream(topic_stream(topic)).await.map(drop).map_err(storage)
        })
    }

    fn subscriptions(&self, topic: &TopicName) -> Result<Vec<SubscriptionName>, BrokerError> {
        use futures_util::TryStreamExt as _;
        let inner = &self.inner;
        inner.block_on(async {
            let stream = inner.stream_of(topic).await?;
            let consumers: Vec<String> = stream.consumer_names().try_collect().await.map_err(storage)?;
            let mut names: Vec<SubscriptionName> =
                consumers.iter().filter_map(|consumer| consumer_subscription(consumer)).collect();
            names.sort();
            names.dedup();
            Ok(names)
        })
    }

    fn topic_stats(&self, topic: &TopicName) -> Result<TopicStats, BrokerError> {
        use futures_util::TryStreamExt as _;
        let inner = &self.inner;
        inner.block_on(async {
            let mut stream = inner.stream_of(topic).await?;
            let state = stream.info().await.map_err(storage)?.state.clone();
            let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
            let average = state.bytes.checked_div(state.messages).unwrap_or(0);
            let mut subscriptions: Vec<(SubscriptionName, SubscriptionStats)> = Vec::new();
            for consumer in &consumers {
                let Some(name) = consumer_subscription(&consumer.name) else { continue };
                let index = match subscriptions.iter().position(|(known, _)| *known == name) {
                    Some(index) => index,
                    None => {
                        subscriptions.push((name, SubscriptionStats::default()));
                        subscriptions.len() - 1
                    }
                };
                let stats = &mut subscriptions[index].1;
                stats.msg_backlog += consumer.num_pending + consumer.num_ack_pending as u64;
                stats.unacked_messages += consumer.num_ack_pending as u64;
                stats.consumers += u32::from(consumer.num_waiting > 0 || consumer.push_bound);
            }
            subscriptions.sort_by(|a, b| a.0.cmp(&b.0));
            let backlog = subscriptions.iter().map(|(_, stats)| stats.msg_backlog).max().unwrap_or(0);
            Ok(TopicStats {
                msg_in_counter: state.last_sequence,
                storage_size: state.bytes,
                backlog_size: backlog * average,
                subscriptions,
                ..TopicStats::default()
            })
        })
    }

    fn move_cursor(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        target: CursorTarget,
    ) -> Result<(), BrokerError> {
        use async_nats::jetstream::consumer::{self, DeliverPolicy};
        use futures_util::TryStreamExt as _;
        let inner = &self.inner;
        inner.block_on(async {
            let mut stream = inner.stream_of(topic).await?;
            let last = stream.info().await.map_err(storage)?.state.last_sequence;
            let (deliver_policy, skipped) = match target {
                CursorTarget::Time(millis) => {
                    let nanos = i128::from(millis) * 1_000_000;
                    let start_time = time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
                        .map_err(|error| BrokerError::Storage(format!("reset-cursor to {millis} ms: {error}")))?;
                    (DeliverPolicy::ByStartTime { start_time }, None)
                }
                CursorTarget::Sequence(position) => {
                    let (start_sequence, index) = entry::entry_of(position);
                    (DeliverPolicy::ByStartSequence { start_sequence }, (index > 0).then_some((start_sequence, index)))
                }
                CursorTarget::End => (DeliverPolicy::ByStartSequence { start_sequence: last + 1 }, None),
                CursorTarget::Skip(_) => {
                    return Err(BrokerError::Unsupported {
                        verb: "skip",
                        reason: "JetStream counts entries, not messages, past a consumer's floor; use reset-cursor --message-id or --time".into(),
                    });
                }
            };
            let durable = token(&subscription.to_string());
            let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
            let family: Vec<_> = consumers
                .into_iter()
                .filter_map(|info| super::subscription::consumer_shares(&info.name, &durable).map(|shares| (info, shares)))
                .collect();
            if family.is_empty() {
                return Err(BrokerError::NoSuchSubscription { subscription: subscription.clone(), topic: topic.clone() });
            }
            // What this process and the records knew of the old position no longer holds.
            inner.delivered.lock().unwrap().retain(|held, _| !(held.name == *subscription && held.topic == *topic));
            let partial = format!("{}{subscription}/", delivery::PARTIAL_PREFIX);
            let topic_part = format!("/{topic}/");
            for (key, _) in super::metadata::records(&inner.jetstream, super::METADATA_BUCKET, &partial)
                .await
                .map_err(storage)?
            {
                if key.contains(&topic_part) {
                    inner.metadata.purge(super::names::kv_key(&key)).await.map_err(storage)?;
                }
            }
            inner.forget_committed(subscription, topic).await?;
            // JetStream cannot move a consumer: each is made again at the new position, with
            // what it had; the instances reading it start again (as Pulsar disconnects them).
            for (info, shares) in family {
                stream.delete_consumer(&info.name).await.map_err(storage)?;
                let config = consumer::Config { deliver_policy, ..info.config };
                stream.create_consumer(config).await.map_err(storage)?;
                if let Some((stream_sequence, index)) = skipped {
                    let entry = delivery::EntryKey { name: subscription.clone(), shares, topic: topic.clone(), stream_sequence };
                    inner.record_partial(&[(entry.record(), vec![(0, index)])]).await?;
                }
            }
            Ok(())
        })
    }

    fn peek(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        count: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        use futures_util::TryStreamExt as _;
        let inner = &self.inner;
        let durable = token(&subscription.to_string());
        inner.block_on(async {
            let stream = inner.stream_of(topic).await?;
            let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
            let floor = consumers
                .iter()
                .filter(|consumer| super::subscription::consumer_belongs_to(&consumer.name, &durable))
                .map(super::subscription::floor)
                .min()
                .ok_or_else(|| BrokerError::NoSuchSubscription {
                    subscription: subscription.clone(),
                    topic: topic.clone(),
                })?;
            let mut messages = Vec::new();
            let last = stream.cached_info().state.last_sequence;
            for stream_sequence in floor + 1..=last {
                if messages.len() >= count {
                    break;
                }
                let Some(stored) = inner.stored_entry(&stream, topic, stream_sequence).await? else { continue };
                let entry = delivery::EntryKey {
                    name: subscription.clone(),
                    shares: (0, 1),
                    topic: topic.clone(),
                    stream_sequence,
                };
                let acknowledged = inner.partial_record(&entry).await?.unwrap_or_default();
                messages.extend(
                    stored
                        .into_iter()
                        .filter(|message| !delivery::ranges_hold(&acknowledged, entry::entry_of(message.sequence).1)),
                );
            }
            messages.truncate(count);
            Ok(messages)
        })
    }

    fn examine(&self, topic: &TopicName, from: Position, offset: u64) -> Result<Option<Message>, BrokerError> {
        let inner = &self.inner;
        inner.block_on(async {
            let mut stream = inner.stream_of(topic).await?;
            let state = stream.info().await.map_err(storage)?.state.clone();
            if state.messages == 0 || offset == 0 {
                return Ok(None);
            }
            // Entries hold several messages: count them from the end asked for.
            let mut remaining = offset;
            let mut stream_sequence = match from {
                Position::Earliest => state.first_sequence,
                Position::Latest => state.last_sequence,
            };
            while (state.first_sequence..=state.last_sequence).contains(&stream_sequence) {
                if let Some(mut stored) = inner.stored_entry(&stream, topic, stream_sequence).await? {
                    if let Some(index) = usize::try_from(remaining - 1).ok().filter(|&index| index < stored.len()) {
                        let index = match from {
                            Position::Earliest => index,
                            Position::Latest => stored.len() - 1 - index,
                        };
                        return Ok(Some(stored.swap_remove(index)));
                    }
                    remaining -= stored.len() as u64;
                }
                stream_sequence = match from {
                    Position::Earliest => stream_sequence + 1,
                    Position::Latest => stream_sequence - 1,
                };
            }
            Ok(None)
        })
    }

    fn set_policies(&self, tenant: &str, namespace: &str, policies: &NamespacePolicies) -> Result<(), BrokerError> {
        if policies.backlog_quota.is_some_and(|quota| quota.policy == BacklogPolicy::ProducerRequestHold) {
            return Err(BrokerError::Unsupported {
                verb: "set-backlog-quota",
                reason: "JetStream cannot hold a producer; use producer_exception or consumer_backlog_eviction in cluster mode".into(),
            });
        }
        let inner = &self.inner;
        inner.block_on(async {
            let key = super::names::kv_key(&policy_key(tenant, namespace));
            let stored = crate::codec::encode(&StoredPolicies::of(policies));
            inner.metadata.put(key, stored.into()).await.map_err(storage)?;
            let topics = inner.topics().await?;
            for topic in topics.iter().filter(|topic| topic.tenant() == tenant && topic.namespace() == namespace) {
                let Some(mut stream) = inner.existing_stream(topic).await? else { continue };
                let mut config = stream.info().await.map_err(storage)?.config.clone();
                apply_to_config(&mut config, policies);
                inner.jetstream.update_stream(config).await.map_err(storage)?;
                inner.streams.lock().unwrap().remove(topic);
            }
            Ok(())
        })
    }

    fn policies(&self, tenant: &str, namespace: &str) -> Result<NamespacePolicies, BrokerError> {
        let inner = &self.inner;
        inner.block_on(inner.namespace_policies(tenant, namespace))
    }

    fn free_acknowledged(&self) -> Result<u64, BrokerError> {
        self.free_acknowledged_entries()
    }

    fn tenant_storage_bytes(&self, tenant: &str) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        inner.block_on(async {
            let mut total = 0;
            for topic in inner.topics().await?.iter().filter(|topic| topic.tenant() == tenant) {
                if let Some(mut stream) = inner.existing_stream(topic).await? {
                    total += stream.info().await.map_err(storage)?.state.bytes;
                }
            }
            Ok(total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_name_gives_back_its_subscription_key_shared_or_not() {
        let name = SubscriptionName::new("acme", "ns-1", "my_sub.v2").unwrap();
        let durable = token(&name.to_string());
        assert_eq!(consumer_subscription(&durable), Some(name.clone()));
        assert_eq!(consumer_subscription(&format!("{durable}_k3_4")), Some(name));
        assert_eq!(consumer_subscription("not_zz-a-token"), None);
    }
}
