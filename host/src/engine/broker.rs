//! Topics and subscriptions: the broker trait every engine implements, and the messages it carries.
//!
//! The instance loop talks to a [`Broker`]; it never knows whether topics live in the embedded sled
//! database or in a distributed engine.
//! A subscription's [`Subscription::commit`] is the one place where a batch of processed messages
//! becomes done: their outputs, their state changes and their acknowledgements are committed together.
//!
//! A durable subscription has a name and any number of consumers; how its messages are spread over
//! them is its [`SubscriptionType`], with Pulsar's meanings.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::history::BatchHistory;
use crate::engine::state::StateChanges;
use crate::names::{Fqfn, SubscriptionName, TopicName, TopicPattern};

/// A message as stored in a topic and delivered to a subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The topic the message is in.
    pub topic: TopicName,
    /// Its position in the topic: growing in append order, from 0, never reused. The embedded
    /// engine numbers messages densely; the cluster engine by batched entry and index in it.
    pub sequence: u64,
    /// Everything the producer gave and the broker stamped.
    pub body: MessageBody,
    /// How many times the message was delivered before this delivery (0 the first time).
    pub redelivery_count: u32,
}

impl Message {
    /// The message id shown to functions and users.
    pub fn id(&self) -> String {
        message_id(self.sequence)
    }
}

/// The message id of the message at `sequence` in its topic: the sequence number in decimal.
pub fn message_id(sequence: u64) -> String {
    sequence.to_string()
}

/// The key-shared routing hash of a message's partition key or key: FNV-1a, stable across
/// processes and versions, unlike the standard library's hasher.
pub fn key_route(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3))
}

/// What is stored for each message.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageBody {
    /// The payload.
    pub value: Vec<u8>,
    /// The key, if any.
    pub key: Option<String>,
    /// Producer properties, in order.
    pub properties: Vec<(String, String)>,
    /// Producer-given event time, milliseconds since the Unix epoch.
    pub event_time: Option<u64>,
    /// Append time, milliseconds since the Unix epoch.
    pub publish_time: u64,
    /// The key used for partition and key-shared routing, if it differs from `key`.
    pub partition_key: Option<String>,
}

/// A message to append, before the broker stamps it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OutMessage {
    /// The payload.
    pub value: Vec<u8>,
    /// The key, if any.
    pub key: Option<String>,
    /// Properties, in order.
    pub properties: Vec<(String, String)>,
    /// Event time, milliseconds since the Unix epoch.
    pub event_time: Option<u64>,
}

impl OutMessage {
    /// A message with just a value.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self { value: value.into(), ..Self::default() }
    }

    /// The message as a broker stores it, appended at `publish_time`.
    pub fn stamp(self, publish_time: u64) -> MessageBody {
        MessageBody {
            value: self.value,
            key: self.key,
            properties: self.properties,
            event_time: self.event_time,
            publish_time,
            partition_key: None,
        }
    }
}

/// Where a new subscription starts reading (Pulsar's `SubscriptionInitialPosition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Position {
    /// From the first message still in the topic.
    #[default]
    #[serde(alias = "earliest")]
    Earliest,
    /// From the next message appended after the subscription is created.
    #[serde(alias = "latest")]
    Latest,
}

/// How a subscription's messages are spread over its consumers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubscriptionType {
    /// One consumer (the first still open) receives everything, in order; the others stand by.
    Failover,
    /// Messages go to whichever consumer asks, with no order between them.
    Shared,
    /// Every message of one key goes to the same consumer, in order; messages without a key are spread.
    KeyShared,
}

/// The topics a subscription reads.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    /// Topics named one by one.
    pub topics: Vec<TopicName>,
    /// Every topic matching this, including topics created after the subscription.
    pub pattern: Option<TopicPattern>,
}

impl Inputs {
    /// True when `topic` is one of these inputs, named or matched.
    pub fn covers(&self, topic: &TopicName) -> bool {
        self.topics.contains(topic) || self.pattern.as_ref().is_some_and(|pattern| pattern.matches(topic))
    }
}

impl From<Vec<TopicName>> for Inputs {
    fn from(topics: Vec<TopicName>) -> Self {
        Self { topics, pattern: None }
    }
}

/// What to subscribe to, and which consumer of the subscription this is.
#[derive(Clone, Debug)]
pub struct SubscriptionSpec {
    /// The topics, consumed together.
    pub inputs: Inputs,
    /// The durable subscription name, or `None` for a reader whose position is not kept.
    pub name: Option<SubscriptionName>,
    /// Where a subscription seen for the first time starts. Topics a pattern finds later are read from their start.
    pub initial_position: Position,
    /// How messages are spread over the subscription's consumers.
    pub subscription_type: SubscriptionType,
    /// For [`SubscriptionType::KeyShared`]: this consumer receives the keys whose hash modulo
    /// `key_shares.1` is `key_shares.0`. Every consumer of the subscription gives the same count.
    pub key_shares: (u32, u32),
    /// A message not acknowledged this long after its delivery is delivered again; `None`: never.
    pub ack_timeout: Option<Duration>,
}

