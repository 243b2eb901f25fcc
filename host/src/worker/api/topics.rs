//! The wire shapes of pulsar-admin's topic and namespace verbs: Pulsar's `TopicStats`,
//! `RetentionPolicies`, `BacklogQuota` and namespace `Policies`, with Pulsar's field names.
//!
//! Where fnhost differs: a subscription's `consumers` is a count, not a list of consumer stats,
//! and a message id is one number (`"messageId": "N"`), not a ledger and entry.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::broker::SubscriptionType;
use crate::engine::topics::{BacklogPolicy, BacklogQuota, NamespacePolicies, Retention, SubscriptionStats, TopicStats};

/// Bytes in Pulsar's megabyte, as `retentionSizeInMB` counts them.
const MEGABYTE: u64 = 1024 * 1024;

/// A topic's stats (Pulsar's `TopicStats`, the fields fnhost measures).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicStatsAnswer {
    /// Messages published per second.
    pub msg_rate_in: f64,
    /// Bytes published per second.
    pub msg_throughput_in: f64,
    /// Messages delivered per second.
    pub msg_rate_out: f64,
    /// Bytes delivered per second.
    pub msg_throughput_out: f64,
    /// Messages published since the worker started.
    pub msg_in_counter: u64,
    /// Bytes published since the worker started.
    pub bytes_in_counter: u64,
    /// Bytes of the messages the topic keeps.
    pub storage_size: u64,
    /// Bytes its slowest subscription has not acknowledged.
    pub backlog_size: u64,
    /// Its subscriptions by name: the local name for one of the topic's namespace, the full
    /// `tenant/namespace/name` otherwise.
    pub subscriptions: BTreeMap<String, SubscriptionStatsAnswer>,
}

/// One subscription's stats (Pulsar's `SubscriptionStats`, the fields fnhost measures).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatsAnswer {
    /// Messages not acknowledged.
    pub msg_backlog: u64,
    /// Messages delivered and not yet acknowledged.
    pub unacked_messages: u64,
    /// `Failover`, `Shared` or `Key_Shared` while it has consumers.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub subscription_type: Option<String>,
    /// Its open consumers (a count; Pulsar lists each consumer's stats).
    pub consumers: u32,
    /// Messages delivered per second.
    pub msg_rate_out: f64,
    /// Bytes delivered per second.
    pub msg_throughput_out: f64,
    /// Messages delivered again per second.
    pub msg_rate_redeliver: f64,
}

impl TopicStatsAnswer {
    /// The wire form of `stats`, naming each subscription as `shown` says.
    pub fn of(stats: TopicStats, shown: impl Fn(&crate::names::SubscriptionName) -> String) -> Self {
        Self {
            msg_rate_in: stats.msg_rate_in,
            msg_throughput_in: stats.msg_throughput_in,
            msg_rate_out: stats.msg_rate_out,
            msg_throughput_out: stats.msg_throughput_out,
            msg_in_counter: stats.msg_in_counter,
            bytes_in_counter: stats.bytes_in_counter,
            storage_size: stats.storage_size,
            backlog_size: stats.backlog_size,
            subscriptions: stats
                .subscriptions
                .iter()
                .map(|(name, stats)| (shown(name), SubscriptionStatsAnswer::of(stats)))
                .collect(),
        }
    }
}

impl SubscriptionStatsAnswer {
    fn of(stats: &SubscriptionStats) -> Self {
        Self {
            msg_backlog: stats.msg_backlog,
            unacked_messages: stats.unacked_messages,
            subscription_type: stats.subscription_type.map(|kind| {
                match kind {
                    SubscriptionType::Failover => "Failover",
                    SubscriptionType::Shared => "Shared",
                    SubscriptionType::KeyShared => "Key_Shared",
                }
                .to_owned()
            }),
            consumers: stats.consumers,
            msg_rate_out: stats.msg_rate_out,
            msg_throughput_out: stats.msg_throughput_out,
            msg_rate_redeliver: stats.msg_rate_redeliver,
        }
    }
}

/// The body of `resetcursor` by message id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetCursorRequest {
    /// The message to deliver again from, as the REST consumer and `--json` show it.
    pub message_id: String,
}

/// Pulsar's `RetentionPolicies`: -1 is no limit, 0 keeps nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RetentionPolicies {
    /// Minutes an acknowledged message is kept.
    pub retention_time_in_minutes: i64,
    /// Megabytes of acknowledged messages a topic keeps.
    #[serde(rename = "retentionSizeInMB")]
    pub retention_size_in_mb: i64,
}

impl RetentionPolicies {
    /// The wire form of `retention` (none set: keep nothing, 0 and 0).
    pub fn of(retention: Option<Retention>) -> Self {
        let Some(retention) = retention else { return Self { retention_time_in_minutes: 0, retention_size_in_mb: 0 } };
        Self {
            retention_time_in_minutes: retention
                .time
                .map_or(-1, |time| i64::try_from(time.as_secs().div_ceil(60)).unwrap_or(i64::MAX)),
            retention_size_in_mb: retention
                .size_bytes
                .map_or(-1, |bytes| i64::try_from(bytes.div_ceil(MEGABYTE)).unwrap_or(i64::MAX)),
        }
    }

    /// The retention these say; an error says which number is out of range.
    pub fn retention(self) -> Result<Option<Retention>, String> {
        let limit = |value: i64, what: &str| match value {
            -1 => Ok(None),
            0.. => Ok(Some(value.unsigned_abs())),
            _ => Err(format!("{what} {value} is out of range: give -1 (no limit), 0 (keep nothing) or more")),
        };
        let minutes = limit(self.retention_time_in_minutes, "retentionTimeInMinutes")?;
        let megabytes = limit(self.retention_size_in_mb, "retentionSizeInMB")?;
        if minutes == Some(0) && megabytes == Some(0) {
            return Ok(None);
        }
        Ok(Some(Retention {
            time: minutes.map(|minutes| Duration::from_secs(minutes.saturating_mul(60))),
            size_bytes: megabytes.map(|megabytes| megabytes.saturating_mul(MEGABYTE)),
        }))
    }
}

