//! The site credential: a secret every party of a site holds (its cages, the CLI, the
//! dashboard, benchmarks), kept in `config/keys/site.secret` (mode 0600, made on first use).
//! A plain TCP connection opens with a challenge-response in which each end proves it holds
//! the secret; the secret itself never crosses the wire. (Over TLS the client certificate is
//! the credential, and none of this runs.)
//!
//! The exchange, each message one frame (a [`Greeting`], versioned by [`HANDSHAKE_VERSION`]):
//! 1. the cage, as soon as it accepts: `Challenge { nonce_c }` (its nonce);
//! 2. the client: `Answer { nonce, proof }`, its own nonce and
//!    HMAC-SHA256(secret, client label ‖ cage nonce ‖ client nonce);
//! 3. the cage, if the proof holds: `Welcome { proof }`, the same MAC under the cage label, so
//!    the client knows it reached a cage of its site and not whoever holds the port.
//!
//! The labels bind each proof to its direction, so neither can be replayed as the other. A
//! cage that refuses says why in a final frame ([`super::protocol::farewell`]) before closing.

use super::frame::{self, FrameError};
use super::protocol::{Response, ResponseFrame, CONNECTION_FRAME_ID};
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// File name of the site credential in the keys directory.
pub const SITE_SECRET: &str = "site.secret";
/// Version of the exchange this build speaks.
pub const HANDSHAKE_VERSION: u16 = 1;

/// A TLS handshake, or the site credential exchange, must be complete within this, on both
/// sides: a cage that is up but busy answers late, not never.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
/// Fewest characters a site secret may have.
const MIN_SECRET_LEN: usize = 32;
/// Random bytes in a secret made on first use (written as hex).
const SECRET_BYTES: usize = 32;
/// Largest handshake frame a cage reads: an answer is about 80 bytes; anything much larger is
/// a request sent without one, and is not read.
const MAX_GREETING_BYTES: usize = 256;
/// Largest frame a client reads before the cage welcomed it: a greeting, or a refusal.
const MAX_REFUSAL_BYTES: usize = 64 * 1024;
/// Marks a handshake frame, so a request sent in its place is told apart from a wrong answer.
const MAGIC: [u8; 8] = *b"cages-hs";
const CLIENT_LABEL: &[u8] = b"cages site credential: client proof";
const CAGE_LABEL: &[u8] = b"cages site credential: cage proof";

/// Why a secret file could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file could not be read or created.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file holds too short a secret.
    #[error("{}: holds fewer than {min} characters; delete it to have a new one made", path.display())]
    TooShort {
        /// The file.
        path: PathBuf,
        /// Fewest characters accepted.
        min: usize,
    },
}

/// Reads the secret kept in `path` (trimmed), or makes one on first use: `bytes` random bytes
/// written as hex, mode 0600. Two processes making it at once end with the same secret.
pub fn secret_file(path: &Path, bytes: usize, min_len: usize) -> Result<String, SecretFileError> {
    let io = |source| SecretFileError::Io {
        path: path.to_owned(),
        source,
    };
    let read = |path: &Path| match std::fs::read_to_string(path) {
        Ok(text) if text.trim().len() >= min_len => Ok(Some(text.trim().to_owned())),
        Ok(_) => Err(SecretFileError::TooShort {
            path: path.to_owned(),
            min: min_len,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(e)),
    };
    if let Some(secret) = read(path)? {
        return Ok(secret);
    }
    let mut random = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut random);
    let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Written whole under a temporary name, then linked into place: a second process making
    // it at once fails to link and reads the first one's, never half a secret.
    let tmp = path.with_extension(format!(
        "tmp{}-{:x}",
        std::process::id(),
        rand::thread_rng().next_u64()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(secret.as_bytes())?;
        file.sync_all()
    });
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(secret),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            read(path)?.ok_or_else(|| io(std::io::Error::other("vanished while being made")))
        }
        Err(e) => Err(io(e)),
    }
}

/// Why this process has no usable site credential.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The secret file could not be read or made.
    #[error("site credential {0}")]
    File(#[from] SecretFileError),
    /// Nothing said which site this process belongs to.
    #[error("this process presents no site credential (it names no site)")]
    NotPresented,
}

