//! Pulsar's REST producer path, and fnhost's REST consumer's receive and acknowledge.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use base64::Engine as _;
use serde::Deserialize;

use super::{ApiResult, Shared, bad_request, topic_name};
use super::{blocking, hold_until_ready};
use crate::engine::broker::{OutMessage, Position};
use crate::limits::{MAX_BATCH_MESSAGES, MAX_RECEIVE_WAIT_MS, RECEIVE_POLL_MS};
use crate::names::{SubscriptionName, TopicName};
use crate::worker::WorkerError;
use crate::worker::api::{
    AcknowledgeAnswer, AcknowledgeRequest, ProduceAnswer, ProduceRequest, PublishResult, ReceiveAnswer, ReceivedMessage,
};
use crate::worker::tenant_rates::Metered;

pub(super) async fn produce(
    State(worker): Shared,
    Path((tenant, namespace, topic)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<ProduceAnswer>> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    let request: ProduceRequest = serde_json::from_slice(&body).map_err(|error| {
        bad_request(format!("the body is not {{\"messages\": [{{\"payload\": BASE64, ...}}]}}: {error}"))
    })?;
    if request.messages.len() > MAX_BATCH_MESSAGES {
        return Err(bad_request(format!(
            "{} messages in one request; the limit (MAX_BATCH_MESSAGES) is {MAX_BATCH_MESSAGES}",
            request.messages.len()
        )));
    }
    let messages = request
        .messages
        .into_iter()
        .enumerate()
        .map(|(index, message)| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(&message.payload)
                .map_err(|error| bad_request(format!("message {}: payload is not base64: {error}", index + 1)))?;
            Ok(OutMessage {
                value,
                key: message.key,
                properties: message.properties.into_iter().collect(),
                event_time: message.event_time,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let ids = blocking(move || worker.produce(&topic, messages)).await?;
    let message_publish_results = ids.into_iter().map(|message_id| PublishResult { message_id }).collect();
    Ok(Json(ProduceAnswer { message_publish_results }))
}

/// How many messages to receive and how long to wait for the first.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiveQuery {
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    position: Position,
}

/// A REST consumer's subscription: the name in the path, inside the topic's namespace. A `/` in
/// it (`%2F` in the path) is refused, never read as another tenant's subscription.
pub(super) fn subscription_name(topic: &TopicName, local: &str) -> ApiResult<SubscriptionName> {
    SubscriptionName::on_topic(topic, local).map_err(|error| bad_request(error.to_string()))
}

pub(super) fn one() -> usize {
    1
}

pub(super) async fn receive(
    State(worker): Shared,
    Path((tenant, namespace, topic, subscription)): Path<(String, String, String, String)>,
    Query(query): Query<ReceiveQuery>,
    // Read, though unused: a connection closed with a request body unread is reset, and a reset
    // throws away the part of a large answer the client has not read yet.
    _body: Bytes,
) -> ApiResult<Json<ReceiveAnswer>> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    if query.count == 0 || query.count > MAX_BATCH_MESSAGES {
        return Err(bad_request(format!(
            "count {} is out of range: give 1 to {MAX_BATCH_MESSAGES} (MAX_BATCH_MESSAGES)",
            query.count
        )));
    }
    if query.wait_ms > MAX_RECEIVE_WAIT_MS {
        return Err(bad_request(format!(
            "waitMs {} is out of range: give 0 to {MAX_RECEIVE_WAIT_MS} (MAX_RECEIVE_WAIT_MS)",
            query.wait_ms
        )));
    }
    let subscription = subscription_name(&topic, &subscription)?;
    hold_until_ready(&worker, topic.tenant(), Metered::Receive).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(query.wait_ms);
    let consumer = Arc::new(blocking(move || worker.rest_consumer(&topic, &subscription, query.position)).await?);
    let mut received = Vec::new();
    loop {
        let (taking, mut taken) = (consumer.clone(), std::mem::take(&mut received));
        match blocking(move || Ok(taking.take(query.count, &mut taken).map(|()| taken))).await? {
            Ok(taken) => received = taken,
            // Past its byte rate (nothing was taken), a long-poll waits for the rate as it waits
            // for messages, rather than answering a refusal its client would send again at once.
            Err(WorkerError::Busy { .. }) if tokio::time::Instant::now() < deadline => {}
            Err(refused) => return Err(refused.into()),
        }
        if !received.is_empty() || tokio::time::Instant::now() >= deadline {
            break;
        }
        // The wait holds no thread: a tenant's long-polls cannot take the pool other requests need.
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + Duration::from_millis(RECEIVE_POLL_MS)))
            .await;
    }
    // Leaving the subscription gives back what was not acknowledged, which takes the store.
    tokio::task::spawn_blocking(move || drop(consumer));
    Ok(Json(ReceiveAnswer { messages: received.iter().map(ReceivedMessage::of).collect() }))
}

pub(super) async fn acknowledge(
    State(worker): Shared,
    Path((tenant, namespace, topic, subscription)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<AcknowledgeAnswer>> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    let request: AcknowledgeRequest = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("the body is not {{\"messageIds\": [...]}}: {error}")))?;
    if request.message_ids.len() > MAX_BATCH_MESSAGES {
        return Err(bad_request(format!("more than MAX_BATCH_MESSAGES ({MAX_BATCH_MESSAGES}) ids in one request")));
    }
    let count = request.message_ids.len();
    let subscription = subscription_name(&topic, &subscription)?;
    hold_until_ready(&worker, topic.tenant(), Metered::Acknowledge).await?;
    blocking(move || {
        worker.rest_consumer(&topic, &subscription, Position::Earliest)?.acknowledge(&topic, &request.message_ids)
    })
    .await?;
    Ok(Json(AcknowledgeAnswer { acknowledged: count }))
}
