//! The worker's flags for its connection to NATS in cluster mode: credentials and TLS.

use std::path::PathBuf;

use clap::Args;

use crate::nats::NatsSecurity;

/// How the worker logs in to NATS and checks the servers (docs/CLUSTER.md, "Credentials and TLS").
#[derive(Debug, Default, Args)]
pub(super) struct NatsFlags {
    /// A NATS credentials file (user JWT and NKey seed, as `nsc` writes it).
    #[arg(long = "nats-creds", value_name = "FILE", requires = "cluster")]
    creds: Option<PathBuf>,
    /// A file holding the NATS server's authorization token.
    #[arg(long = "nats-token-file", value_name = "FILE", requires = "cluster")]
    token_file: Option<PathBuf>,
    /// The NATS user, with --nats-password-file.
    #[arg(long = "nats-user", value_name = "USER", requires = "cluster")]
    user: Option<String>,
    /// A file holding the NATS user's password.
    #[arg(long = "nats-password-file", value_name = "FILE", requires = "cluster")]
    password_file: Option<PathBuf>,
    /// The CA (PEM) that signed the NATS servers' certificates; giving it requires TLS.
    #[arg(long = "nats-tls-ca", value_name = "FILE", requires = "cluster")]
    nats_tls_ca: Option<PathBuf>,
    /// This worker's client certificate (PEM), for NATS servers that verify clients.
    #[arg(long = "nats-tls-cert", value_name = "FILE", requires = "cluster")]
    nats_tls_cert: Option<PathBuf>,
    /// The key (PEM) of --nats-tls-cert.
    #[arg(long = "nats-tls-key", value_name = "FILE", requires = "cluster")]
    nats_tls_key: Option<PathBuf>,
}

impl NatsFlags {
    /// The settings the engine connects with.
    pub(super) fn security(&self) -> NatsSecurity {
        NatsSecurity {
            creds_file: self.creds.clone(),
            token_file: self.token_file.clone(),
            user: self.user.clone(),
            password_file: self.password_file.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_cert: self.nats_tls_cert.clone(),
            tls_key: self.nats_tls_key.clone(),
        }
    }
}
