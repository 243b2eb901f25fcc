//! The web console at `/console`: a page, a script and a style sheet embedded in the binary, so
//! there is nothing else to start and nothing to build on the user's machine. The page asks for a
//! token and then uses the same REST API as the CLI; `GET /admin/v2/whoami` tells it what the
//! token may reach.
//!
//! Every asset is sent with a Content-Security-Policy that allows scripts, styles and requests
//! from the worker itself only (the page has no inline script or style), and `X-Frame-Options:
//! DENY`, so another site can neither inject into nor frame it.

use axum::Extension;
use axum::Json;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use axum::extract::State;

use super::Shared;
use crate::worker::access::Role;
use crate::worker::api::WhoAmI;

/// The console's page.
pub(super) const PAGE: &str = "/console";
/// The same page, as a directory.
pub(super) const PAGE_DIRECTORY: &str = "/console/";
/// The console's script.
pub(super) const SCRIPT: &str = "/console/console.js";
/// The console's style sheet.
pub(super) const STYLE: &str = "/console/console.css";
/// The console's icon (without one, a browser asks for /favicon.ico and logs the 404).
pub(super) const ICON: &str = "/console/favicon.svg";
/// What a token may reach: every token may ask.
pub(super) const WHOAMI: &str = "/admin/v2/whoami";

const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            // Assets change with the binary: a browser asks again rather than run an old script
            // against a new API.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn page() -> Response {
    asset("text/html; charset=utf-8", include_str!("console/index.html"))
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("console/console.js"))
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("console/console.css"))
}

pub(super) async fn icon() -> Response {
    asset("image/svg+xml", include_str!("console/favicon.svg"))
}

/// `GET /admin/v2/whoami`: the presented token's role, and whether the worker is in a cluster.
pub(super) async fn whoami(State(worker): Shared, role: Option<Extension<Role>>) -> Json<WhoAmI> {
    let tenant = match role {
        Some(Extension(Role::Tenant(tenant))) => Some(tenant),
        _ => None,
    };
    Json(WhoAmI { operator: tenant.is_none(), tenant, cluster: worker.in_cluster() })
}
