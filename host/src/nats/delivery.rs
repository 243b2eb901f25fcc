//! What this process holds of each entry delivered to a durable subscription, and the record of
//! an entry's acknowledged messages that outlives the process.
//!
//! JetStream acknowledges a whole entry. A consumer may acknowledge some of an entry's messages
//! and not others (a MANUAL function, a fetch that ends inside an entry), so the entry is
//! acknowledged to JetStream only once all of them are, and until then the messages
//! acknowledged are kept in a metadata record, as the embedded cursor keeps ranges: a
//! redelivery of the entry, to any worker, skips them, and `peek` and `is_acknowledged` read
//! them. (An ordered consumer that takes over skips by its commit intent, which says how far
//! its predecessor committed.)

use std::collections::BTreeSet;

use super::names::kv_key;
use super::{Inner, decode, encode, storage};
use crate::engine::broker::BrokerError;
use crate::names::{SubscriptionName, TopicName};

/// Metadata keys of partly acknowledged entries start with this, then the subscription name and `/`.
pub(super) const PARTIAL_PREFIX: &str = "partial/";

/// One consumer's hold on one entry: the subscription, the consumer's key share (`(0, 1)` for
/// every consumer that is not one of several key shares), the topic and the entry's stream sequence.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct EntryKey {
    pub(super) name: SubscriptionName,
    pub(super) shares: (u32, u32),
    pub(super) topic: TopicName,
    pub(super) stream_sequence: u64,
}

impl EntryKey {
    /// The metadata key of the record of which of the entry's messages the consumer acknowledged.
    /// Key shares record apart, since each processes other messages of the entry.
    pub(super) fn record(&self) -> String {
        let Self { name, shares: (share, count), topic, stream_sequence } = self;
        format!("{PARTIAL_PREFIX}{name}/{share}_{count}/{topic}/{stream_sequence}")
    }
}

/// An entry delivered to a consumer of a durable subscription in this process and not yet
/// acknowledged to JetStream.
#[derive(Debug)]
pub(super) struct Held {
    /// Where its acknowledgement goes.
    pub(super) reply: async_nats::Subject,
    /// How many messages it holds.
    pub(super) count: u32,
    /// The indices of its messages the consumer must process and has not acknowledged.
    pub(super) unacked: BTreeSet<u32>,
    /// Whether a record of its acknowledged messages is stored.
    pub(super) recorded: bool,
}

impl Held {
    /// The indices not in `unacked`, as ranges `[start, end)`: what the record keeps.
    pub(super) fn acknowledged(&self) -> Vec<(u32, u32)> {
        let mut ranges = Vec::new();
        let mut start = 0;
        for &index in self.unacked.iter().chain(std::iter::once(&self.count)) {
            if index > start {
                ranges.push((start, index));
            }
            start = index + 1;
        }
        ranges
    }
}

/// Whether `ranges` (as [`Held::acknowledged`] makes them) hold `index`.
pub(super) fn ranges_hold(ranges: &[(u32, u32)], index: u32) -> bool {
    ranges.iter().any(|&(start, end)| (start..end).contains(&index))
}

impl Inner {
    /// The acknowledged messages of the entry `entry` names, if its consumer recorded them.
    pub(super) async fn partial_record(&self, entry: &EntryKey) -> Result<Option<Vec<(u32, u32)>>, BrokerError> {
        let key = entry.record();
        let Some(bytes) = self.metadata.get(kv_key(&key)).await.map_err(storage)? else { return Ok(None) };
        let ranges = decode(&bytes).map_err(|reason| {
            storage(format!(
                "the acknowledgement record `{key}` cannot be decoded ({reason}); remove it from the metadata bucket"
            ))
        })?;
        Ok(Some(ranges))
    }

    /// Stores the records of partly acknowledged entries, all requests in flight at once.
    pub(super) async fn record_partial(&self, records: &[(String, Vec<(u32, u32)>)]) -> Result<(), BrokerError> {
        let writes = records.iter().map(|(key, ranges)| async move {
            self.metadata.put(kv_key(key), encode(ranges).into()).await.map(drop).map_err(storage)
        });
        futures_util::future::try_join_all(writes).await.map(drop)
    }

    /// Removes the records of entries now acknowledged whole. A record left behind by a failure
    /// here is harmless: it names an entry no consumer will be given again.
    pub(super) async fn forget_partial(&self, keys: &[String]) {
        let purges = keys.iter().map(|key| self.metadata.purge(kv_key(key)));
        for (key, result) in keys.iter().zip(futures_util::future::join_all(purges).await) {
            if let Err(error) = result {
                tracing::warn!("cannot remove the acknowledgement record `{key}`: {error}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledged_ranges_are_the_complement_of_the_unacknowledged() {
        let held = |count, unacked: &[u32]| Held {
            reply: "r".into(),
            count,
            unacked: unacked.iter().copied().collect(),
            recorded: false,
        };
        assert_eq!(held(10, &[1, 3, 4, 9]).acknowledged(), [(0, 1), (2, 3), (5, 9)]);
        assert_eq!(held(4, &[]).acknowledged(), [(0, 4)]);
        assert_eq!(held(3, &[0, 1, 2]).acknowledged(), []);
        let ranges = held(10, &[1, 3, 4, 9]).acknowledged();
        let recorded: Vec<u32> = (0..10).filter(|&index| ranges_hold(&ranges, index)).collect();
        assert_eq!(recorded, [0, 2, 5, 6, 7, 8]);
    }
}
