//! The worker's HTTP API: Pulsar's REST paths for functions, a REST producer and consumer for
//! topics, `/metrics`, `/health` and the OpenAPI document. This is the only HTTP in fnhost.
//!
//! Every handler runs the worker's (blocking) operation on tokio's blocking pool; every error is
//! JSON `{"reason": ...}` with the status its kind calls for.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;

use super::access::Role;
use super::tenant_rates::Metered;
use super::{Worker, WorkerError, message_json};
use crate::engine::broker::{OutMessage, Position};
use crate::limits::{MAX_BATCH_MESSAGES, MAX_RECEIVE_WAIT_MS, MAX_REFUSAL_HOLD_MS, MAX_REQUEST_SIZE, RECEIVE_POLL_MS};
use crate::names::{Fqfn, SubscriptionName, TopicName};
use crate::spec::FunctionSpec;

/// The OpenAPI document of this API, kept beside the code that implements it.
pub const OPENAPI: &str = include_str!("openapi.yaml");

/// An error response: a status, the reason, and for a refusal that passes, when to try again.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    reason: String,
    retry_after: Option<Duration>,
}

impl ApiError {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, reason: reason.into(), retry_after: None }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(serde_json::json!({ "reason": self.reason }))).into_response();
        if let Some(retry_after) = self.retry_after {
            // Whole seconds, as HTTP's Retry-After has them; never 0, which would invite a retry
            // that comes too soon.
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            response.headers_mut().insert(header::RETRY_AFTER, seconds.max(1).into());
        }
        response
    }
}

impl From<WorkerError> for ApiError {
    fn from(error: WorkerError) -> Self {
        let status = match &error {
            WorkerError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WorkerError::NotFound(_) => StatusCode::NOT_FOUND,
            WorkerError::Conflict(_) => StatusCode::CONFLICT,
            WorkerError::Forbidden(_) => StatusCode::FORBIDDEN,
            WorkerError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            WorkerError::Busy { .. } => StatusCode::TOO_MANY_REQUESTS,
            WorkerError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            WorkerError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!("request failed: {error}");
        }
        let retry_after = match &error {
            WorkerError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        Self { status, reason: error.to_string(), retry_after }
    }
}

fn bad_request(reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, reason.into())
}

type ApiResult<T> = Result<T, ApiError>;
type Shared = State<Arc<Worker>>;

/// Runs a worker operation on the blocking pool.
async fn blocking<T: Send + 'static>(
    operation: impl FnOnce() -> Result<T, WorkerError> + Send + 'static,
) -> ApiResult<T> {
    match tokio::task::spawn_blocking(operation).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(panic) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("the request failed in the worker: {panic}")))
        }
    }
}

/// Holds a request of `tenant` while its rates or caps refuse it, waiting without a thread as
/// long as each refusal says, then lets it through; answers the refusal once
/// [`MAX_REFUSAL_HOLD_MS`] have passed, or at once if the tenant already has
/// [`MAX_HELD_REQUESTS_PER_TENANT`](crate::limits::MAX_HELD_REQUESTS_PER_TENANT) held. A client that tries again as soon as it is refused is
/// thus slowed to what its quota allows, and costs the worker a refusal a second per request it
/// has open, not one per try. Only waits: the request's own operation checks again and may still
/// refuse (another of the tenant's requests can take what this one waited for).
async fn hold_until_ready(worker: &Worker, tenant: &str, request: Metered) -> ApiResult<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(MAX_REFUSAL_HOLD_MS);
    let mut held = None;
    loop {
        let Err(refusal) = worker.ready(tenant, request) else { return Ok(()) };
        let WorkerError::Busy { retry_after, .. } = &refusal else { return Err(refusal.into()) };
        let now = tokio::time::Instant::now();
        if held.is_none() {
            held = worker.hold(tenant);
        }
        if now >= deadline || held.is_none() {
            return Err(refusal.into());
        }
        // Looks again no sooner than a receive's poll: a refusal that passes in microseconds
        // (a nearly paid back rate) is not worth a busy loop.
        let look_again = now + (*retry_after).max(Duration::from_millis(RECEIVE_POLL_MS));
        tokio::time::sleep_until(deadline.min(look_again)).await;
    }
}

