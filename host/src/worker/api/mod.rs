//! The admin API's wire shapes: Pulsar's JSON as serde structs, shared by the server
//! (`admin/`), the CLI and cluster peers, so that no side builds or reads it by hand.
//!
//! Field names follow Pulsar's (`FunctionStatus`, `FunctionStats`, `FunctionState`, the REST
//! producer and consumer); where fnhost adds a field it says so.

pub mod history;
pub mod topics;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::engine::broker::Message;
use crate::engine::state::{StateValue, Versioned};
use crate::metrics::{ExceptionInfo, MinuteCounts, Stats};
use crate::spec::LogLevelName;

/// An error answer: Pulsar's `{"reason": ...}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    /// What was wrong and what to do.
    pub reason: String,
}

/// The body of `PUT …/{name}/log-level` (fnhost's own path; Pulsar restarts a function to change
/// its level): the running instances take the new level at their next log line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLevelChange {
    /// The lowest level of function log lines kept from now on.
    pub log_level: LogLevelName,
}

/// The answer to `GET …/{name}/logs` (fnhost's own path): the function's recent log lines,
/// oldest first. With `?follow=true` the lines come instead as server-sent events, one line's
/// JSON each, as they are written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogLines {
    /// The lines.
    pub lines: Vec<LogLine>,
}

pub use crate::instance::LogLine;

/// The answer to `GET /admin/v2/whoami` (fnhost's own path, for the console): what the presented
/// token may reach.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WhoAmI {
    /// Whether it reaches every tenant and the worker's own paths (so does every request to a
    /// worker without tokens).
    pub operator: bool,
    /// The one tenant it reaches, for a tenant's token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Whether the worker is one of a cluster.
    pub cluster: bool,
}

/// Pulsar's FunctionStatus: every instance's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStatus {
    /// The function's parallelism.
    pub num_instances: u32,
    /// How many instances run.
    pub num_running: u32,
    /// Each instance, by id.
    pub instances: Vec<InstanceStatusEntry>,
}

/// One instance in [`FunctionStatus`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatusEntry {
    /// The instance's id.
    pub instance_id: u32,
    /// Its status.
    pub status: InstanceStatus,
}

/// Pulsar's FunctionInstanceStatusData.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceStatus {
    /// Whether the instance runs.
    pub running: bool,
    /// Why it stopped, or why its worker could not be asked; empty when nothing is wrong.
    pub error: String,
    /// Times the instance was started again after a failure.
    pub num_restarts: u64,
    /// Messages delivered to the function.
    pub num_received: u64,
    /// Messages it processed successfully.
    pub num_successfully_processed: u64,
    /// Messages it failed with a user exception.
    pub num_user_exceptions: u64,
    /// The most recent user exceptions, oldest first.
    pub latest_user_exceptions: Vec<ExceptionInfo>,
    /// Messages that failed with a system exception.
    pub num_system_exceptions: u64,
    /// The most recent system exceptions, oldest first.
    pub latest_system_exceptions: Vec<ExceptionInfo>,
    /// Messages sent to the dead-letter topic (fnhost's addition).
    pub num_dead_lettered: u64,
    /// Mean processing time, in milliseconds.
    pub average_latency: f64,
    /// When the function last processed a message, in milliseconds since the Unix epoch; 0 if never.
    pub last_invocation_time: u64,
    /// The worker running the instance (`embedded` outside a cluster), when known.
    pub worker_id: Option<String>,
}

impl InstanceStatus {
    /// The status of an instance whose counts are `stats`.
    pub fn new(running: bool, error: String, stats: &Stats, worker_id: &str) -> Self {
        Self {
            running,
            error,
            num_restarts: stats.restarts,
            num_received: stats.received,
            num_successfully_processed: stats.succeeded,
            num_user_exceptions: stats.user_exceptions,
            latest_user_exceptions: stats.latest_user_exceptions.iter().cloned().collect(),
            num_system_exceptions: stats.system_exceptions,
            latest_system_exceptions: stats.latest_system_exceptions.iter().cloned().collect(),
            num_dead_lettered: stats.dead_lettered,
            average_latency: stats.latency.mean_millis(),
            last_invocation_time: stats.last_invocation.unwrap_or(0),
            worker_id: Some(worker_id.to_owned()),
        }
    }
}

