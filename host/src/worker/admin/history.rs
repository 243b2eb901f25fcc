//! A function's history: `replay`, state read as of a message or a time, or traced to its writer
//! (`querystate --as-of`, `--why`), beside Pulsar's plain state read; and `redrive`.

use axum::Json;
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::functions::{drain, form};
use super::{ApiResult, Shared, bad_request, blocking, fqfn, hold_until_ready};
use crate::engine::state::KeyPage;
use crate::worker::AsOf;
use crate::worker::api::StateKeys;
use crate::worker::api::history::{RedriveAnswer, RedriveRequest, ReplayAnswer, ReplayRequest};
use crate::worker::tenant_rates::Metered;

/// What a state read asks beyond the key.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StateQuery {
    /// Read the value as it was just before the function processed this message.
    as_of: Option<String>,
    /// Read the value as it was at this time (milliseconds since the Unix epoch).
    as_of_time: Option<u64>,
    /// The topic of `asOf`'s message (needed when the function has several inputs).
    topic: Option<String>,
    /// Say who wrote the current value instead of giving it.
    #[serde(default)]
    why: bool,
}

/// What a listing of state keys asks (`GET …/state`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct StateListQuery {
    /// Only keys that start with this.
    #[serde(default)]
    prefix: String,
    /// Only keys after this one: the last key of the page before.
    after: Option<String>,
    /// Most keys in the page [default: 100; at most MAX_STATE_KEYS_LISTED].
    limit: Option<usize>,
}

/// Keys in a page when the request does not say.
const DEFAULT_STATE_KEYS_LISTED: usize = 100;

/// `GET …/state?prefix=P&after=K&limit=N`: a page of the function's state keys (fnhost's).
pub(super) async fn list_state(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    Query(query): Query<StateListQuery>,
) -> ApiResult<Json<StateKeys>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let limit = query.limit.unwrap_or(DEFAULT_STATE_KEYS_LISTED);
    let page = KeyPage::new(query.prefix, query.after, limit).map_err(|error| bad_request(error.to_string()))?;
    Ok(Json(blocking(move || worker.list_state(&fqfn, page)).await?))
}

/// `GET …/state/{key}`: the value, the value at a point of the past, or who wrote it.
pub(super) async fn query_state(
    State(worker): Shared,
    Path((tenant, namespace, name, key)): Path<(String, String, String, String)>,
    Query(query): Query<StateQuery>,
) -> ApiResult<Response> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let as_of = match (query.as_of, query.as_of_time) {
        (Some(_), Some(_)) => return Err(bad_request("give asOf (a message id) or asOfTime, not both")),
        (Some(message), None) => Some(AsOf::Message(query.topic, message)),
        (None, Some(time)) => Some(AsOf::Time(time)),
        (None, None) if query.topic.is_some() => return Err(bad_request("topic is for asOf; give asOf too")),
        (None, None) => None,
    };
    if query.why && as_of.is_some() {
        return Err(bad_request("why tells who wrote the current value; give it without asOf or asOfTime"));
    }
    Ok(match (query.why, as_of) {
        (true, _) => Json(blocking(move || worker.state_provenance(&fqfn, &key)).await?).into_response(),
        (false, Some(as_of)) => {
            Json(blocking(move || worker.query_state_as_of(&fqfn, &key, &as_of)).await?).into_response()
        }
        (false, None) => Json(blocking(move || worker.query_state(&fqfn, &key)).await?).into_response(),
    })
}

/// `POST …/replay`: a [`ReplayRequest`] as JSON (or the form field `replay`), and optionally a
/// component to replay instead of the function's own (the form field `data`).
pub(super) async fn replay(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Json<ReplayAnswer>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    // Held before the form is read, so that a held request holds no component in memory.
    if let Err(refused) = hold_until_ready(&worker, &tenant, Metered::Change).await {
        drain(request).await;
        return Err(refused);
    }
    let mut fields = form(request, "replay").await?;
    let Some(json) = fields.remove("replay") else {
        return Err(bad_request("give the replay as JSON: {\"message\": ID, \"topic\": T, \"last\": ID}"));
    };
    let request: ReplayRequest = serde_json::from_slice(&json).map_err(|error| {
        bad_request(format!(
            "the replay is not JSON of the right shape ({error}); give {{\"message\": ID, \"topic\": T, \"last\": ID}}"
        ))
    })?;
    let code = fields.remove("data");
    Ok(Json(blocking(move || worker.replay(&fqfn, &request, code)).await?))
}

/// `POST …/redrive`: a [`RedriveRequest`] as JSON (an empty body takes every dead letter).
pub(super) async fn redrive(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Json<RedriveAnswer>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    if let Err(refused) = hold_until_ready(&worker, &tenant, Metered::Change).await {
        drain(request).await;
        return Err(refused);
    }
    let fields = form(request, "redrive").await?;
    let request: RedriveRequest = match fields.get("redrive") {
        Some(json) => serde_json::from_slice(json).map_err(|error| {
            bad_request(format!(
                "the re-drive is not JSON of the right shape ({error}); give {{\"fromDlq\": T, \"whereError\": REGEX, \"limit\": N}}"
            ))
        })?,
        None => RedriveRequest::default(),
    };
    Ok(Json(blocking(move || worker.redrive(&fqfn, &request)).await?))
}
