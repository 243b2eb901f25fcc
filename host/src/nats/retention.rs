//! Freeing what every subscription has acknowledged, as Pulsar does by default, beyond what the
//! namespace's retention keeps.
//!
//! JetStream's interest retention would free entries itself, but not as fnhost needs: on NATS
//! 2.9 it drops a message published while its topic has no consumer (fnhost keeps those until a
//! subscription comes, as the embedded engine does, so that a function created after its input
//! was produced reads it), it cannot be set on a stream that exists, and it cannot keep
//! acknowledged messages for a namespace's retention so that `reset-cursor --time` replays them.
//! So the cluster's leader purges each topic's stream up to the lowest acknowledgement floor of
//! its durable consumers, keeping the acknowledged entries the retention asks for.

use futures_util::TryStreamExt as _;

use super::admin::consumer_subscription;
use super::{Inner, NatsEngine, storage};
use crate::engine::broker::BrokerError;
use crate::engine::clock::now_millis;
use crate::engine::topics::Retention;
use crate::names::TopicName;

impl Inner {
    /// Frees the entries of `topic` that every durable subscription acknowledged and the
    /// retention of its namespace does not keep; returns how many went.
    async fn free_acknowledged(&self, topic: &TopicName) -> Result<u64, BrokerError> {
        let Some(mut stream) = self.existing_stream(topic).await? else { return Ok(0) };
        let consumers: Vec<_> = stream.consumers().try_collect().await.map_err(storage)?;
        // Readers' ephemeral consumers name no subscription, and keep nothing.
        let floor = consumers
            .iter()
            .filter(|consumer| consumer_subscription(&consumer.name).is_some())
            .map(super::subscription::floor)
            .min();
        // A topic without subscriptions keeps everything until one comes.
        let Some(floor) = floor else { return Ok(0) };
        let state = stream.info().await.map_err(storage)?.state.clone();
        let mut keep_from = (floor + 1).min(state.last_sequence + 1);
        let policies = self.namespace_policies(topic.tenant(), topic.namespace()).await?;
        if let Some(retention) = policies.retention {
            keep_from = self.retained_from(&stream, &state, keep_from, retention).await?;
        }
        if keep_from <= state.first_sequence {
            return Ok(0);
        }
        let purged = stream.purge().sequence(keep_from).await.map_err(storage)?;
        Ok(purged.purged)
    }

    /// The first entry to keep of those before `keep_from` (all acknowledged) under `retention`:
    /// entries younger than its time are kept, and the newest acknowledged bytes within its size.
    /// The size is estimated from the stream's average entry, as Pulsar counts it by ledger.
    async fn retained_from(
        &self,
        stream: &async_nats::jetstream::stream::Stream,
        state: &async_nats::jetstream::stream::State,
        keep_from: u64,
        retention: Retention,
    ) -> Result<u64, BrokerError> {
        let average = state.bytes.checked_div(state.messages).unwrap_or(0).max(1);
        let by_size = match retention.size_bytes {
            None => state.first_sequence,
            Some(bytes) => keep_from.saturating_sub(bytes / average),
        };
        let by_time = match retention.time {
            None => state.first_sequence,
            Some(time) => {
                let cutoff = now_millis().saturating_sub(u64::try_from(time.as_millis()).unwrap_or(u64::MAX));
                let mut sequence = state.first_sequence;
                // Entries are in publish order: the first one young enough ends the walk.
                while sequence < keep_from {
                    if let Ok(message) = stream.get_raw_message(sequence).await {
                        let published = u64::try_from(message.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                        if published >= cutoff {
                            break;
                        }
                    }
                    sequence += 1;
                }
                sequence
            }
        };
        // Kept while both limits hold: deleted once either is passed.
        Ok(by_size.max(by_time).min(keep_from))
    }
}

impl NatsEngine {
    /// [`TopicAdmin::free_acknowledged`](crate::engine::topics::TopicAdmin::free_acknowledged) on JetStream.
    pub(super) fn free_acknowledged_entries(&self) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        inner.block_on(async {
            let mut freed = 0;
            for topic in inner.topics().await? {
                freed += inner.free_acknowledged(&topic).await?;
            }
            Ok(freed)
        })
    }
}
