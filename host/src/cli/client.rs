//! A small blocking client of the worker's HTTP API, for the CLI.

use std::time::Duration;

use anyhow::{anyhow, bail};
use sha2::{Digest as _, Sha256};

use crate::limits::MAX_REQUEST_SIZE;

/// Where the CLI finds the worker when `--url` is not given.
pub const DEFAULT_WORKER_URL: &str = "http://127.0.0.1:6750";
/// How long the CLI waits for the worker to answer: a trigger may wait up to TRIGGER_TIMEOUT_MS.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The variable holding the bearer token the CLI presents to a worker that requires one.
pub const TOKEN_VARIABLE: &str = "FNHOST_TOKEN";
/// The variable naming a file that holds the token, for those who keep it out of the environment.
pub const TOKEN_FILE_VARIABLE: &str = "FNHOST_TOKEN_FILE";

fn authorize<B>(request: ureq::RequestBuilder<B>, authorization: Option<&str>) -> ureq::RequestBuilder<B> {
    match authorization {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

/// The token from FNHOST_TOKEN, else from the file FNHOST_TOKEN_FILE names, else none.
fn token() -> anyhow::Result<Option<String>> {
    if let Ok(token) = std::env::var(TOKEN_VARIABLE) {
        return Ok(Some(token.trim().to_owned()));
    }
    let Some(path) = std::env::var_os(TOKEN_FILE_VARIABLE) else { return Ok(None) };
    let text = std::fs::read_to_string(&path).map_err(|error| {
        anyhow!("cannot read the token file {} ({TOKEN_FILE_VARIABLE}): {error}", std::path::Path::new(&path).display())
    })?;
    Ok(Some(text.trim().to_owned()))
}

/// A request body.
pub enum Body {
    /// No body.
    Empty,
    /// JSON.
    Json(serde_json::Value),
    /// A multipart form: field names and values.
    Form(Vec<(&'static str, Vec<u8>)>),
}

/// A worker at a base URL.
pub struct Client {
    agent: ureq::Agent,
    url: String,
}

impl Client {
    /// A client of the worker at `url`.
    pub fn new(url: &str) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .into();
        Self { agent, url: url.trim_end_matches('/').to_owned() }
    }

    /// Sends a request and returns the JSON answer; a refusal becomes an error with the worker's reason.
    pub fn send(&self, method: &str, path: &str, body: Body) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        let (content_type, bytes) = match body {
            Body::Empty => (None, Vec::new()),
            Body::Json(json) => (Some("application/json".to_owned()), serde_json::to_vec(&json)?),
            Body::Form(fields) => {
                let (boundary, bytes) = multipart(&fields);
                (Some(format!("multipart/form-data; boundary={boundary}")), bytes)
            }
        };
        let authorization = token()?.map(|token| format!("Bearer {token}"));
        let authorization = authorization.as_deref();
        let result = match (method, content_type) {
            ("GET", _) => authorize(self.agent.get(&url), authorization).call(),
            ("DELETE", _) => authorize(self.agent.delete(&url), authorization).call(),
            ("POST", Some(content_type)) => {
                authorize(self.agent.post(&url), authorization).header("Content-Type", content_type).send(&bytes[..])
            }
            ("POST", None) => authorize(self.agent.post(&url), authorization).send_empty(),
            ("PUT", Some(content_type)) => {
                authorize(self.agent.put(&url), authorization).header("Content-Type", content_type).send(&bytes[..])
            }
            ("PUT", None) => authorize(self.agent.put(&url), authorization).send_empty(),
            _ => unreachable!("the CLI uses GET, POST, PUT and DELETE"),
        };
        let mut response = result.map_err(|error| {
            anyhow!("cannot reach the worker at {}: {error}; start it with `fnhost worker`, or pass --url", self.url)
        })?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_REQUEST_SIZE as u64)
            .read_to_string()
            .map_err(|error| anyhow!("cannot read the worker's answer: {error}"))?;
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if !status.is_success() {
            match json.get("reason").and_then(serde_json::Value::as_str) {
                Some(reason) => bail!("{reason} (HTTP {})", status.as_u16()),
                None => bail!("the worker answered HTTP {}: {json}", status.as_u16()),
            }
        }
        Ok(json)
    }
}

/// Encodes a multipart form; the boundary is a digest of the content, so it cannot occur in it
/// except by a SHA-256 collision.
fn multipart(fields: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
    let mut hasher = Sha256::new();
    for (name, value) in fields {
        hasher.update(name.as_bytes());
        hasher.update(value);
    }
    let boundary: String = hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect();
    let mut body = Vec::new();
    for (name, value) in fields {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (boundary, body)
}

/// `text` with every byte outside the URL path's unreserved set percent-encoded.
pub fn encode_segment(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (byte as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}
