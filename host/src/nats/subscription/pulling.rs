//! Pulls: entries fetched from a subscription's consumers, each delivery's number checked
//! against the topic's order, and each entry unpacked into the messages this consumer takes.

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use futures_util::StreamExt as _;

use super::NatsSubscription;
use crate::engine::broker::{BrokerError, Message};
use crate::names::TopicName;
use crate::nats::delivery::Held;
use crate::nats::entry;
use crate::nats::failure::Failure;
use crate::nats::storage;

/// How long past its expiry a pull may go without an answer before the instance gives up.
const PULL_TIMEOUT: Duration = Duration::from_secs(30);

/// The next message of a pull, or an error if none comes within `limit`. A pull given up on
/// quietly would deliver its remaining messages to nobody, to come again after the
/// acknowledgement wait behind newer ones; the error stops the instance instead, and the next
/// one starts its consumer again after the acknowledgement floor, in order.
async fn within<T>(limit: Duration, next: impl Future<Output = Option<T>>) -> Result<Option<T>, BrokerError> {
    tokio::time::timeout(limit, next)
        .await
        .map_err(|_| Failure::passing(format!("a pull got no answer within {} s", limit.as_secs())).into())
}

/// What an ordered consumer has received of one topic, to keep it in the topic's order.
///
/// The server numbers every delivery of a consumer, first deliveries and redeliveries alike. A
/// number skipped means a message was delivered that never arrived (lost with a connection to a
/// server that died, or left in a pull given up on); the server sends it again after the
/// acknowledgement wait, behind messages this consumer would have processed and committed by
/// then. So a gap stops the instance, and its successor starts the consumer again after the
/// acknowledgement floor: every message at or below [`NatsSubscription::committed`] is then
/// one that was processed, which is what lets the successor skip them.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Deliveries {
    /// The delivery number the next delivery must have.
    next: u64,
    /// The highest stream sequence received; a delivery at or below it is a redelivery of a
    /// message this consumer holds (its acknowledgement is late, not lost).
    highest: Option<u64>,
}

/// What one delivery to an ordered consumer is.
#[derive(Debug, PartialEq)]
enum Delivery {
    /// The next message of the topic.
    Next,
    /// A message this consumer received before and has not committed yet.
    Again,
    /// Deliveries `expected` to the one before `received` never arrived.
    Missed { expected: u64, received: u64 },
}

impl Deliveries {
    /// Deliveries to a consumer that has made `delivered` deliveries before.
    pub(super) fn after(delivered: u64) -> Self {
        Self { next: delivered + 1, highest: None }
    }

    /// Records delivery number `number` of stream sequence `sequence`.
    fn observe(&mut self, number: u64, sequence: u64) -> Delivery {
        if number != self.next {
            return Delivery::Missed { expected: self.next, received: number };
        }
        self.next += 1;
        if self.highest.is_some_and(|highest| sequence <= highest) {
            return Delivery::Again;
        }
        self.highest = Some(sequence);
        Delivery::Next
    }
}

impl NatsSubscription {
    /// The messages of a pulled entry this consumer is to process: of its keys if it is a key
    /// share, and not yet committed or acknowledged. An entry with none is acknowledged at once.
    async fn take(
        &self,
        topic: &TopicName,
        message: async_nats::jetstream::Message,
    ) -> Result<Vec<Message>, BrokerError> {
        let info = message.info().map_err(storage)?;
        let stream_sequence = info.stream_sequence;
        let redelivery_count = u32::try_from(info.delivered.saturating_sub(1)).unwrap_or(u32::MAX);
        let delivery = match self.deliveries.lock().unwrap().get_mut(topic) {
            Some(deliveries) => deliveries.observe(info.consumer_sequence, stream_sequence),
            None => Delivery::Next,
        };
        if let Delivery::Missed { expected, received } = delivery {
            return Err(BrokerError::MissedDelivery { topic: topic.clone(), expected, received });
        }
        let bodies = entry::unpack(message.headers.as_ref(), &message.payload).map_err(|reason| {
            BrokerError::Corrupt { topic: topic.clone(), sequence: entry::position(stream_sequence, 0), reason }
        })?;
        let committed = self.committed.lock().unwrap().get(topic).copied();
        let (share, count) = self.shares();
        let mut wanted: Vec<u32> = (0..bodies.len() as u32)
            .filter(|&index| {
                entry::route(&bodies[index as usize], stream_sequence, index) % u64::from(count) == u64::from(share)
            })
            .filter(|&index| committed.is_none_or(|committed| entry::position(stream_sequence, index) > committed))
            .collect();
        let (Some(name), Some(reply)) = (&self.spec.name, &message.reply) else {
            // A reader: nothing to acknowledge.
            return Ok(messages(topic, stream_sequence, bodies, &wanted, redelivery_count));
        };
        let key = self.entry_key(name, topic, stream_sequence);
        let held_before =
            self.inner.delivered.lock().unwrap().get(&key).map(|held| (held.unacked.clone(), held.recorded));
        let mut recorded = held_before.as_ref().is_some_and(|(_, recorded)| *recorded);
        if !wanted.is_empty() && !self.keeps_order() {
            // A redelivery: skip what was acknowledged, here or on a worker that is gone.
            if let Some((unacked, _)) = &held_before {
                wanted.retain(|index| unacked.contains(index));
            } else if redelivery_count > 0
                && let Some(ranges) = self.inner.partial_record(&key).await?
            {
                recorded = true;
                wanted.retain(|&index| !crate::nats::delivery::ranges_hold(&ranges, index));
            }
        }
        if wanted.is_empty() {
            self.inner.client.publish(reply.clone(), bytes::Bytes::new()).await.map_err(storage)?;
            self.inner.delivered.lock().unwrap().remove(&key);
            if recorded {
                self.inner.forget_partial(&[key.record()]).await;
            }
            return Ok(Vec::new());
        }
        if delivery == Delivery::Again {
            // Its first delivery is being processed, and that one's commit acknowledges it.
            return Ok(Vec::new());
        }
        let held = Held {
            reply: reply.clone(),
            count: bodies.len() as u32,
            unacked: wanted.iter().copied().collect(),
            recorded,
        };
        self.inner.delivered.lock().unwrap().insert(key, held);
        self.held.lock().unwrap().insert((topic.clone(), stream_sequence));
        Ok(messages(topic, stream_sequence, bodies, &wanted, redelivery_count))
    }