/// A site's shared secret.
#[derive(Clone)]
pub struct SiteSecret(Arc<[u8]>);

impl std::fmt::Debug for SiteSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiteSecret(…)")
    }
}

impl SiteSecret {
    /// The secret of the site whose keys directory is `keys_dir`: read from [`SITE_SECRET`],
    /// made (random, mode 0600) on first use.
    pub fn of_keys_dir(keys_dir: &Path) -> Result<Self, CredentialError> {
        let path = keys_dir.join(SITE_SECRET);
        let text = secret_file(&path, SECRET_BYTES, MIN_SECRET_LEN)?;
        #[cfg(unix)]
        if let Ok(meta) = std::fs::metadata(&path) {
            use std::os::unix::fs::PermissionsExt;
            // Group read is how Kubernetes mounts secrets for a non-root pod; anyone may not.
            if meta.permissions().mode() & 0o007 != 0 {
                tracing::warn!(
                    "{}: site credential readable by every user on this host (chmod 600 it)",
                    path.display()
                );
            }
        }
        Ok(SiteSecret::given(&text))
    }

    /// A secret given as text (surrounding whitespace ignored).
    pub fn given(text: &str) -> Self {
        SiteSecret(text.trim().as_bytes().into())
    }

    fn proof(&self, label: &[u8], cage_nonce: &[u8; 32], client_nonce: &[u8; 32]) -> [u8; 32] {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any length");
        mac.update(label);
        mac.update(cage_nonce);
        mac.update(client_nonce);
        mac.finalize().into_bytes().into()
    }
}

/// Where this process's credential comes from, and the secret once read.
struct Presented {
    keys_dir: Option<PathBuf>,
    secret: Option<SiteSecret>,
}

static PRESENTED: Mutex<Presented> = Mutex::new(Presented {
    keys_dir: None,
    secret: None,
});

/// Makes the site whose keys directory is `keys_dir` the one this process's connections
/// prove they belong to (its secret is read, or made, at the first connection).
pub fn present_site(keys_dir: &Path) {
    let mut p = PRESENTED.lock().unwrap_or_else(|e| e.into_inner());
    p.keys_dir = Some(keys_dir.to_owned());
    p.secret = None;
}

/// Makes `secret` the one this process's connections present.
pub fn present_secret(secret: SiteSecret) {
    let mut p = PRESENTED.lock().unwrap_or_else(|e| e.into_inner());
    p.keys_dir = None;
    p.secret = Some(secret);
}

/// The secret this process presents.
pub fn presented() -> Result<SiteSecret, CredentialError> {
    let mut p = PRESENTED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(secret) = &p.secret {
        return Ok(secret.clone());
    }
    let dir = p.keys_dir.clone().ok_or(CredentialError::NotPresented)?;
    let secret = SiteSecret::of_keys_dir(&dir)?;
    p.secret = Some(secret.clone());
    Ok(secret)
}

/// One message of the exchange.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
struct Greeting {
    magic: [u8; 8],
    /// Version of the exchange the sender speaks.
    version: u16,
    /// The message.
    step: Step,
}

/// The steps of the exchange.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
enum Step {
    /// From the cage: prove you hold the secret, over this nonce.
    Challenge {
        /// The cage's nonce.
        nonce: [u8; 32],
    },
    /// From the client: its nonce, and its proof over both nonces.
    Answer {
        /// The client's nonce.
        nonce: [u8; 32],
        /// HMAC under the client label.
        proof: [u8; 32],
    },
    /// From the cage: its own proof over both nonces.
    Welcome {
        /// HMAC under the cage label.
        proof: [u8; 32],
    },
}

impl Greeting {
    fn new(step: Step) -> Self {
        Greeting {
            magic: MAGIC,
            version: HANDSHAKE_VERSION,
            step,
        }
    }

    fn encode(&self) -> Vec<u8> {
        frame::encode(self).expect("a greeting always encodes")
    }

    /// The greeting in `body`, if it is one.
    fn decode(body: &[u8]) -> Option<Greeting> {
        frame::decode::<Greeting>(body)
            .ok()
            .filter(|g| g.magic == MAGIC)
    }
}

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut n);
    n
}

