//! The one HTTP client: the admin API's, for the CLI and cluster peers (a worker asking another
//! for the status of an instance it runs), with answers as the [`api`](super::api) types; and the
//! transport that sends traces to an OpenTelemetry collector.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

use super::admin::CLIENT_HEADER;
use super::api::ErrorAnswer;
use super::tls::TrustedAuthority;
use crate::limits::MAX_REQUEST_SIZE;

/// Why a request got no answer it could use.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The worker could not be reached, or did not answer in time.
    #[error("cannot reach the worker at {url}: {reason}; start it with `fnhost worker`, or pass --url")]
    Unreachable {
        /// The worker's base URL.
        url: String,
        /// What the connection said.
        reason: String,
    },
    /// The worker's TLS certificate was not signed by the authority this client trusts, or the
    /// TLS handshake failed.
    #[error(
        "the worker at {url} did not prove who it is over TLS ({reason}); give the authority that signed its certificate (the CLI's --tls-trust-cert-path or FNHOST_TLS_CA, a worker's --tls-ca), or check the URL"
    )]
    Untrusted {
        /// The worker's base URL.
        url: String,
        /// What the TLS layer said.
        reason: String,
    },
    /// The worker refused the request, with its reason.
    #[error("{reason} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The worker's reason, or its whole answer when it gave none.
        reason: String,
    },
    /// The worker answered with what this client cannot read.
    #[error("the worker at {url} answered what fnhost cannot read: {reason}")]
    BadAnswer {
        /// The worker's base URL.
        url: String,
        /// What was wrong with it.
        reason: String,
    },
}

impl ClientError {
    /// Whether the worker answered 404: no such function, key or topic.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Refused { status: 404, .. })
    }
}

/// A request body.
pub enum Body {
    /// No body.
    Empty,
    /// JSON, already encoded.
    Json(Vec<u8>),
    /// A multipart form: field names and values.
    Form(Vec<(&'static str, Vec<u8>)>),
}

impl Body {
    /// `value` as a JSON body.
    pub fn json(value: &impl Serialize) -> Self {
        Self::Json(serde_json::to_vec(value).expect("the wire shapes encode as JSON"))
    }
}

/// Whether `error` is a TLS failure (an untrusted certificate, a failed handshake), by its kind:
/// ureq's own TLS errors, or an I/O error carrying rustls's or reporting invalid data.
fn is_tls_failure(error: &ureq::Error) -> bool {
    match error {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) | ureq::Error::Pem(_) => true,
        ureq::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::InvalidData
                || io.get_ref().is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        }
        _ => false,
    }
}

/// A worker at a base URL.
pub struct Client {
    agent: ureq::Agent,
    url: String,
    /// The bearer token presented with every request.
    token: Option<String>,
}

impl Client {
    /// A client of the worker at `url` that waits at most `timeout` for each answer and presents
    /// `token`, if any. Over HTTPS it trusts `authority` to have signed the worker's certificate
    /// (without one, the public authorities).
    pub fn new(url: &str, timeout: Duration, token: Option<String>, authority: Option<&TrustedAuthority>) -> Self {
        let mut tls = ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls);
        if let Some(authority) = authority {
            tls = tls.root_certs(authority.roots());
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .tls_config(tls.build())
            .build()
            .into();
        Self { agent, url: url.trim_end_matches('/').to_owned(), token }
    }

