//! The worker's HTTP API: Pulsar's REST paths for functions, a REST producer and consumer for
//! topics, `/metrics`, `/health` and the OpenAPI document. This is the only HTTP in fnhost.
//!
//! Every handler runs the worker's (blocking) operation on tokio's blocking pool; every error is
//! JSON `{"reason": ...}` with the status its kind calls for.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete as delete_route, get, post, put};
use axum::{Json, Router};

use super::tenant_rates::Metered;
use super::{Worker, WorkerError};
use crate::limits::{MAX_REFUSAL_HOLD_MS, MAX_REQUEST_SIZE, RECEIVE_POLL_MS};
use crate::names::{Fqfn, TopicName};
use crate::worker::api::ErrorAnswer;
use functions::{
    cluster, create_or_update, delete, get_function, instance_restart, instance_start, instance_stats, instance_status,
    instance_stop, list, metrics, put_state, rebalance, restart, set_log_level, start, stats, status, stop, trigger,
};
use guard::{authorize, refuse_cross_site};
use history::{list_state, query_state, redrive, replay};
use topics::{acknowledge, produce, receive};

/// The OpenAPI document of this API, kept beside the code that implements it.
pub const OPENAPI: &str = include_str!("openapi.yaml");

mod console;
mod functions;
mod guard;
mod history;
mod logs;
mod namespaces;
mod persistent;
mod tls;
mod topics;

pub use guard::CLIENT_HEADER;

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
        let mut response = (self.status, Json(ErrorAnswer { reason: self.reason })).into_response();
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
            WorkerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
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
/// [`MAX_HELD_REQUESTS_PER_TENANT`](crate::limits::MAX_HELD_REQUESTS_PER_TENANT) held. A client
/// that tries again as soon as it is refused is thus slowed to what its quota allows, and costs
/// the worker a refusal a second per request it has open, not one per try. Only waits: the request's own operation checks again and may still
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

/// Serves `worker`'s admin API on `listener` until `shutdown` completes: over HTTPS with
/// `tls`'s certificate, else plain HTTP.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    worker: Arc<Worker>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(config) => {
            let listener = tls::TlsListener::new(listener, config)?;
            axum::serve(listener, router(worker)).with_graceful_shutdown(shutdown).await
        }
        None => axum::serve(listener, router(worker)).with_graceful_shutdown(shutdown).await,
    }
}

/// The router for `worker`.
pub fn router(worker: Arc<Worker>) -> Router {
    let functions = "/admin/v3/functions/{tenant}/{namespace}";
    let function = "/admin/v3/functions/{tenant}/{namespace}/{name}";
    let topic = "/topics/persistent/{tenant}/{namespace}/{topic}";
    let admin_topics = "/admin/v2/persistent/{tenant}/{namespace}";
    let admin_topic = "/admin/v2/persistent/{tenant}/{namespace}/{topic}";
    let subscription = "/admin/v2/persistent/{tenant}/{namespace}/{topic}/subscription/{subscription}";
    let namespace = "/admin/v2/namespaces/{tenant}/{namespace}";
    Router::new()
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics))
        .route("/admin/v2/worker/cluster", get(cluster))
        .route(console::WHOAMI, get(console::whoami))
        .route(console::PAGE, get(console::page))
        .route(console::PAGE_DIRECTORY, get(console::page))
        .route(console::SCRIPT, get(console::script))
        .route(console::STYLE, get(console::style))
        .route(console::ICON, get(console::icon))
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
        .route(&format!("{function}/replay"), post(replay))
        .route(&format!("{function}/redrive"), post(redrive))
        .route(&format!("{function}/log-level"), put(set_log_level))
        .route(&format!("{function}/logs"), get(logs::logs))
        .route(&format!("{function}/state"), get(list_state))
        .route(&format!("{function}/state/{{*key}}"), get(query_state).post(put_state))
        .route(topic, post(produce))
        .route(&format!("{topic}/subscription/{{subscription}}/receive"), post(receive))
        .route(&format!("{topic}/subscription/{{subscription}}/acknowledge"), post(acknowledge))
        .route(admin_topics, get(persistent::list))
        .route(admin_topic, put(persistent::create).delete(persistent::delete))
        .route(&format!("{admin_topic}/stats"), get(persistent::stats))
        .route(&format!("{admin_topic}/subscriptions"), get(persistent::subscriptions))
        .route(&format!("{admin_topic}/examinemessage"), get(persistent::examine))
        .route(subscription, delete_route(persistent::unsubscribe))
        .route(&format!("{subscription}/resetcursor"), post(persistent::reset_cursor_to_message))
        .route(&format!("{subscription}/resetcursor/{{timestamp}}"), post(persistent::reset_cursor_to_time))
        .route(&format!("{subscription}/skip/{{count}}"), post(persistent::skip))
        .route(&format!("{subscription}/skip_all"), post(persistent::skip_all))
        .route(&format!("{subscription}/position/{{position}}"), get(persistent::peek))
        .route(namespace, get(namespaces::policies))
        .route(&format!("{namespace}/retention"), get(namespaces::retention).post(namespaces::set_retention))
        .route(
            &format!("{namespace}/messageTTL"),
            post(namespaces::set_message_ttl).delete(namespaces::remove_message_ttl),
        )
        .route(
            &format!("{namespace}/backlogQuota"),
            post(namespaces::set_backlog_quota).delete(namespaces::remove_backlog_quota),
        )
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

fn fqfn(tenant: &str, namespace: &str, name: &str) -> ApiResult<Fqfn> {
    Fqfn::new(tenant, namespace, name).map_err(|error| bad_request(error.to_string()))
}

fn topic_name(tenant: &str, namespace: &str, topic: &str) -> ApiResult<TopicName> {
    TopicName::parse(&format!("persistent://{tenant}/{namespace}/{topic}"))
        .map_err(|error| bad_request(error.to_string()))
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
