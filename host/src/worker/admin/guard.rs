//! Who may reach the API: cross-site requests refused, tokens checked, a tenant held to its own paths.

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::{ApiError, Shared};
use crate::worker::access::Role;

/// The header that every write to a worker without tokens carries (the CLI sends it). A web page
/// can send it to another site only after a CORS preflight, which the worker never grants, so a
/// page the local user opens cannot change anything through a worker on loopback.
pub const CLIENT_HEADER: &str = "x-fnhost-client";

/// Refuses what a web page of another site could send: a request whose `Origin` is not the
/// worker's own and, on a worker without tokens (which listens only on loopback), a `Host` that is
/// not a loopback name (DNS rebinding) or a write without [`CLIENT_HEADER`].
pub(super) async fn refuse_cross_site(
    State(worker): Shared,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    match cross_site_refusal(worker.access().enforced(), request.method(), request.headers()) {
        Some(reason) => ApiError::new(StatusCode::FORBIDDEN, reason).into_response(),
        None => next.run(request).await,
    }
}

/// Why a request looks cross-site, if it does; `tokens`: the worker requires tokens.
pub(super) fn cross_site_refusal(tokens: bool, method: &Method, headers: &header::HeaderMap) -> Option<String> {
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
pub(super) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once(']').map_or(bracketed, |(address, _)| address),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|address| address.is_loopback())
}

/// Paths anyone may read: they show nothing of any tenant (the console's assets ask for a token
/// and then use the API with it).
pub(super) const PUBLIC_PATHS: [&str; 7] = [
    "/health",
    "/openapi.yaml",
    super::console::PAGE,
    super::console::PAGE_DIRECTORY,
    super::console::SCRIPT,
    super::console::STYLE,
    super::console::ICON,
];

/// Lets a request through when the worker has no tokens, or its bearer token's role covers the
/// path: an operator token every path, a tenant token its own tenant's functions and topics.
pub(super) async fn authorize(State(worker): Shared, request: Request, next: axum::middleware::Next) -> Response {
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
        // Every token may ask what it is.
        (Role::Tenant(tenant), None) if path == super::console::WHOAMI => {
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
            format!("{path} is the operator's: a token of tenant `{tenant}` reaches only /admin/v3/functions/{tenant}/…, /topics/persistent/{tenant}/…, /admin/v2/persistent/{tenant}/… and /admin/v2/namespaces/{tenant}/…"),
        )
        .into_response(),
    }
}

/// The tenant a path belongs to, as written in it; `None` for the worker's own paths.
///
/// The segment is compared undecoded: a tenant name has no `%`, so an encoded segment never
/// equals a tenant's name and is refused, never let through.
pub(super) fn path_tenant(path: &str) -> Option<&str> {
    let rest = ["/admin/v3/functions/", "/topics/persistent/", "/admin/v2/persistent/", "/admin/v2/namespaces/"]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))?;
    rest.split('/').next().filter(|tenant| !tenant.is_empty())
}
