//! What the fuzz targets in `host/fuzz` run, and the corpus test replays: each entry point takes
//! bytes from outside the worker and panics only on a bug.
//!
//! - [`function_config`]: a function config, as JSON (the REST API's form) and as YAML (a file).
//! - [`stored_records`]: a record as the embedded store, the window loop and the NATS engine keep it.
//! - [`Components::load`]: a component, as `create` and `update` get it.
//! - [`AdminApi::request`]: a request body for each admin API path that reads one.

use std::path::Path;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use bincode::{Decode, Encode};
use tower::ServiceExt as _;

use crate::embedded::EmbeddedStore;
use crate::engine::broker::MessageBody;
use crate::engine::state::{StateValue, Versioned};
use crate::instance::MessageContext;
use crate::names::TopicAccess;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::spec::FunctionSpec;
use crate::worker::{Worker, WorkerConfig};

/// Parses `bytes` as a JSON and as a YAML function config and, where one parses, checks what the
/// worker checks; a config written back as JSON must read as the same config. Returns how many of
/// the two forms parsed.
pub fn function_config(bytes: &[u8]) -> usize {
    let mut parsed = 0;
    let yaml = std::str::from_utf8(bytes).ok().and_then(|text| FunctionSpec::from_yaml(text, "the fuzz input").ok());
    for spec in [FunctionSpec::from_json(bytes).ok(), yaml].into_iter().flatten() {
        let _ = spec.code();
        if let Ok(config) = spec.resolve() {
            let access = TopicAccess::Tenant { tenant: config.fqfn.tenant().to_owned(), granted: Vec::new() };
            let _ = config.within(access);
        }
        let written = serde_json::to_vec(&spec).expect("a function config serializes");
        let read = FunctionSpec::from_json(&written).expect("a function config written as JSON reads back");
        assert_eq!(serde_json::to_value(&read).ok(), serde_json::to_value(&spec).ok(), "the JSON round trip");
        let _ = spec.clone().overlay(read);
        parsed += 1;
    }
    parsed
}

/// Decodes `bytes` as every kind of stored record; a record that decodes must encode and decode
/// back to itself.
pub fn stored_records(bytes: &[u8]) {
    round_trip::<Vec<MessageBody>>(bytes);
    round_trip::<(u64, Vec<(u64, u64)>)>(bytes);
    round_trip::<Versioned>(bytes);
    round_trip::<StateValue>(bytes);
    round_trip::<crate::embedded::StateLogRecord>(bytes);
    round_trip::<crate::instance::StoredWindowRecord>(bytes);
    round_trip::<crate::instance::WindowProgress>(bytes);
    round_trip::<crate::nats::CommitIntent>(bytes);
}

fn round_trip<T: Encode + Decode<()> + PartialEq + std::fmt::Debug>(bytes: &[u8]) {
    if let Ok(value) = crate::codec::decode::<T>(bytes) {
        let again: T =
            crate::codec::decode(&crate::codec::encode(&value)).expect("a decoded record encodes and decodes");
        assert_eq!(again, value, "the record's round trip");
    }
}

/// A wasm engine to load components with.
pub struct Components {
    runtime: Runtime,
}

impl Components {
    /// An engine without a compiled-component cache, for one instance.
    pub fn new() -> Self {
        let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 1 }).expect("the engine starts");
        Self { runtime }
    }

    /// Loads `bytes` as a component and links it as a function, as `create` does; returns whether
    /// it is one.
    pub fn load(&self, bytes: &[u8]) -> bool {
        let code = self.runtime.load_bytes(bytes, "the fuzz input");
        code.is_ok_and(|code| code.prepare::<MessageContext>().is_ok())
    }
}

impl Default for Components {
    fn default() -> Self {
        Self::new()
    }
}

/// The admin API of a worker without tokens, on an embedded store.
pub struct AdminApi {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
}

/// The paths that read a request body, with the media type each is sent with; the fuzz input's
/// first byte picks one.
const BODY_PATHS: [(Method, &str, &str); 6] = [
    (Method::POST, "/admin/v3/functions/public/default/fuzzed", MULTIPART),
    (Method::PUT, "/admin/v3/functions/public/default/fuzzed", MULTIPART),
    (Method::POST, "/admin/v3/functions/public/default/fuzzed/trigger", MULTIPART),
    (Method::POST, "/admin/v3/functions/public/default/fuzzed/state/key", "application/json"),
    (Method::POST, "/topics/persistent/public/default/fuzzed", "application/json"),
    (Method::POST, "/topics/persistent/public/default/fuzzed/subscription/s/acknowledge", "application/json"),
];

/// The multipart media type, with the boundary the corpus uses.
const MULTIPART: &str = "multipart/form-data; boundary=fuzz";

impl AdminApi {
    /// A worker keeping its data in `dir`.
    pub fn open(dir: &Path) -> Self {
        let store = EmbeddedStore::open(&dir.join("data")).expect("the store opens");
        let runtime = Runtime::new(RuntimeConfig { cache_dir: None, max_instances: 4 }).expect("the engine starts");
        let config = WorkerConfig {
            cache_dir: dir.join("cache"),
            max_instances: 4,
            cluster: None,
            access: Default::default(),
            disk_guard: None,
            batch_max_delay: std::time::Duration::ZERO,
        };
        let worker = Worker::open(config, Arc::new(store), runtime).expect("the worker opens");
        let router = crate::worker::admin::router(Arc::new(worker));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio starts");
        Self { runtime, router }
    }

    /// Sends the rest of `bytes` to the path their first byte picks; the answer must not be a
    /// server error, which is what a panic in a handler becomes.
    pub fn request(&self, bytes: &[u8]) -> StatusCode {
        let Some((&pick, body)) = bytes.split_first() else { return StatusCode::OK };
        let (method, path, media_type) = &BODY_PATHS[usize::from(pick) % BODY_PATHS.len()];
        let request = Request::builder()
            .method(method)
            .uri(*path)
            .header(header::CONTENT_TYPE, *media_type)
            // What the CLI sends, so that the bodies reach the handlers past the cross-site guard.
            .header(header::HOST, "127.0.0.1")
            .header(crate::worker::admin::CLIENT_HEADER, "fnhost-fuzz")
            .body(Body::from(body.to_vec()))
            .expect("the request is well formed");
        let status =
            self.runtime.block_on(self.router.clone().oneshot(request)).unwrap_or_else(|never| match never {}).status();
        assert!(!status.is_server_error(), "{method} {path} answered {status}");
        status
    }
}