/// Pulsar's FunctionStats: the totals over the instances, then each instance's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionStats {
    /// The totals.
    #[serde(flatten)]
    pub totals: InstanceStats,
    /// Each instance, by id.
    pub instances: Vec<InstanceStatsEntry>,
}

/// One instance in [`FunctionStats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatsEntry {
    /// The instance's id.
    pub instance_id: u32,
    /// Its counts.
    pub metrics: InstanceStats,
}

/// Pulsar's FunctionInstanceStatsData: counts since the start, and over the last minute.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InstanceStats {
    /// Messages delivered to the function.
    pub received_total: u64,
    /// Messages processed successfully.
    pub processed_successfully_total: u64,
    /// Messages that failed with a system exception.
    pub system_exceptions_total: u64,
    /// Messages that failed with a user exception.
    pub user_exceptions_total: u64,
    /// Messages sent to the dead-letter topic (fnhost's addition).
    pub dead_lettered_total: u64,
    /// Mean processing time, in milliseconds.
    pub avg_process_latency: f64,
    /// Processing time quantiles since the start, in milliseconds (fnhost's addition; in totals
    /// over instances, the highest instance's).
    pub process_latency_quantiles: LatencyQuantiles,
    /// The same counts over the last minute.
    pub one_min: MinuteStats,
    /// When the function last processed a message, in milliseconds since the Unix epoch; 0 if never.
    pub last_invocation: u64,
    /// The mean of each metric the function recorded.
    pub user_metrics: BTreeMap<String, f64>,
}

/// Processing time quantiles in [`InstanceStats`], in milliseconds, within about 4.5%.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LatencyQuantiles {
    /// The median.
    pub p50: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The 99th percentile.
    pub p99: f64,
    /// The 99.9th percentile.
    pub p999: f64,
}

/// The last minute's counts in [`InstanceStats`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MinuteStats {
    /// Messages delivered.
    pub received_total: u64,
    /// Messages processed successfully.
    pub processed_successfully_total: u64,
    /// Messages that failed with a system exception.
    pub system_exceptions_total: u64,
    /// Messages that failed with a user exception.
    pub user_exceptions_total: u64,
    /// Mean processing time, in milliseconds.
    pub avg_process_latency: f64,
}

impl InstanceStats {
    /// The stats of counts `stats` and `minute`.
    pub fn new(stats: &Stats, minute: &MinuteCounts) -> Self {
        Self {
            received_total: stats.received,
            processed_successfully_total: stats.succeeded,
            system_exceptions_total: stats.system_exceptions,
            user_exceptions_total: stats.user_exceptions,
            dead_lettered_total: stats.dead_lettered,
            avg_process_latency: stats.latency.mean_millis(),
            process_latency_quantiles: LatencyQuantiles {
                p50: stats.latency.quantile_millis(0.5),
                p90: stats.latency.quantile_millis(0.9),
                p99: stats.latency.quantile_millis(0.99),
                p999: stats.latency.quantile_millis(0.999),
            },
            one_min: MinuteStats {
                received_total: minute.received,
                processed_successfully_total: minute.succeeded,
                system_exceptions_total: minute.system_exceptions,
                user_exceptions_total: minute.user_exceptions,
                avg_process_latency: minute.mean_latency_millis(),
            },
            last_invocation: stats.last_invocation.unwrap_or(0),
            user_metrics: stats
                .user_metrics
                .iter()
                .map(|(name, (count, sum))| (name.clone(), sum / (*count).max(1) as f64))
                .collect(),
        }
    }

