//! The listener actor and the connection loop: accept (over TLS, only a peer with a
//! certificate from the cluster CA), read frames, answer each request concurrently, write
//! responses back in completion order.

use super::frame::{self, FrameError};
use super::protocol::{RequestFrame, ResponseFrame};
use crate::dispatch::Dispatcher;
use actix::prelude::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};

/// Requests one connection may have in progress at once; further frames wait to be read.
const MAX_IN_FLIGHT_PER_CONNECTION: usize = 256;
/// A frame that has started must be complete within this.
const FRAME_STALL: Duration = Duration::from_secs(10);
/// A TLS handshake must be complete within this.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

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
                break;
            }
        };
        let request: RequestFrame = match frame::decode(&body) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%peer, "closing connection: {e}");
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
    // Let answers still being computed go out before the connection closes.
    drop(tx);
    let _ = writing.await;
}