/// Why a cage turned a connection away during the exchange.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The client sent something other than an answer (a request, most likely), or nothing.
    #[error("no site credential")]
    Missing,
    /// The client did not answer within the time given.
    #[error("no site credential within {}", humantime::format_duration(*.0))]
    Late(Duration),
    /// The answer's proof is not made with this site's secret.
    #[error("wrong site credential")]
    Wrong,
    /// The client speaks a version of the exchange this cage does not.
    #[error("site credential exchange version {0} not understood (this cage speaks {HANDSHAKE_VERSION})")]
    Version(u16),
    /// The connection failed before the exchange completed.
    #[error("connection lost during the credential exchange: {0}")]
    Lost(std::io::Error),
}

impl Refusal {
    /// What the client is told (nothing, if the connection is gone anyway).
    pub fn told(&self) -> Option<String> {
        match self {
            Refusal::Lost(_) => None,
            Refusal::Missing | Refusal::Late(_) => Some(format!(
                "{self}: open the connection with the site's credential (config/keys/{SITE_SECRET})"
            )),
            Refusal::Wrong => Some(format!(
                "{self}: this client's config/keys/{SITE_SECRET} is not the cage's (copy the site's file)"
            )),
            Refusal::Version(_) => Some(self.to_string()),
        }
    }
}

/// The cage's side: challenges the client on `reader`/`writer` and checks its answer, within
/// `limit`; on success the client has been welcomed. Nothing but the answer is read.
pub async fn challenge(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    secret: &SiteSecret,
    limit: Duration,
) -> Result<(), Refusal> {
    let exchange = async {
        let ours = nonce();
        writer
            .write_all(&Greeting::new(Step::Challenge { nonce: ours }).encode())
            .await
            .map_err(Refusal::Lost)?;
        // The reader's own limits are longer than the exchange's: silence is cut by the
        // timeout around the whole exchange, and `None` here means the client hung up.
        let patience = limit.saturating_mul(2);
        let body = match frame::read_async(reader, MAX_GREETING_BYTES, patience, patience).await {
            Ok(Some(body)) => body,
            Ok(None) => return Err(Refusal::Missing),
            Err(FrameError::Io(e)) => return Err(Refusal::Lost(e)),
            Err(FrameError::Stalled(_)) => return Err(Refusal::Late(limit)),
            Err(_) => return Err(Refusal::Missing),
        };
        let greeting = Greeting::decode(&body).ok_or(Refusal::Missing)?;
        if greeting.version != HANDSHAKE_VERSION {
            return Err(Refusal::Version(greeting.version));
        }
        let Step::Answer { nonce, proof } = greeting.step else {
            return Err(Refusal::Missing);
        };
        let expected = secret.proof(CLIENT_LABEL, &ours, &nonce);
        if !bool::from(expected.ct_eq(&proof)) {
            return Err(Refusal::Wrong);
        }
        let welcome = Step::Welcome {
            proof: secret.proof(CAGE_LABEL, &ours, &nonce),
        };
        writer
            .write_all(&Greeting::new(welcome).encode())
            .await
            .map_err(Refusal::Lost)?;
        Ok(())
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or(Err(Refusal::Late(limit)))
}

/// Why a client's side of the exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The cage turned the connection away, and said why.
    #[error("refused the connection: {0}")]
    Refused(String),
    /// The cage closed the connection without a word.
    #[error("closed the connection during the credential exchange (see the cage's log)")]
    Closed,
    /// What answered is not a plain-TCP cage.
    #[error("{0}")]
    NotACage(String),
    /// The peer's proof does not hold: it does not hold this site's secret.
    #[error("did not prove it holds this site's credential (config/keys/{SITE_SECRET}): not a cage of this site")]
    Impostor,
    /// The cage speaks another version of the exchange.
    #[error("speaks site credential exchange version {0}; this client speaks {HANDSHAKE_VERSION}")]
    Version(u16),
    /// The socket failed or timed out.
    #[error("credential exchange failed: {0}")]
    Io(std::io::Error),
}