/// The router for `worker`.
pub fn router(worker: Arc<Worker>) -> Router {
    let functions = "/admin/v3/functions/{tenant}/{namespace}";
    let function = "/admin/v3/functions/{tenant}/{namespace}/{name}";
    let topic = "/topics/persistent/{tenant}/{namespace}/{topic}";
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics))
        .route("/admin/v2/worker/cluster", get(cluster))
        .route("/admin/v2/worker/rebalance", put(rebalance))
        .route("/openapi.yaml", get(|| async { ([(header::CONTENT_TYPE, "application/yaml")], OPENAPI) }))
        .route(functions, get(list))
        .route(function, get(get_function).post(create_or_update).put(create_or_update).delete(delete))
        .route(&format!("{function}/status"), get(status))
        .route(&format!("{function}/stats"), get(stats))
        .route(&format!("{function}/{{instance}}/status"), get(instance_status))
        .route(&format!("{function}/{{instance}}/stats"), get(instance_stats))
        .route(&format!("{function}/start"), post(start))
        .route(&format!("{function}/stop"), post(stop))
        .route(&format!("{function}/restart"), post(restart))
        .route(&format!("{function}/{{instance}}/start"), post(instance_start))
        .route(&format!("{function}/{{instance}}/stop"), post(instance_stop))
        .route(&format!("{function}/{{instance}}/restart"), post(instance_restart))
        .route(&format!("{function}/trigger"), post(trigger))
        .route(&format!("{function}/state/{{*key}}"), get(query_state).post(put_state))
        .route(topic, post(produce))
        .route(&format!("{topic}/subscription/{{subscription}}/receive"), post(receive))
        .route(&format!("{topic}/subscription/{{subscription}}/acknowledge"), post(acknowledge))
        .fallback(|method: Method, uri: Uri| async move {
            ApiError::new(StatusCode::NOT_FOUND, format!("no route for {method} {uri}; /openapi.yaml lists the API"))
        })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{uri} does not take {method}; /openapi.yaml lists the methods of each path"),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_REQUEST_SIZE))
        .layer(axum::middleware::from_fn_with_state(worker.clone(), authorize))
        .layer(axum::middleware::from_fn_with_state(worker.clone(), refuse_cross_site))
        .with_state(worker)
}

/// The header that every write to a worker without tokens carries (the CLI sends it). A web page
/// can send it to another site only after a CORS preflight, which the worker never grants, so a
/// page the local user opens cannot change anything through a worker on loopback.
pub const CLIENT_HEADER: &str = "x-fnhost-client";

/// Refuses what a web page of another site could send: a request whose `Origin` is not the
/// worker's own and, on a worker without tokens (which listens only on loopback), a `Host` that is
/// not a loopback name (DNS rebinding) or a write without [`CLIENT_HEADER`].
async fn refuse_cross_site(State(worker): Shared, request: Request, next: axum::middleware::Next) -> Response {
    match cross_site_refusal(worker.access().enforced(), request.method(), request.headers()) {
        Some(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
        None => next.run(request).await,
    }
}

/// Why a request looks cross-site, if it does; `tokens`: the worker requires tokens.
fn cross_site_refusal(tokens: bool, method: &Method, headers: &header::HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST).and_then(|host| host.to_str().ok());
    if let Some(origin) = headers.get(header::ORIGIN) {
        let own = host.map(|host| format!("http://{host}"));
        if origin.to_str().ok() != own.as_deref() {
            return Some(format!(
                "requests from web pages of other sites are refused (Origin {origin:?} is not this worker's); use the CLI, or a client that sends no Origin"
            ));
        }
    }
    if tokens {
        // A bearer token is not sent by a browser on its own, so a cross-site page has none.
        return None;
    }
    if !host.is_some_and(is_loopback_host) {
        return Some(format!(
            "this worker has no tokens, so it answers only requests addressed to it on loopback (Host localhost, 127.0.0.1 or [::1]), not Host {host:?}; give the worker --access FILE with tokens to serve other names"
        ));
    }
    let reads = [Method::GET, Method::HEAD, Method::OPTIONS];
    if !reads.contains(method) && !headers.contains_key(CLIENT_HEADER) {
        return Some(format!(
            "a write to a worker without tokens needs the header `{CLIENT_HEADER}` (any value; the CLI sends it), so that no web page can make one"
        ));
    }
    None
}

