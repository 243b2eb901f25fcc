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

/// `request` with the bearer token, if any, and the header that marks a request as the CLI's, not
/// a web page's (a worker without tokens refuses writes without it).
fn authorize<B>(request: ureq::RequestBuilder<B>, authorization: Option<&str>) -> ureq::RequestBuilder<B> {
    let request = request.header(crate::worker::admin::CLIENT_HEADER, "fnhost-cli");
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

/// pulsar-admin's global options, which scripts pass before the verb (`pulsar-admin --admin-url
/// URL functions create …`); they apply to `fnhost functions`.
#[derive(Debug, Default, clap::Args)]
pub struct AdminOptions {
    /// pulsar-admin's name for `--url`: the worker's REST API (for `fnhost functions`).
    #[arg(long, global = true, value_name = "URL")]
    admin_url: Option<String>,
    /// pulsar-admin's authentication plugin: fnhost understands token authentication
    /// (org.apache.pulsar.client.impl.auth.AuthenticationToken) only.
    #[arg(long, global = true, value_name = "CLASS")]
    auth_plugin: Option<String>,
    /// pulsar-admin's authentication parameters: `token:TOKEN` or `file:PATH`, sent as FNHOST_TOKEN is.
    #[arg(long, global = true, value_name = "PARAMS")]
    auth_params: Option<String>,
    /// pulsar-admin's request timeout, in seconds [default: 120].
    #[arg(long, global = true, value_name = "SECONDS")]
    request_timeout: Option<u64>,
    /// Refused: the CLI speaks plain HTTP to the worker.
    #[arg(long, global = true, hide = true, value_name = "PATH")]
    tls_trust_cert_path: Option<String>,
    /// Refused: the CLI speaks plain HTTP to the worker.
    #[arg(long, global = true, hide = true)]
    tls_allow_insecure: bool,
    /// Refused: the CLI speaks plain HTTP to the worker.
    #[arg(long, global = true, hide = true)]
    tls_enable_hostname_verification: bool,
}

/// The class of Pulsar's token authentication, the one plugin fnhost understands.
const TOKEN_PLUGIN: &str = "org.apache.pulsar.client.impl.auth.AuthenticationToken";

impl AdminOptions {
    /// Whether any of the options was given.
    pub fn given(&self) -> bool {
        self.admin_url.is_some()
            || self.auth_plugin.is_some()
            || self.auth_params.is_some()
            || self.request_timeout.is_some()
            || self.tls_given()
    }

    fn tls_given(&self) -> bool {
        self.tls_trust_cert_path.is_some() || self.tls_allow_insecure || self.tls_enable_hostname_verification
    }

    /// A client of the worker at `url` (`--url`), else `--admin-url`, else the default, with
    /// the token of `--auth-params`, else of FNHOST_TOKEN.
    pub fn client(&self, url: Option<&str>) -> anyhow::Result<Client> {
        if self.tls_given() {
            bail!(
                "the --tls-* options are not supported: fnhost's CLI speaks plain HTTP to the worker; reach a remote worker through a TLS-terminating proxy or an SSH tunnel on this host"
            );
        }
        let url = match (url, &self.admin_url) {
            (Some(url), Some(admin_url)) if url != admin_url => {
                bail!("--url {url} and --admin-url {admin_url} name different workers: give one")
            }
            (Some(url), _) => url,
            (None, Some(admin_url)) => admin_url,
            (None, None) => DEFAULT_WORKER_URL,
        };
        let timeout = match self.request_timeout {
            Some(0) => bail!("--request-timeout 0 is out of range: give a number of seconds from 1"),
            Some(seconds) => Duration::from_secs(seconds),
            None => REQUEST_TIMEOUT,
        };
        let token = match self.auth_token()? {
            Some(token) => Some(token),
            None => token()?,
        };
        Ok(Client::new(url, timeout, token))
    }

    /// The token `--auth-params` gives, if any.
    fn auth_token(&self) -> anyhow::Result<Option<String>> {
        if let Some(plugin) = &self.auth_plugin
            && plugin != TOKEN_PLUGIN
            && plugin != "AuthenticationToken"
        {
            bail!(
                "--auth-plugin {plugin} is not supported: fnhost understands token authentication only (--auth-plugin {TOKEN_PLUGIN} --auth-params token:TOKEN), the worker's tenant and operator tokens"
            );
        }
        let Some(params) = &self.auth_params else {
            if self.auth_plugin.is_some() {
                bail!("--auth-plugin needs --auth-params token:TOKEN or file:PATH (or set {TOKEN_VARIABLE})");
            }
            return Ok(None);
        };
        if let Some(token) = params.strip_prefix("token:") {
            return Ok(Some(token.trim().to_owned()));
        }
        if let Some(path) = params.strip_prefix("file:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            let text = std::fs::read_to_string(path)
                .map_err(|error| anyhow!("cannot read the token file {path} (--auth-params): {error}"))?;
            return Ok(Some(text.trim().to_owned()));
        }
        bail!("--auth-params must be token:TOKEN or file:PATH (Pulsar's token authentication)")
    }
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
    /// The bearer token presented with every request.
    token: Option<String>,
}

impl Client {
    /// A client of the worker at `url`, with the token of FNHOST_TOKEN (or FNHOST_TOKEN_FILE).
    pub fn at(url: &str) -> anyhow::Result<Self> {
        Ok(Self::new(url, REQUEST_TIMEOUT, token()?))
    }

    fn new(url: &str, timeout: Duration, token: Option<String>) -> Self {
        let agent =
            ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(timeout)).build().into();
        Self { agent, url: url.trim_end_matches('/').to_owned(), token }
    }

    /// Sends a request and returns the JSON answer; a refusal becomes an error with the worker's reason.
    pub fn send(&self, method: &str, path: &str, body: Body) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.url);
        let (content_type, bytes) = match body {
            Body::Empty => (None, Vec::new()),
            Body::Json(json) => (Some("application/json".to_owned()), serde_json::to_vec(&json)?),
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
