//! pulsar-admin's topic and namespace verbs as an engine port: listing, creating and deleting
//! topics, their stats, moving a subscription's cursor, looking at messages without consuming
//! them, and each namespace's retention, message TTL and backlog quota.
//!
//! The names are Pulsar's; what an engine cannot do it refuses with [`BrokerError::Unsupported`],
//! which names the verb.

use std::time::Duration;

use bincode::{Decode, Encode};

use crate::engine::broker::{BrokerError, Message, Position, SubscriptionType};
use crate::names::{SubscriptionName, TopicName};

/// A namespace's policies, as `fnhost namespaces` sets them. The default keeps nothing acknowledged,
/// expires nothing and bounds no backlog, as Pulsar's defaults do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespacePolicies {
    /// How much acknowledged data each topic keeps for replay; `None` (not set) keeps none, except
    /// that a topic with no subscription keeps all of its messages until one comes.
    pub retention: Option<Retention>,
    /// Messages older than this are acknowledged for every subscription; `None`: never.
    pub message_ttl: Option<Duration>,
    /// The most unacknowledged data each topic holds, and what happens past it; `None`: no bound.
    pub backlog_quota: Option<BacklogQuota>,
}

/// Retention of acknowledged messages: kept while both limits hold, deleted once either is
/// passed (Pulsar's meaning). `None` is no limit (Pulsar's -1); zero keeps nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// How long after it was published an acknowledged message is kept.
    pub time: Option<Duration>,
    /// How many bytes of acknowledged messages a topic keeps.
    pub size_bytes: Option<u64>,
}

/// A topic's bound on unacknowledged data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BacklogQuota {
    /// The most bytes of messages its slowest subscription has not acknowledged.
    pub limit_bytes: u64,
    /// What happens to a producer past it.
    pub policy: BacklogPolicy,
}

/// What a backlog quota does when a topic's backlog is past it (Pulsar's `RetentionPolicy` of
/// a backlog quota).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BacklogPolicy {
    /// The producer waits until the backlog falls below the limit, and is refused if it does not
    /// in time.
    ProducerRequestHold,
    /// The producer is refused at once.
    ProducerException,
    /// The oldest unacknowledged messages are acknowledged for the subscriptions past the limit,
    /// so that producers go on.
    ConsumerBacklogEviction,
}

/// Where to move a subscription's cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CursorTarget {
    /// To the first message published at or after this time (milliseconds since the Unix epoch):
    /// everything from it on is delivered again (reset-cursor --time).
    Time(u64),
    /// To this message: it and everything after it is delivered again (reset-cursor --message-id).
    Sequence(u64),
    /// Acknowledges the next this many unacknowledged messages (skip).
    Skip(u64),
    /// Acknowledges everything (clear-backlog).
    End,
}

/// A topic's stats, with Pulsar's TopicStats meanings; rates are per second over the last
/// interval the engine measured.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopicStats {
    /// Messages published per second.
    pub msg_rate_in: f64,
    /// Bytes published per second.
    pub msg_throughput_in: f64,
    /// Messages delivered per second, over all subscriptions.
    pub msg_rate_out: f64,
    /// Bytes delivered per second, over all subscriptions.
    pub msg_throughput_out: f64,
    /// Messages published since the engine opened.
    pub msg_in_counter: u64,
    /// Bytes published since the engine opened.
    pub bytes_in_counter: u64,
    /// Bytes of the messages the topic keeps.
    pub storage_size: u64,
    /// Bytes of the messages its slowest subscription has not acknowledged.
    pub backlog_size: u64,
    /// The durable subscriptions on the topic.
    pub subscriptions: Vec<(SubscriptionName, SubscriptionStats)>,
}

/// One subscription's part of [`TopicStats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SubscriptionStats {
    /// Messages it has not acknowledged.
    pub msg_backlog: u64,
    /// Messages delivered to its consumers and not yet acknowledged.
    pub unacked_messages: u64,
    /// Its type while it has consumers.
    pub subscription_type: Option<SubscriptionType>,
    /// Its open consumers.
    pub consumers: u32,
    /// Messages delivered per second.
    pub msg_rate_out: f64,
    /// Bytes delivered per second.
    pub msg_throughput_out: f64,
    /// Messages delivered again per second.
    pub msg_rate_redeliver: f64,
}

/// The topic and namespace verbs.
pub trait TopicAdmin: Send + Sync {
    /// The topics of `tenant/namespace`, in name order.
    fn list_topics(&self, tenant: &str, namespace: &str) -> Result<Vec<TopicName>, BrokerError>;