/// True for `localhost` or a loopback address, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(address, _)| address),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// Paths anyone may read: they show nothing of any tenant.
const PUBLIC_PATHS: [&str; 2] = ["/health", "/openapi.yaml"];

/// Lets a request through when the worker has no tokens, or its bearer token's role covers the
/// path: an operator token every path, a tenant token its own tenant's functions and topics.
async fn authorize(State(worker): Shared, request: Request, next: axum::middleware::Next) -> Response {
    let access = worker.access();
    let path = request.uri().path();
    if !access.enforced() || PUBLIC_PATHS.contains(&path) {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(presented) = presented else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this worker requires a token: send `Authorization: Bearer TOKEN` (the CLI reads FNHOST_TOKEN or FNHOST_TOKEN_FILE)",
        )
        .into_response();
    };
    let Some(role) = access.role(presented.trim()) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "the token is not one this worker knows").into_response();
    };
    match (role, path_tenant(path)) {
        (Role::Operator, _) => next.run(request).await,
        (Role::Tenant(tenant), Some(wanted)) if tenant == wanted => {
            let mut request = request;
            request.extensions_mut().insert(Role::Tenant(tenant));
            next.run(request).await
        }
        (Role::Tenant(tenant), Some(wanted)) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("a token of tenant `{tenant}` cannot reach tenant `{wanted}`'s functions, topics or state"),
        )
        .into_response(),
        (Role::Tenant(tenant), None) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("{path} is the operator's: a token of tenant `{tenant}` reaches only /admin/v3/functions/{tenant}/… and /topics/persistent/{tenant}/…"),
        )
        .into_response(),
    }
}

/// The tenant a path belongs to, as written in it; `None` for the worker's own paths.
///
/// The segment is compared undecoded: a tenant name has no `%`, so an encoded segment never
/// equals a tenant's name and is refused, never let through.
fn path_tenant(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/admin/v3/functions/").or_else(|| path.strip_prefix("/topics/persistent/"))?;
    rest.split('/').next().filter(|tenant| !tenant.is_empty())
}

fn fqfn(tenant: &str, namespace: &str, name: &str) -> ApiResult<Fqfn> {
    Fqfn::new(tenant, namespace, name).map_err(|error| bad_request(error.to_string()))
}

fn topic_name(tenant: &str, namespace: &str, topic: &str) -> ApiResult<TopicName> {
    TopicName::parse(&format!("persistent://{tenant}/{namespace}/{topic}"))
        .map_err(|error| bad_request(error.to_string()))
}

