//! The listener actor and the connection loop: accept (only a peer that shows its key: a
//! certificate from the cluster CA over TLS, the site credential over plain TCP), read
//! frames, answer each request concurrently, write responses back in completion order. A
//! connection the cage closes on its own is told why in a last frame
//! ([`super::protocol::farewell`]).

use super::credential::{self, SiteSecret};
use super::frame::{self, FrameError};
use super::protocol::{farewell, RequestFrame, ResponseFrame};
use crate::dispatch::Dispatcher;
use actix::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Requests one connection may have in progress at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// A frame that has started must be complete within this.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// A TLS handshake, or the site credential exchange, must be complete within this.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);
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
    /// A connection idle for this long is closed.
    pub idle_timeout: Duration,
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
    mut writer: impl AsyncWrite + Unpin + 'static,
    peer: SocketAddr,
    dispatcher: Dispatcher,
    limits: Limits,
) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(MAX_IN_FLIGHT_PER_CONNECTION);
    let writing = actix_rt::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if let Err(e) = writer.write_all(&frame).await {
                tracing::debug!(%peer, "cannot write response: {e}");
                break;
            }
        }
    });
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT_PER_CONNECTION));
    let mut reason = None;
    loop {
        let body = match frame::read_async(
            &mut reader,
            limits.max_frame_bytes,
            limits.idle_timeout,
            FRAME_STALL,
        )
        .await
        {
            Ok(Some(body)) => body,
            Ok(None) => break,
            Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                reason = closing_reason(&e, &dispatcher.cage);
                break;
            }
        };
        let request: RequestFrame = match frame::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
                reason = closing_reason(&e, &dispatcher.cage);
                break;
            }
        };
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (dispatcher, tx) = (dispatcher.clone(), tx.clone());
        actix_rt::spawn(async move {
            let response = ResponseFrame {
                id: request.id,
                body: dispatcher.handle(request.body).await,
            };
            match frame::encode(&response) {
                Ok(bytes) => {
                    let _ = tx.send(bytes).await;
                }
                Err(e) => tracing::error!(%peer, "cannot encode response: {e}"),
            }
            drop(permit);
        });
    }
    if let Some(reason) = &reason {
        let _ = tx.send(farewell(reason)).await;
    }
    // Let answers still being computed go out before the connection closes.
    drop(tx);
    let _ = writing.await;
    if reason.is_some() {
        linger(&mut reader).await;
    }
}
