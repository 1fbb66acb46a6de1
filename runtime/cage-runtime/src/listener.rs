//! The listener actor and the connection loop: accept (only a peer that shows its key: a
//! certificate from the cluster CA over TLS, the site credential over plain TCP), read
//! frames, answer each request concurrently, write responses back in completion order. A
//! connection the cage closes on its own is told why in a last frame
//! ([`crate::transport::protocol::farewell`]).
//!
//! What one connection may hold is bounded: requests in progress, waits (see
//! [`crate::transport::waits`]), and bytes of frames read but not yet answered plus answers not yet
//! written (see [`crate::transport::budget`]): when its budget is spent the loop stops reading. When the
//! peer goes away its waits end at once.

use crate::dispatch::Dispatcher;
use crate::transport::budget::{Budget, Charge};
use crate::transport::credential::{self, SiteSecret, HANDSHAKE_LIMIT};
use crate::transport::frame::{self, FrameError, Start};
use crate::transport::protocol::{farewell, RequestFrame, Response, ResponseFrame};
use crate::transport::waits::{self, ConnectionWaits};
use actix::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests one connection may have in progress at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// A frame that has started must be complete within this.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// A peer that takes no byte of an answer for this long is gone: the answers it does not read
/// hold memory of the connection's budget.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// How long a cage goes on reading (and dropping) what a client sends after it told the
/// client why it closes: closing with unread bytes would reset the connection, and a reset
/// can destroy the reason before the client reads it.
const LINGER: Duration = Duration::from_secs(2);
/// TLS connections over the connection limit being told so at once (each needs a handshake
/// first); beyond these, such a connection is closed without a word.
const MAX_TURNING_AWAY: usize = 8;

/// What a connection must show before any request is read from it.
#[derive(Clone)]
pub enum Door {
    /// Mutual TLS: a client certificate from the cluster CA.
    Tls(Arc<rustls::ServerConfig>),
    /// Plain TCP: the site credential, proved by challenge-response.
    Secret(SiteSecret),
}

/// [`Door`], with the TLS acceptor built.
#[derive(Clone)]
enum Guard {
    Tls(tokio_rustls::TlsAcceptor),
    Secret(SiteSecret),
}

/// Limits applied to every connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request frame.
    pub max_frame_bytes: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// A connection idle for this long (nothing read, nothing in progress) is closed.
    pub idle_timeout: Duration,
    /// Bytes of frames in flight on one connection: requests read and not yet answered, and
    /// answers not yet written (never less than one frame of `max_frame_bytes`).
    pub max_connection_bytes: usize,
    /// Waits one connection may hold at once.
    pub max_waits_per_connection: usize,
}

/// The listener actor: owns the listening socket and the count of open connections.
pub struct Listener {
    socket: Option<TcpListener>,
    dispatcher: Dispatcher,
    limits: Limits,
    guard: Guard,
    open: Arc<AtomicUsize>,
    turning_away: Arc<AtomicUsize>,
}