impl SubscriptionSpec {
    /// The only consumer of a failover subscription over `topics`, never redelivering.
    pub fn single(topics: Vec<TopicName>, name: Option<SubscriptionName>, initial_position: Position) -> Self {
        Self {
            inputs: topics.into(),
            name,
            initial_position,
            subscription_type: SubscriptionType::Failover,
            key_shares: (0, 1),
            ack_timeout: None,
        }
    }
}

/// The effects of a batch of processed messages, committed together with its acknowledgement.
#[derive(Debug, Default)]
pub struct Effects {
    /// What the commit acknowledges.
    pub acks: Acks,
    /// Messages to append, in order, each to its topic.
    pub outputs: Vec<(TopicName, OutMessage)>,
    /// State changes of one function's table (shared with the instance, which reads them until
    /// the commit has applied them).
    pub state: Option<(Fqfn, Arc<StateChanges>)>,
    /// What the batch processed, message by message, for the function's history; an engine that
    /// keeps no history ignores it.
    pub history: Option<BatchHistory>,
}

impl Effects {
    /// True when committing would write nothing but the acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.state.as_ref().is_none_or(|(_, changes)| changes.is_empty())
    }
}

/// Acknowledgements: for each topic, ranges `[start, end)` of sequence numbers.
///
/// A batch's messages are mostly consecutive, so a batch acknowledges a few ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acks(Vec<(TopicName, Vec<(u64, u64)>)>);

impl Acks {
    /// Acknowledges message `sequence` of `topic`.
    pub fn add(&mut self, topic: &TopicName, sequence: u64) {
        let ranges = match self.0.iter_mut().find(|(acked, _)| acked == topic) {
            Some((_, ranges)) => ranges,
            None => {
                self.0.push((topic.clone(), Vec::new()));
                &mut self.0.last_mut().expect("just pushed").1
            }
        };
        match ranges.last_mut() {
            Some((_, end)) if *end == sequence => *end += 1,
            _ => ranges.push((sequence, sequence + 1)),
        }
    }

    /// Acknowledgements of all of `messages`.
    pub fn of(messages: &[Message]) -> Self {
        let mut acks = Self::default();
        for message in messages {
            acks.add(&message.topic, message.sequence);
        }
        acks
    }

    /// True when nothing is acknowledged.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Each topic with its acknowledged ranges.
    pub fn iter(&self) -> impl Iterator<Item = &(TopicName, Vec<(u64, u64)>)> {
        self.0.iter()
    }
}

