//! The embedded store's records in fnhost's own log ([`crate::seglog`]): one [`Step`] per durable
//! step (a producer's append; a commit's outputs, cursor moves and state changes; a cursor made or
//! removed; a state write from the admin API), so that after a crash a step is there whole or not
//! at all.

use bincode::{Decode, Encode};

use super::cursor::RangeSet;
use crate::engine::broker::{BrokerError, MessageBody};
use crate::names::{SubscriptionName, TopicName};
use crate::seglog::LogError;

/// One durable step: everything in it is in the log, or none of it.
#[derive(Debug, Default, Encode, Decode)]
pub(super) struct Step {
    pub(super) appends: Vec<Append>,
    pub(super) cursors: Vec<CursorMove>,
    pub(super) state: Option<StateStep>,
}

/// Consecutive messages appended to one topic.
#[derive(Debug, Encode, Decode)]
pub(super) struct Append {
    pub(super) topic: String,
    /// The sequence number of the first.
    pub(super) first: u64,
    pub(super) count: u32,
    /// The messages, encoded apart, so that a reader of one topic decodes only its own.
    pub(super) messages: Vec<u8>,
}

impl Append {
    pub(super) fn new(topic: &TopicName, first: u64, bodies: &[MessageBody]) -> Self {
        Self {
            topic: topic.as_str().to_owned(),
            first,
            count: bodies.len() as u32,
            messages: crate::codec::encode(&bodies),
        }
    }

    pub(super) fn bodies(&self) -> Result<Vec<MessageBody>, String> {
        let bodies: Vec<MessageBody> = crate::codec::decode(&self.messages).map_err(|error| error.to_string())?;
        if bodies.len() != self.count as usize {
            return Err(format!("{} messages where the record says {}", bodies.len(), self.count));
        }
        Ok(bodies)
    }
}

/// A subscription's cursor on a topic, as it is after the step.
#[derive(Debug, Encode, Decode)]
pub(super) struct CursorMove {
    /// The subscription's tenant, namespace and local name.
    pub(super) subscription: (String, String, String),
    pub(super) topic: String,
    /// Its mark and acknowledged ranges; `None`: the cursor was removed.
    pub(super) position: Option<(u64, Vec<(u64, u64)>)>,
}

impl CursorMove {
    pub(super) fn new(subscription: &SubscriptionName, topic: &TopicName, position: Option<(u64, &RangeSet)>) -> Self {
        Self {
            subscription: (
                subscription.tenant().to_owned(),
                subscription.namespace().to_owned(),
                subscription.local().to_owned(),
            ),
            topic: topic.as_str().to_owned(),
            position: position.map(|(mark, acked)| (mark, acked.ranges())),
        }
    }

    /// The subscription and topic it names, checked as names are.
    pub(super) fn names(&self) -> Result<(SubscriptionName, TopicName), String> {
        let (tenant, namespace, local) = &self.subscription;
        let subscription = SubscriptionName::new(tenant, namespace, local).map_err(|error| error.to_string())?;
        let topic = TopicName::parse(&self.topic).map_err(|error| error.to_string())?;
        Ok((subscription, topic))
    }
}

/// A function's state changes.
#[derive(Debug, Encode, Decode)]
pub(super) enum StateStep {
    /// The values of the keys a commit (or an admin write) changed, encoded as a state record.
    Changes { fqfn: String, record: Vec<u8> },
    /// The function's whole table was deleted.
    Dropped { fqfn: String },
}

impl Step {
    pub(super) fn encode(&self) -> Vec<u8> {
        crate::codec::encode(self)
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Self, String> {
        crate::codec::decode(bytes).map_err(|error| error.to_string())
    }
}

pub(super) fn log_failed(error: LogError) -> BrokerError {
    BrokerError::Storage(error.to_string())
}
