//! Namespace policies in the embedded engine: kept in sled's `namespace-policies` tree and in
//! memory, applied by producers (the backlog quota) and by the cleaner (message TTL, backlog
//! eviction; retention is in what `Topic::needed` keeps).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::admin::CursorChange;
use super::topic::Topic;
use super::{EmbeddedStore, lock, storage};
use crate::engine::broker::BrokerError;
use crate::engine::clock::now_millis;
use crate::engine::topics::{BacklogPolicy, NamespacePolicies, StoredPolicies};
use crate::limits::BACKLOG_HOLD_MS;
use crate::names::TopicName;

const POLICY_TREE: &str = "namespace-policies";
/// How often a producer held by a backlog quota looks at the backlog again.
const HOLD_POLL: Duration = Duration::from_millis(10);

/// Every namespace's policies, by `tenant/namespace`.
pub(super) struct Policies {
    tree: sled::Tree,
    set: Mutex<HashMap<String, NamespacePolicies>>,
}

impl Policies {
    pub(super) fn open(db: &sled::Db) -> Result<Self, String> {
        let tree = db.open_tree(POLICY_TREE).map_err(|error| error.to_string())?;
        let mut set = HashMap::new();
        for entry in tree.iter() {
            let (key, value) = entry.map_err(|error| error.to_string())?;
            let namespace = String::from_utf8_lossy(&key).into_owned();
            let stored: StoredPolicies = crate::codec::decode(&value)
                .map_err(|error| format!("the policies of namespace {namespace} cannot be read: {error}"))?;
            set.insert(
                namespace.clone(),
                stored.policies().map_err(|error| format!("namespace {namespace}: {error}"))?,
            );
        }
        Ok(Self { tree, set: Mutex::new(set) })
    }

    /// The policies of `tenant/namespace`.
    pub(super) fn get(&self, tenant: &str, namespace: &str) -> NamespacePolicies {
        let set = lock(&self.set);
        if set.is_empty() {
            return NamespacePolicies::default();
        }
        set.get(&format!("{tenant}/{namespace}")).copied().unwrap_or_default()
    }

    /// The policies of `topic`'s namespace.
    pub(super) fn of(&self, topic: &TopicName) -> NamespacePolicies {
        self.get(topic.tenant(), topic.namespace())
    }

    /// Sets the policies of `tenant/namespace`, durably.
    pub(super) fn set(&self, tenant: &str, namespace: &str, policies: &NamespacePolicies) -> Result<(), BrokerError> {
        let key = format!("{tenant}/{namespace}");
        let mut set = lock(&self.set);
        if *policies == NamespacePolicies::default() {
            self.tree.remove(key.as_bytes()).map_err(storage)?;
        } else {
            self.tree.insert(key.as_bytes(), crate::codec::encode(&StoredPolicies::of(policies))).map_err(storage)?;
        }
        self.tree.flush().map_err(storage)?;
        match *policies == NamespacePolicies::default() {
            true => set.remove(&key),
            false => set.insert(key, *policies),
        };
        Ok(())
    }
}

impl EmbeddedStore {
    /// The bytes of `topic`'s messages that its slowest durable subscription has not acknowledged.
    pub(super) fn backlog_bytes(topic: &Topic) -> u64 {
        topic.lowest_mark().map_or(0, |mark| topic.bytes_from(mark))
    }

    /// Lets a producer to `name` go on if its namespace's backlog quota allows: refuses it, holds
    /// it until the backlog falls (up to [`BACKLOG_HOLD_MS`]), or evicts the oldest backlog, as
    /// the quota's policy says.
    pub(super) fn hold_for_backlog_quota(&self, name: &TopicName) -> Result<(), BrokerError> {
        let Some(quota) = self.inner.policies.of(name).backlog_quota else { return Ok(()) };
        let Some(topic) = self.existing_topic(name) else { return Ok(()) };
        let deadline = Instant::now() + Duration::from_millis(BACKLOG_HOLD_MS);
        loop {
            let backlog = Self::backlog_bytes(&topic);
            if backlog <= quota.limit_bytes {
                return Ok(());
            }
            let exceeded = |policy| BrokerError::BacklogQuotaExceeded {
                topic: name.clone(),
                backlog,
                limit: quota.limit_bytes,
                policy,
            };
            match quota.policy {
                BacklogPolicy::ProducerException => return Err(exceeded("producer_exception")),
                BacklogPolicy::ConsumerBacklogEviction => return self.evict_backlog(&topic, quota.limit_bytes),
                BacklogPolicy::ProducerRequestHold if Instant::now() >= deadline => {
                    return Err(exceeded("producer_request_hold"));
                }
                BacklogPolicy::ProducerRequestHold => std::thread::sleep(HOLD_POLL),
            }
        }
    }

    /// Acknowledges, for every subscription of `topic` behind it, the oldest messages until at
    /// most `limit` bytes are unacknowledged (consumer_backlog_eviction).
    fn evict_backlog(&self, topic: &Arc<Topic>, limit: u64) -> Result<(), BrokerError> {
        let boundary = topic.first_after(None, Some(limit));
        self.acknowledge_before(topic, boundary)
    }

    /// Acknowledges every message before `boundary` for each subscription of `topic` whose mark is
    /// below it.
    fn acknowledge_before(&self, topic: &Arc<Topic>, boundary: u64) -> Result<(), BrokerError> {
        for (subscription, mark) in topic.marks() {
            if mark < boundary {
                match self.change_cursor(topic, &subscription, CursorChange::AcknowledgeBefore(boundary)) {
                    // Unsubscribed meanwhile: nothing to acknowledge.
                    Ok(()) | Err(BrokerError::NoSuchSubscription { .. }) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        Ok(())
    }

    /// Applies message TTL and backlog eviction to every topic whose namespace sets them (a
    /// cleaner pass).
    pub(super) fn apply_policies(&self, topics: &[Arc<Topic>]) -> Result<(), BrokerError> {
        let now = now_millis();
        for topic in topics {
            let policies = self.inner.policies.of(&topic.name);
            if let Some(ttl) = policies.message_ttl {
                let expired_before = now.saturating_sub(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
                self.acknowledge_before(topic, topic.first_after(Some(expired_before), None))?;
            }
            if let Some(quota) = policies.backlog_quota
                && quota.policy == BacklogPolicy::ConsumerBacklogEviction
                && Self::backlog_bytes(topic) > quota.limit_bytes
            {
                self.evict_backlog(topic, quota.limit_bytes)?;
            }
        }
        Ok(())
    }
}
