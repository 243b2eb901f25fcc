//! pulsar-admin's topic and namespace verbs on the worker: each a call to the engine's
//! [`TopicAdmin`] port, with its failures sorted into the worker's kinds, and each tenant's
//! storage quota (`maxStorageBytes`) checked before its producers append.

use std::time::Duration;

use super::{Worker, WorkerError};
use crate::engine::broker::{BrokerError, Inputs, Message, Position};
use crate::engine::topics::{CursorTarget, NamespacePolicies, TopicStats};
use crate::names::{SubscriptionName, TopicName};

/// How long a producer refused by a backlog quota is told to wait before it tries again.
const BACKLOG_RETRY_AFTER: Duration = Duration::from_secs(1);

/// An engine failure as the worker's kind of error: what the caller named that does not exist
/// is 404, what exists or is in use 409, a quota 429 or 403, what the engine cannot do 501.
pub(super) fn broker_error(error: BrokerError) -> WorkerError {
    match error {
        BrokerError::NoSuchTopic(_) | BrokerError::NoSuchSubscription { .. } => {
            WorkerError::NotFound(error.to_string())
        }
        BrokerError::TopicExists(_)
        | BrokerError::TopicInUse { .. }
        | BrokerError::InUse { .. }
        | BrokerError::Mismatch { .. } => WorkerError::Conflict(error.to_string()),
        BrokerError::BacklogQuotaExceeded { .. } => {
            WorkerError::Busy { reason: error.to_string(), retry_after: BACKLOG_RETRY_AFTER }
        }
        BrokerError::NamespaceFull { .. } => WorkerError::Forbidden(error.to_string()),
        BrokerError::TooManyTopics { .. } => WorkerError::BadRequest(error.to_string()),
        BrokerError::Unsupported { .. } => WorkerError::Unsupported(error.to_string()),
        BrokerError::Storage(_)
        | BrokerError::Unavailable(_)
        | BrokerError::Corrupt { .. }
        | BrokerError::MissedDelivery { .. } => WorkerError::Internal(error.into()),
    }
}

impl Worker {
    /// Refuses a producer of `tenant` whose topics already hold its quota's `maxStorageBytes`.
    /// What is stored stays; the tenant's consumers free space by acknowledging.
    pub(super) fn check_storage_quota(&self, tenant: &str) -> Result<(), WorkerError> {
        let Some(limit) = self.access.quota(tenant).max_storage_bytes else { return Ok(()) };
        let used = self.store.tenant_storage_bytes(tenant).map_err(broker_error)?;
        if used >= limit {
            return Err(WorkerError::Forbidden(format!(
                "tenant `{tenant}` stores {used} bytes of messages, at its quota maxStorageBytes ({limit}); consume and acknowledge its topics' backlogs, lower their retention, or ask the operator for a larger quota"
            )));
        }
        Ok(())
    }

    /// The topics of `tenant/namespace`.
    pub fn list_topics(&self, tenant: &str, namespace: &str) -> Result<Vec<TopicName>, WorkerError> {
        self.store.list_topics(tenant, namespace).map_err(broker_error)
    }

    /// Creates `topic` without messages.
    pub fn create_topic(&self, topic: &TopicName) -> Result<(), WorkerError> {
        self.check_disk()?;
        self.store.create_topic(topic).map_err(broker_error)
    }

    /// Deletes `topic`; with `force` even while it has subscriptions.
    pub fn delete_topic(&self, topic: &TopicName, force: bool) -> Result<(), WorkerError> {
        self.store.delete_topic(topic, force).map_err(broker_error)
    }

    /// The stats of `topic`.
    pub fn topic_stats(&self, topic: &TopicName) -> Result<TopicStats, WorkerError> {
        self.store.topic_stats(topic).map_err(broker_error)
    }

    /// The subscriptions with a cursor on `topic`.
    pub fn subscriptions(&self, topic: &TopicName) -> Result<Vec<SubscriptionName>, WorkerError> {
        self.store.subscriptions(topic).map_err(broker_error)
    }

    /// Deletes `subscription`'s cursor on `topic`; refused while it has consumers.
    pub fn unsubscribe(&self, topic: &TopicName, subscription: &SubscriptionName) -> Result<(), WorkerError> {
        if !self.subscriptions(topic)?.contains(subscription) {
            return Err(broker_error(BrokerError::NoSuchSubscription {
                subscription: subscription.clone(),
                topic: topic.clone(),
            }));
        }
        self.store.delete_subscription(subscription, &Inputs::from(vec![topic.clone()])).map_err(broker_error)
    }

    /// Moves `subscription`'s cursor on `topic`.
    pub fn move_cursor(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        target: CursorTarget,
    ) -> Result<(), WorkerError> {
        self.check_disk()?;
        self.store.move_cursor(topic, subscription, target).map_err(broker_error)
    }

    /// The first `count` messages `subscription` has not acknowledged.
    pub fn peek(
        &self,
        topic: &TopicName,
        subscription: &SubscriptionName,
        count: usize,
    ) -> Result<Vec<Message>, WorkerError> {
        self.store.peek(topic, subscription, count).map_err(broker_error)
    }

    /// The message `offset` places from the earliest or latest of `topic`.
    pub fn examine(&self, topic: &TopicName, from: Position, offset: u64) -> Result<Option<Message>, WorkerError> {
        self.store.examine(topic, from, offset).map_err(broker_error)
    }

    /// The policies of `tenant/namespace`.
    pub fn policies(&self, tenant: &str, namespace: &str) -> Result<NamespacePolicies, WorkerError> {
        self.store.policies(tenant, namespace).map_err(broker_error)
    }

    /// Changes the policies of `tenant/namespace` as `change` says, and keeps them.
    pub fn change_policies(
        &self,
        tenant: &str,
        namespace: &str,
        change: impl FnOnce(&mut NamespacePolicies),
    ) -> Result<(), WorkerError> {
        let _changing = super::lock(&self.policy_changes);
        let mut policies = self.policies(tenant, namespace)?;
        change(&mut policies);
        self.store.set_policies(tenant, namespace, &policies).map_err(broker_error)
    }
}
