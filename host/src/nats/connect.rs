//! How fnhost proves itself to NATS and checks the servers: credentials (a `.creds` file, a token,
//! or a user and password) and TLS (the servers' CA, and a client certificate for servers that
//! verify clients). Secrets are read from files, never from the command line, where `ps` shows them.

use std::path::{Path, PathBuf};

use async_nats::{ConnectErrorKind, ConnectOptions};

use super::NatsError;
use super::failure::causes;

/// The credentials and TLS settings of the connection to NATS. Everything is optional: without
/// any, fnhost connects as NATS's default user without TLS, as to a server on loopback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// A NATS credentials file (a user JWT and its NKey seed), as `nsc` writes them.
    pub creds_file: Option<PathBuf>,
    /// A file holding the server's authorization token.
    pub token_file: Option<PathBuf>,
    /// The user name, with `password_file`.
    pub user: Option<String>,
    /// A file holding the user's password.
    pub password_file: Option<PathBuf>,
    /// The CA that signed the servers' certificates (PEM); giving it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate (PEM), for servers that verify clients; with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
}

impl NatsSecurity {
    /// The connection options these settings make; a clear error naming the flag when one is
    /// missing its partner, a file cannot be read, or two ways of logging in are given.
    pub(super) async fn options(&self) -> Result<ConnectOptions, NatsError> {
        let ways = [self.creds_file.is_some(), self.token_file.is_some(), self.user.is_some()];
        if ways.iter().filter(|given| **given).count() > 1 {
            return Err(bad(
                "--nats-creds",
                "give one way of logging in to NATS: --nats-creds, --nats-token-file, or --nats-user with --nats-password-file",
            ));
        }
        let mut options = ConnectOptions::new();
        if let Some(path) = &self.creds_file {
            readable("--nats-creds", path)?;
            options = options.credentials_file(path).await.map_err(|error| {
                bad("--nats-creds", &format!("{} is not a NATS credentials file: {error}", path.display()))
            })?;
        }
        if let Some(path) = &self.token_file {
            options = options.token(secret("--nats-token-file", path)?);
        }
        match (&self.user, &self.password_file) {
            (Some(user), Some(path)) => {
                options = options.user_and_password(user.clone(), secret("--nats-password-file", path)?);
            }
            (Some(_), None) => return Err(bad("--nats-user", "give the password's file with --nats-password-file")),
            (None, Some(_)) => return Err(bad("--nats-password-file", "give the user with --nats-user")),
            (None, None) => {}
        }
        if let Some(path) = &self.tls_ca {
            readable("--nats-tls-ca", path)?;
            options = options.add_root_certificates(path.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                readable("--nats-tls-cert", cert)?;
                readable("--nats-tls-key", key)?;
                options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
            }
            (Some(_), None) => return Err(bad("--nats-tls-cert", "give its key with --nats-tls-key")),
            (None, Some(_)) => return Err(bad("--nats-tls-key", "give its certificate with --nats-tls-cert")),
            (None, None) => {}
        }
        Ok(options)
    }
}

/// Whether a failed connection was the servers refusing fnhost (its credentials or its TLS),
/// rather than no server answering. A failed TLS handshake comes as an I/O error of kind
/// `InvalidData` (rustls's alerts and certificate checks), which no refused or reset connection has.
pub(super) fn refused(error: &async_nats::ConnectError) -> bool {
    match error.kind() {
        ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Tls => true,
        ConnectErrorKind::Io => causes(error).skip(1).any(|cause| {
            cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        }),
        _ => false,
    }
}

fn bad(flag: &'static str, reason: &str) -> NatsError {
    NatsError::BadSecurity { flag, reason: reason.to_owned() }
}

fn readable(flag: &'static str, path: &Path) -> Result<(), NatsError> {
    std::fs::metadata(path).map(drop).map_err(|error| bad(flag, &format!("cannot read {}: {error}", path.display())))
}

/// The secret a file holds, without the line end editors add.
fn secret(flag: &'static str, path: &Path) -> Result<String, NatsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| bad(flag, &format!("cannot read {}: {error}", path.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(bad(flag, &format!("{} is empty", path.display())));
    }
    Ok(secret.to_owned())
}
