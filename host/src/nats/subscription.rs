//! One consumer of a subscription in NATS: a pull consumer per input topic, and the commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};

use super::commit::intent_key;
use super::delivery::EntryKey;
use super::entry;
use super::names::token;
use super::{CLUSTER_ACK_WAIT, Inner, storage};
use crate::engine::broker::{
    BrokerError, FetchWaker, Message, Position, Subscription, SubscriptionSpec, SubscriptionType,
};
use crate::limits::{MAX_SUBSCRIPTION_TOPICS, MAX_UNACKED_MESSAGES};
use crate::names::{SubscriptionName, TopicName, TopicPattern};

mod pulling;

use pulling::Deliveries;

/// Metadata keys of commit intents start with this, then the subscription name and `/`.
pub(super) const INTENT_PREFIX: &str = "intent/";
/// How often a subscription with a topics pattern looks for new topics.
const PATTERN_REFRESH: Duration = Duration::from_secs(2);
/// How long one waiting pull may last when several topics take turns.
const WAIT_SLICE: Duration = Duration::from_millis(100);
/// A pull shorter than this is not worth a request.
const SHORTEST_WAIT: Duration = Duration::from_millis(5);

/// True when the consumer named `consumer` is one of the durable subscription whose token is `durable`.
pub(super) fn consumer_belongs_to(consumer: &str, durable: &str) -> bool {
    consumer == durable || consumer.strip_prefix(durable).is_some_and(|rest| rest.starts_with("_k"))
}

/// The key share of the consumer named `consumer` if it is one of the durable subscription whose
/// token is `durable`: `(0, 1)` for the subscription's one consumer, `(share, count)` for a key
/// share (`<durable>_k<share>_<count>`).
pub(super) fn consumer_shares(consumer: &str, durable: &str) -> Option<(u32, u32)> {
    if consumer == durable {
        return Some((0, 1));
    }
    let (share, count) = consumer.strip_prefix(durable)?.strip_prefix("_k")?.split_once('_')?;
    let (share, count) = (share.parse().ok()?, count.parse().ok()?);
    (share < count).then_some((share, count))
}

/// The stream sequence below which `consumer` has nothing left: its acknowledgement floor, or,
/// for a consumer made to start at a sequence and not yet past it, the entry before that start
/// (the server may report a floor of 0 for such a consumer until its first acknowledgement).
pub(super) fn floor(consumer: &async_nats::jetstream::consumer::Info) -> u64 {
    let start = match consumer.config.deliver_policy {
        DeliverPolicy::ByStartSequence { start_sequence } => start_sequence.saturating_sub(1),
        _ => 0,
    };
    consumer.ack_floor.stream_sequence.max(start)
}

/// Whether `spec` keeps each key's order: failover and key-shared subscriptions.
fn is_ordered(spec: &SubscriptionSpec) -> bool {
    spec.subscription_type != SubscriptionType::Shared
}

/// The consumer `durable` of `stream`, or `None` if there is none; any other failure is an error,
/// so that an ordered consumer never takes over a consumer whose deliveries it does not know.
async fn consumer_info(
    jetstream: &async_nats::jetstream::Context,
    stream: &async_nats::jetstream::stream::Stream,
    durable: &str,
) -> Result<Option<async_nats::jetstream::consumer::Info>, BrokerError> {
    use async_nats::jetstream::{ErrorCode, response::Response};
    let subject = format!("CONSUMER.INFO.{}.{durable}", stream.cached_info().config.name);
    let response: Response<async_nats::jetstream::consumer::Info> =
        jetstream.request(subject, &serde_json::json!({})).await.map_err(storage)?;
    match response {
        Response::Ok(info) => Ok(Some(info)),
        Response::Err { error } if error.error_code() == ErrorCode::CONSUMER_NOT_FOUND => Ok(None),
        Response::Err { error } => Err(storage(error)),
    }
}

struct TopicConsumer {
    topic: TopicName,
    consumer: PullConsumer,
}

pub(super) struct NatsSubscription {
    pub(super) inner: Arc<Inner>,
    pub(super) spec: SubscriptionSpec,
    consumers: Mutex<Vec<TopicConsumer>>,
    last_refresh: Mutex<Instant>,
    rotation: AtomicUsize,
    wake: Arc<tokio::sync::Notify>,
    /// Messages of entries pulled that did not fit in the fetch that pulled them, and messages
    /// given back: the next fetches return them first.
    ready: Mutex<VecDeque<Message>>,
    /// The entries this consumer holds (in [`Inner::delivered`]): topic and stream sequence.
    pub(super) held: Mutex<HashSet<(TopicName, u64)>>,
    /// For ordered subscriptions: the metadata key of this consumer's commit intent.
    pub(super) intent_key: Option<String>,
    /// For ordered subscriptions: per topic, the highest committed sequence; a message at or below
    /// it was processed already (its acknowledgement was lost) and is acknowledged again, not delivered.
    pub(super) committed: Mutex<HashMap<TopicName, u64>>,
    /// For the active consumer of an ordered subscription: what it received of each topic.
    deliveries: Mutex<HashMap<TopicName, Deliveries>>,
}

