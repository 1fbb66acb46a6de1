//! A blocking client for one cage: connect to the first reachable instance, send a request,
//! wait for its response.

use super::credential::{self, CredentialError, HandshakeError, SiteSecret};
use super::frame::{self, FrameError};
use super::protocol::{
    CageInfo, CallFailure, CallRequest, CallView, ChainRequest, EnqueueRequest, JobRequest,
    MessageRequest, ModuleInfo, QueueQuery, QueueStats, Redrive, Request, RequestFrame, Response,
    ResponseFrame, CONNECTION_FRAME_ID,
};
use crate::config::{Address, CageRoute};
use crate::metrics::MetricsSnapshot;
use crate::model::call::QueuedCall;
use crate::model::chain::ChainRecord;
use crate::model::job::Job;
use cage_sdk::{CallError, ErrorKind};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Largest response a client accepts unless [`MAX_RESPONSE_ENV`] says otherwise.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Environment variable that sets the largest response a client accepts, in bytes.
pub const MAX_RESPONSE_ENV: &str = "CAGE_MAX_RESPONSE_BYTES";
/// How long a client whose request could not be sent waits for the cage's reason.
const LAST_WORD_WAIT: Duration = Duration::from_secs(2);

/// The largest response this process accepts: [`MAX_RESPONSE_ENV`] if set to a number of
/// bytes, else [`MAX_RESPONSE_BYTES`].
pub fn max_response_bytes() -> usize {
    static MAX: OnceLock<usize> = OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var(MAX_RESPONSE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|n| *n > 0)
            .unwrap_or(MAX_RESPONSE_BYTES)
    })
}

/// Why a request to a cage got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No instance of the cage accepted a connection.
    #[error("cage {cage} unreachable at {addresses}: {reason}")]
    Unreachable {
        /// The cage.
        cage: String,
        /// Addresses tried.
        addresses: String,
        /// Last connect error.
        reason: String,
    },
    /// The cage did not answer in time.
    #[error("no answer from cage {cage} within {}", humantime::format_duration(*after))]
    Timeout {
        /// The cage.
        cage: String,
        /// How long the client waited.
        after: Duration,
    },
    /// The connection broke or carried something unreadable.
    #[error("connection to cage {cage} failed: {source}")]
    Connection {
        /// The cage.
        cage: String,
        /// What went wrong.
        source: FrameError,
    },
    /// The cage could not serve the request, and said why.
    #[error("cage {cage}: {reason}")]
    Rejected {
        /// The cage.
        cage: String,
        /// The kind of refusal the cage gave (refused, when it gave only words).
        kind: ErrorKind,
        /// Its explanation.
        reason: String,
    },
    /// TLS is needed to reach the cage, and this side's identity is not usable.
    #[error("cannot speak TLS to cage {cage}: {source}")]
    Tls {
        /// The cage.
        cage: String,
        /// What is wrong with this side's keys.
        source: Box<super::tls::TlsError>,
    },
    /// The cage answered with something that does not fit the request.
    #[error("cage {cage} answered out of protocol: {what}")]
    Protocol {
        /// The cage.
        cage: String,
        /// What was unexpected.
        what: String,
    },
    /// Every instance that took the connection turned it away, and the last one said why
    /// (connection limit, site credential).
    #[error("cage {cage} at {at} refused the connection: {reason}")]
    Refused {
        /// The cage.
        cage: String,
        /// The instance's address.
        at: String,
        /// Its reason.
        reason: String,
    },
    /// The cage closed the connection: with the reason it gave, or without a word.
    #[error("{}", match reason {
        Some(reason) => format!("cage {cage} closed the connection: {reason}"),
        None => format!("connection closed by cage {cage} (see its log)"),
    })]
    Closed {
        /// The cage.
        cage: String,
        /// What the cage said, if it said anything.
        reason: Option<String>,
    },
    /// The cage's answer is larger than this client accepts.
    #[error("the answer of cage {cage} is {len} bytes, over this client's limit of {max} bytes: ask for less (a listing: --limit, --queue, --module) or raise the limit with {MAX_RESPONSE_ENV}=BYTES")]
    TooLarge {
        /// The cage.
        cage: String,
        /// Size of the answer.
        len: usize,
        /// This client's limit.
        max: usize,
    },
    /// This process has no usable site credential to open a plain TCP connection with.
    #[error("cannot connect to cage {cage}: {source}")]
    Credential {
        /// The cage.
        cage: String,
        /// What is wrong with the credential.
        source: CredentialError,
    },
}