    /// The totals of instances whose own stats are all that is known (they run on other
    /// workers): counts add up, latencies are weighted by the messages processed, and the last
    /// invocation is the latest. A metric's mean is kept only where one instance recorded it,
    /// since its count is not sent.
    pub fn total<'a>(instances: impl IntoIterator<Item = &'a InstanceStats>) -> Self {
        let mut total = Self::default();
        let (mut latency, mut minute_latency) = (0.0, 0.0);
        let mut metric_owners: BTreeMap<&String, (usize, f64)> = BTreeMap::new();
        for stats in instances {
            total.received_total += stats.received_total;
            total.processed_successfully_total += stats.processed_successfully_total;
            total.system_exceptions_total += stats.system_exceptions_total;
            total.user_exceptions_total += stats.user_exceptions_total;
            total.dead_lettered_total += stats.dead_lettered_total;
            latency += stats.avg_process_latency * stats.processed_successfully_total as f64;
            let minute = &stats.one_min;
            total.one_min.received_total += minute.received_total;
            total.one_min.processed_successfully_total += minute.processed_successfully_total;
            total.one_min.system_exceptions_total += minute.system_exceptions_total;
            total.one_min.user_exceptions_total += minute.user_exceptions_total;
            minute_latency += minute.avg_process_latency * minute.processed_successfully_total as f64;
            total.last_invocation = total.last_invocation.max(stats.last_invocation);
            let (highest, quantiles) = (&mut total.process_latency_quantiles, &stats.process_latency_quantiles);
            highest.p50 = highest.p50.max(quantiles.p50);
            highest.p90 = highest.p90.max(quantiles.p90);
            highest.p99 = highest.p99.max(quantiles.p99);
            highest.p999 = highest.p999.max(quantiles.p999);
            for (name, mean) in &stats.user_metrics {
                let owner = metric_owners.entry(name).or_insert((0, *mean));
                owner.0 += 1;
            }
        }
        let mean = |sum: f64, count: u64| if count == 0 { 0.0 } else { sum / count as f64 };
        total.avg_process_latency = mean(latency, total.processed_successfully_total);
        total.one_min.avg_process_latency = mean(minute_latency, total.one_min.processed_successfully_total);
        total.user_metrics = metric_owners
            .into_iter()
            .filter(|(_, (owners, _))| *owners == 1)
            .map(|(name, (_, mean))| (name.clone(), mean))
            .collect();
        total
    }
}

/// Pulsar's FunctionState: a state key's value, as querystate gives it and putstate takes it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FunctionState {
    /// The key.
    #[serde(default)]
    pub key: Option<String>,
    /// The value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_value: Option<String>,
    /// The value in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub byte_value: Option<String>,
    /// A counter's value. Taken as any JSON number, so that putstate can say why it refuses one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number_value: Option<serde_json::Number>,
    /// The version of the write that left the value; putstate ignores it, since fnhost versions
    /// every write itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// When the value expires, in milliseconds since the Unix epoch (its time to live from the
    /// write); absent when it does not. fnhost's; putstate ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl FunctionState {
    /// The state under `key` as stored: numberValue for counters, stringValue for UTF-8, else
    /// byteValue (base64).
    pub fn of(key: &str, stored: Versioned) -> Self {
        let mut state = Self {
            key: Some(key.to_owned()),
            version: Some(stored.version),
            expires_at: stored.expires_at,
            ..Self::default()
        };
        match stored.value {
            StateValue::Counter(value) => state.number_value = Some(value.into()),
            StateValue::Bytes(bytes) => (state.string_value, state.byte_value) = text_or_base64(bytes),
        }
        state
    }
}

/// A page of a function's state keys (`GET …/state?prefix=P&after=K&limit=N`; fnhost's, not in
/// Pulsar): in byte order, none expired, none of the host's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateKeys {
    /// The keys.
    pub keys: Vec<String>,
    /// When the page is full, its last key: ask again with `after` set to it for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// Bytes as JSON shows them: the text when they are UTF-8, else base64 (the second).
pub(crate) fn text_or_base64(bytes: Vec<u8>) -> (Option<String>, Option<String>) {
    match String::from_utf8(bytes) {
        Ok(text) => (Some(text), None),
        Err(error) => (None, Some(base64::engine::general_purpose::STANDARD.encode(error.as_bytes()))),
    }
}

/// A message as the REST consumer, trigger and `topics consume --json` give it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedMessage {
    /// Its id, to acknowledge it with.
    pub message_id: String,
    /// The topic it is on.
    pub topic: String,
    /// Its key.
    pub key: Option<String>,
    /// Its properties.
    pub properties: BTreeMap<String, String>,
    /// The producer's event time, if it gave one.
    pub event_time: Option<u64>,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub publish_time: u64,
    /// How many times it was delivered before.
    pub redelivery_count: u32,
    /// The value, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The value in base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl ReceivedMessage {
    /// The wire form of `message`.
    pub fn of(message: &Message) -> Self {
        let body = &message.body;
        let (value, value_base64) = text_or_base64(body.value.clone());
        Self {
            message_id: message.id(),
            topic: message.topic.as_str().to_owned(),
            key: body.key.clone(),
            properties: body.properties.iter().cloned().collect(),
            event_time: body.event_time,
            publish_time: body.publish_time,
            redelivery_count: message.redelivery_count,
            value,
            value_base64,
        }
    }
}