impl NatsSubscription {
    pub(super) fn open(inner: Arc<Inner>, spec: SubscriptionSpec) -> Result<Self, BrokerError> {
        let intent_key = spec.name.as_ref().filter(|_| is_ordered(&spec)).map(|name| intent_key(name, &spec));
        let subscription = Self {
            inner,
            spec,
            consumers: Mutex::default(),
            last_refresh: Mutex::new(Instant::now()),
            rotation: AtomicUsize::new(0),
            wake: Arc::default(),
            ready: Mutex::default(),
            held: Mutex::default(),
            intent_key,
            committed: Mutex::default(),
            deliveries: Mutex::default(),
        };
        let mut topics = subscription.spec.inputs.topics.clone();
        if let Some(pattern) = &subscription.spec.inputs.pattern {
            topics.extend(subscription.pattern_topics(pattern)?);
        }
        subscription.join(topics)?;
        subscription.finish_intent()?;
        Ok(subscription)
    }

    /// Whether this consumer receives messages at all: of a failover subscription only instance 0
    /// does, and the cluster moves instance 0 to another worker when its worker dies.
    fn is_active(&self) -> bool {
        self.spec.subscription_type != SubscriptionType::Failover || self.spec.key_shares.0 == 0
    }

    /// This consumer's key share: `(0, 1)` unless it is one of several key shares.
    pub(super) fn shares(&self) -> (u32, u32) {
        match self.spec.subscription_type == SubscriptionType::KeyShared && self.spec.key_shares.1 > 1 {
            true => self.spec.key_shares,
            false => (0, 1),
        }
    }

    /// The key of this consumer's hold on the entry at `stream_sequence` of `topic`.
    pub(super) fn entry_key(&self, name: &SubscriptionName, topic: &TopicName, stream_sequence: u64) -> EntryKey {
        EntryKey { name: name.clone(), shares: self.shares(), topic: topic.clone(), stream_sequence }
    }

    /// Whether `message`, delivered to this consumer, is still to be processed.
    fn still_unacknowledged(&self, message: &Message) -> bool {
        let Some(name) = &self.spec.name else { return true };
        let (stream_sequence, index) = entry::entry_of(message.sequence);
        let key = self.entry_key(name, &message.topic, stream_sequence);
        self.inner.delivered.lock().unwrap().get(&key).is_some_and(|held| held.unacked.contains(&index))
    }

    /// Whether this consumer must receive each topic in order, without gaps: the active consumer
    /// of a durable ordered subscription.
    fn keeps_order(&self) -> bool {
        self.spec.name.is_some() && is_ordered(&self.spec) && self.is_active()
    }

    fn pattern_topics(&self, pattern: &TopicPattern) -> Result<Vec<TopicName>, BrokerError> {
        let topics = self.inner.block_on(self.inner.topics())?;
        let found: Vec<TopicName> = topics.into_iter().filter(|topic| pattern.matches(topic)).collect();
        if found.len() > MAX_SUBSCRIPTION_TOPICS {
            return Err(BrokerError::TooManyTopics {
                name: self.spec.name.as_ref().map(ToString::to_string).unwrap_or_default(),
                limit: MAX_SUBSCRIPTION_TOPICS,
            });
        }
        Ok(found)
    }

