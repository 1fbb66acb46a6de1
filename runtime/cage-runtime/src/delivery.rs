//! Delivery: handing a queued call from its source cage to its target cage, which accepts it
//! into its own durable queue. Targets are reached through the cage's one [`Peers`] handle.

use crate::model::call::QueuedCall;
use crate::peers::Peers;
use crate::transport::client::ClientError;
use crate::transport::protocol::{CallRequest, QueueQuery};
use cage_sdk::{CallError, ErrorKind};
use std::sync::Arc;
use std::time::Duration;

/// Longest a target may take to accept a call (its own group commit included).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Offers queued calls to their target cages.
pub struct Delivery {
    peers: Arc<Peers>,
}

impl Delivery {
    /// Delivery to the cages `peers` reaches.
    pub fn new(peers: Arc<Peers>) -> Self {
        Delivery { peers }
    }

    /// The cages delivery reaches (and whose cluster map a config edit replaces).
    pub fn peers(&self) -> &Peers {
        &self.peers
    }

    /// Calls a method on `cage` synchronously (a step of a direct chain); blocks.
    pub fn call(&self, cage: &str, request: CallRequest) -> Result<Vec<u8>, CallError> {
        self.peers
            .reach(cage, |c| Ok(c.call(request)))?
            .map_err(|f| CallError::with_kind(f.error.kind, f.to_string()))
    }

    /// Asks `cage` to cancel call `id` (and the chains it started); blocks.
    pub fn cancel(&self, cage: &str, id: &str) -> Result<usize, CallError> {
        self.peers.reach(cage, |c| {
            c.steer(QueueQuery::Cancel(id.to_owned()), ACCEPT_TIMEOUT)
        })
    }

    /// Offers `calls`, all for cage `target`, in one request; per call, `Ok` once the target
    /// holds it durably (or held it before). A lone call goes as a plain acceptance. If the
    /// target closes the connection on a request of several calls (a frame larger than it
    /// takes, or a cut), each call is offered on its own, as unbatched delivery would.
    pub async fn offer_many(
        self: Arc<Self>,
        target: String,
        calls: Vec<QueuedCall>,
    ) -> Vec<(String, Result<(), CallError>)> {
        let ids: Vec<String> = calls.iter().map(|c| c.id.clone()).collect();
        let cage = target.clone();
        let joined = actix_rt::task::spawn_blocking(move || self.offer_blocking(&target, calls))
            .await
            .unwrap_or_else(|_| {
                Err(CallError::with_kind(
                    ErrorKind::Internal,
                    "delivery thread failed",
                ))
            });
        match joined {
            Ok(answers) => ids
                .into_iter()
                .zip(answers)
                .map(|(id, answer)| {
                    let outcome = answer.map(|duplicate_of| {
                        if let Some(of) = duplicate_of {
                            tracing::info!(call_id = %id, target = %cage, "target already holds this call (as {of})");
                        }
                    });
                    (id, outcome)
                })
                .collect(),
            // The request as a whole failed: every call in it failed this attempt.
            Err(e) => ids.into_iter().map(|id| (id, Err(e.clone()))).collect(),
        }
    }

    /// Per call, in order: the id it duplicates, or why it was not accepted.
    fn offer_blocking(
        &self,
        target: &str,
        calls: Vec<QueuedCall>,
    ) -> Result<Vec<Result<Option<String>, CallError>>, CallError> {
        let route = self.peers.route(target)?;
        if calls.len() == 1 {
            let call = calls.into_iter().next().expect("one call");
            return self
                .peers
                .with(target, &route, |c| c.accept(call, ACCEPT_TIMEOUT))
                .map(|answer| vec![answer.map_err(|f| f.into_offer_error())])
                .map_err(ClientError::into_call_error);
        }
        // A request that fails hands its calls back, for the one-by-one offers below.
        let mut handed_back = None;
        let offered = self.peers.with(target, &route, |c| {
            c.accept_many(calls, ACCEPT_TIMEOUT).map_err(|(e, calls)| {
                handed_back = Some(calls);
                e
            })
        });
        match (offered, handed_back) {
            (Ok(answers), _) => Ok(answers
                .into_iter()
                .map(|a| a.map_err(|f| f.into_offer_error()))
                .collect()),
            (
                Err(e @ (ClientError::Connection { .. } | ClientError::Closed { .. })),
                Some(singles),
            ) => {
                tracing::warn!(
                    target,
                    "a delivery of {} calls failed ({e}); offering them one by one",
                    singles.len()
                );
                Ok(singles
                    .into_iter()
                    .map(|call| {
                        self.peers
                            .with(target, &route, |c| c.accept(call, ACCEPT_TIMEOUT))
                            .map_err(ClientError::into_call_error)
                            .and_then(|a| a.map_err(|f| f.into_offer_error()))
                    })
                    .collect())
            }
            (Err(e), _) => Err(e.into_call_error()),
        }
    }
}