/// The client's side: answers the cage's challenge on `stream` (whose timeouts bound each
/// read) and checks the cage's own proof.
pub fn prove(stream: &mut (impl Read + Write), secret: &SiteSecret) -> Result<(), HandshakeError> {
    let theirs = match read_greeting(stream)?.step {
        Step::Challenge { nonce } => nonce,
        _ => {
            return Err(HandshakeError::NotACage(
                "no challenge from the cage".into(),
            ))
        }
    };
    let ours = nonce();
    let answer = Step::Answer {
        nonce: ours,
        proof: secret.proof(CLIENT_LABEL, &theirs, &ours),
    };
    if let Err(e) = frame::write_blocking(stream, &Greeting::new(answer).encode()) {
        // The cage may have closed after saying why; its word is worth more than ours.
        return Err(match read_greeting(stream) {
            Err(refused @ HandshakeError::Refused(_)) => refused,
            _ => HandshakeError::Io(match e {
                FrameError::Io(e) => e,
                other => std::io::Error::other(other.to_string()),
            }),
        });
    }
    match read_greeting(stream)?.step {
        Step::Welcome { proof } => {
            let expected = secret.proof(CAGE_LABEL, &theirs, &ours);
            match bool::from(expected.ct_eq(&proof)) {
                true => Ok(()),
                false => Err(HandshakeError::Impostor),
            }
        }
        _ => Err(HandshakeError::NotACage(
            "the cage did not welcome the answer".into(),
        )),
    }
}