    /// Adds a pull consumer for each of `topics` this subscription does not read yet.
    fn join(&self, topics: Vec<TopicName>) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let mut consumers = self.consumers.lock().unwrap();
        for topic in topics {
            if consumers.iter().any(|joined| joined.topic == topic) {
                continue;
            }
            let consumer = inner.block_on(self.consumer(&topic))?;
            if self.keeps_order() {
                let delivered = consumer.cached_info().delivered.consumer_sequence;
                self.deliveries.lock().unwrap().insert(topic.clone(), Deliveries::after(delivered));
            }
            consumers.push(TopicConsumer { topic, consumer });
        }
        Ok(())
    }

    async fn consumer(&self, topic: &TopicName) -> Result<PullConsumer, BrokerError> {
        let stream = self.inner.topic_stream(topic).await?;
        let deliver_policy = match self.spec.initial_position {
            Position::Earliest => DeliverPolicy::All,
            Position::Latest => DeliverPolicy::New,
        };
        let Some(name) = &self.spec.name else {
            // A reader: an ephemeral consumer that the server forgets soon after it goes quiet.
            return stream
                .create_consumer(pull::Config {
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: Duration::from_secs(60),
                    ..Default::default()
                })
                .await
                .map_err(storage);
        };
        let (share, count) = self.shares();
        let key_shared = count > 1;
        let name = name.to_string();
        let durable = if key_shared { format!("{}_k{share}_{count}", token(&name)) } else { token(&name) };
        let ack_wait = self.spec.ack_timeout.unwrap_or(CLUSTER_ACK_WAIT);
        let config = pull::Config {
            durable_name: Some(durable.clone()),
            deliver_policy,
            ack_policy: AckPolicy::Explicit,
            ack_wait,
            max_ack_pending: MAX_UNACKED_MESSAGES as i64,
            ..Default::default()
        };
        if self.keeps_order()
            && let Some(info) = consumer_info(&self.inner.jetstream, &stream, &durable).await?
        {
            if info.delivered.stream_sequence == 0 {
                return stream.get_consumer(&durable).await.map_err(storage);
            }
            // The consumer is made again, starting after its acknowledgement floor, for two reasons.
            // A predecessor (a killed worker's instance) may have left messages unacknowledged,
            // which the server would hand out only after the acknowledgement wait, behind newer
            // ones, breaking each key's order. And a predecessor that still runs (its worker has
            // not yet seen that the instance moved) loses its pull and sees the delivery numbers
            // start again, a gap that stops it ([`Deliveries`]), instead of pulling beside this one.
            // What was committed beyond the floor is skipped (`committed`).
            stream.delete_consumer(&durable).await.map_err(storage)?;
            let start_sequence = floor(&info) + 1;
            let config = pull::Config { deliver_policy: DeliverPolicy::ByStartSequence { start_sequence }, ..config };
            return stream.create_consumer(config).await.map_err(storage);
        }
        if key_shared {
            // A new instance count: start where the consumers of the old count all were, not
            // at the initial position, which would process the whole topic again.
            use futures_util::TryStreamExt as _;
            let family: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
            let floor = family
                .iter()
                .filter(|other| other.name != durable && consumer_belongs_to(&other.name, &token(&name)))
                .map(floor)
                .min();
            if let Some(floor) = floor {
                let config = pull::Config {
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: floor + 1 },
                    ..config
                };
                return stream.get_or_create_consumer(&durable, config).await.map_err(storage);
            }
        }
        let consumer: PullConsumer = stream.get_or_create_consumer(&durable, config).await.map_err(storage)?;
        Ok(consumer)
    }

    /// Waits out `wait` (or until woken) for a consumer that has nothing to pull from: no messages.
    fn idle(&self, wait: Duration) -> Vec<Message> {
        self.inner.block_on(async {
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        });
        Vec::new()
    }

    fn refresh_pattern(&self) -> Result<(), BrokerError> {
        let Some(pattern) = &self.spec.inputs.pattern else { return Ok(()) };
        let mut last = self.last_refresh.lock().unwrap();
        if last.elapsed() < PATTERN_REFRESH {
            return Ok(());
        }
        *last = Instant::now();
        drop(last);
        let topics = self.pattern_topics(pattern)?;
        self.join(topics)
    }
}

