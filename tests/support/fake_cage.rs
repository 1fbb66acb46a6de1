//! A fake cage: it takes connections as a cage does (the site credential, then frames) and
//! answers each request as the test says, to play a peer that answers as no healthy cage of
//! this build would (a target that refuses every offered call permanently, say).

use super::test_secret;
use cages::runtime::transport::credential::{self, SiteSecret};
use cages::runtime::transport::frame;
use cages::runtime::transport::protocol::{Request, RequestFrame, Response, ResponseFrame};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a fake cage answers a request.
pub type Answer = fn(&Request) -> Response;

/// A fake cage listening on a loopback port until the test process ends.
pub struct FakeCage {
    /// Where it listens.
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<Request>>>,
}

impl FakeCage {
    /// Starts a fake cage that answers every request with `answer`.
    pub fn start(answer: Answer) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        std::thread::spawn(move || {
            for tcp in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(tcp, answer, &log));
            }
        });
        FakeCage { addr, asked }
    }

    /// Every request it was asked so far, in order.
    pub fn asked(&self) -> Vec<Request> {
        self.asked.lock().unwrap().clone()
    }
}

/// Welcomes one client that shows the site credential, then answers its requests until it
/// hangs up.
fn serve(tcp: TcpStream, answer: Answer, asked: &Mutex<Vec<Request>>) {
    let Some(mut tcp) = welcome(tcp) else { return };
    while let Ok(body) = frame::read_blocking(&mut tcp, usize::MAX) {
        let Ok(request) = frame::decode::<RequestFrame>(&body) else {
            return;
        };
        asked.lock().unwrap().push(request.body.clone());
        let response = ResponseFrame {
            id: request.id,
            body: answer(&request.body),
        };
        if frame::write_blocking(&mut tcp, &frame::encode(&response).unwrap()).is_err() {
            return;
        }
    }
}

/// The cage's side of the site credential exchange (an async function, run on a runtime of
/// its own); the connection, blocking again, if the client proved it holds the credential.
fn welcome(tcp: TcpStream) -> Option<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        tcp.set_nonblocking(true).ok()?;
        let tcp = tokio::net::TcpStream::from_std(tcp).ok()?;
        let (mut r, mut w) = tcp.into_split();
        let secret = SiteSecret::given(test_secret());
        credential::challenge(&mut r, &mut w, &secret, Duration::from_secs(5))
            .await
            .ok()?;
        let tcp = r.reunite(w).ok()?.into_std().ok()?;
        tcp.set_nonblocking(false).ok()?;
        Some(tcp)
    })
}