    /// Sends a request and returns its answer as `T`; a refusal is an error with the worker's reason.
    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Body) -> Result<T, ClientError> {
        let text = self.send_text(method, path, body)?;
        serde_json::from_str(&text)
            .map_err(|error| ClientError::BadAnswer { url: self.url.clone(), reason: error.to_string() })
    }

    /// Sends a request and returns its JSON answer as it is, for the CLI to print.
    pub fn send(&self, method: &str, path: &str, body: Body) -> Result<serde_json::Value, ClientError> {
        self.send_reporting(method, path, body, &|_| ())
    }

    /// [`Client::send`], telling `sent` how many bytes of the body are sent as they go (for a
    /// progress bar over a large upload).
    pub fn send_reporting(
        &self,
        method: &str,
        path: &str,
        body: Body,
        sent: &dyn Fn(u64),
    ) -> Result<serde_json::Value, ClientError> {
        let text = self.send_text_reporting(method, path, body, sent)?;
        Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    /// Reads the server-sent events at `path` as they come and gives each event's data to
    /// `event`, until the worker ends the stream. Without the client's timeout: a followed stream
    /// lasts as long as its reader wants (the worker sends a comment now and then to keep it open).
    pub fn follow_events(&self, path: &str, mut event: impl FnMut(&str)) -> Result<(), ClientError> {
        use std::io::BufRead as _;
        let url = format!("{}{path}", self.url);
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let request = authorize(self.agent.get(&url), authorization.as_deref()).header("Accept", "text/event-stream");
        let unreachable =
            |error: ureq::Error| ClientError::Unreachable { url: self.url.clone(), reason: error.to_string() };
        let mut response = request.config().timeout_global(None).build().call().map_err(unreachable)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            let reason = serde_json::from_str::<ErrorAnswer>(&text).map_or(text, |answer| answer.reason);
            return Err(ClientError::Refused { status: status.as_u16(), reason });
        }
        let broken =
            |error: std::io::Error| ClientError::BadAnswer { url: self.url.clone(), reason: error.to_string() };
        let mut data = String::new();
        for line in std::io::BufReader::new(response.into_body().into_reader()).lines() {
            let line = line.map_err(broken)?;
            if let Some(value) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(value.strip_prefix(' ').unwrap_or(value));
            } else if line.is_empty() && !data.is_empty() {
                event(&std::mem::take(&mut data));
            }
        }
        Ok(())
    }

    fn send_text(&self, method: &str, path: &str, body: Body) -> Result<String, ClientError> {
        self.send_text_reporting(method, path, body, &|_| ())
    }

    fn send_text_reporting(
        &self,
        method: &str,
        path: &str,
        body: Body,
        sent: &dyn Fn(u64),
    ) -> Result<String, ClientError> {
        let url = format!("{}{path}", self.url);
        let (content_type, bytes) = match body {
            Body::Empty => (None, Vec::new()),
            Body::Json(bytes) => (Some("application/json".to_owned()), bytes),
            Body::Form(fields) => {
                let (content_type, bytes) = multipart(&fields);
                (Some(content_type), bytes)
            }
        };
        let authorization = self.token.as_ref().map(|token| format!("Bearer {token}"));
        let authorization = authorization.as_deref();
        let result = match (method, content_type) {
            ("GET", _) => authorize(self.agent.get(&url), authorization).call(),
            ("DELETE", _) => authorize(self.agent.delete(&url), authorization).call(),
            ("POST" | "PUT", Some(content_type)) => {
                let request = match method {
                    "POST" => self.agent.post(&url),
                    _ => self.agent.put(&url),
                };
                let mut reader = Reporting { bytes: &bytes, sent: 0, report: sent };
                authorize(request, authorization)
                    .header("Content-Type", content_type)
                    .header("Content-Length", bytes.len().to_string())
                    .send(ureq::SendBody::from_reader(&mut reader))
            }
            ("POST", None) => authorize(self.agent.post(&url), authorization).send_empty(),
            ("PUT", None) => authorize(self.agent.put(&url), authorization).send_empty(),
            _ => unreachable!("the admin API takes GET, POST, PUT and DELETE"),
        };
        let mut response = result.map_err(|error| {
            let (url, reason) = (self.url.clone(), error.to_string());
            match is_tls_failure(&error) {
                true => ClientError::Untrusted { url, reason },
                false => ClientError::Unreachable { url, reason },
            }
        })?;
        let status = response.status();
        let text =
            response.body_mut().with_config().limit(MAX_REQUEST_SIZE as u64).read_to_string().map_err(|error| {
                ClientError::BadAnswer { url: self.url.clone(), reason: format!("cannot read it: {error}") }
            })?;
        if !status.is_success() {
            let reason = match serde_json::from_str::<ErrorAnswer>(&text) {
                Ok(answer) => answer.reason,
                Err(_) => format!("the worker answered: {text}"),
            };
            return Err(ClientError::Refused { status: status.as_u16(), reason });
        }
        Ok(text)
    }
}

/// A request body read in pieces, each reported as sent.
struct Reporting<'a> {
    bytes: &'a [u8],
    sent: usize,
    report: &'a dyn Fn(u64),
}

/// The most of a body handed to the connection at once: small enough for a progress bar to move.
const REPORTED_PIECE: usize = 64 * 1024;

impl std::io::Read for Reporting<'_> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.bytes[self.sent..];
        let length = rest.len().min(buffer.len()).min(REPORTED_PIECE);
        buffer[..length].copy_from_slice(&rest[..length]);
        self.sent += length;
        (self.report)(self.sent as u64);
        Ok(length)
    }
}

/// Sends OTLP requests to a collector for the OpenTelemetry exporter, on its export thread.
#[derive(Debug)]
pub struct OtlpTransport {
    agent: ureq::Agent,
}

/// How long an export may take before its spans are given up: a collector that hangs must not
/// hold the exporter's queue, which drops spans, never messages, when full.
const OTLP_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpTransport {
    /// A transport that gives each export at most ten seconds.
    pub fn new() -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(OTLP_TIMEOUT))
            .tls_config(ureq::tls::TlsConfig::builder().provider(ureq::tls::TlsProvider::Rustls).build())
            .build()
            .into();
        Self { agent }
    }
}

impl Default for OtlpTransport {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OtlpTransport {
    async fn send_bytes(
        &self,
        request: opentelemetry_http::Request<opentelemetry_http::Bytes>,
    ) -> Result<opentelemetry_http::Response<opentelemetry_http::Bytes>, opentelemetry_http::HttpError> {
        // The SDK's batch processor exports on a thread of its own, so a blocking call is fine here.
        let mut response = self.agent.run(request.map(|body| body.to_vec()))?;
        let body = response.body_mut().with_config().limit(MAX_REQUEST_SIZE as u64).read_to_vec()?;
        let (parts, _) = response.into_parts();
        Ok(opentelemetry_http::Response::from_parts(parts, body.into()))
    }
}

/// `request` with the bearer token, if any, and the header that marks a request as a program's,
/// not a web page's (a worker without tokens refuses writes without it).
fn authorize<B>(request: ureq::RequestBuilder<B>, authorization: Option<&str>) -> ureq::RequestBuilder<B> {
    let request = request.header(CLIENT_HEADER, "fnhost-cli");
    match authorization {
        Some(value) => request.header("Authorization", value),
        None => request,
    }
}

/// Encodes a multipart form as its `Content-Type` and body; the boundary is a digest of the
/// content, so it cannot occur in it except by a SHA-256 collision.
pub fn multipart(fields: &[(&str, Vec<u8>)]) -> (String, Vec<u8>) {
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
    (format!("multipart/form-data; boundary={boundary}"), body)
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
