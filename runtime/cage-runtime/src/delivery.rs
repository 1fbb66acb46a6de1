//! Delivery: handing a queued call from its source cage to its target cage, which accepts it
//! into its own durable queue. Connections come from the cage's shared pool; a target the
//! site does not list is found by [`crate::discovery`].

use crate::config::{ExecuteOn, Site};
use crate::discovery::{self, Finder, Found, Known};
use crate::model::call::QueuedCall;
use crate::transport::client::{Client, ClientError};
use crate::transport::pool::Pool;
use crate::transport::protocol::{CallRequest, QueueQuery};
use cage_sdk::{CallError, ErrorKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Longest a target may take to accept a call (its own group commit included).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);

/// Offers queued calls to their target cages.
pub struct Delivery {
    site: Site,
    execute_on: RwLock<ExecuteOn>,
    pool: Arc<Pool>,
    finder: Arc<Finder>,
    routes: Mutex<HashMap<String, Found>>,
}

impl Delivery {
    /// Delivery within `site`, finding cages through `execute_on`, the cage files and
    /// `finder`, over connections from `pool`.
    pub fn new(site: Site, execute_on: ExecuteOn, pool: Arc<Pool>, finder: Arc<Finder>) -> Self {
        Delivery {
            site,
            execute_on: RwLock::new(execute_on),
            pool,
            finder,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Uses new cage locations from now on; open connections and discovered bindings are
    /// dropped.
    pub fn set_routes(&self, execute_on: ExecuteOn) {
        *self.execute_on.write().unwrap_or_else(|p| p.into_inner()) = execute_on;
        self.pool.clear();
        self.finder.clear();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How to reach `cage`, or an unknown-cage error. Routes from the site's files are
    /// remembered until the site config changes, so delivery does not re-read cage files for
    /// every call; discovered ones are kept by the finder, for its `cache_for`. Blocks up to
    /// the discovery `query_timeout` for a cage that must be looked for.
    pub fn route(&self, cage: &str) -> Result<Found, CallError> {
        if let Some(found) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cage)
        {
            return Ok(found.clone());
        }
        let execute_on = self.execute_on.read().unwrap_or_else(|p| p.into_inner());
        let found = discovery::route(&self.site, &execute_on, &self.finder, cage)
            .map_err(discovery::LookupError::into_call_error)?;
        if found.known != Known::Discovered {
            self.routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cage.to_owned(), found.clone());
        }
        Ok(found)
    }

    /// Whether calls for `cage` can be queued: listed, found before, or found now (only a
    /// cage never found is asked for, up to the discovery `query_timeout`; a cage file read
    /// for it is remembered like any route).
    pub fn check(&self, cage: &str) -> Result<(), CallError> {
        if self.known(cage) {
            return Ok(());
        }
        self.route(cage).map(|_| ())
    }

    /// Whether `cage` is known without reading a file or asking the network: a remembered
    /// route, a `[cages.NAME]` entry, or a cage discovery found before (it may be restarting).
    pub fn known(&self, cage: &str) -> bool {
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(cage)
            || self
                .execute_on
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .cages
                .contains_key(cage)
            || self.finder.seen(cage)
    }

    /// Runs `request` on a pooled connection to `cage`; a discovered cage that cannot be
    /// reached where it was found is forgotten, so the next attempt looks for it again.
    fn with<T>(
        &self,
        cage: &str,
        found: &Found,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let result = self.pool.with(cage, &found.route, request);
        if let Err(e) = &result {
            discovery::note_failure(&self.finder, cage, found, e);
        }
        result
    }

    /// Most calls handed to `cage` at once: its `[cages.NAME] window`, else that of
    /// `[cages.unknown]`. Never looks anything up (the scheduler asks for every due call).
    pub fn window(&self, cage: &str) -> usize {
        if let Some(found) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cage)
        {
            return found.route.window;
        }
        let execute_on = self.execute_on.read().unwrap_or_else(|p| p.into_inner());
        execute_on
            .cages
            .get(cage)
            .map_or(execute_on.unknown.window, |r| r.window)
    }

    /// Calls a method on `cage` synchronously (a step of a direct chain); blocks.
    pub fn call(&self, cage: &str, request: CallRequest) -> Result<Vec<u8>, CallError> {
        let found = self.route(cage)?;
        self.with(cage, &found, |c| Ok(c.call(request)))
            .map_err(ClientError::into_call_error)?
            .map_err(|f| CallError::with_kind(f.error.kind, f.to_string()))
    }

    /// Asks `cage` to cancel call `id` (and the chains it started); blocks.
    pub fn cancel(&self, cage: &str, id: &str) -> Result<usize, CallError> {
        let found = self.route(cage)?;
        self.with(cage, &found, |c| {
            c.steer(QueueQuery::Cancel(id.to_owned()), ACCEPT_TIMEOUT)
        })
        .map_err(ClientError::into_call_error)
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
        let route = self.route(target)?;
        if calls.len() == 1 {
            let call = calls.into_iter().next().expect("one call");
            return self
                .with(target, &route, |c| c.accept(call, ACCEPT_TIMEOUT))
                .map(|answer| vec![answer.map_err(|f| f.into_offer_error())])
                .map_err(ClientError::into_call_error);
        }
        // A request that fails hands its calls back, for the one-by-one offers below.
        let mut handed_back = None;
        let offered = self.with(target, &route, |c| {
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
                        self.with(target, &route, |c| c.accept(call, ACCEPT_TIMEOUT))
                            .map_err(ClientError::into_call_error)
                            .and_then(|a| a.map_err(|f| f.into_offer_error()))
                    })
                    .collect())
            }
            (Err(e), _) => Err(e.into_call_error()),
        }
    }
}