impl ClientError {
    /// The call error a caller sees for this failure.
    pub fn into_call_error(self) -> CallError {
        let kind = match self {
            ClientError::Unreachable { .. }
            | ClientError::Tls { .. }
            | ClientError::Credential { .. }
            | ClientError::Closed { reason: None, .. } => ErrorKind::Unreachable,
            ClientError::Timeout { .. } => ErrorKind::Timeout,
            ClientError::Rejected { kind, .. } => kind,
            ClientError::Refused { .. }
            | ClientError::Closed {
                reason: Some(_), ..
            }
            | ClientError::TooLarge { .. } => ErrorKind::Refused,
            ClientError::Connection { .. } | ClientError::Protocol { .. } => ErrorKind::Internal,
        };
        CallError::with_kind(kind, self.to_string())
    }
}

/// A target's answer to one offered call: the id it duplicates (if it or its key was
/// accepted before), or why the target did not accept it.
pub type AcceptAnswer = Result<Option<String>, Box<CallFailure>>;

/// The byte stream under a client: plain TCP, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Plaintext already decrypted but not read: on an idle connection, a stale answer.
    fn buffered(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(s) => s
                .conn
                .process_new_packets()
                .map_or(true, |io| io.plaintext_bytes_to_read() > 0),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// Runs the TLS handshake with `cage` on `tcp`, within the connect timeout: the cage must
/// show a certificate for its name from the cluster CA.
fn handshake(
    cage: &str,
    tcp: TcpStream,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<Stream, String> {
    let name = rustls::pki_types::ServerName::try_from(cage.to_owned())
        .map_err(|e| format!("{cage:?} cannot be checked against a certificate: {e}"))?;
    let mut conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let mut tcp = tcp;
    let limit = Some(timeout.max(Duration::from_millis(1)));
    tcp.set_read_timeout(limit).map_err(|e| e.to_string())?;
    tcp.set_write_timeout(limit).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            return Err(match e.kind() {
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset => {
                    format!("TLS handshake cut short ({e}): does the cage serve TLS (`tls = true` in its cage file)?")
                }
                _ => format!("TLS handshake failed: {e}"),
            });
        }
    }
    tcp.set_write_timeout(None).map_err(|e| e.to_string())?;
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
}

/// What this process shows a cage when it connects.
enum Key {
    Tls(Arc<rustls::ClientConfig>),
    Secret(SiteSecret),
}

/// Runs the site credential exchange on `tcp`, each read and write within the connect
/// timeout.
fn prove(
    mut tcp: TcpStream,
    secret: &SiteSecret,
    timeout: Duration,
) -> Result<Stream, HandshakeError> {
    let limit = Some(timeout.max(Duration::from_millis(1)));
    tcp.set_read_timeout(limit).map_err(HandshakeError::Io)?;
    tcp.set_write_timeout(limit).map_err(HandshakeError::Io)?;
    credential::prove(&mut tcp, secret)?;
    tcp.set_write_timeout(None).map_err(HandshakeError::Io)?;
    Ok(Stream::Plain(tcp))
}

/// A connection to one cage.
pub struct Client {
    cage: String,
    stream: Stream,
    next_id: u64,
}

