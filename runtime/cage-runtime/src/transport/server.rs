//! The listener actor and the connection loop: accept (over TLS, only a peer with a
//! certificate from the cluster CA), read frames, answer each request concurrently, write
//! responses back in completion order.
//!
//! What one connection may hold is bounded: requests in progress, waits (see
//! [`super::waits`]), and bytes of frames read but not yet answered plus answers not yet
//! written (see [`super::budget`]): when its budget is spent the loop stops reading. When the
//! peer goes away its waits end at once.

use super::budget::{Budget, Charge};
use super::frame::{self, FrameError, Start};
use super::protocol::{RequestFrame, Response, ResponseFrame};
use super::waits::{self, ConnectionWaits};
use crate::dispatch::Dispatcher;
use actix::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

/// Requests one connection may have in progress at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// A frame that has started must be complete within this.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// A peer that takes no byte of an answer for this long is gone: the answers it does not read
/// hold memory of the connection's budget.
const WRITE_STALL: Duration = Duration::from_secs(30);
/// A TLS handshake must be complete within this.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

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
    tls: Option<tokio_rustls::TlsAcceptor>,
    open: Arc<AtomicUsize>,
}

impl Listener {
    /// A listener serving `socket` with `dispatcher`; with `tls`, mutual TLS only.
    pub fn new(
        socket: TcpListener,
        dispatcher: Dispatcher,
        limits: Limits,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Listener {
            socket: Some(socket),
            dispatcher,
            limits,
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            open: Arc::new(AtomicUsize::new(0)),
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
        if self.open.load(Ordering::Relaxed) >= self.limits.max_connections {
            tracing::warn!(%peer, "refusing connection: {} connections already open (max_connections)", self.limits.max_connections);
            return;
        }
        let _ = stream.set_nodelay(true);
        self.open.fetch_add(1, Ordering::Relaxed);
        let (open, dispatcher, limits) = (self.open.clone(), self.dispatcher.clone(), self.limits);
        let tls = self.tls.clone();
        actix_rt::spawn(async move {
            match tls {
                None => {
                    let (reader, writer) = stream.into_split();
                    serve(reader, writer, peer, dispatcher, limits).await
                }
                // The handshake checks the client's certificate; nothing is read from a peer
                // that has none from the cluster CA.
                Some(acceptor) => {
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
                            tracing::warn!(%peer, "refusing connection: TLS handshake failed: {e}{hint}")
                        }
                        Err(_) => tracing::warn!(
                            %peer,
                            "refusing connection: no TLS handshake within {}",
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
    match end {
        End::Closed | End::Gone => {}
        End::Bad(e) => tracing::warn!(%peer, "closing connection: {e}"),
    }
    gone.send_replace(true);
    // Answers still being computed (calls, enqueues: not waits) go out before the connection
    // closes, if the peer still reads.
    drop(tx);
    let _ = writing.await;
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