    /// Creates `topic` without messages; [`BrokerError::TopicExists`] if it exists.
    fn create_topic(&self, topic: &TopicName) -> Result<(), BrokerError>;

    /// Deletes `topic`, its messages and its subscriptions' cursors. Refused
    /// ([`BrokerError::TopicInUse`]) while it has subscriptions, unless `force`, and always while
    /// consumers are attached.
    fn delete_topic(&self, topic: &TopicName, force: bool) -> Result<(), BrokerError>;

    /// The stats of `topic`; [`BrokerError::NoSuchTopic`] if it does not exist.
    fn topic_stats(&self, topic: &TopicName) -> Result<TopicStats, BrokerError>;

    /// The subscriptions with a cursor on `topic`, in name order; [`BrokerError::NoSuchTopic`] if
    /// it does not exist. Cheaper than [`TopicAdmin::topic_stats`]: no backlog is counted.
    fn subscriptions(&self, topic: &TopicName) -> Result<Vec<SubscriptionName>, BrokerError>;

    /// Moves `subscription`'s cursor on `topic`; [`BrokerError::NoSuchSubscription`] if it has none.
    fn move_cursor(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        target: CursorTarget,
    ) -> Result<(), BrokerError>;

    /// The first `count` messages `subscription` has not acknowledged on `topic`, without
    /// delivering them.
    fn peek(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        count: usize,
    ) -> Result<Vec<Message>, BrokerError>;

    /// The message `offset` places (1 is the first) from the earliest kept or the latest message
    /// of `topic`; `None` when there is none there.
    fn examine(&self, topic: &TopicName, from: Position, offset: u64) -> Result<Option<Message>, BrokerError>;

    /// Sets the policies of `tenant/namespace`, durably; they apply to its topics from the next
    /// step on.
    fn set_policies(&self, tenant: &str, namespace: &str, policies: &NamespacePolicies) -> Result<(), BrokerError>;

    /// The policies of `tenant/namespace` (the defaults if none were set).
    fn policies(&self, tenant: &str, namespace: &str) -> Result<NamespacePolicies, BrokerError>;

    /// Bytes the messages of `tenant`'s topics take in storage.
    fn tenant_storage_bytes(&self, tenant: &str) -> Result<u64, BrokerError>;

    /// Frees, in every topic, the messages every subscription has acknowledged and the
    /// namespace's retention does not keep; returns how many stored units (messages or entries)
    /// went. A cluster's leader calls it every few seconds. An engine that frees as
    /// acknowledgements come (the embedded one: its log cleaner) keeps this default.
    fn free_acknowledged(&self) -> Result<u64, BrokerError> {
        Ok(0)
    }
}

/// A namespace's policies as both engines store them (bincode): times in milliseconds, `None` where no limit is set.
#[derive(Encode, Decode)]
pub struct StoredPolicies {
    retention: Option<(Option<u64>, Option<u64>)>,
    message_ttl_ms: Option<u64>,
    backlog_quota: Option<(u64, u8)>,
}

impl StoredPolicies {
    /// The stored form of `policies`.
    pub fn of(policies: &NamespacePolicies) -> Self {
        let millis = |duration: Duration| u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        Self {
            retention: policies.retention.map(|retention| (retention.time.map(millis), retention.size_bytes)),
            message_ttl_ms: policies.message_ttl.map(millis),
            backlog_quota: policies.backlog_quota.map(|quota| {
                let policy = match quota.policy {
                    BacklogPolicy::ProducerRequestHold => 0,
                    BacklogPolicy::ProducerException => 1,
                    BacklogPolicy::ConsumerBacklogEviction => 2,
                };
                (quota.limit_bytes, policy)
            }),
        }
    }

    /// The policies stored; an error names what cannot be read.
    pub fn policies(self) -> Result<NamespacePolicies, String> {
        let backlog_quota = match self.backlog_quota {
            None => None,
            Some((limit_bytes, policy)) => {
                let policy = match policy {
                    0 => BacklogPolicy::ProducerRequestHold,
                    1 => BacklogPolicy::ProducerException,
                    2 => BacklogPolicy::ConsumerBacklogEviction,
                    other => return Err(format!("unknown backlog policy {other}")),
                };
                Some(BacklogQuota { limit_bytes, policy })
            }
        };
        Ok(NamespacePolicies {
            retention: self
                .retention
                .map(|(time, size_bytes)| Retention { time: time.map(Duration::from_millis), size_bytes }),
            message_ttl: self.message_ttl_ms.map(Duration::from_millis),
            backlog_quota,
        })
    }
}