/// Why a broker operation failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BrokerError {
    /// The underlying storage failed; the operation had no effect.
    #[error("topic storage failed: {0}")]
    Storage(String),
    /// The underlying storage cannot serve the call for now (a timeout, a cluster electing a
    /// leader): trying the same call again soon may succeed. Only the cluster engine gives it.
    #[error("topic storage is unavailable for now: {0}")]
    Unavailable(String),
    /// A stored message could not be decoded: the data directory is damaged or from another version.
    #[error(
        "message {sequence} in {topic} cannot be decoded ({reason}); the data directory is damaged or was written by an incompatible fnhost"
    )]
    Corrupt {
        /// The topic.
        topic: TopicName,
        /// The message's position.
        sequence: u64,
        /// What the decoder said.
        reason: String,
    },
    /// The subscription has consumers that read other topics, or with another type or key split,
    /// than this consumer asks for. The error says only what the asker gave, never what the
    /// subscription's consumers read.
    #[error(
        "subscription `{name}` is in use by consumers with other topics, another type or another key split; stop them or give this consumer another subscription name"
    )]
    Mismatch {
        /// The subscription.
        name: SubscriptionName,
    },
    /// A topics pattern matched more topics than one subscription reads.
    #[error(
        "subscription `{name}` would read more than MAX_SUBSCRIPTION_TOPICS ({limit}) topics; narrow --topics-pattern"
    )]
    TooManyTopics {
        /// The subscription, or `(reader)`.
        name: String,
        /// The limit.
        limit: usize,
    },
    /// An ordered consumer missed a delivery: the server handed a message to this consumer that
    /// never reached it (lost in a reconnection, or a pull given up on). Taking the messages
    /// after it would break each key's order, and the missed one would come back behind them.
    #[error(
        "the consumer of {topic} missed deliveries {expected} to {received}: the server sent them but they never arrived; the instance starts again after the consumer's acknowledgement floor"
    )]
    MissedDelivery {
        /// The topic.
        topic: TopicName,
        /// The consumer's delivery number this consumer expected.
        expected: u64,
        /// The one it received instead.
        received: u64,
    },
    /// The subscription has consumers, so it cannot be deleted.
    #[error("subscription `{name}` has consumers; stop them before deleting it")]
    InUse {
        /// The subscription.
        name: SubscriptionName,
    },
    /// The topic exists already.
    #[error("topic {0} already exists")]
    TopicExists(TopicName),
    /// The topic does not exist.
    #[error("topic {0} does not exist; `fnhost topics list TENANT/NAMESPACE` shows the topics")]
    NoSuchTopic(TopicName),
    /// The topic cannot be deleted now; the reason says what holds it.
    #[error("topic {topic} cannot be deleted: {reason}")]
    TopicInUse {
        /// The topic.
        topic: TopicName,
        /// What holds it, and what to do.
        reason: String,
    },
    /// The subscription has no cursor on the topic.
    #[error(
        "subscription `{subscription}` does not exist on {topic}; `fnhost topics subscriptions {topic}` lists them"
    )]
    NoSuchSubscription {
        /// The subscription.
        subscription: SubscriptionName,
        /// The topic.
        topic: TopicName,
    },
    /// A producer was refused (or held too long) because the topic's backlog is past its
    /// namespace's backlog quota.
    #[error(
        "topic {topic} has {backlog} bytes unacknowledged, past its namespace's backlog quota of {limit} bytes ({policy}); consume its backlog, or raise the quota with `fnhost namespaces set-backlog-quota`"
    )]
    BacklogQuotaExceeded {
        /// The topic.
        topic: TopicName,
        /// Its backlog, in bytes.
        backlog: u64,
        /// The quota's limit, in bytes.
        limit: u64,
        /// The quota's policy, as Pulsar names it.
        policy: &'static str,
    },
    /// The namespace holds as many topics as it may.
    #[error(
        "namespace {namespace} has MAX_TOPICS_PER_NAMESPACE ({limit}) topics; delete topics it no longer needs, or use another namespace"
    )]
    NamespaceFull {
        /// The namespace, as tenant/namespace.
        namespace: String,
        /// The limit.
        limit: usize,
    },
    /// The engine cannot do this verb; the reason says why and what comes closest.
    #[error("{verb} is not supported by this engine: {reason}")]
    Unsupported {
        /// The verb.
        verb: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },
}

/// Topics: append and subscribe.
pub trait Broker: Send + Sync {
    /// Appends messages to a topic and returns their sequence numbers once they are durable.
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError>;

    /// Joins a subscription as a new consumer (creating its cursors at the initial position if it is new).
    fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BrokerError>;

    /// Forgets a durable subscription's positions on the topics `inputs` names or matches, and no
    /// others: the same name on other topics is another consumer's. It must have no consumers.
    fn delete_subscription(&self, name: &SubscriptionName, inputs: &Inputs) -> Result<(), BrokerError>;

    /// True once subscription `subscription` has acknowledged the message at `sequence` of `topic`
    /// (false for an unknown subscription). Once true, the effects committed with the
    /// acknowledgement are readable.
    fn is_acknowledged(
        &self,
        subscription: &SubscriptionName,
        topic: &TopicName,
        sequence: u64,
    ) -> Result<bool, BrokerError>;
}

/// One consumer of a subscription. Dropping it leaves the subscription; the messages it had not
/// acknowledged go to the other consumers.
///
/// Fetching and committing may happen on different threads (the instance loop commits one batch
/// while it processes the next), so both take `&self`.
pub trait Subscription: Send + Sync {
    /// Returns up to `max` messages for this consumer, waiting up to `wait` for the first:
    /// redeliveries that are due first, then new messages.
    /// An empty result means nothing arrived in time.
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError>;

    /// Makes `effects` durable and acknowledges `effects.acks`, as one atomic step: after a crash
    /// either all of it happened or none of it did, and unacknowledged messages are delivered again.
    fn commit(&self, effects: Effects) -> Result<(), BrokerError>;

    /// True when nothing is left for this consumer: every message was read, none waits for it, and
    /// none it was given is unacknowledged.
    fn drained(&self) -> bool;

    /// Gives back `messages`, fetched by this consumer but never processed (an instance that stops
    /// with a batch fetched ahead): the next fetch of any consumer gets them, and that delivery does
    /// not count as a redelivery (which, under MANUAL, would bring them closer to the dead-letter topic).
    fn release(&self, messages: Vec<Message>);

    /// A handle that ends this consumer's waiting `fetch` early (with what it has, maybe nothing),
    /// so that a loop told to stop need not wait out its fetch.
    fn waker(&self) -> FetchWaker;
}

/// Ends a consumer's waiting fetch; see [`Subscription::waker`].
pub type FetchWaker = Arc<dyn Fn() + Send + Sync>;