/// What a trigger gives back: the id of the message it produced, and the function's output for
/// it, if there was one (`value` is null when there was none).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerAnswer {
    /// The id of the message the trigger put on the input topic.
    pub input_message_id: String,
    /// The output, when the function gave one.
    #[serde(flatten)]
    pub output: Option<ReceivedMessage>,
}

/// Pulsar's REST producer body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProduceRequest {
    /// The messages, in order.
    pub messages: Vec<ProducedMessage>,
}

/// One message of a [`ProduceRequest`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProducedMessage {
    /// The value, base64-encoded (Pulsar's form for the bytes schema).
    pub payload: String,
    /// Its key.
    #[serde(default)]
    pub key: Option<String>,
    /// Its properties.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// The producer's event time.
    #[serde(default)]
    pub event_time: Option<u64>,
}

/// What the REST producer answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProduceAnswer {
    /// One result per message, in order.
    pub message_publish_results: Vec<PublishResult>,
}

/// One message's result in a [`ProduceAnswer`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishResult {
    /// The id the message was stored under.
    pub message_id: String,
}

/// What the REST consumer's receive answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReceiveAnswer {
    /// The messages, in order; none when the wait ran out.
    pub messages: Vec<ReceivedMessage>,
}

/// The REST consumer's acknowledgement body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcknowledgeRequest {
    /// The ids of the messages to acknowledge.
    pub message_ids: Vec<String>,
}

/// What an acknowledgement answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AcknowledgeAnswer {
    /// How many ids it took.
    pub acknowledged: usize,
}

/// `GET /admin/v2/worker/cluster`: the live workers, the leader and the assignments.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The live workers.
    pub workers: Vec<WorkerInfo>,
    /// The worker holding the leader lease, if any.
    pub leader: Option<String>,
    /// For each function, the worker of each instance (none while unassigned).
    pub assignments: BTreeMap<String, Vec<Option<String>>>,
}

/// A live worker, as the cluster knows it; also the record a worker keeps in the membership.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    /// Its name, unique in the cluster (not kept in its own membership record, whose key it is).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub worker_id: String,
    /// Where the other workers reach its admin API.
    pub url: String,
}

/// What a change of a function or an instance answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// Always true: a refusal is an [`ErrorAnswer`].
    pub done: bool,
}

/// What a delete answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Deleted {
    /// The function deleted.
    pub deleted: String,
}

/// What a rebalance request answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RebalanceAnswer {
    /// `requested`: the leader spreads the instances again at its next round.
    pub rebalance: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_instances_and_weigh_latency_by_processed_messages() {
        let instance = |received, processed, latency, last| InstanceStats {
            received_total: received,
            processed_successfully_total: processed,
            avg_process_latency: latency,
            one_min: MinuteStats {
                received_total: received,
                processed_successfully_total: processed,
                avg_process_latency: latency,
                ..MinuteStats::default()
            },
            last_invocation: last,
            ..InstanceStats::default()
        };
        let total = InstanceStats::total(&[instance(10, 10, 1.0, 30), instance(30, 30, 3.0, 20)]);
        assert_eq!(total.received_total, 40);
        assert_eq!(total.avg_process_latency, 2.5);
        assert_eq!(total.one_min.processed_successfully_total, 40);
        assert_eq!(total.one_min.avg_process_latency, 2.5);
        assert_eq!(total.last_invocation, 30);
    }

    #[test]
    fn pulsar_field_names_go_over_the_wire() {
        let stats = FunctionStats {
            instances: vec![InstanceStatsEntry { instance_id: 1, metrics: InstanceStats::default() }],
            ..FunctionStats::default()
        };
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["receivedTotal"], 0);
        assert_eq!(json["oneMin"]["avgProcessLatency"], 0.0);
        assert_eq!(json["instances"][0]["instanceId"], 1);
        assert_eq!(serde_json::from_value::<FunctionStats>(json).unwrap(), stats);
        let none = serde_json::to_value(TriggerAnswer { input_message_id: "1:0".into(), output: None }).unwrap();
        assert_eq!(none, serde_json::json!({ "inputMessageId": "1:0" }));
    }
}
