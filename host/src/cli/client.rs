//! How the CLI reaches a worker: its URL, its token, and pulsar-admin's global options. The
//! client itself is the worker's one HTTP client ([`crate::worker::client`]).

use std::time::Duration;

use anyhow::{anyhow, bail};

use crate::names::TopicName;
pub use crate::worker::client::{Body, Client, encode_segment, multipart};
use crate::worker::tls::TrustedAuthority;

/// Where the CLI finds the worker when `--url` is not given.
pub const DEFAULT_WORKER_URL: &str = "http://127.0.0.1:6750";
/// How long the CLI waits for the worker to answer: a trigger may wait up to TRIGGER_TIMEOUT_MS.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The variable holding the bearer token the CLI presents to a worker that requires one.
pub const TOKEN_VARIABLE: &str = "FNHOST_TOKEN";
/// The variable naming a file that holds the token, for those who keep it out of the environment.
pub const TOKEN_FILE_VARIABLE: &str = "FNHOST_TOKEN_FILE";
/// The variable naming the PEM file of the authority that signed an HTTPS worker's certificate.
pub const TLS_CA_VARIABLE: &str = "FNHOST_TLS_CA";

/// A client of the worker at `url`, with the token of FNHOST_TOKEN (or FNHOST_TOKEN_FILE) and
/// the authority of FNHOST_TLS_CA.
pub fn client_at(url: &str) -> anyhow::Result<Client> {
    Ok(Client::new(url, REQUEST_TIMEOUT, token()?, authority(None)?.as_ref()))
}

/// The authority in `path` (`--tls-trust-cert-path`), else in the file FNHOST_TLS_CA names, else none.
fn authority(path: Option<&str>) -> anyhow::Result<Option<TrustedAuthority>> {
    let (flag, path) = match path {
        Some(path) => ("--tls-trust-cert-path", std::path::PathBuf::from(path)),
        None => match std::env::var_os(TLS_CA_VARIABLE) {
            Some(path) => (TLS_CA_VARIABLE, path.into()),
            None => return Ok(None),
        },
    };
    Ok(Some(TrustedAuthority::load(flag, &path)?))
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
    /// The PEM file of the authority that signed an HTTPS worker's certificate (FNHOST_TLS_CA
    /// otherwise); the worker's name is always verified.
    #[arg(long, global = true, value_name = "PATH")]
    tls_trust_cert_path: Option<String>,
    /// Refused: fnhost never skips verifying a worker's certificate.
    #[arg(long, global = true, hide = true)]
    tls_allow_insecure: bool,
    /// Accepted: fnhost always verifies the worker's name against its certificate.
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
            || self.tls_trust_cert_path.is_some()
            || self.tls_allow_insecure
            || self.tls_enable_hostname_verification
    }

    /// A client of the worker at `url` (`--url`), else `--admin-url`, else the default, with
    /// the token of `--auth-params`, else of FNHOST_TOKEN.
    pub fn client(&self, url: Option<&str>) -> anyhow::Result<Client> {
        if self.tls_allow_insecure {
            bail!(
                "--tls-allow-insecure is not supported: fnhost always verifies a worker's certificate; give the authority that signed it with --tls-trust-cert-path"
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
        Ok(Client::new(url, timeout, token, authority(self.tls_trust_cert_path.as_deref())?.as_ref()))
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

/// A topic's `tenant/namespace/topic`, each segment encoded for a REST path.
pub fn topic_segments(topic: &TopicName) -> String {
    let name = topic.as_str().trim_start_matches("persistent://");
    name.split('/').map(encode_segment).collect::<Vec<_>>().join("/")
}
