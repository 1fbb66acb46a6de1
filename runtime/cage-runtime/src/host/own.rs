//! This cage's own queue, reached in process: a module's `ctx.enqueue`, its chain starts and
//! its jobs for this cage are answered by the cage's dispatcher as a client's request over the
//! listener would be (acknowledged once durable, after the group commit), without a hop
//! through the cage's own socket and TLS.
//!
//! The host only holds the handle; the wiring, which knows the dispatcher, installs how a
//! request is served, so the host never imports the layers above it.

use crate::transport::client::ClientError;
use crate::transport::protocol::{Request, Response};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Where the answer to one request goes.
pub type Reply = Box<dyn FnOnce(Response) + Send>;

type Serve = Box<dyn Fn(Request, Reply) + Send + Sync>;

/// A handle on this cage's own request handling, filled in when the cage is wired.
#[derive(Clone, Default)]
pub struct OwnCage(Arc<OnceLock<Serve>>);

impl OwnCage {
    /// Sets how a request is served: `serve(request, reply)` answers through `reply`, later
    /// and on any thread. Only the first installation counts.
    pub fn install(&self, serve: impl Fn(Request, Reply) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(serve));
    }

    /// Has cage `cage` (this one) answer `request`, waiting up to `timeout`; blocks, so only
    /// for threads off the cage's event loop (the executor's workers). Failures read as those
    /// of the same request sent over a connection.
    pub fn request(
        &self,
        cage: &str,
        request: Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let Some(serve) = self.0.get() else {
            return Err(ClientError::Closed {
                cage: cage.to_owned(),
                reason: Some("the cage is not serving requests yet".to_owned()),
            });
        };
        let (tx, rx) = mpsc::sync_channel(1);
        serve(
            request,
            Box::new(move |answer| {
                let _ = tx.send(answer);
            }),
        );
        rx.recv_timeout(timeout).map_err(|e| match e {
            RecvTimeoutError::Timeout => ClientError::Timeout {
                cage: cage.to_owned(),
                after: timeout,
            },
            // The cage stopped before answering, as a connection closed without a word.
            RecvTimeoutError::Disconnected => ClientError::Closed {
                cage: cage.to_owned(),
                reason: None,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_answered_by_what_was_installed_or_times_out() {
        let own = OwnCage::default();
        assert!(matches!(
            own.request("a", Request::Ping, Duration::from_millis(1)),
            Err(ClientError::Closed { .. })
        ));
        own.install(|request, reply| {
            if let Request::Metrics = request {
                // Never answered: the reply is kept away from the caller.
                std::mem::forget(reply);
                return;
            }
            std::thread::spawn(move || reply(Response::Changed(7)));
        });
        assert!(matches!(
            own.request("a", Request::Ping, Duration::from_secs(10)),
            Ok(Response::Changed(7))
        ));
        assert!(matches!(
            own.request("a", Request::Metrics, Duration::from_millis(20)),
            Err(ClientError::Timeout { .. })
        ));
    }
}