/// Reads the cage's next handshake frame, or its refusal.
fn read_greeting(stream: &mut impl Read) -> Result<Greeting, HandshakeError> {
    let body = frame::read_blocking(stream, MAX_REFUSAL_BYTES).map_err(|e| match e {
        FrameError::Io(e) => match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => HandshakeError::Closed,
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HandshakeError::NotACage(
                "no credential challenge from the cage in time: does it serve TLS (`tls = true` in its cage file)?".into(),
            ),
            _ => HandshakeError::Io(e),
        },
        FrameError::Truncated => HandshakeError::Closed,
        other => HandshakeError::NotACage(format!("does not speak the cages protocol ({other})")),
    })?;
    if let Some(greeting) = Greeting::decode(&body) {
        if greeting.version != HANDSHAKE_VERSION {
            return Err(HandshakeError::Version(greeting.version));
        }
        return Ok(greeting);
    }
    match frame::decode::<ResponseFrame>(&body) {
        Ok(ResponseFrame {
            id: CONNECTION_FRAME_ID,
            body: Response::Error(reason),
        }) => Err(HandshakeError::Refused(reason)),
        _ => Err(HandshakeError::NotACage(
            "what answered does not speak the cages protocol (no credential challenge)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_file_is_made_once_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys").join(SITE_SECRET);
        let a = secret_file(&path, 32, 32).unwrap();
        let b = secret_file(&path, 32, 32).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, "short").unwrap();
        assert!(matches!(
            secret_file(&path, 32, 32),
            Err(SecretFileError::TooShort { .. })
        ));
    }

    #[test]
    fn processes_making_the_secret_at_once_end_with_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SITE_SECRET);
        let made: Vec<String> = std::thread::scope(|s| {
            let all: Vec<_> = (0..8)
                .map(|_| s.spawn(|| secret_file(&path, 32, 32).unwrap()))
                .collect();
            all.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(made.iter().all(|m| *m == made[0]), "{made:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), made[0]);
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files are removed");
    }

    /// Runs the cage's side on one end of a socket pair and `client` on the other.
    fn exchange(
        cage: SiteSecret,
        client: impl FnOnce(&mut std::net::TcpStream) -> Result<(), HandshakeError> + Send,
    ) -> (Result<(), Refusal>, Result<(), HandshakeError>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::scope(|s| {
            let client = s.spawn(move || {
                let mut tcp = std::net::TcpStream::connect(addr).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                client(&mut tcp)
            });
            let (tcp, _) = listener.accept().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let cage = rt.block_on(async move {
                tcp.set_nonblocking(true).unwrap();
                let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
                let (mut r, mut w) = tcp.into_split();
                let result = challenge(&mut r, &mut w, &cage, Duration::from_secs(5)).await;
                if let Err(refusal) = &result {
                    let reason = refusal.told().unwrap_or_default();
                    let _ = w
                        .write_all(&super::super::protocol::farewell(&reason))
                        .await;
                }
                result
            });
            (cage, client.join().unwrap())
        })
    }

    #[test]
    fn both_sides_prove_the_same_secret() {
        let secret = SiteSecret::given("0123456789abcdef0123456789abcdef");
        let mine = secret.clone();
        let (cage, client) = exchange(secret, move |s| prove(s, &mine));
        assert!(cage.is_ok() && client.is_ok(), "{cage:?} {client:?}");
    }

    #[test]
    fn a_wrong_secret_is_refused_and_told_why() {
        let secret = SiteSecret::given("0123456789abcdef0123456789abcdef");
        let other = SiteSecret::given("fedcba9876543210fedcba9876543210");
        let (cage, client) = exchange(secret, move |s| prove(s, &other));
        assert!(matches!(cage, Err(Refusal::Wrong)), "{cage:?}");
        match client {
            Err(HandshakeError::Refused(why)) => assert!(why.contains("wrong site credential")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_request_in_place_of_an_answer_is_refused_unread() {
        use super::super::protocol::{Request, RequestFrame};
        let secret = SiteSecret::given("0123456789abcdef0123456789abcdef");
        let (cage, client) = exchange(secret, |s| {
            let request = RequestFrame {
                id: 1,
                body: Request::Ping,
            };
            frame::write_blocking(s, &frame::encode(&request).unwrap()).unwrap();
            read_greeting(s)?;
            read_greeting(s).map(|_| ())
        });
        assert!(matches!(cage, Err(Refusal::Missing)), "{cage:?}");
        match client {
            Err(HandshakeError::Refused(why)) => assert!(why.contains("no site credential")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_client_is_refused_when_the_exchange_runs_out_of_time() {
        let secret = SiteSecret::given("0123456789abcdef0123456789abcdef");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (cage, mut client) = tokio::io::duplex(1024);
        let refusal = rt.block_on(async move {
            let (mut r, mut w) = tokio::io::split(cage);
            challenge(&mut r, &mut w, &secret, Duration::from_millis(50)).await
        });
        assert!(matches!(refusal, Err(Refusal::Late(_))), "{refusal:?}");
        let told = refusal.unwrap_err().told().unwrap();
        assert!(told.contains("no site credential within"), "{told}");
        // The client was challenged, and nothing else.
        let mut sent = Vec::new();
        rt.block_on(async {
            use tokio::io::AsyncReadExt;
            drop(tokio::time::timeout(Duration::from_millis(50), client.read_buf(&mut sent)).await)
        });
        let greeting = Greeting::decode(&sent[frame::HEADER_LEN..]).unwrap();
        assert!(matches!(greeting.step, Step::Challenge { .. }));
    }

    #[test]
    fn proofs_are_bound_to_their_direction_and_nonces() {
        let s = SiteSecret::given("0123456789abcdef0123456789abcdef");
        let (a, b) = ([1u8; 32], [2u8; 32]);
        assert_ne!(s.proof(CLIENT_LABEL, &a, &b), s.proof(CAGE_LABEL, &a, &b));
        assert_ne!(s.proof(CLIENT_LABEL, &a, &b), s.proof(CLIENT_LABEL, &b, &a));
        assert_eq!(s.proof(CLIENT_LABEL, &a, &b), s.proof(CLIENT_LABEL, &a, &b));
    }

    #[test]
    fn a_greeting_is_told_apart_from_a_request() {
        use super::super::protocol::{Request, RequestFrame};
        let request = frame::encode(&RequestFrame {
            id: 1,
            body: Request::Ping,
        })
        .unwrap();
        assert!(Greeting::decode(&request[frame::HEADER_LEN..]).is_none());
        let greeting = Greeting::new(Step::Challenge { nonce: [7; 32] }).encode();
        assert!(Greeting::decode(&greeting[frame::HEADER_LEN..]).is_some());
        assert!(greeting.len() < MAX_GREETING_BYTES);
    }
}
