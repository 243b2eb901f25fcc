//! TLS for the admin API: the certificate and key a worker serves HTTPS with, and the
//! authority a client (the CLI, a worker calling a peer) trusts to have signed them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why a TLS file cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{flag} {}: {reason}", path.display())]
pub struct TlsFileError {
    /// The flag that named the file.
    pub flag: &'static str,
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub reason: String,
}

/// The certificates of the authority a client trusts to have signed the workers' certificates.
#[derive(Clone, Debug)]
pub struct TrustedAuthority {
    certificates: Arc<Vec<CertificateDer<'static>>>,
}

impl TrustedAuthority {
    /// The PEM certificates in `path`, named by `flag` in errors.
    pub fn load(flag: &'static str, path: &Path) -> Result<Self, TlsFileError> {
        let certificates = certificates(flag, path)?;
        Ok(Self { certificates: Arc::new(certificates) })
    }

    /// The roots an HTTP client verifies a worker's certificate against.
    pub(super) fn roots(&self) -> ureq::tls::RootCerts {
        let roots = self.certificates.iter().map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned());
        ureq::tls::RootCerts::Specific(Arc::new(roots.collect()))
    }
}

fn bad(flag: &'static str, path: &Path, reason: impl Into<String>) -> TlsFileError {
    TlsFileError { flag, path: path.to_owned(), reason: reason.into() }
}

fn certificates(flag: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| bad(flag, path, format!("cannot be read ({error})")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| bad(flag, path, format!("is not PEM ({error})")))?;
    if certificates.is_empty() {
        return Err(bad(flag, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certificates)
}

/// The server side of HTTPS: the certificate chain in `certificate` (PEM, the worker's first)
/// and its private key in `key` (PEM, PKCS#8, PKCS#1 or SEC1).
pub fn server_config(certificate: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsFileError> {
    let chain = certificates("--tls-cert", certificate)?;
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|error| bad("--tls-key", key, format!("holds no PEM private key ({error})")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| bad("--tls-cert", certificate, error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|error| bad("--tls-key", key, format!("does not go with --tls-cert ({error})")))?;
    Ok(Arc::new(config))
}
