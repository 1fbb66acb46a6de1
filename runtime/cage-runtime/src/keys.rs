//! The cluster's keys: a CA made once (`cage keys init`), and a key pair per cage and for the
//! CLI signed by it (`cage keys issue NAME`), all kept in the site's `config/keys/` readable
//! by the owner only.

use crate::transport::tls::{CA_CERT, CA_KEY, CLI_IDENTITY};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Common name of every CA `cage keys init` makes; a cluster's CA is told apart by its key.
const CA_NAME: &str = "cages cluster CA";
/// How long the CA is valid.
const CA_DAYS: i64 = 3650;
/// How long an issued key pair is valid.
const ISSUED_DAYS: i64 = 825;

/// Why keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file exists and `--force` was not given.
    #[error("{}: already exists (pass --force to replace it; every key pair the old one signed stops working)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// No CA to sign with.
    #[error("{}: missing; create the cluster CA first with `cage keys init`", path.display())]
    NoCa {
        /// Where the CA's key was looked for.
        path: PathBuf,
    },
    /// The name cannot be put on a certificate.
    #[error(
        "{name:?} is not a cage name (letters, digits, '-'); it must also be a valid DNS label"
    )]
    BadName {
        /// The name.
        name: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Making or reading a key or certificate failed.
    #[error("{what}: {source}")]
    Crypto {
        /// What was being done.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
}

/// Files written by one command.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    /// Certificate files.
    pub certs: Vec<PathBuf>,
    /// Private key files (mode 0600).
    pub keys: Vec<PathBuf>,
    /// Last day of validity of what was issued, `YYYY-MM-DD`.
    pub valid_until: String,
}

/// Creates the cluster CA in `dir`, and the CLI's key pair signed by it.
pub fn init(dir: &Path, force: bool) -> Result<Written, KeysError> {
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    for path in [&ca_cert, &ca_key] {
        if path.exists() && !force {
            return Err(KeysError::Exists { path: path.clone() });
        }
    }
    let key = KeyPair::generate().map_err(crypto("generating the CA key"))?;
    let cert = ca_params(CA_DAYS)
        .self_signed(&key)
        .map_err(crypto("signing the CA certificate"))?;
    make_dir(dir)?;
    write(&ca_key, key.serialize_pem().as_bytes(), true, force)?;
    write(&ca_cert, cert.pem().as_bytes(), false, force)?;
    let cli = issue(dir, CLI_IDENTITY, &[], force)?;
    Ok(Written {
        certs: [vec![ca_cert], cli.certs].concat(),
        keys: [vec![ca_key], cli.keys].concat(),
        valid_until: cli.valid_until,
    })
}

/// Creates the key pair of `name` (a cage, or `cli`) signed by the CA in `dir`. The
/// certificate is for the name (what clients check) and for each of `also` (DNS names or IP
/// addresses, for tools that check the address).
pub fn issue(dir: &Path, name: &str, also: &[String], force: bool) -> Result<Written, KeysError> {
    if !crate::config::valid_name(name) || name.contains('_') {
        return Err(KeysError::BadName {
            name: name.to_owned(),
        });
    }
    let ca_key_path = dir.join(CA_KEY);
    let ca_key_pem = match std::fs::read_to_string(&ca_key_path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(KeysError::NoCa { path: ca_key_path })
        }
        Err(source) => {
            return Err(KeysError::Io {
                path: ca_key_path,
                source,
            })
        }
    };
    let ca_key = KeyPair::from_pem(&ca_key_pem)
        .map_err(crypto(&format!("reading {}", ca_key_path.display())))?;
    // The issuer is described by its name and key; rebuilding it from the CA's key gives the
    // same subject and key identifier as the certificate `init` wrote.
    let issuer = ca_params(CA_DAYS)
        .self_signed(&ca_key)
        .map_err(crypto("loading the CA"))?;

    let (cert_path, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    for path in [&cert_path, &key_path] {
        if path.exists() && !force {
            return Err(KeysError::Exists { path: path.clone() });
        }
    }
    let mut names = vec![name.to_owned()];
    names.extend(also.iter().cloned());
    let mut params = CertificateParams::new(names).map_err(crypto(&format!("naming {name}")))?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // A cage is both: it serves calls and makes them.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(ISSUED_DAYS);
    let until = params.not_after.date();
    let key = KeyPair::generate().map_err(crypto(&format!("generating the key of {name}")))?;
    let cert = params
        .signed_by(&key, &issuer, &ca_key)
        .map_err(crypto(&format!("signing the certificate of {name}")))?;
    make_dir(dir)?;
    write(&key_path, key.serialize_pem().as_bytes(), true, force)?;
    write(&cert_path, cert.pem().as_bytes(), false, force)?;
    Ok(Written {
        certs: vec![cert_path],
        keys: vec![key_path],
        valid_until: format!(
            "{:04}-{:02}-{:02}",
            until.year(),
            u8::from(until.month()),
            until.day()
        ),
    })
}

fn ca_params(days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
    params
}

fn crypto(what: &str) -> impl FnOnce(rcgen::Error) -> KeysError + '_ {
    move |source| KeysError::Crypto {
        what: what.to_owned(),
        source,
    }
}

fn make_dir(dir: &Path) -> Result<(), KeysError> {
    let io = |source| KeysError::Io {
        path: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// Writes `bytes` to `path`: a private key readable by the owner only, from the first byte.
fn write(path: &Path, bytes: &[u8], private: bool, force: bool) -> Result<(), KeysError> {
    let io = |source| KeysError::Io {
        path: path.to_owned(),
        source,
    };
    if force {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeysError::Exists {
                    path: path.to_owned(),
                }
            } else {
                io(e)
            }
        })?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::tls::Identity;

    #[test]
    fn init_then_issue_gives_usable_identities() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let made = init(&keys, false).unwrap();
        assert_eq!(made.keys.len(), 2);
        for key in &made.keys {
            let mode = std::fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        issue(&keys, "billing", &["127.0.0.2".to_owned()], false).unwrap();
        let billing = Identity::new("billing", &keys);
        billing.server_config().unwrap();
        billing.client_config().unwrap();
        Identity::new(CLI_IDENTITY, &keys).client_config().unwrap();

        let again = init(&keys, false).unwrap_err().to_string();
        assert!(again.contains("already exists"), "{again}");
        let again = issue(&keys, "billing", &[], false).unwrap_err().to_string();
        assert!(again.contains("billing.crt: already exists"), "{again}");
        issue(&keys, "billing", &[], true).unwrap();
        assert!(matches!(
            issue(&keys, "no_such", &[], false),
            Err(KeysError::BadName { .. })
        ));
        let empty = dir.path().join("empty");
        let e = issue(&empty, "billing", &[], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cage keys init"), "{e}");
    }
}