    /// Pulls up to `max` messages that are there now, taking the topics in turn.
    pub(super) async fn pull_ready(
        &self,
        consumers: &[(TopicName, PullConsumer)],
        max: usize,
    ) -> Result<Vec<Message>, BrokerError> {
        let mut taken = Vec::new();
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        for offset in 0..consumers.len() {
            if taken.len() >= max {
                break;
            }
            let (topic, consumer) = &consumers[(start + offset) % consumers.len()];
            let mut batch = consumer
                .fetch()
                .max_messages(max - taken.len())
                .max_bytes(self.inner.pull_bytes)
                .messages()
                .await
                .map_err(storage)?;
            let mut received = false;
            while let Some(message) = within(PULL_TIMEOUT, batch.next()).await? {
                match message {
                    Ok(message) => {
                        received = true;
                        taken.extend(self.take(topic, message).await?);
                    }
                    // The server ends a pull whose next entry would pass its byte bound with a
                    // status that async-nats reports as an error. After entries came, any error
                    // ends the pull: the next pull meets it again if it lasts.
                    Err(_) if received => break,
                    Err(error) => return Err(storage(error)),
                }
            }
        }
        Ok(taken)
    }

    /// Waits up to `wait` for one message of `consumer`.
    pub(super) async fn pull_one(
        &self,
        topic: &TopicName,
        consumer: &PullConsumer,
        wait: Duration,
    ) -> Result<Vec<Message>, BrokerError> {
        let mut batch = consumer.batch().max_messages(1).expires(wait).messages().await.map_err(storage)?;
        let mut taken = Vec::new();
        while let Some(message) = within(wait + PULL_TIMEOUT, batch.next()).await? {
            taken.extend(self.take(topic, message.map_err(storage)?).await?);
        }
        Ok(taken)
    }
}

/// The messages at `wanted` (ascending indices) of the entry at `stream_sequence` holding `bodies`.
fn messages(
    topic: &TopicName,
    stream_sequence: u64,
    bodies: Vec<crate::engine::broker::MessageBody>,
    wanted: &[u32],
    redelivery_count: u32,
) -> Vec<Message> {
    let mut wanted = wanted.iter().peekable();
    let mut taken = Vec::with_capacity(wanted.len());
    for (index, body) in (0..).zip(bodies) {
        if wanted.next_if_eq(&&index).is_some() {
            let sequence = entry::position(stream_sequence, index);
            taken.push(Message { topic: topic.clone(), sequence, body, redelivery_count });
        }
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_in_order_pass_a_late_acknowledgement_is_held_back_and_a_gap_is_missed() {
        let mut deliveries = Deliveries::after(0);
        assert_eq!(deliveries.observe(1, 10), Delivery::Next);
        assert_eq!(deliveries.observe(2, 12), Delivery::Next);
        // The server sends 10 again because its acknowledgement is late: this consumer holds it.
        assert_eq!(deliveries.observe(3, 10), Delivery::Again);
        assert_eq!(deliveries.observe(4, 13), Delivery::Next);
        // Delivery 5 never arrived.
        assert_eq!(deliveries.observe(6, 14), Delivery::Missed { expected: 5, received: 6 });
    }

    #[test]
    fn a_consumer_taken_over_expects_the_delivery_after_its_last_and_a_restart_of_numbers_is_a_gap() {
        let mut deliveries = Deliveries::after(7);
        assert_eq!(deliveries.observe(7, 3), Delivery::Missed { expected: 8, received: 7 });
        let mut deliveries = Deliveries::after(7);
        assert_eq!(deliveries.observe(8, 3), Delivery::Next);
        // The consumer was made again elsewhere: its numbers start again.
        assert_eq!(deliveries.observe(1, 4), Delivery::Missed { expected: 9, received: 1 });
    }
}
