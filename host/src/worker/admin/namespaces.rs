//! pulsar-admin's namespace policies on Pulsar's v2 paths, `/admin/v2/namespaces/{tenant}/{namespace}`:
//! the policies, retention, message TTL and backlog quota.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use super::{ApiResult, Shared, bad_request, blocking};
use crate::limits::MAX_MESSAGE_TTL_SECONDS;
use crate::worker::api::topics::{BacklogQuotaBody, NamespacePoliciesAnswer, RetentionPolicies};

type NamespacePath = Path<(String, String)>;

/// Checks the names, so that a malformed one is a clear 400.
fn checked(tenant: &str, namespace: &str) -> ApiResult<()> {
    crate::names::check_namespace(tenant, namespace).map_err(|error| bad_request(error.to_string()))
}

pub(super) async fn policies(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
) -> ApiResult<Json<NamespacePoliciesAnswer>> {
    checked(&tenant, &namespace)?;
    let policies = blocking(move || worker.policies(&tenant, &namespace)).await?;
    Ok(Json(NamespacePoliciesAnswer::of(&policies)))
}

pub(super) async fn retention(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
) -> ApiResult<Json<RetentionPolicies>> {
    checked(&tenant, &namespace)?;
    let policies = blocking(move || worker.policies(&tenant, &namespace)).await?;
    Ok(Json(RetentionPolicies::of(policies.retention)))
}

pub(super) async fn set_retention(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    checked(&tenant, &namespace)?;
    let given: RetentionPolicies = serde_json::from_slice(&body).map_err(|error| {
        bad_request(format!("the body is not {{\"retentionTimeInMinutes\": N, \"retentionSizeInMB\": N}}: {error}"))
    })?;
    let retention = given.retention().map_err(bad_request)?;
    blocking(move || worker.change_policies(&tenant, &namespace, |policies| policies.retention = retention)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_message_ttl(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    checked(&tenant, &namespace)?;
    let seconds: u64 = serde_json::from_slice(&body)
        .map_err(|error| bad_request(format!("the body is not a number of seconds: {error}")))?;
    if seconds > MAX_MESSAGE_TTL_SECONDS {
        return Err(bad_request(format!(
            "a message TTL of {seconds} s is out of range: give 0 (none) to {MAX_MESSAGE_TTL_SECONDS} (MAX_MESSAGE_TTL_SECONDS)"
        )));
    }
    let ttl = (seconds > 0).then(|| Duration::from_secs(seconds));
    blocking(move || worker.change_policies(&tenant, &namespace, |policies| policies.message_ttl = ttl)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_message_ttl(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
) -> ApiResult<StatusCode> {
    checked(&tenant, &namespace)?;
    blocking(move || worker.change_policies(&tenant, &namespace, |policies| policies.message_ttl = None)).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn set_backlog_quota(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
    body: Bytes,
) -> ApiResult<StatusCode> {
    checked(&tenant, &namespace)?;
    let given: BacklogQuotaBody = serde_json::from_slice(&body).map_err(|error| {
        bad_request(format!("the body is not {{\"limitSize\": BYTES, \"policy\": \"producer_request_hold\"}}: {error}"))
    })?;
    let quota = given.quota().map_err(bad_request)?;
    blocking(move || worker.change_policies(&tenant, &namespace, |policies| policies.backlog_quota = Some(quota)))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn remove_backlog_quota(
    State(worker): Shared,
    Path((tenant, namespace)): NamespacePath,
) -> ApiResult<StatusCode> {
    checked(&tenant, &namespace)?;
    blocking(move || worker.change_policies(&tenant, &namespace, |policies| policies.backlog_quota = None)).await?;
    Ok(StatusCode::NO_CONTENT)
}
