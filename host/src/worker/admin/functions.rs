//! Pulsar's function paths: create, update, delete, list, get, lifecycle, status, stats,
//! trigger and state, and the worker's own `/metrics` and cluster paths.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

use super::{ApiError, ApiResult, Shared, bad_request, fqfn};
use super::{blocking, hold_until_ready};
use crate::names::Fqfn;
use crate::spec::FunctionSpec;
use crate::worker::Worker;
use crate::worker::access::Role;
use crate::worker::api::{
    ClusterInfo, Deleted, Done, FunctionState, FunctionStats, FunctionStatus, InstanceStats, InstanceStatus,
    LogLevelChange, RebalanceAnswer, TriggerAnswer,
};
use crate::worker::tenant_rates::Metered;

/// The fields of a multipart form, or of a JSON body taken as the single field `json_field`.
pub(super) async fn form(request: Request, json_field: &str) -> ApiResult<BTreeMap<String, Vec<u8>>> {
    let content_type =
        request.headers().get(header::CONTENT_TYPE).and_then(|value| value.to_str().ok()).unwrap_or("").to_owned();
    let mut fields = BTreeMap::new();
    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &())
            .await
            .map_err(|error| bad_request(format!("the form cannot be read: {error}")))?;
        while let Some(field) =
            multipart.next_field().await.map_err(|error| bad_request(format!("the form cannot be read: {error}")))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let bytes = field
                .bytes()
                .await
                .map_err(|error| bad_request(format!("form field `{name}` cannot be read: {error}")))?;
            fields.insert(name, bytes.to_vec());
        }
    } else {
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|error| bad_request(format!("the body cannot be read: {error}")))?;
        if !bytes.is_empty() {
            fields.insert(json_field.to_owned(), bytes.to_vec());
        }
    }
    Ok(fields)
}

/// The config and component of a create or update request.
pub(super) async fn function_form(request: Request) -> ApiResult<(FunctionSpec, Option<Vec<u8>>)> {
    let mut fields = form(request, "functionConfig").await?;
    let spec = match fields.remove("functionConfig") {
        Some(json) => FunctionSpec::from_json(&json).map_err(|error| bad_request(error.to_string()))?,
        None => FunctionSpec::default(),
    };
    let spec = match fields.remove("url") {
        Some(url) => FunctionSpec { wasm: Some(String::from_utf8_lossy(&url).into_owned()), ..spec },
        None => spec,
    };
    Ok((spec, fields.remove("data")))
}