impl Client {
    /// Connects to the first instance of `cage` that accepts, in `route`'s order, and shows it
    /// this process's key: over TLS its certificate (the cage must prove to be `cage`), over
    /// plain TCP the site credential (the cage must prove it holds it too).
    pub fn connect(cage: &str, route: &CageRoute) -> Result<Client, ClientError> {
        let key = match route.tls {
            false => {
                Key::Secret(
                    credential::presented().map_err(|source| ClientError::Credential {
                        cage: cage.to_owned(),
                        source,
                    })?,
                )
            }
            true => Key::Tls(
                super::tls::client_config().map_err(|source| ClientError::Tls {
                    cage: cage.to_owned(),
                    source: Box::new(source),
                })?,
            ),
        };
        let mut last = String::from("no address configured");
        let mut refused = None;
        for addr in &route.addresses {
            // A name is looked up again at every connect: an instance that moved is found.
            let resolved = match addr.resolve() {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{addr}: cannot resolve: {e}");
                    continue;
                }
            };
            for ip in resolved {
                let place = |ip: &SocketAddr| match addr {
                    Address::Ip(_) => addr.to_string(),
                    Address::Name { .. } => format!("{addr} ({ip})"),
                };
                let at = |e: &dyn std::fmt::Display, ip: &SocketAddr| format!("{}: {e}", place(ip));
                let tcp = match TcpStream::connect_timeout(&ip, route.connect_timeout) {
                    Ok(tcp) => tcp,
                    Err(e) => {
                        last = at(&e, &ip);
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                // The handshake needs the cage's process, not only its kernel, so a busy cage
                // gets as long as it gives itself.
                let handshake_limit = route.connect_timeout.max(credential::HANDSHAKE_LIMIT);
                // A failed handshake is a failed instance: the next one is tried.
                let stream = match &key {
                    Key::Tls(config) => {
                        match handshake(cage, tcp, config.clone(), handshake_limit) {
                            Ok(s) => s,
                            Err(e) => {
                                last = at(&e, &ip);
                                continue;
                            }
                        }
                    }
                    Key::Secret(secret) => match prove(tcp, secret, handshake_limit) {
                        Ok(s) => s,
                        Err(HandshakeError::Refused(reason)) => {
                            refused = Some((place(&ip), reason));
                            continue;
                        }
                        Err(e) => {
                            last = at(&e, &ip);
                            continue;
                        }
                    },
                };
                return Ok(Client {
                    cage: cage.to_owned(),
                    stream,
                    next_id: 1,
                });
            }
        }
        if let Some((at, reason)) = refused {
            return Err(ClientError::Refused {
                cage: cage.to_owned(),
                at,
                reason,
            });
        }
        Err(ClientError::Unreachable {
            cage: cage.to_owned(),
            addresses: route
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            reason: last,
        })
    }

    /// Whether the connection is still open (the peer has not closed it); never blocks.
    pub fn is_open(&mut self) -> bool {
        if self.stream.buffered() {
            return false;
        }
        let tcp = self.stream.tcp();
        if tcp.set_nonblocking(true).is_err() {
            return false;
        }
        let mut probe = [0u8; 1];
        let open = match tcp.peek(&mut probe) {
            Ok(0) => false,
            // Unread bytes on an idle connection are a stale answer: do not reuse it.
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        };
        open && tcp.set_nonblocking(false).is_ok()
    }

    /// Sends `body` and waits up to `timeout` for its response.
    pub fn request(&mut self, body: Request, timeout: Duration) -> Result<Response, ClientError> {
        self.exchange(body, timeout).1
    }

    /// Like [`Client::request`], handing `body` back as well, for a caller that may send what
    /// it carried again another way.
    fn exchange(
        &mut self,
        body: Request,
        timeout: Duration,
    ) -> (Request, Result<Response, ClientError>) {
        let frame = RequestFrame {
            id: self.next_id,
            body,
        };
        self.next_id += 1;
        let answer = self.send(&frame, timeout);
        (frame.body, answer)
    }

    fn send(&mut self, frame: &RequestFrame, timeout: Duration) -> Result<Response, ClientError> {
        let id = frame.id;
        let conn = |cage: &str, source: FrameError| ClientError::Connection {
            cage: cage.to_owned(),
            source,
        };
        let bytes = frame::encode(frame).map_err(|e| conn(&self.cage, e))?;
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| conn(&self.cage, e.into()))?;
        if let Err(e) = frame::write_blocking(&mut self.stream, &bytes) {
            return Err(self.cut_off(e));
        }
        loop {
            let response = self.read_response(timeout)?;
            // Responses to earlier requests that timed out may still arrive; skip them.
            if response.id == id {
                return Ok(response.body);
            }
        }
    }