/// The fields of a multipart form, or of a JSON body taken as the single field `json_field`.
async fn form(request: Request, json_field: &str) -> ApiResult<BTreeMap<String, Vec<u8>>> {
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
async fn function_form(request: Request) -> ApiResult<(FunctionSpec, Option<Vec<u8>>)> {
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

async fn metrics(State(worker): Shared) -> ApiResult<Response> {
    let text = blocking(move || Ok(worker.metrics_text())).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn cluster(State(worker): Shared) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(blocking(move || worker.cluster_info()).await?))
}

async fn rebalance(State(worker): Shared) -> ApiResult<Json<serde_json::Value>> {
    blocking(move || worker.rebalance()).await?;
    Ok(Json(serde_json::json!({ "rebalance": "requested" })))
}

async fn list(
    State(worker): Shared,
    Path((tenant, namespace)): Path<(String, String)>,
) -> ApiResult<Json<Vec<String>>> {
    crate::names::check_namespace(&tenant, &namespace).map_err(|error| bad_request(error.to_string()))?;
    Ok(Json(blocking(move || worker.list(&tenant, &namespace)).await?))
}

async fn get_function(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<FunctionSpec>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    Ok(Json(blocking(move || worker.get(&fqfn)).await?))
}

/// Names in the path win; a config naming another function is refused.
fn named(spec: FunctionSpec, fqfn: &Fqfn) -> ApiResult<FunctionSpec> {
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
async fn drain(request: Request) {
    use futures_util::StreamExt as _;
    let mut body = request.into_body().into_data_stream();
    while let Some(Ok(_)) = body.next().await {}
}

/// POST creates, PUT updates.
async fn create_or_update(
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

async fn delete(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let shown = fqfn.to_string();
    hold_until_ready(&worker, &tenant, Metered::Change).await?;
    blocking(move || worker.delete(&fqfn)).await?;
    Ok(Json(serde_json::json!({ "deleted": shown })))
}

type InstancePath = Path<(String, String, String, String)>;
type Report = fn(&Worker, &Fqfn, Option<u32>) -> Result<serde_json::Value, WorkerError>;

async fn report(worker: Arc<Worker>, fqfn: Fqfn, id: Option<u32>, read: Report) -> ApiResult<Json<serde_json::Value>> {
    Ok(Json(blocking(move || read(&worker, &fqfn, id)).await?))
}

async fn status(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    report(worker, fqfn(&tenant, &namespace, &name)?, None, Worker::status).await
}

async fn stats(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    report(worker, fqfn(&tenant, &namespace, &name)?, None, Worker::stats).await
}

fn instance(tenant: &str, namespace: &str, name: &str, instance: &str) -> ApiResult<(Fqfn, u32)> {
    let id = instance
        .parse()
        .map_err(|_| bad_request(format!("`{instance}` is not an instance id; instances are numbered from 0")))?;
    Ok((fqfn(tenant, namespace, name)?, id))
}

async fn instance_status(
    State(worker): Shared,
    Path((tenant, namespace, name, id)): InstancePath,
) -> ApiResult<Json<serde_json::Value>> {
    let (fqfn, id) = instance(&tenant, &namespace, &name, &id)?;
    report(worker, fqfn, Some(id), Worker::status).await
}

async fn instance_stats(
    State(worker): Shared,
    Path((tenant, namespace, name, id)): InstancePath,
) -> ApiResult<Json<serde_json::Value>> {
    let (fqfn, id) = instance(&tenant, &namespace, &name, &id)?;
    report(worker, fqfn, Some(id), Worker::stats).await
}

/// Start, stop or restart.
#[derive(Clone, Copy)]
enum Lifecycle {
    Start,
    Stop,
    Restart,
}

async fn lifecycle(
    worker: Arc<Worker>,
    fqfn: Fqfn,
    id: Option<u32>,
    action: Lifecycle,
) -> ApiResult<Json<serde_json::Value>> {
    blocking(move || match action {
        Lifecycle::Start => worker.start(&fqfn, id),
        Lifecycle::Stop => worker.stop(&fqfn, id),
        Lifecycle::Restart => worker.restart(&fqfn, id),
    })
    .await?;
    Ok(Json(serde_json::json!({ "done": true })))
}

macro_rules! lifecycle_handlers {
    ($($function:ident, $instance:ident, $action:expr;)*) => {$(
        async fn $function(
            State(worker): Shared,
            Path((tenant, namespace, name)): Path<(String, String, String)>,
        ) -> ApiResult<Json<serde_json::Value>> {
            lifecycle(worker, fqfn(&tenant, &namespace, &name)?, None, $action).await
        }

        async fn $instance(
            State(worker): Shared,
            Path((tenant, namespace, name, id)): InstancePath,
        ) -> ApiResult<Json<serde_json::Value>> {
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

async fn trigger(
    State(worker): Shared,
    Path((tenant, namespace, name)): Path<(String, String, String)>,
    request: Request,
) -> ApiResult<Json<serde_json::Value>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    let mut fields = form(request, "data").await?;
    let value = match (fields.remove("data"), fields.remove("dataStream")) {
        (Some(value), None) | (None, Some(value)) => value,
        _ => return Err(bad_request("give the value to trigger with as one form field: `data` or `dataStream`")),
    };
    let topic = fields.remove("topic").map(|topic| String::from_utf8_lossy(&topic).into_owned());
    Ok(Json(blocking(move || worker.trigger(&fqfn, topic.as_deref(), value)).await?))
}

async fn query_state(
    State(worker): Shared,
    Path((tenant, namespace, name, key)): Path<(String, String, String, String)>,
) -> ApiResult<Json<serde_json::Value>> {
    let fqfn = fqfn(&tenant, &namespace, &name)?;
    Ok(Json(blocking(move || worker.query_state(&fqfn, &key)).await?))
}

/// Pulsar's FunctionState, as putstate takes it.
/// Other fields (Pulsar clients send `version`) are ignored: fnhost versions every write itself.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FunctionState {
    key: Option<String>,
    string_value: Option<String>,
    byte_value: Option<String>,
    number_value: Option<serde_json::Value>,
}

async fn put_state(
    State(worker): Shared,
    Path((tenant, namespace, name, key)): Path<(String, String, String, String)>,
    request: Request,
) -> ApiResult<Json<serde_json::Value>> {
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

/// Pulsar's REST producer body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProducerMessages {
    messages: Vec<ProducerMessage>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProducerMessage {
    /// The value, base64-encoded (Pulsar's form for the bytes schema).
    payload: String,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    properties: BTreeMap<String, String>,
    #[serde(default)]
    event_time: Option<u64>,
}

async fn produce(
    State(worker): Shared,
    Path((tenant, namespace, topic)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    let request: ProducerMessages = serde_json::from_slice(&body).map_err(|error| {
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
    let results: Vec<serde_json::Value> = ids.into_iter().map(|id| serde_json::json!({ "messageId": id })).collect();
    Ok(Json(serde_json::json!({ "messagePublishResults": results })))
}

/// How many messages to receive and how long to wait for the first.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiveQuery {
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    position: Position,
}

/// A REST consumer's subscription: the name in the path, inside the topic's namespace. A `/` in
/// it (`%2F` in the path) is refused, never read as another tenant's subscription.
fn subscription_name(topic: &TopicName, local: &str) -> ApiResult<SubscriptionName> {
    SubscriptionName::on_topic(topic, local).map_err(|error| bad_request(error.to_string()))
}

fn one() -> usize {
    1
}

async fn receive(
    State(worker): Shared,
    Path((tenant, namespace, topic, subscription)): Path<(String, String, String, String)>,
    Query(query): Query<ReceiveQuery>,
    // Read, though unused: a connection closed with a request body unread is reset, and a reset
    // throws away the part of a large answer the client has not read yet.
    _body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
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
    let messages: Vec<serde_json::Value> = received.iter().map(message_json).collect();
    Ok(Json(serde_json::json!({ "messages": messages })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Acknowledgement {
    message_ids: Vec<String>,
}

async fn acknowledge(
    State(worker): Shared,
    Path((tenant, namespace, topic, subscription)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let topic = topic_name(&tenant, &namespace, &topic)?;
    let request: Acknowledgement = serde_json::from_slice(&body)
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
    Ok(Json(serde_json::json!({ "acknowledged": count })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_that_passes_says_when_to_try_again_in_whole_seconds() {
        let busy = |millis| WorkerError::Busy { reason: "busy".into(), retry_after: Duration::from_millis(millis) };
        for (millis, seconds) in [(0, "1"), (1, "1"), (1_000, "1"), (1_001, "2"), (29_500, "30")] {
            let response = ApiError::from(busy(millis)).into_response();
            assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
            assert_eq!(response.headers()[header::RETRY_AFTER], seconds, "after {millis} ms");
        }
        let refused = ApiError::from(WorkerError::Forbidden("no".into())).into_response();
        assert!(!refused.headers().contains_key(header::RETRY_AFTER), "only a refusal that passes says when");
    }
}