pub(super) async fn metrics(State(worker): Shared) -> ApiResult<Response> {
    let text = blocking(move || Ok(worker.metrics_text())).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

pub(super) async fn cluster(State(worker): Shared) -> ApiResult<Json<ClusterInfo>> {
    Ok(Json(blocking(move || worker.cluster_info()).await?))
}

pub(super) async fn rebalance(State(worker): Shared) -> ApiResult<Json<RebalanceAnswer>> {
    blocking(move || worker.rebalance()).await?;
    Ok(Json(RebalanceAnswer { rebalance: "requested".into() }))
}

pub(super) async fn list(
    State(worker): Shared,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    crate::names::check_namespace(&tenant, &namespace).map_err(|error| bad_request(error.to_string()))?;
    Ok(Json(blocking(move || worker.list(&tenant, &namespace)).await?))
}

pub(super) async fn get_function(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<FunctionSpec>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    Ok(Json(blocking(move || worker.get(&fqfn)).await?))
}

/// Names in the path win; a config naming another function is refused.
pub(super) fn named(spec: FunctionSpec, fqfn: &Fqfn) -> ApiResult<FunctionSpec> {
    for (given, path) in [(&spec.tenant, fqfn.tenant()), (&spec.namespace, fqfn.namespace()), (&spec.name, fqfn.name())]
    {
        if given.as_deref().is_some_and(|given| given != path) {
            return Err(bad_request(format!("the config names another function than the path ({fqfn})")));
        }
    }
    Ok(FunctionSpec {
        tenant: Some(fqfn.tenant().into()),
        namespace: Some(fqfn.namespace().into()),
        name: Some(fqfn.name().into()),
        ..spec
    })
}

/// Reads `request`'s body to its end and drops it: a connection closed with its request body
/// unread is reset, and a reset can throw away the answer before the client reads it.
pub(super) async fn drain(request: Request) {
    use futures_util::StreamExt as _;
    let mut body = request.into_body().into_data_stream();
    while let Some(Ok(_)) = body.next().await {}
}

/// POST creates, PUT updates.
pub(super) async fn create_or_update(
    State(worker): Shared,
    method: Method,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Json<FunctionSpec>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let by_tenant = request.extensions().get::<Role>().is_some_and(|role| matches!(role, Role::Tenant(_)));
    // Held before the form is read, so that a held request holds no package in memory.
    if let Err(refused) = hold_until_ready(&worker, &tenant, Metered::Change).await {
        drain(request).await;
        return Err(refused);
    }
    let (spec, package) = function_form(request).await?;
    let spec = named(spec, &fqfn)?;
    // The worker's files are the operator's: a tenant who could name one would have the worker
    // read it, and tell from the error whether it exists.
    if by_tenant && package.is_none() && (spec.wasm.is_some() || spec.py.is_some() || spec.js.is_some()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "a tenant token cannot name a file on the worker (`wasm`, `py` or `js` in the config): upload the component in the multipart field `data` (`fnhost functions create --wasm` or `--py` does)",
        ));
    }
    let create = method == Method::POST;
    Ok(Json(
        blocking(move || if create { worker.create(spec, package) } else { worker.update(&fqfn, spec, package) })
            .await?,
    ))
}

/// `PUT …/{name}/log-level`: an update of the level alone, which applies without a restart.
pub(super) async fn set_log_level(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<FunctionSpec>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    hold_until_ready(&worker, &tenant, Metered::Change).await?;
    let change: LogLevelChange = serde_json::from_slice(&body).map_err(|error| {
        bad_request(format!(
            "the body is not a log level change ({error}); send {{\"logLevel\": \"debug\"}} (trace, debug, info, warn or error)"
        ))
    })?;
    let spec = FunctionSpec { log_level: Some(change.log_level), ..FunctionSpec::default() };
    let spec = named(spec, &fqfn)?;
    Ok(Json(blocking(move || worker.update(&fqfn, spec, None)).await?))
}

pub(super) async fn delete(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<Deleted>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let shown = fqfn.to_string();
    hold_until_ready(&worker, &tenant, Metered::Change).await?;
    blocking(move || worker.delete(&fqfn)).await?;
    Ok(Json(Deleted { deleted: shown }))
}

pub(super) type InstancePath = Path<(String, String, String, String)>;

pub(super) async fn status(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<FunctionStatus>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    Ok(Json(blocking(move || worker.status(&fqfn)).await?))
}

pub(super) async fn stats(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<FunctionStats>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    Ok(Json(blocking(move || worker.stats(&fqfn)).await?))
}

pub(super) fn instance(tenant: &str, namespace: &str, name: &str, instance: &str) -> ApiResult<(Fqfn, u32)> {
    let id = instance
        .parse()
        .map_err(|_| bad_request(format!("`{instance}` is not an instance id; instances are numbered from 0")))?;
    Ok((fqfn(tenant, namespace, name)?, id))
}

pub(super) async fn instance_status(
    State(worker): Shared,
    Path((tenant, namespace, name, id)): InstancePath,
) -> ApiResult<Json<InstanceStatus>> {
    let (fqfn, id) = instance(&tenant, &namespace, &name, &id)?;
    Ok(Json(blocking(move || worker.instance_status(&fqfn, id)).await?))
}