/// Pulsar's `BacklogQuota` of type `destination_storage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BacklogQuotaBody {
    /// Bytes of unacknowledged messages allowed.
    pub limit_size: i64,
    /// Pulsar's time limit of the backlog; fnhost refuses one other than -1 or 0.
    #[serde(default = "no_limit")]
    pub limit_time: i64,
    /// `producer_request_hold`, `producer_exception` or `consumer_backlog_eviction`.
    pub policy: String,
}

fn no_limit() -> i64 {
    -1
}

impl BacklogQuotaBody {
    /// The wire form of `quota`.
    pub fn of(quota: BacklogQuota) -> Self {
        Self {
            limit_size: i64::try_from(quota.limit_bytes).unwrap_or(i64::MAX),
            limit_time: -1,
            policy: policy_name(quota.policy).to_owned(),
        }
    }

    /// The quota this says; an error says what is wrong.
    pub fn quota(&self) -> Result<BacklogQuota, String> {
        let policy = match self.policy.as_str() {
            "producer_request_hold" => BacklogPolicy::ProducerRequestHold,
            "producer_exception" => BacklogPolicy::ProducerException,
            "consumer_backlog_eviction" => BacklogPolicy::ConsumerBacklogEviction,
            other => {
                return Err(format!(
                    "backlog quota policy `{other}` is not one of producer_request_hold, producer_exception, consumer_backlog_eviction"
                ));
            }
        };
        if self.limit_time > 0 {
            return Err("a backlog quota's limitTime is not supported by fnhost; give limitSize only".into());
        }
        let limit_bytes = u64::try_from(self.limit_size)
            .map_err(|_| format!("limitSize {} is out of range: give a number of bytes from 0", self.limit_size))?;
        Ok(BacklogQuota { limit_bytes, policy })
    }
}

/// Pulsar's name of a backlog quota policy.
pub fn policy_name(policy: BacklogPolicy) -> &'static str {
    match policy {
        BacklogPolicy::ProducerRequestHold => "producer_request_hold",
        BacklogPolicy::ProducerException => "producer_exception",
        BacklogPolicy::ConsumerBacklogEviction => "consumer_backlog_eviction",
    }
}

/// A namespace's policies as `GET /admin/v2/namespaces/{tenant}/{namespace}` shows them (the
/// fields of Pulsar's `Policies` fnhost has, with Pulsar's snake_case names).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NamespacePoliciesAnswer {
    /// The retention.
    pub retention_policies: RetentionPolicies,
    /// The message TTL in seconds; absent when not set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_in_seconds: Option<u64>,
    /// The backlog quota by type; fnhost has `destination_storage` only.
    #[serde(default)]
    pub backlog_quota_map: BTreeMap<String, BacklogQuotaBody>,
}

impl NamespacePoliciesAnswer {
    /// The wire form of `policies`.
    pub fn of(policies: &NamespacePolicies) -> Self {
        Self {
            retention_policies: RetentionPolicies::of(policies.retention),
            message_ttl_in_seconds: policies.message_ttl.map(|ttl| ttl.as_secs()),
            backlog_quota_map: policies
                .backlog_quota
                .map(|quota| ("destination_storage".to_owned(), BacklogQuotaBody::of(quota)))
                .into_iter()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_numbers_mean_what_pulsars_do() {
        let given = |minutes, megabytes| {
            RetentionPolicies { retention_time_in_minutes: minutes, retention_size_in_mb: megabytes }.retention()
        };
        assert_eq!(given(0, 0), Ok(None), "0 and 0 keep nothing");
        assert_eq!(given(-1, -1), Ok(Some(Retention { time: None, size_bytes: None })), "-1 is no limit");
        assert_eq!(
            given(10, 1024),
            Ok(Some(Retention { time: Some(Duration::from_secs(600)), size_bytes: Some(1024 * MEGABYTE) }))
        );
        assert!(given(-2, 0).unwrap_err().contains("retentionTimeInMinutes -2"));
        for (minutes, megabytes) in [(0, 0), (-1, -1), (10, 1024), (-1, 5)] {
            let retention = given(minutes, megabytes).unwrap();
            let shown = RetentionPolicies::of(retention);
            assert_eq!((shown.retention_time_in_minutes, shown.retention_size_in_mb), (minutes, megabytes));
        }
    }

    #[test]
    fn a_backlog_quota_names_its_policy_and_refuses_what_fnhost_lacks() {
        let body = |policy: &str, limit_time| BacklogQuotaBody { limit_size: 100, limit_time, policy: policy.into() };
        for policy in [
            BacklogPolicy::ProducerRequestHold,
            BacklogPolicy::ProducerException,
            BacklogPolicy::ConsumerBacklogEviction,
        ] {
            let quota = BacklogQuota { limit_bytes: 100, policy };
            assert_eq!(BacklogQuotaBody::of(quota).quota(), Ok(quota));
        }
        assert!(body("drop_everything", -1).quota().unwrap_err().contains("drop_everything"));
        assert!(body("producer_exception", 60).quota().unwrap_err().contains("limitTime"));
        let negative = BacklogQuotaBody { limit_size: -5, ..body("producer_exception", -1) };
        assert!(negative.quota().unwrap_err().contains("limitSize -5"));
    }
}