impl Listener {
    /// A listener serving `socket` with `dispatcher` to peers that pass `door`.
    pub fn new(socket: TcpListener, dispatcher: Dispatcher, limits: Limits, door: Door) -> Self {
        Listener {
            socket: Some(socket),
            dispatcher,
            limits,
            guard: match door {
                Door::Tls(config) => Guard::Tls(tokio_rustls::TlsAcceptor::from(config)),
                Door::Secret(secret) => Guard::Secret(secret),
            },
            open: Arc::new(AtomicUsize::new(0)),
            turning_away: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Closes `stream`, over the connection limit, telling the client why (over TLS, only
    /// while few others are being told).
    fn turn_away(&self, stream: TcpStream, reason: String) {
        match &self.guard {
            // The client waits for the credential challenge before it sends anything, so
            // nothing unread makes this close a reset.
            Guard::Secret(_) => {
                let _ = stream.try_write(&farewell(&reason));
            }
            Guard::Tls(acceptor) => {
                if self.turning_away.fetch_add(1, Ordering::Relaxed) >= MAX_TURNING_AWAY {
                    self.turning_away.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                let (acceptor, counter) = (acceptor.clone(), self.turning_away.clone());
                actix_rt::spawn(async move {
                    if let Ok(Ok(mut tls)) =
                        tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await
                    {
                        // The client sends its request as soon as the handshake is done.
                        say_goodbye_tls(&mut tls, &reason).await;
                    }
                    counter.fetch_sub(1, Ordering::Relaxed);
                });
            }
        }
    }
}

/// Stop accepting connections; the listening socket closes.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopListening;

impl Handler<StopListening> for Listener {
    type Result = ();

    fn handle(&mut self, _: StopListening, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// An accepted connection.
#[derive(Message)]
#[rtype(result = "()")]
struct Accepted(TcpStream, SocketAddr);

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        let addr = ctx.address();
        ctx.spawn(
            async move {
                loop {
                    match socket.accept().await {
                        Ok((stream, peer)) => {
                            if addr.send(Accepted(stream, peer)).await.is_err() {
                                break;
                            }
                        }
                        // Out of file descriptors and the like: back off instead of spinning.
                        Err(e) => {
                            tracing::error!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<Accepted> for Listener {
    type Result = ();

    fn handle(&mut self, Accepted(stream, peer): Accepted, _: &mut Context<Self>) {
        let _ = stream.set_nodelay(true);
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            let max = self.limits.max_connections;
            tracing::warn!(%peer, "refusing connection from {peer}: {max} connections already open (max_connections)");
            let reason = format!(
                "connection limit reached: cage {} has {max} connections open (its max_connections); try again later",
                self.dispatcher.cage
            );
            self.turn_away(stream, reason);
            return;
        }
        self.open.fetch_add(1, Ordering::Relaxed);
        let (open, dispatcher, limits) = (self.open.clone(), self.dispatcher.clone(), self.limits);
        let guard = self.guard.clone();
        actix_rt::spawn(async move {
            match guard {
                // Nothing but the credential exchange is read from a peer until it proved
                // it holds the site's secret.
                Guard::Secret(secret) => {
                    let (mut reader, mut writer) = stream.into_split();
                    match credential::challenge(&mut reader, &mut writer, &secret, HANDSHAKE_LIMIT)
                        .await
                    {
                        Ok(()) => serve(reader, writer, peer, dispatcher, limits).await,
                        Err(refusal) => {
                            tracing::warn!(%peer, "refusing connection from {peer}: {refusal}");
                            if let Some(reason) = refusal.told() {
                                say_goodbye(&mut reader, &mut writer, &reason).await;
                            }
                        }
                    }
                }
                // The handshake checks the client's certificate; nothing is read from a peer
                // that has none from the cluster CA.
                Guard::Tls(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let (reader, writer) = tokio::io::split(stream);
                            serve(reader, writer, peer, dispatcher, limits).await
                        }
                        Ok(Err(e)) => {
                            let plain = e
                                .get_ref()
                                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                                .is_some_and(|r| matches!(r, rustls::Error::InvalidMessage(_)));
                            let hint = if plain {
                                " (a client speaking plain TCP to this TLS cage?)"
                            } else {
                                ""
                            };
                            tracing::warn!(%peer, "refusing connection from {peer}: TLS handshake failed: {e}{hint}")
                        }
                        Err(_) => tracing::warn!(
                            %peer,
                            "refusing connection from {peer}: no TLS handshake within {}",
                            humantime::format_duration(HANDSHAKE_LIMIT)
                        ),
                    }
                }
            }
            open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Why a connection's loop ended.
enum End {
    /// The peer closed it, or went quiet between frames with nothing in progress.
    Closed,
    /// The peer vanished (reset, or took no answer for [`WRITE_STALL`]).
    Gone,
    /// A frame could not be read or decoded; logged with the reason.
    Bad(FrameError),
}

/// Tells the client why the connection closes, then reads (and drops) what it still sends
/// for up to [`LINGER`], so the reason is not lost to a reset.
async fn say_goodbye(
    reader: &mut (impl AsyncRead + Unpin),
    writer: &mut (impl AsyncWrite + Unpin),
    reason: &str,
) {
    if writer.write_all(&farewell(reason)).await.is_ok() {
        let _ = writer.shutdown().await;
        linger(reader).await;
    }
}

/// [`say_goodbye`] over TLS, where reading and writing share one stream.
async fn say_goodbye_tls(tls: &mut (impl AsyncRead + AsyncWrite + Unpin), reason: &str) {
    if tls.write_all(&farewell(reason)).await.is_ok() {
        let _ = tls.shutdown().await;
        linger(tls).await;
    }
}

/// Reads and drops what the peer sends until it closes, for up to [`LINGER`].
async fn linger(reader: &mut (impl AsyncRead + Unpin)) {
    let mut sink = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// What a client whose frame broke the connection is told, if it can still hear it.
fn closing_reason(e: &FrameError, cage: &str) -> Option<String> {
    match e {
        FrameError::TooLarge { len, max } => Some(format!(
            "a request of {len} bytes is over cage {cage}'s max_frame_bytes ({max} bytes)"
        )),
        FrameError::Malformed(_) | FrameError::Stalled(_) => Some(format!("{e}")),
        FrameError::Io(_) | FrameError::Truncated => None,
    }
}

async fn serve(
    mut reader: impl AsyncRead + Unpin,
    writer: impl AsyncWrite + Unpin + 'static,
    peer: SocketAddr,
    dispatcher: Dispatcher,
    limits: Limits,
) {
    let budget = Budget::new(limits.max_connection_bytes.max(limits.max_frame_bytes));
    let cage_budget = dispatcher.in_flight_bytes.clone();
    // Set once the connection is over: waits still in progress end at once.
    let (gone, mut gone_seen) = watch::channel(false);
    let gone = Arc::new(gone);
    let (tx, rx) = mpsc::channel::<(Vec<u8>, Charge)>(MAX_IN_FLIGHT_PER_CONNECTION);
    let writing = actix_rt::spawn(write_answers(writer, rx, peer, gone.clone()));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let waits = ConnectionWaits::new(limits.max_waits_per_connection, &dispatcher.waits);
    let end = loop {
        let next = tokio::select! {
            biased;
            _ = gone_seen.wait_for(|g| *g) => break End::Gone,
            next = next_request(&mut reader, &limits, &in_flight, &budget, &cage_budget) => next,
        };
        let (request, charge) = match next {
            Ok(Some(r)) => r,
            Ok(None) => break End::Closed,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                break End::Gone
            }
            Err(e) => break End::Bad(e),
        };
        let permit = tokio::select! {
            biased;
            _ = gone_seen.wait_for(|g| *g) => break End::Gone,
            permit = in_flight.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break End::Closed,
            },
        };
        let wait = match waits::is_wait(&request.body) {
            false => None,
            true => match waits.admit() {
                Ok(w) => Some(w),
                Err(why) => {
                    tracing::debug!(%peer, "wait refused: {why}");
                    let body = waits::refused(&request.body, &dispatcher.cage, why);
                    answer(&tx, request.id, body, charge, peer).await;
                    continue;
                }
            },
        };
        let (dispatcher, tx, mut gone_seen) = (dispatcher.clone(), tx.clone(), gone.subscribe());
        actix_rt::spawn(async move {
            let handled = dispatcher.handle(request.body);
            let body = match wait {
                None => handled.await,
                // A wait serves only its peer: once the peer is gone there is no one to tell.
                Some(_) => tokio::select! {
                    body = handled => body,
                    _ = gone_seen.wait_for(|g| *g) => return,
                },
            };
            answer(&tx, request.id, body, charge, peer).await;
            drop((permit, wait));
        });
    };
    let reason = match &end {
        End::Closed | End::Gone => None,
        End::Bad(e) => {
            tracing::warn!(%peer, "closing connection: {e}");
            closing_reason(e, &dispatcher.cage)
        }
    };
    gone.send_replace(true);
    if let Some(reason) = &reason {
        let unasked = Charge::unasked(&budget, &cage_budget);
        let _ = tx.send((farewell(reason), unasked)).await;
    }
    // Answers still being computed (calls, enqueues: not waits) go out before the connection
    // closes, if the peer still reads.
    drop(tx);
    let _ = writing.await;
    if reason.is_some() {
        linger(&mut reader).await;
    }
}

/// Reads the next request once the connection and the cage have room for it; `None` when
/// the peer closed, or stayed quiet with nothing in progress for the idle limit.
async fn next_request(
    reader: &mut (impl AsyncRead + Unpin),
    limits: &Limits,
    in_flight: &Semaphore,
    budget: &Budget,
    cage_budget: &Budget,
) -> Result<Option<(RequestFrame, Charge)>, FrameError> {
    let len = loop {
        match frame::read_header(
            reader,
            limits.max_frame_bytes,
            limits.idle_timeout,
            FRAME_STALL,
        )
        .await?
        {
            Start::Closed => return Ok(None),
            // A connection waiting for its answers is not idle.
            Start::Idle if in_flight.available_permits() < MAX_IN_FLIGHT_PER_CONNECTION => {}
            Start::Idle => return Ok(None),
            Start::Frame(len) => break len,
        }
    };
    // Charged before the body is read: while there is no room the peer's bytes stay in its
    // socket, not in this process.
    let charge = Charge::for_request(budget, cage_budget, len).await;
    let body = frame::read_body(reader, len, FRAME_STALL).await?;
    let request: RequestFrame = frame::decode(&body)?;
    Ok(Some((request, charge)))
}

/// Queues the answer `body` to request `id` for writing; the request's charge becomes the
/// answer's, held until it is written.
async fn answer(
    tx: &mpsc::Sender<(Vec<u8>, Charge)>,
    id: u64,
    body: Response,
    mut charge: Charge,
    peer: SocketAddr,
) {
    match frame::encode(&ResponseFrame { id, body }) {
        Ok(bytes) => {
            charge.resize(bytes.len());
            let _ = tx.send((bytes, charge)).await;
        }
        Err(e) => tracing::error!(%peer, "cannot encode response: {e}"),
    }
}

/// Writes answers in the order they are ready; a peer that stops taking them is gone.
async fn write_answers(
    mut writer: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<(Vec<u8>, Charge)>,
    peer: SocketAddr,
    gone: Arc<watch::Sender<bool>>,
) {
    while let Some((bytes, charge)) = rx.recv().await {
        let written = frame::write_async(&mut writer, &bytes, WRITE_STALL).await;
        drop(charge);
        if let Err(e) = written {
            tracing::debug!(%peer, "cannot write response: {e}");
            gone.send_replace(true);
            break;
        }
    }
}
