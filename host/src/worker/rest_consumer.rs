//! Consuming over HTTP: a REST consumer's receive and acknowledge, bounded per tenant.
//!
//! Each call joins the topic's subscription as a consumer of its own and leaves it when done.
//! A tenant has at most [`MAX_CONCURRENT_RECEIVES_PER_TENANT`] such calls open; a receive takes
//! messages one at a time up to [`MAX_RECEIVE_BYTES`], so that an answer's size, not the count
//! asked for, bounds the memory it holds; and a long-poll waits between looks without a thread.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Worker, WorkerError, lock};
use crate::broker::{Acks, BrokerError, Effects, Message, Position, Subscription, SubscriptionSpec};
use crate::limits::{MAX_CONCURRENT_RECEIVES_PER_TENANT, MAX_RECEIVE_BYTES};
use crate::names::{SubscriptionName, TopicName};

/// How many REST consumer calls each tenant has open.
#[derive(Default)]
pub struct ConsumerGate {
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One open REST consumer call of a tenant; dropping it closes the call.
pub struct ConsumerPermit {
    open: Arc<Mutex<HashMap<String, usize>>>,
    tenant: String,
}

impl Drop for ConsumerPermit {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

impl ConsumerGate {
    /// Opens a call for `tenant`, or refuses it when the tenant has its most open.
    pub fn enter(&self, tenant: &str) -> Result<ConsumerPermit, WorkerError> {
        let mut open = lock(&self.open);
        let count = open.entry(tenant.to_owned()).or_default();
        if *count >= MAX_CONCURRENT_RECEIVES_PER_TENANT {
            return Err(WorkerError::Busy(format!(
                "tenant `{tenant}` has {MAX_CONCURRENT_RECEIVES_PER_TENANT} receives or acknowledgements open (MAX_CONCURRENT_RECEIVES_PER_TENANT); wait for one to end, then try again"
            )));
        }
        *count += 1;
        Ok(ConsumerPermit { open: self.open.clone(), tenant: tenant.to_owned() })
    }
}

/// A REST consumer of one topic's subscription, for the length of one call.
pub struct RestConsumer {
    consumer: Box<dyn Subscription>,
    _permit: ConsumerPermit,
}

impl Worker {
    /// Joins `subscription` of `topic` for one REST call; `subscription` is in the topic's
    /// namespace, so a tenant reaches only its own subscriptions.
    pub fn rest_consumer(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        position: Position,
    ) -> Result<RestConsumer, WorkerError> {
        let permit = self.consumer_gate.enter(topic.tenant())?;
        let spec = SubscriptionSpec::single(vec![topic.clone()], Some(subscription.clone()), position);
        let consumer = self.store.subscribe(spec).map_err(|error| match error {
            BrokerError::Mismatch { .. } | BrokerError::TooManyTopics { .. } => {
                WorkerError::Conflict(error.to_string())
            }
            other => WorkerError::Internal(other.into()),
        })?;
        Ok(RestConsumer { consumer, _permit: permit })
    }
}

impl RestConsumer {
    /// Up to `count` messages that are here now, not acknowledged: they come again until
    /// acknowledged. Stops before the values pass [`MAX_RECEIVE_BYTES`], giving the message that
    /// would pass it back to the subscription (unless it is the first).
    pub fn take(&self, count: usize, received: &mut Vec<Message>) -> Result<(), WorkerError> {
        let mut bytes: usize = received.iter().map(|message| message.body.value.len()).sum();
        while received.len() < count {
            let Some(message) = self.consumer.fetch(1, std::time::Duration::ZERO).map_err(anyhow::Error::from)?.pop()
            else {
                break;
            };
            bytes += message.body.value.len();
            if bytes > MAX_RECEIVE_BYTES && !received.is_empty() {
                self.consumer.release(vec![message]);
                break;
            }
            received.push(message);
        }
        Ok(())
    }

    /// Acknowledges messages of `topic` by id.
    pub fn acknowledge(&self, topic: &TopicName, ids: &[String]) -> Result<(), WorkerError> {
        let mut acks = Acks::default();
        for id in ids {
            let sequence = id
                .parse::<u64>()
                .map_err(|_| WorkerError::BadRequest(format!("`{id}` is not a message id (a decimal number)")))?;
            acks.add(topic, sequence);
        }
        self.consumer.commit(Effects { acks, ..Effects::default() }).map_err(anyhow::Error::from)?;
        Ok(())
    }
}
