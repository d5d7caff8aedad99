//! Optional TLS for both ports (`--tls-cert`/`--tls-key`, rustls with the
//! ring provider): tonic terminates it for gRPC; for HTTP the connection
//! layer (`server::connections`) runs the handshake with this acceptor.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A PEM file holds nothing usable.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        what: String,
    },
    /// rustls refused the certificate and key.
    #[error("certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The certificate chain and key, as PEM text and as a rustls server
/// configuration (for HTTP/1.1).
#[derive(Clone)]
pub struct TlsIdentity {
    /// PEM certificate chain (for tonic).
    pub cert_pem: Vec<u8>,
    /// PEM private key (for tonic).
    pub key_pem: Vec<u8>,
    http: Arc<ServerConfig>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsIdentity").finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

impl TlsIdentity {
    /// Loads and checks a PEM certificate chain and its private key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = (read(cert)?, read(key)?);
        let pem_error = |path: &Path, what: String| TlsError::Pem {
            path: path.to_path_buf(),
            what,
        };
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_error(cert, "no CERTIFICATE block".into()));
        }
        let private_key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| pem_error(key, e.to_string()))?;
        // tonic builds its configuration with the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut http = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, private_key)?;
        http.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            cert_pem,
            key_pem,
            http: Arc::new(http),
        })
    }

    /// The gRPC side's configuration: a client that has not finished its
    /// handshake within `handshake` is dropped (`grpc_handshake_timeout_ms`,
    /// the same bound its first bytes had).
    pub fn grpc(&self, handshake: Duration) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .timeout(handshake)
    }

    /// The acceptor for HTTP connections (ALPN `http/1.1`).
    pub fn http_acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.http.clone())
    }
}
