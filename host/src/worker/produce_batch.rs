//! Batching of REST producers, as Pulsar's producers batch (`batchingMaxPublishDelay`): the
//! messages of requests to one topic that arrive within `--batch-max-delay-ms` of each other are
//! appended in one call, so that the engine writes them as one step (the embedded log) or one
//! entry (NATS) instead of one each.
//!
//! The first request to find no open batch for its topic leads it: it waits out the delay, takes
//! the batch and appends it; the others join it and wait for its answer. Each request is answered
//! only once its messages are durable.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lock;
use crate::engine::Engine;
use crate::engine::broker::{BrokerError, OutMessage};
use crate::limits::MAX_BATCH_MESSAGES;
use crate::names::TopicName;

/// The longest `--batch-max-delay-ms`: a producer waits at most this long for others to join.
pub const MAX_BATCH_MAX_DELAY_MS: u64 = 1_000;
/// The default, Pulsar's `batchingMaxPublishDelay`.
pub const DEFAULT_BATCH_MAX_DELAY_MS: u64 = 1;

/// What one request's messages became: their positions, or the append's failure.
type Answer = Result<Vec<u64>, BrokerError>;

/// The open batch of one topic.
#[derive(Default)]
struct OpenBatch {
    messages: Vec<OutMessage>,
    /// Each request's place in `messages` (start, count) and where its answer goes.
    requests: Vec<(usize, usize, mpsc::Sender<Answer>)>,
}

/// The REST producers' batches, by topic.
pub(super) struct ProduceBatches {
    store: Arc<dyn Engine>,
    delay: Duration,
    open: Mutex<HashMap<TopicName, OpenBatch>>,
}

impl ProduceBatches {
    /// Batches appended to `store`, each open for `delay` (zero: every request alone).
    pub(super) fn new(store: Arc<dyn Engine>, delay: Duration) -> Self {
        Self { store, delay, open: Mutex::default() }
    }

    /// Appends `messages` to `topic` with the other requests' that arrive within the delay, and
    /// returns their positions once durable.
    pub(super) fn produce(&self, topic: &TopicName, messages: Vec<OutMessage>) -> Answer {
        if self.delay.is_zero() || messages.len() >= MAX_BATCH_MESSAGES {
            return self.store.produce(topic, messages);
        }
        let (answer, answered) = mpsc::channel();
        let leads = {
            let mut open = lock(&self.open);
            let count = messages.len();
            match open.get_mut(topic) {
                Some(batch) if batch.messages.len() + count <= MAX_BATCH_MESSAGES => {
                    batch.requests.push((batch.messages.len(), count, answer));
                    batch.messages.extend(messages);
                    false
                }
                // The open batch is full: this request goes alone rather than wait for the next.
                Some(_) => {
                    drop(open);
                    return self.store.produce(topic, messages);
                }
                None => {
                    open.insert(topic.clone(), OpenBatch { messages, requests: vec![(0, count, answer)] });
                    true
                }
            }
        };
        if leads {
            std::thread::sleep(self.delay);
            let batch = lock(&self.open).remove(topic).unwrap_or_default();
            let appended = self.store.produce(topic, batch.messages);
            for (start, count, answer) in batch.requests {
                let _ = answer.send(
                    appended.as_ref().map(|positions| positions[start..start + count].to_vec()).map_err(Clone::clone),
                );
            }
        }
        answered
            .recv()
            .unwrap_or_else(|_| Err(BrokerError::Storage("the batch's append stopped before it answered".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::engine::broker::{Position, SubscriptionSpec};

    #[test]
    fn each_request_of_a_batch_gets_the_positions_of_its_own_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Engine> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let batches = Arc::new(ProduceBatches::new(store.clone(), Duration::from_millis(200)));
        let topic = TopicName::parse("batched").unwrap();
        let producers: Vec<_> = (0..8u8)
            .map(|producer| {
                let (batches, topic) = (batches.clone(), topic.clone());
                std::thread::spawn(move || {
                    let messages = (0..3).map(|index| OutMessage::new(vec![producer, index])).collect();
                    (producer, batches.produce(&topic, messages).unwrap())
                })
            })
            .collect();
        let answers: Vec<(u8, Vec<u64>)> = producers.into_iter().map(|producer| producer.join().unwrap()).collect();
        let reader = store.subscribe(SubscriptionSpec::single(vec![topic.clone()], None, Position::Earliest)).unwrap();
        let stored = reader.fetch(100, Duration::from_secs(1)).unwrap();
        assert_eq!(stored.len(), 24);
        for (producer, positions) in answers {
            assert_eq!(positions.len(), 3);
            for (index, position) in positions.iter().enumerate() {
                let message = stored.iter().find(|message| message.sequence == *position).expect("a stored message");
                assert_eq!(
                    message.body.value,
                    [producer, index as u8],
                    "each request's positions are its own messages"
                );
            }
        }
    }
}
