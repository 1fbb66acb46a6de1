//! Requests that wait (a chain wait; a message waiting for its receiver): how many one
//! connection and the whole cage may hold at once, and the answer to one over either limit.
//! A wait costs no thread, but each is a future the cage polls on every change it waits for,
//! so the number is bounded like any other resource a client can ask for.

use crate::transport::protocol::{ChainRequest, Request, Response};
use cage_sdk::{CallError, ErrorKind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Whether `request` may wait for something outside the request (rather than only for work
/// the cage does to answer it). A chain wait naming no chain is not one: it is answered at
/// once as bad arguments.
pub fn is_wait(request: &Request) -> bool {
    match request {
        Request::Message(_) => true,
        Request::Chain(ChainRequest::Wait { ids, .. }) => !ids.is_empty(),
        _ => false,
    }
}

/// Waits held on one cage; clones share the count.
#[derive(Clone)]
pub struct CageWaits {
    held: Arc<AtomicUsize>,
    max: usize,
}

impl CageWaits {
    /// At most `max` waits at once on the cage.
    pub fn new(max: usize) -> Self {
        CageWaits {
            held: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// Waits held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

/// Waits held on one connection, within its cage's.
pub struct ConnectionWaits {
    held: Arc<AtomicUsize>,
    max: usize,
    cage: CageWaits,
}

/// Why a wait was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The connection holds its most.
    Connection(usize),
    /// The cage holds its most.
    Cage(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Connection(max) => write!(
                f,
                "this connection already holds {max} waits (max_waits_per_connection); wait again once one has ended, or on another connection"
            ),
            Refusal::Cage(max) => write!(
                f,
                "the cage already holds {max} waits from its clients (max_waits); wait again later"
            ),
        }
    }
}

/// One wait taken; given back when dropped.
pub struct WaitPermit {
    connection: Arc<AtomicUsize>,
    cage: Arc<AtomicUsize>,
}

impl Drop for WaitPermit {
    fn drop(&mut self) {
        self.connection.fetch_sub(1, Ordering::AcqRel);
        self.cage.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Adds one to `count` unless it reached `max`.
fn take(count: &AtomicUsize, max: usize) -> bool {
    count
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl ConnectionWaits {
    /// At most `max` waits at once on a connection of a cage holding `cage`.
    pub fn new(max: usize, cage: &CageWaits) -> Self {
        ConnectionWaits {
            held: Arc::new(AtomicUsize::new(0)),
            max,
            cage: cage.clone(),
        }
    }

    /// Takes one wait, if the connection and the cage have room for it.
    pub fn admit(&self) -> Result<WaitPermit, Refusal> {
        if !take(&self.held, self.max) {
            return Err(Refusal::Connection(self.max));
        }
        if !take(&self.cage.held, self.cage.max) {
            self.held.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Cage(self.cage.max));
        }
        Ok(WaitPermit {
            connection: self.held.clone(),
            cage: self.cage.held.clone(),
        })
    }
}

/// The answer to wait `request` refused for `why` by cage `cage`, in the shape its client
/// reads for that request.
pub fn refused(request: &Request, cage: &str, why: Refusal) -> Response {
    let error = CallError::with_kind(ErrorKind::Refused, format!("cage {cage}: {why}"));
    match request {
        Request::Message(_) => Response::Handed(Err(error)),
        _ => Response::failed(cage, error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::protocol::MessageRequest;

    #[test]
    fn waits_are_capped_per_connection_and_per_cage() {
        let cage = CageWaits::new(3);
        let (a, b) = (
            ConnectionWaits::new(2, &cage),
            ConnectionWaits::new(2, &cage),
        );
        let a1 = a.admit().unwrap();
        let _a2 = a.admit().unwrap();
        assert_eq!(a.admit().err(), Some(Refusal::Connection(2)));
        let _b1 = b.admit().unwrap();
        assert_eq!(b.admit().err(), Some(Refusal::Cage(3)));
        assert_eq!(cage.held(), 3);
        // A refusal by the cage leaves the connection's count as it was.
        drop(a1);
        let _b2 = b.admit().unwrap();
        assert_eq!(b.admit().err(), Some(Refusal::Connection(2)));
        assert_eq!(cage.held(), 3);
    }

    #[test]
    fn only_chain_waits_and_messages_are_waits_and_refusals_fit_their_request() {
        let wait = Request::Chain(ChainRequest::Wait {
            ids: vec!["c".into()],
            any: false,
            timeout_ms: 1,
        });
        let message = Request::Message(MessageRequest {
            target: "x/1".into(),
            port: "p".into(),
            message: vec![],
            timeout_ms: 1,
        });
        assert!(is_wait(&wait) && is_wait(&message));
        assert!(!is_wait(&Request::Ping));
        assert!(!is_wait(&Request::Chain(ChainRequest::Get("c".into()))));
        assert!(!is_wait(&Request::Chain(ChainRequest::Wait {
            ids: vec![],
            any: true,
            timeout_ms: u64::MAX,
        })));
        match refused(&message, "front", Refusal::Cage(5)) {
            Response::Handed(Err(e)) => {
                assert_eq!(e.kind, ErrorKind::Refused);
                assert!(e.message.contains("cage front") && e.message.contains("max_waits"));
            }
            other => panic!("{other:?}"),
        }
        match refused(&wait, "front", Refusal::Connection(16)) {
            Response::Failed(f) => {
                assert!(f.error.message.contains("max_waits_per_connection"), "{f}")
            }
            other => panic!("{other:?}"),
        }
    }
}