pub(super) async fn instance_stats(
    State(worker): Shared,
    Path((tenant, namespace, name, id)): InstancePath,
) -> ApiResult<Json<InstanceStats>> {
    let (fqfn, id) = instance(&tenant, &namespace, &name, &id)?;
    Ok(Json(blocking(move || worker.instance_stats(&fqfn, id)).await?))
}

/// Start, stop or restart.
#[derive(Clone, Copy)]
pub(super) enum Lifecycle {
    Start,
    Stop,
    Restart,
}

pub(super) async fn lifecycle(
    worker: Arc<Worker>,
    fqfn: Fqfn,
    id: Option<u32>,
    action: Lifecycle,
) -> ApiResult<Json<Done>> {
    blocking(move || match action {
        Lifecycle::Start => worker.start(&fqfn, id),
        Lifecycle::Stop => worker.stop(&fqfn, id),
        Lifecycle::Restart => worker.restart(&fqfn, id),
    })
    .await?;
    Ok(Json(Done { done: true }))
}

macro_rules! lifecycle_handlers {
    ($($function:ident, $instance:ident, $action:expr;)*) => {$(
        pub(super) async fn $function(
            State(worker): Shared,
            Path((tenant, namespace, name)): Path<(String, String, String)>,
        ) -> ApiResult<Json<Done>> {
            lifecycle(worker, fqfn(&tenant, &namespace, &name)?, None, $action).await
        }

        pub(super) async fn $instance(
            State(worker): Shared,
            Path((tenant, namespace, name, id)): InstancePath,
        ) -> ApiResult<Json<Done>> {
            let (fqfn, id) = instance(&tenant, &namespace, &name, &id)?;
            lifecycle(worker, fqfn, Some(id), $action).await
        }
    )*};
}

lifecycle_handlers! {
    start, instance_start, Lifecycle::Start;
    stop, instance_stop, Lifecycle::Stop;
    restart, instance_restart, Lifecycle::Restart;
}

pub(super) async fn trigger(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Json<TriggerAnswer>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let mut fields = form(request, "data").await?;
    let value = match (fields.remove("data"), fields.remove("dataStream")) {
        (Some(value), None) | (None, Some(value)) => value,
        _ => return Err(bad_request("give the value to trigger with as one form field: `data` or `dataStream`")),
    };
    let topic = fields.remove("topic").map(|topic| String::from_utf8_lossy(&topic).into_owned());
    Ok(Json(blocking(move || worker.trigger(&fqfn, topic.as_deref(), value)).await?))
}

pub(super) async fn put_state(
    State(worker): Shared,
    Path((tenant, namespace, name, key)): Path<(String, String, String, String)>,
    request: Request,
) -> ApiResult<Json<FunctionState>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let fields = form(request, "state").await?;
    let Some(json) = fields.get("state") else {
        return Err(bad_request("give the value as FunctionState JSON, in the body or the form field `state`"));
    };
    let state: FunctionState = serde_json::from_slice(json).map_err(|error| {
        bad_request(format!(
            "the state is not FunctionState JSON ({error}); give {{\"key\": ..., \"stringValue\": ...}}"
        ))
    })?;
    if state.key.as_deref().is_some_and(|given| given != key) {
        return Err(bad_request(format!(
            "the state names key `{}` but the path names `{key}`",
            state.key.unwrap_or_default()
        )));
    }
    let value = match (state.string_value, state.byte_value, state.number_value) {
        (_, _, Some(_)) => {
            // Other fields (Pulsar clients send `version`) are ignored: fnhost versions every write itself.
            return Err(bad_request(
                "putstate does not set counters (numberValue); only the function's incr-counter changes them",
            ));
        }
        (Some(text), None, None) => text.into_bytes(),
        (None, Some(encoded), None) => base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|error| bad_request(format!("byteValue is not base64: {error}")))?,
        _ => return Err(bad_request("give exactly one of stringValue and byteValue")),
    };
    Ok(Json(blocking(move || worker.put_state(&fqfn, &key, value)).await?))
}
