//! pulsar-admin's topic verbs on Pulsar's v2 paths: `/admin/v2/persistent/{tenant}/{namespace}`
//! lists, and `…/{topic}` creates, deletes, shows stats, and moves or peeks at a subscription.
//!
//! A subscription in a path is one of the topic's namespace ([`subscription_name`]); stats
//! shown to a tenant's token leave out other tenants' subscriptions on the topic.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;

use super::topics::subscription_name;
use super::{ApiError, ApiResult, Shared, bad_request, blocking, topic_name};
use crate::engine::broker::Position;
use crate::engine::topics::CursorTarget;
use crate::limits::MAX_PEEK_MESSAGES;
use crate::names::{SubscriptionName, TopicName};
use crate::worker::WorkerError;
use crate::worker::access::Role;
use crate::worker::api::ReceivedMessage;
use crate::worker::api::topics::{ResetCursorRequest, TopicStatsAnswer};

type TopicPath = Path<(String, String, String)>;
type SubscriptionPath = Path<(String, String, String, String)>;

fn subscription_in(
    (tenant, namespace, topic, subscription): (String, String, String, String),
) -> ApiResult<(TopicName, SubscriptionName)> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    let subscription = subscription_name(&topic, &subscription)?;
    Ok((topic, subscription))
}

pub(super) async fn list(
    State(worker): Shared,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    crate::names::check_namespace(&tenant, &namespace).map_err(|error| bad_request(error.to_string()))?;
    let topics = blocking(move || worker.list_topics(&tenant, &namespace)).await?;
    Ok(Json(topics.iter().map(ToString::to_string).collect()))
}

