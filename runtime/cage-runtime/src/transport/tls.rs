//! Mutual TLS between cages, and between the CLI and cages.
//!
//! Every party of a cluster holds a key pair signed by the cluster CA: a cage under its own
//! name, the CLI as `cli` (see [`crate::keys`]). A connection is accepted only from a peer
//! whose certificate chains to that CA, and a client accepts a cage only if the cage's
//! certificate is for the name it asked for: the name, not the address, is the identity, so a
//! cage found by DNS or by discovery cannot be impersonated by whoever answers.
//!
//! A process speaks for one identity, set once at start ([`act_as`]); client connections
//! use it through [`client_config`], which re-reads the files when they change.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// File name of the cluster CA's certificate in the keys directory.
pub const CA_CERT: &str = "ca.crt";
/// File name of the cluster CA's private key in the keys directory.
pub const CA_KEY: &str = "ca.key";
/// The identity the CLI (and the dashboard and benchmarks) speaks as.
pub const CLI_IDENTITY: &str = "cli";

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A key or certificate file is not there.
    #[error("{}: missing; {hint}", path.display())]
    Missing {
        /// The file.
        path: PathBuf,
        /// What creates it.
        hint: String,
    },
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{}: {what}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("TLS identity {name} in {}: {source}", dir.display())]
    Unusable {
        /// The identity.
        name: String,
        /// Its keys directory.
        dir: PathBuf,
        /// rustls's reason.
        source: Box<rustls::Error>,
    },
    /// A channel needs TLS but this process was given no identity.
    #[error("this process has no TLS identity (a cage speaks as itself, the CLI as `cli`)")]
    NoIdentity,
}

/// Whose key pair this side shows, and where the keys are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name on the certificate: a cage's name, or [`CLI_IDENTITY`].
    pub name: String,
    /// The site's keys directory (`config/keys`).
    pub keys_dir: PathBuf,
}

impl Identity {
    /// The identity `name` with keys under `keys_dir`.
    pub fn new(name: &str, keys_dir: &Path) -> Self {
        Identity {
            name: name.to_owned(),
            keys_dir: keys_dir.to_owned(),
        }
    }

    /// The certificate file of this identity.
    pub fn cert_path(&self) -> PathBuf {
        self.keys_dir.join(format!("{}.crt", self.name))
    }

    /// The private key file of this identity.
    pub fn key_path(&self) -> PathBuf {
        self.keys_dir.join(format!("{}.key", self.name))
    }

    /// The cluster CA's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.keys_dir.join(CA_CERT)
    }

    /// When the three files last changed; a change means the configs are built again.
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [self.ca_path(), self.cert_path(), self.key_path()]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    fn hint(&self, path: &Path) -> String {
        if path.file_name().is_some_and(|f| f == CA_CERT) {
            "create the cluster CA with `cage keys init` (or copy ca.crt from the host that holds it)".to_owned()
        } else {
            format!(
                "create it with `cage keys issue {}` on the host holding the CA, then copy {name}.crt and {name}.key here",
                self.name,
                name = self.name
            )
        }
    }

    fn certs(&self, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let bytes = self.read(path)?;
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                what: format!("not a PEM certificate: {e}"),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: path.to_owned(),
                what: "no certificate in the file (expected PEM \"BEGIN CERTIFICATE\")".to_owned(),
            });
        }
        Ok(certs)
    }

    fn key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.key_path();
        let bytes = self.read(&path)?;
        // Group read is how Kubernetes mounts secrets for a non-root pod; anyone may not.
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.permissions().mode() & 0o007 != 0 {
                tracing::warn!(
                    "{}: private key readable by every user on this host (chmod 600 it)",
                    path.display()
                );
            }
        }
        PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Pem {
            path,
            what: format!("no usable private key: {e}"),
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let path = self.ca_path();
        let mut roots = RootCertStore::empty();
        for cert in self.certs(&path)? {
            roots.add(cert).map_err(|e| TlsError::Pem {
                path: path.clone(),
                what: format!("not a usable CA certificate: {e}"),
            })?;
        }
        Ok(Arc::new(roots))
    }

    fn read(&self, path: &Path) -> Result<Vec<u8>, TlsError> {
        std::fs::read(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                TlsError::Missing {
                    path: path.to_owned(),
                    hint: self.hint(path),
                }
            } else {
                TlsError::Read {
                    path: path.to_owned(),
                    source,
                }
            }
        })
    }

    fn unusable(&self, source: rustls::Error) -> TlsError {
        TlsError::Unusable {
            name: self.name.clone(),
            dir: self.keys_dir.clone(),
            source: Box::new(source),
        }
    }

    /// The server side: present this identity, require a client certificate from the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots()?,
            provider.clone(),
        )
        .build()
        .map_err(|e| self.unusable(rustls::Error::General(e.to_string())))?;
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.unusable(e))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.certs(&self.cert_path())?, self.key()?)
            .map_err(|e| self.unusable(e))?;
        // No session tickets: nothing arrives on an idle connection, so a pooled client can
        // tell a live connection from one the cage closed by peeking at the socket.
        config.send_tls13_tickets = 0;
        Ok(Arc::new(config))
    }

    /// The client side: present this identity, trust only cages certified by the CA.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| self.unusable(e))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.certs(&self.cert_path())?, self.key()?)
            .map_err(|e| self.unusable(e))?;
        Ok(Arc::new(config))
    }
}

struct Current {
    identity: Option<Identity>,
    client: Option<(Vec<Option<SystemTime>>, Arc<ClientConfig>)>,
}

static CURRENT: RwLock<Current> = RwLock::new(Current {
    identity: None,
    client: None,
});
/// Serialises rebuilding the client config, so concurrent connects build it once.
static BUILDING: Mutex<()> = Mutex::new(());

/// Makes `identity` the one this process shows when it connects over TLS.
pub fn act_as(identity: Identity) {
    let mut current = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    current.identity = Some(identity);
    current.client = None;
}

/// The identity this process speaks as, if one was set.
pub fn identity() -> Option<Identity> {
    CURRENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .identity
        .clone()
}

/// The client config of this process's identity; built again when its files change.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsError> {
    let (identity, cached) = {
        let current = CURRENT.read().unwrap_or_else(|p| p.into_inner());
        (current.identity.clone(), current.client.clone())
    };
    let identity = identity.ok_or(TlsError::NoIdentity)?;
    let stamp = identity.stamp();
    if let Some((at, config)) = &cached {
        if *at == stamp {
            return Ok(config.clone());
        }
    }
    let _one = BUILDING.lock().unwrap_or_else(|p| p.into_inner());
    let config = identity.client_config()?;
    let mut current = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    if current.identity.as_ref() == Some(&identity) {
        current.client = Some((stamp, config.clone()));
    }
    Ok(config)
}