impl Subscription for NatsSubscription {
    fn fetch(&self, max: usize, wait: Duration) -> Result<Vec<Message>, BrokerError> {
        let inner = &self.inner;
        let deadline = Instant::now() + wait;
        if !self.is_active() {
            return Ok(self.idle(wait));
        }
        {
            let mut ready = self.ready.lock().unwrap();
            // A buffered message whose entry came again (after the acknowledgement wait) and was
            // acknowledged through that delivery is not given twice.
            ready.retain(|message| self.still_unacknowledged(message));
            if !ready.is_empty() {
                let count = max.min(ready.len());
                return Ok(ready.drain(..count).collect());
            }
        }
        self.refresh_pattern()?;
        let consumers: Vec<(TopicName, PullConsumer)> = self
            .consumers
            .lock()
            .unwrap()
            .iter()
            .map(|joined| (joined.topic.clone(), joined.consumer.clone()))
            .collect();
        if consumers.is_empty() {
            return Ok(self.idle(wait));
        }
        let mut taken = inner.block_on(async {
            loop {
                let taken = self.pull_ready(&consumers, max).await?;
                let remaining = deadline.saturating_duration_since(Instant::now());
                if !taken.is_empty() || remaining < SHORTEST_WAIT {
                    return Ok::<_, BrokerError>(taken);
                }
                let slice = if consumers.len() == 1 { remaining } else { remaining.min(WAIT_SLICE) };
                let (topic, consumer) = &consumers[self.rotation.load(Ordering::Relaxed) % consumers.len()];
                tokio::select! {
                    first = self.pull_one(topic, consumer, slice) => {
                        let mut taken = first?;
                        if !taken.is_empty() {
                            if max > 1 {
                                taken.extend(self.pull_ready(&consumers, max - 1).await?);
                            }
                            return Ok(taken);
                        }
                    }
                    () = self.wake.notified() => return Ok(Vec::new()),
                }
            }
        })?;
        // An entry that came twice in one fetch (its acknowledgement wait passed in between)
        // gives its messages once.
        let mut seen = HashSet::new();
        taken.retain(|message| seen.insert((message.topic.clone(), message.sequence)));
        if taken.len() > max {
            self.ready.lock().unwrap().extend(taken.split_off(max));
        }
        Ok(taken)
    }

    fn commit(&self, effects: crate::engine::broker::Effects) -> Result<(), BrokerError> {
        self.commit_effects(effects)
    }

    fn drained(&self) -> bool {
        if !self.held.lock().unwrap().is_empty() || !self.ready.lock().unwrap().is_empty() {
            return false;
        }
        let consumers: Vec<PullConsumer> =
            self.consumers.lock().unwrap().iter().map(|joined| joined.consumer.clone()).collect();
        self.inner.block_on(async {
            for mut consumer in consumers {
                match consumer.info().await {
                    Ok(info) if info.num_pending == 0 && info.num_ack_pending == 0 => {}
                    _ => return false,
                }
            }
            true
        })
    }

    fn release(&self, messages: Vec<Message>) {
        // They stay delivered to this consumer: its next fetch returns them first, and when it
        // goes, its entries go to the other consumers (see `Drop`).
        let mut ready = self.ready.lock().unwrap();
        for message in messages.into_iter().rev() {
            ready.push_front(message);
        }
    }

    fn waker(&self) -> FetchWaker {
        let wake = self.wake.clone();
        Arc::new(move || wake.notify_one())
    }
}

impl Drop for NatsSubscription {
    fn drop(&mut self) {
        // The entries this consumer holds go to the others now rather than after the
        // acknowledgement wait; what it acknowledged of them is recorded, and skipped there.
        // They stay known to the process, for an acknowledgement by id later (the REST API
        // receives and acknowledges through consumers of their own).
        let Some(name) = &self.spec.name else { return };
        if is_ordered(&self.spec) {
            // The next consumer starts again after the acknowledgement floor; a negative
            // acknowledgement could reach it (it has the same name) and deliver an entry twice.
            return;
        }
        let held = std::mem::take(&mut *self.held.lock().unwrap());
        let replies: Vec<async_nats::Subject> = {
            let delivered = self.inner.delivered.lock().unwrap();
            held.into_iter()
                .filter_map(|(topic, stream_sequence)| delivered.get(&self.entry_key(name, &topic, stream_sequence)))
                .map(|held| held.reply.clone())
                .collect()
        };
        let client = self.inner.client.clone();
        self.inner.runtime.spawn(async move {
            for reply in replies {
                let _ = client.publish(reply, bytes::Bytes::from_static(b"-NAK")).await;
            }
            let _ = client.flush().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_instance_count_of_a_key_shared_subscription_has_intents_of_its_own() {
        let name = SubscriptionName::new("t", "n", "f").unwrap();
        let spec = |subscription_type, key_shares| SubscriptionSpec {
            subscription_type,
            key_shares,
            ..SubscriptionSpec::single(Vec::new(), Some(name.clone()), Position::Earliest)
        };
        let keyed = |shares| intent_key(&name, &spec(SubscriptionType::KeyShared, shares));
        assert_ne!(keyed((0, 3)), keyed((0, 2)));
        assert_eq!(keyed((0, 1)), intent_key(&name, &spec(SubscriptionType::Failover, (0, 1))));
        // A failover subscription's active consumer keeps its intent whatever the instance count.
        let failover = |shares| intent_key(&name, &spec(SubscriptionType::Failover, shares));
        assert_eq!(failover((0, 3)), failover((0, 2)));
        assert!(keyed((1, 3)).starts_with(INTENT_PREFIX));
    }
}