pub(super) async fn create(State(worker): Shared, Path(path): TopicPath) -> ApiResult<StatusCode> {
    let topic = topic_name(&path.0, &path.1, &path.2)?;
    blocking(move || worker.create_topic(&topic)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(super) struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

pub(super) async fn delete(
    State(worker): Shared,
    Path(path): TopicPath,
    Query(query): Query<DeleteQuery>,
) -> ApiResult<StatusCode> {
    let topic = topic_name(&path.0, &path.1, &path.2)?;
    blocking(move || worker.delete_topic(&topic, query.force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the asker may see `subscription`'s name: an operator (or a worker without tokens)
/// sees every subscription, a tenant its own.
fn visible(role: Option<&Role>, subscription: &SubscriptionName) -> bool {
    match role {
        Some(Role::Tenant(tenant)) => subscription.tenant() == tenant,
        Some(Role::Operator) | None => true,
    }
}

/// A subscription's name as stats show it: local within the topic's namespace, full otherwise.
fn shown(topic: &TopicName, subscription: &SubscriptionName) -> String {
    if subscription.tenant() == topic.tenant() && subscription.namespace() == topic.namespace() {
        subscription.local().to_owned()
    } else {
        subscription.to_string()
    }
}

pub(super) async fn stats(
    State(worker): Shared,
    role: Option<Extension<Role>>,
    Path(path): TopicPath,
) -> ApiResult<Json<TopicStatsAnswer>> {
    let topic = topic_name(&path.0, &path.1, &path.2)?;
    let shown_topic = topic.clone();
    let mut stats = blocking(move || worker.topic_stats(&topic)).await?;
    let role = role.map(|Extension(role)| role);
    stats.subscriptions.retain(|(name, _)| visible(role.as_ref(), name));
    Ok(Json(TopicStatsAnswer::of(stats, |name| shown(&shown_topic, name))))
}

pub(super) async fn subscriptions(
    State(worker): Shared,
    role: Option<Extension<Role>>,
    Path(path): TopicPath,
) -> ApiResult<Json<Vec<String>>> {
    let topic = topic_name(&path.0, &path.1, &path.2)?;
    let shown_topic = topic.clone();
    let names = blocking(move || worker.subscriptions(&topic)).await?;
    let role = role.map(|Extension(role)| role);
    Ok(Json(names.iter().filter(|name| visible(role.as_ref(), name)).map(|name| shown(&shown_topic, name)).collect()))
}

pub(super) async fn unsubscribe(State(worker): Shared, Path(path): SubscriptionPath) -> ApiResult<StatusCode> {
    let (topic, subscription) = subscription_in(path)?;
    blocking(move || worker.unsubscribe(&topic, &subscription)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn move_cursor(
    worker: Shared,
    path: (String, String, String, String),
    target: CursorTarget,
) -> ApiResult<StatusCode> {
    let State(worker) = worker;
    let (topic, subscription) = subscription_in(path)?;
    blocking(move || worker.move_cursor(&topic, &subscription, target)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn reset_cursor_to_time(
    worker: Shared,
    Path((tenant, namespace, topic, subscription, timestamp)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let time = timestamp.parse::<u64>().map_err(|_| {
        bad_request(format!("timestamp `{timestamp}` is not a time in milliseconds since the Unix epoch"))
    })?;
    move_cursor(worker, (tenant, namespace, topic, subscription), CursorTarget::Time(time)).await
}

pub(super) async fn reset_cursor_to_message(
    worker: Shared,
    Path(path): SubscriptionPath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let request: ResetCursorRequest = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("the body is not {{\"messageId\": \"N\"}}: {error}")))?;
    let sequence = request.message_id.parse::<u64>().map_err(|_| {
        bad_request(format!(
            "message id `{}` is not one of fnhost's (a number, as --json shows it)",
            request.message_id
        ))
    })?;
    move_cursor(worker, path, CursorTarget::Sequence(sequence)).await
}

pub(super) async fn skip(
    worker: Shared,
    Path((tenant, namespace, topic, subscription, count)): Path<(String, String, String, String, String)>,
) -> ApiResult<StatusCode> {
    let count =
        count.parse::<u64>().map_err(|_| bad_request(format!("`{count}` is not a number of messages to skip")))?;
    move_cursor(worker, (tenant, namespace, topic, subscription), CursorTarget::Skip(count)).await
}

pub(super) async fn skip_all(worker: Shared, Path(path): SubscriptionPath) -> ApiResult<StatusCode> {
    move_cursor(worker, path, CursorTarget::End).await
}

fn position_out_of_range(what: &str, position: u64) -> ApiError {
    bad_request(format!("{what} {position} is out of range: give 1 to {MAX_PEEK_MESSAGES} (MAX_PEEK_MESSAGES)"))
}

/// The `n`th message (from 1) the subscription has not acknowledged (Pulsar's peek, one
/// message a call).
pub(super) async fn peek(
    State(worker): Shared,
    Path((tenant, namespace, topic, subscription, position)): Path<(String, String, String, String, String)>,
) -> ApiResult<Json<ReceivedMessage>> {
    let (topic, subscription) = subscription_in((tenant, namespace, topic, subscription))?;
    let position =
        position.parse::<u64>().map_err(|_| bad_request(format!("position `{position}` is not a number")))?;
    if position == 0 || position > MAX_PEEK_MESSAGES {
        return Err(position_out_of_range("position", position));
    }
    let shown = topic.clone();
    let messages = blocking(move || worker.peek(&topic, &subscription, position as usize)).await?;
    match messages.get(position as usize - 1) {
        Some(message) => Ok(Json(ReceivedMessage::of(message))),
        None => Err(WorkerError::NotFound(format!(
            "the subscription has fewer than {position} unacknowledged messages on {shown}"
        ))
        .into()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ExamineQuery {
    #[serde(default = "latest")]
    initial_position: Position,
    #[serde(default = "first")]
    message_position: u64,
}

fn latest() -> Position {
    Position::Latest
}

fn first() -> u64 {
    1
}

pub(super) async fn examine(
    State(worker): Shared,
    Path(path): TopicPath,
    Query(query): Query<ExamineQuery>,
) -> ApiResult<Json<ReceivedMessage>> {
    let topic = topic_name(&path.0, &path.1, &path.2)?;
    if query.message_position == 0 || query.message_position > MAX_PEEK_MESSAGES {
        return Err(position_out_of_range("messagePosition", query.message_position));
    }
    let shown = topic.clone();
    match blocking(move || worker.examine(&topic, query.initial_position, query.message_position)).await? {
        Some(message) => Ok(Json(ReceivedMessage::of(&message))),
        None => Err(WorkerError::NotFound(format!(
            "{shown} has no message at position {} from its {:?} one",
            query.message_position, query.initial_position
        ))
        .into()),
    }
}
