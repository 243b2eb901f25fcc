//! Topics and subscriptions: the broker trait every engine implements, and the messages it carries.
//!
//! The instance loop talks to a [`Broker`]; it never knows whether topics live in the embedded sled
//! database or in a distributed engine.
//! A subscription's [`Subscription::commit`] is the one place where a batch of processed messages
//! becomes done: their outputs, their state changes and the cursor move are committed together.

use std::time::Duration;

use bincode::{Decode, Encode};

use crate::names::{Fqfn, TopicName};
use crate::state::StateChanges;

/// A message as stored in a topic and delivered to a subscription.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    /// The topic the message is in.
    pub topic: TopicName,
    /// Its position in the topic: dense, starting at 0, never reused.
    pub sequence: u64,
    /// Everything the producer gave and the broker stamped.
    pub body: MessageBody,
}

impl Message {
    /// The message id shown to functions and users: the topic sequence number in decimal.
    pub fn id(&self) -> String {
        self.sequence.to_string()
    }
}

/// What is stored for each message.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
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
}

/// Where a new subscription starts reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Position {
    /// From the first message still in the topic.
    #[default]
    Earliest,
    /// From the next message appended after the subscription is created.
    Latest,
}

/// What to subscribe to.
#[derive(Clone, Debug)]
pub struct SubscriptionSpec {
    /// The topics, consumed together.
    pub topics: Vec<TopicName>,
    /// The durable subscription name, or `None` for a reader whose position is not kept.
    pub name: Option<String>,
    /// Where a subscription seen for the first time starts.
    pub initial_position: Position,
}

/// The effects of a batch of processed messages, committed together with its acknowledgement.
#[derive(Debug, Default)]
pub struct Effects {
    /// What the commit acknowledges.
    pub acks: Acks,
    /// Messages to append, in order, each to its topic.
    pub outputs: Vec<(TopicName, OutMessage)>,
    /// State changes of one function's table.
    pub state: Option<(Fqfn, StateChanges)>,
}

impl Effects {
    /// True when committing would write nothing but the acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty() && self.state.as_ref().is_none_or(|(_, changes)| changes.is_empty())
    }
}

/// Acknowledgements: for each topic, every message before this sequence number.
///
/// Messages of a subscription are fetched in order and committed in order, so acknowledging a
/// batch is moving each topic's cursor past the batch's last message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acks(Vec<(TopicName, u64)>);

impl Acks {
    /// Acknowledges `message` (and everything before it in its topic).
    fn add(&mut self, message: &Message) {
        let next = message.sequence + 1;
        match self.0.iter_mut().find(|(topic, _)| *topic == message.topic) {
            Some((_, upto)) => *upto = (*upto).max(next),
            None => self.0.push((message.topic.clone(), next)),
        }
    }

    /// Acknowledgements of all of `messages`.
    pub fn of(messages: &[Message]) -> Self {
        let mut acks = Self::default();
        for message in messages {
            acks.add(message);
        }
        acks
    }

    /// Each topic with the sequence number its cursor moves to.
    pub fn iter(&self) -> impl Iterator<Item = &(TopicName, u64)> {
        self.0.iter()
    }
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The underlying storage failed; the operation had no effect.
    #[error("topic storage failed: {0}")]
    Storage(String),
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
}

/// Topics: append and subscribe.
pub trait Broker: Send + Sync {
    /// Appends messages to a topic and returns their sequence numbers once they are durable.
    fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Result<Vec<u64>, BrokerError>;

    /// Opens a subscription (creating its cursor at the initial position if it is new).
    fn subscribe(&self, spec: SubscriptionSpec) -> Result<Box<dyn Subscription>, BrokerError>;
}

/// One consumer's view of a subscription.
///
/// Fetching and committing may happen on different threads (the instance loop commits one batch
/// while it processes the next), so both take `&self`.
pub trait Subscription: Send + Sync {
    /// Returns up to `max` messages after those already fetched, waiting up to `wait` for the first.
    /// An empty result means nothing arrived in time.
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError>;

    /// Makes `effects` durable and moves the cursors to `effects.acks`, as one atomic step: after a
    /// crash either all of it happened or none of it did, and unacknowledged messages are
    /// delivered again. Commits must be made in the order their messages were fetched.
    fn commit(&self, effects: Effects) -> Result<(), BrokerError>;
}
