//! Consuming over HTTP: a REST consumer's receive and acknowledge, bounded per tenant.
//!
//! Each call joins the topic's subscription as a consumer of its own and leaves it when done.
//! A tenant has at most [`MAX_CONCURRENT_RECEIVES_PER_TENANT`] such calls open; a receive takes
//! messages one at a time up to [`MAX_RECEIVE_BYTES`] as encoded, so that an answer's size, not the count
//! asked for, bounds the memory it holds; the bytes a tenant receives are held to its quota's
//! rate (`maxReceiveBytesPerSecond`), so that encoding its answers cannot take its neighbours'
//! cores; and a long-poll waits between looks without a thread.

use std::sync::Arc;
use std::time::Duration;

use super::tenant_gate::{TenantGate, TenantPermit};
use super::tenant_rates::TenantRates;
use super::{Worker, WorkerError, message_json_len};
use crate::engine::broker::{Acks, BrokerError, Effects, Message, Position, Subscription, SubscriptionSpec};
use crate::limits::{MAX_CONCURRENT_RECEIVES_PER_TENANT, MAX_RECEIVE_BYTES, RECEIVE_POLL_MS};
use crate::names::{SubscriptionName, TopicName};

/// How many REST consumer calls each tenant has open.
pub struct ConsumerGate(TenantGate);

impl Default for ConsumerGate {
    fn default() -> Self {
        Self(TenantGate::new(MAX_CONCURRENT_RECEIVES_PER_TENANT))
    }
}

impl ConsumerGate {
    /// Opens a call for `tenant`, or refuses it when the tenant has its most open.
    pub fn enter(&self, tenant: &str) -> Result<TenantPermit, WorkerError> {
        self.0.enter(tenant).ok_or_else(|| full(tenant))
    }

    /// Ok if `tenant` may open a call now, or the refusal [`Self::enter`] would give.
    pub fn has_room(&self, tenant: &str) -> Result<(), WorkerError> {
        if self.0.has_room(tenant) { Ok(()) } else { Err(full(tenant)) }
    }
}

/// The refusal of a call to a tenant that has its most open: it may look again soon.
fn full(tenant: &str) -> WorkerError {
    WorkerError::Busy {
        reason: format!(
            "tenant `{tenant}` has {MAX_CONCURRENT_RECEIVES_PER_TENANT} receives or acknowledgements open (MAX_CONCURRENT_RECEIVES_PER_TENANT); wait for one to end, then try again"
        ),
        retry_after: Duration::from_millis(RECEIVE_POLL_MS),
    }
}

/// A REST consumer of one topic's subscription, for the length of one call.
pub struct RestConsumer {
    consumer: Box<dyn Subscription>,
    _permit: TenantPermit,
    rates: Arc<TenantRates>,
    tenant: String,
    /// The tenant's quota of bytes received a second.
    bytes_per_second: u32,
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
        Ok(RestConsumer {
            consumer,
            _permit: permit,
            rates: self.rates.clone(),
            tenant: topic.tenant().to_owned(),
            bytes_per_second: self.access.quota(topic.tenant()).max_receive_bytes_per_second,
        })
    }
}

impl RestConsumer {
    /// Up to `count` messages that are here now, not acknowledged: they come again until
    /// acknowledged. Stops before the messages as encoded ([`message_json_len`]) pass
    /// [`MAX_RECEIVE_BYTES`], giving the message that would pass it back to the subscription
    /// (unless it is the first). Refused while the tenant has received more than its rate allows.
    pub fn take(&self, count: usize, received: &mut Vec<Message>) -> Result<(), WorkerError> {
        self.rates.check_receive(&self.tenant, self.bytes_per_second)?;
        let held = |received: &[Message]| received.iter().map(message_json_len).sum::<usize>();
        let before = held(received);
        let mut bytes = before;
        while received.len() < count {
            let Some(message) = self.consumer.fetch(1, Duration::ZERO).map_err(anyhow::Error::from)?.pop() else {
                break;
            };
            bytes += message_json_len(&message);
            if bytes > MAX_RECEIVE_BYTES && !received.is_empty() {
                self.consumer.release(vec![message]);
                break;
            }
            received.push(message);
        }
        self.rates.spend_received(&self.tenant, self.bytes_per_second, held(received) - before);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::broker::OutMessage;
    use crate::worker::api::ReceivedMessage;

    #[test]
    fn an_answers_length_is_never_more_than_counted() {
        let longest = "t".repeat(crate::limits::MAX_NAME_LEN);
        let topic = TopicName::parse(&format!("{longest}/{longest}/{longest}")).unwrap();
        let control: Vec<u8> = (0..0x20).chain([b'"', b'\\', 0x7f]).collect();
        let messages = [
            OutMessage::new("plain text"),
            OutMessage::new(control.repeat(100)),
            OutMessage::new("\u{2028}é漢字🦀 \"quoted\" \\ back"),
            OutMessage::new(vec![0xff, 0xfe, 0x00, 0x80]),
            OutMessage::new(Vec::new()),
            OutMessage {
                key: Some("\u{1}\n".repeat(50)),
                properties: vec![("\t".repeat(20), "\"".repeat(30)), (String::new(), String::new())],
                event_time: Some(u64::MAX),
                ..OutMessage::new("v")
            },
        ];
        for out in messages {
            let message = Message {
                topic: topic.clone(),
                sequence: u64::MAX,
                body: out.stamp(u64::MAX),
                redelivery_count: u32::MAX,
            };
            let encoded = serde_json::to_vec(&ReceivedMessage::of(&message)).unwrap().len();
            let counted = message_json_len(&message);
            assert!(encoded <= counted, "{encoded} bytes encoded, {counted} counted: {:?}", message.body);
            assert!(counted <= encoded + 1024, "the count is close: {encoded} encoded, {counted} counted");
        }
    }
}