    /// Reads the next response frame, waiting at most `timeout` (the read timeout set); the
    /// cage's last word on the connection, if it closes it, is an error.
    fn read_response(&mut self, timeout: Duration) -> Result<ResponseFrame, ClientError> {
        let body =
            frame::read_blocking(&mut self.stream, max_response_bytes()).map_err(|e| match e {
                FrameError::Io(io)
                    if matches!(
                        io.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    ClientError::Timeout {
                        cage: self.cage.clone(),
                        after: timeout,
                    }
                }
                other => self.broken(other),
            })?;
        let response: ResponseFrame = frame::decode(&body).map_err(|e| self.broken(e))?;
        match response {
            ResponseFrame {
                id: CONNECTION_FRAME_ID,
                body: Response::Error(reason),
            } => Err(ClientError::Closed {
                cage: self.cage.clone(),
                reason: Some(reason),
            }),
            response => Ok(response),
        }
    }

    /// The error for a connection that broke while reading or writing: closed by the cage,
    /// an answer over this client's limit, or something else on the wire.
    fn broken(&self, e: FrameError) -> ClientError {
        let cage = self.cage.clone();
        match e {
            FrameError::Truncated => ClientError::Closed { cage, reason: None },
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::ConnectionReset
                        | std::io::ErrorKind::ConnectionAborted
                        | std::io::ErrorKind::BrokenPipe
                ) =>
            {
                ClientError::Closed { cage, reason: None }
            }
            FrameError::TooLarge { len, max } => ClientError::TooLarge { cage, len, max },
            source => ClientError::Connection { cage, source },
        }
    }

    /// After a request could not be written: the reason the cage gave for closing, if it gave
    /// one in time, else what the write met.
    fn cut_off(&mut self, e: FrameError) -> ClientError {
        let _ = self.stream.tcp().set_read_timeout(Some(LAST_WORD_WAIT));
        match self.read_response(LAST_WORD_WAIT) {
            Err(
                said @ ClientError::Closed {
                    reason: Some(_), ..
                },
            ) => said,
            _ => self.broken(e),
        }
    }

    /// Sends every request of `bodies` before reading any answer (pipelining: one round trip
    /// for all of them), then waits up to `timeout` for every answer; answers in request order.
    pub fn pipeline(
        &mut self,
        bodies: Vec<Request>,
        timeout: Duration,
    ) -> Result<Vec<Response>, ClientError> {
        let conn = |cage: &str, source: FrameError| ClientError::Connection {
            cage: cage.to_owned(),
            source,
        };
        let first = self.next_id;
        let count = bodies.len() as u64;
        self.next_id += count;
        let mut out = Vec::new();
        for (i, body) in bodies.into_iter().enumerate() {
            let id = first + i as u64;
            out.extend(frame::encode(&RequestFrame { id, body }).map_err(|e| conn(&self.cage, e))?);
        }
        self.stream
            .tcp()
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .map_err(|e| conn(&self.cage, e.into()))?;
        // One write for the whole batch: the frames go out in as few packets as they fit.
        if let Err(e) = frame::write_blocking(&mut self.stream, &out) {
            return Err(self.cut_off(e));
        }
        let mut answers: Vec<Option<Response>> = (0..count).map(|_| None).collect();
        let mut left = count;
        while left > 0 {
            let response = self.read_response(timeout)?;
            // Answers to earlier requests that timed out may still arrive; skip them.
            if let Some(slot) = response
                .id
                .checked_sub(first)
                .and_then(|i| answers.get_mut(i as usize))
            {
                if slot.replace(response.body).is_none() {
                    left -= 1;
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Runs a sync call; the client waits a little longer than the call's own limit so the cage
    /// can report its timeout itself.
    pub fn call(&mut self, call: CallRequest) -> Result<Vec<u8>, Box<CallFailure>> {
        let wait = Duration::from_millis(call.timeout_ms) + Duration::from_secs(2);
        let failure = |call: &CallRequest, cage: &str, error: CallError| {
            Box::new(CallFailure {
                cage: cage.to_owned(),
                module: call.module.clone(),
                method: call.method.clone(),
                call_id: call.call_id.clone(),
                error,
            })
        };
        match self.request(Request::Call(call.clone()), wait) {
            Ok(Response::Result(bytes)) => Ok(bytes),
            Ok(Response::Failed(e)) => Err(Box::new(e)),
            Ok(other) => Err(failure(
                &call,
                &self.cage,
                self.unexpected(&other).into_call_error(),
            )),
            Err(e) => Err(failure(&call, &self.cage, e.into_call_error())),
        }
    }

    /// Puts a call into the cage's durable queue; returns (id, id of an earlier duplicate).
    pub fn enqueue(
        &mut self,
        request: EnqueueRequest,
        timeout: Duration,
    ) -> Result<(String, Option<String>), ClientError> {
        let answer = self.request(Request::Enqueue(request), timeout)?;
        enqueued(&self.cage, answer)
    }

    /// Offers a queued call to this (target) cage; the inner result is the target's answer.
    pub fn accept(
        &mut self,
        call: QueuedCall,
        timeout: Duration,
    ) -> Result<AcceptAnswer, ClientError> {
        let request = match call.group {
            None => Request::Accept(call.into()),
            Some(_) => Request::AcceptCalls(vec![call]),
        };
        match self.request(request, timeout)? {
            Response::AcceptedMany(mut answers) if answers.len() == 1 => Ok(answers.remove(0)),
            Response::Accepted { duplicate_of } => Ok(Ok(duplicate_of)),
            Response::Failed(f) => Ok(Err(Box::new(f))),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Offers several queued calls to this (target) cage in one request; per call, in order,
    /// the target's answer. If the request fails, the calls come back with the error, so the
    /// caller can offer them another way.
    pub fn accept_many(
        &mut self,
        calls: Vec<QueuedCall>,
        timeout: Duration,
    ) -> Result<Vec<AcceptAnswer>, (ClientError, Vec<QueuedCall>)> {
        let sent = calls.len();
        // Calls without a group go in the frame every cage reads; only calls with one need
        // the frame a cage from before groups refuses.
        let request = if calls.iter().any(|c| c.group.is_some()) {
            Request::AcceptCalls(calls)
        } else {
            Request::AcceptMany(calls.into_iter().map(Into::into).collect())
        };
        let (body, answer) = self.exchange(request, timeout);
        let error = match answer {
            Ok(Response::AcceptedMany(answers)) if answers.len() == sent => return Ok(answers),
            Ok(Response::AcceptedMany(answers)) => ClientError::Protocol {
                cage: self.cage.clone(),
                what: format!("{} answers to {sent} offered calls", answers.len()),
            },
            Ok(other) => self.unexpected(&other),
            Err(e) => e,
        };
        let calls = match body {
            Request::AcceptMany(calls) => calls.into_iter().map(Into::into).collect(),
            Request::AcceptCalls(calls) => calls,
            _ => unreachable!("exchange hands back the request it was given"),
        };
        Err((error, calls))
    }

    /// Asks about queued calls.
    pub fn calls(
        &mut self,
        query: QueueQuery,
        timeout: Duration,
    ) -> Result<Vec<CallView>, ClientError> {
        match self.request(Request::Queue(query), timeout)? {
            Response::Calls(calls) => Ok(calls),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Gives an order about queued calls; returns how many it changed.
    pub fn steer(&mut self, query: QueueQuery, timeout: Duration) -> Result<usize, ClientError> {
        match self.request(Request::Queue(query), timeout)? {
            Response::Changed(n) => Ok(n),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Revives dead calls or makes pending ones due, as `redrive` says: how many it took (or
    /// would take), and the first ten.
    pub fn redrive(
        &mut self,
        redrive: Redrive,
        timeout: Duration,
    ) -> Result<(usize, Vec<CallView>), ClientError> {
        match self.request(Request::Queue(QueueQuery::Redrive(redrive)), timeout)? {
            Response::Redriven { count, first } => Ok((count, first)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The cage's queue counters (with `count`, also its pending and dead totals).
    pub fn stats(&mut self, count: bool, timeout: Duration) -> Result<QueueStats, ClientError> {
        match self.request(Request::Queue(QueueQuery::Stats(count)), timeout)? {
            Response::Stats(s) => Ok(s),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Asks about jobs; answers the jobs concerned (none for orders).
    pub fn job(&mut self, request: JobRequest, timeout: Duration) -> Result<Vec<Job>, ClientError> {
        let answer = self.request(Request::Job(request), timeout)?;
        jobs(&self.cage, answer)
    }

    /// Hands a message to an invocation of this cage; the inner result is the delivery's.
    pub fn message(
        &mut self,
        request: MessageRequest,
        timeout: Duration,
    ) -> Result<Result<(), CallError>, ClientError> {
        match self.request(Request::Message(request), timeout)? {
            Response::Handed(r) => Ok(r),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Starts chains on this cage; the inner result is the cage's answer (ids, or why not).
    pub fn start_chains(
        &mut self,
        request: ChainRequest,
        timeout: Duration,
    ) -> Result<Result<Vec<String>, CallError>, ClientError> {
        let answer = self.request(Request::Chain(request), timeout)?;
        chains_started(&self.cage, answer)
    }

    /// Asks about chains of this cage.
    pub fn chains(
        &mut self,
        request: ChainRequest,
        timeout: Duration,
    ) -> Result<Result<Vec<ChainRecord>, CallError>, ClientError> {
        match self.request(Request::Chain(request), timeout)? {
            Response::Chains(c) => Ok(Ok(c)),
            Response::Failed(f) => Ok(Err(f.error)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Lists the cage's modules.
    pub fn modules(&mut self, timeout: Duration) -> Result<Vec<ModuleInfo>, ClientError> {
        match self.request(Request::Modules, timeout)? {
            Response::Modules(m) => Ok(m),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The cage's counters and gauges.
    pub fn metrics(&mut self, timeout: Duration) -> Result<MetricsSnapshot, ClientError> {
        match self.request(Request::Metrics, timeout)? {
            Response::Metrics(m) => Ok(*m),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Asks the cage who it is.
    pub fn ping(&mut self, timeout: Duration) -> Result<CageInfo, ClientError> {
        match self.request(Request::Ping, timeout)? {
            Response::Pong(info) => Ok(info),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The error for answer `r` where another was expected: a refusal (with its kind) is
    /// [`ClientError::Rejected`], anything else is out of protocol.
    fn unexpected(&self, r: &Response) -> ClientError {
        unexpected(&self.cage, r)
    }
}

/// The receipt in `cage`'s answer to an enqueue: (id, id of an earlier duplicate). Read the
/// same whether the answer came over a connection or from the cage in process.
pub fn enqueued(cage: &str, answer: Response) -> Result<(String, Option<String>), ClientError> {
    match answer {
        Response::Enqueued { id, duplicate_of } => Ok((id, duplicate_of)),
        other => Err(unexpected(cage, &other)),
    }
}

/// The jobs concerned in `cage`'s answer to a job request (none for orders).
pub fn jobs(cage: &str, answer: Response) -> Result<Vec<Job>, ClientError> {
    match answer {
        Response::Jobs(jobs) => Ok(jobs),
        Response::Changed(_) => Ok(Vec::new()),
        other => Err(unexpected(cage, &other)),
    }
}

/// The ids in `cage`'s answer to a chain start; the inner result is the cage's (ids, or why
/// not).
pub fn chains_started(
    cage: &str,
    answer: Response,
) -> Result<Result<Vec<String>, CallError>, ClientError> {
    match answer {
        Response::ChainsStarted(ids) => Ok(Ok(ids)),
        Response::Failed(f) => Ok(Err(f.error)),
        other => Err(unexpected(cage, &other)),
    }
}

/// The error for an answer of `cage` that does not fit the request.
fn unexpected(cage: &str, r: &Response) -> ClientError {
    let what = match r {
        Response::Result(_) => "a call result",
        Response::Modules(_) => "a module list",
        Response::Pong(_) => "a ping answer",
        Response::Enqueued { .. } => "an enqueue receipt",
        Response::Accepted { .. } => "an acceptance",
        Response::AcceptedMany(_) => "acceptances",
        Response::Calls(_) => "a call listing",
        Response::Changed(_) => "a change count",
        Response::Stats(_) => "queue counters",
        Response::Jobs(_) => "a job list",
        Response::Handed(_) => "a message receipt",
        Response::ChainsStarted(_) => "chain ids",
        Response::Chains(_) => "a chain listing",
        Response::Metrics(_) => "metrics",
        Response::Redriven { .. } => "a redrive count",
        Response::Counted(_) => "a count of calls",
        // Only a cage of an earlier build answers a request with words alone.
        Response::Error(e) => {
            return ClientError::Rejected {
                cage: cage.to_owned(),
                kind: ErrorKind::Refused,
                reason: e.clone(),
            }
        }
        // A request the cage refused with a kind (bad arguments, unknown module…).
        Response::Failed(f) => {
            return ClientError::Rejected {
                cage: cage.to_owned(),
                kind: f.error.kind,
                reason: f.error.to_string(),
            }
        }
    };
    ClientError::Protocol {
        cage: cage.to_owned(),
        what: format!("unexpected {what}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::farewell;
    use tokio::io::AsyncWriteExt;

    const SECRET: &str = "client-tests-secret-0123456789abcdef";

    /// A cage that welcomes one client, reads one request, then does `then` to the
    /// connection; answers the client's result for a ping.
    fn ping_a_cage_that(then: fn(&mut Vec<u8>)) -> Result<CageInfo, ClientError> {
        credential::present_secret(SiteSecret::given(SECRET));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cage = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                tcp.set_nonblocking(true).unwrap();
                let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
                let (mut r, mut w) = tcp.into_split();
                let secret = SiteSecret::given(SECRET);
                credential::challenge(&mut r, &mut w, &secret, Duration::from_secs(5))
                    .await
                    .unwrap();
                frame::read_async(&mut r, 1024, Duration::from_secs(5), Duration::from_secs(5))
                    .await
                    .unwrap();
                let mut out = Vec::new();
                then(&mut out);
                w.write_all(&out).await.unwrap();
            })
        });
        let route = CageRoute::single(addr, Duration::from_secs(5));
        let answer =
            Client::connect("fake", &route).and_then(|mut c| c.ping(Duration::from_secs(5)));
        cage.join().unwrap();
        answer
    }

    #[test]
    fn the_reason_a_cage_gives_for_closing_is_the_error() {
        let e = ping_a_cage_that(|out| out.extend(farewell("shutting down"))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cage fake closed the connection: shutting down"
        );
        assert_eq!(e.into_call_error().kind, ErrorKind::Refused);
    }

    #[test]
    fn a_connection_closed_without_a_word_names_the_cage_and_is_no_internal_error() {
        let e = ping_a_cage_that(|_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            "connection closed by cage fake (see its log)"
        );
        assert_eq!(e.into_call_error().kind, ErrorKind::Unreachable);
    }

    #[test]
    fn an_answer_over_the_limit_names_the_limit_and_how_to_ask_for_less() {
        let e = ping_a_cage_that(|out| out.extend(u32::MAX.to_be_bytes())).unwrap_err();
        let said = e.to_string();
        assert!(
            said.contains(&format!("{} bytes", u32::MAX))
                && said.contains(&format!("limit of {} bytes", max_response_bytes()))
                && said.contains("--limit")
                && said.contains(MAX_RESPONSE_ENV),
            "{said}"
        );
        assert_eq!(e.into_call_error().kind, ErrorKind::Refused);
    }
}
