//! Delivery: handing a queued call from its source cage to its target cage, which accepts it
//! into its own durable queue. Connections come from the cage's shared pool.

use crate::config::{CageRoute, ExecuteOn, Site};
use crate::queue::QueuedCall;
use crate::transport::client::ClientError;
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
    routes: Mutex<HashMap<String, CageRoute>>,
}

impl Delivery {
    /// Delivery within `site`, finding cages through `execute_on` and the cage files, over
    /// connections from `pool`.
    pub fn new(site: Site, execute_on: ExecuteOn, pool: Arc<Pool>) -> Self {
        Delivery {
            site,
            execute_on: RwLock::new(execute_on),
            pool,
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Uses new cage locations from now on; open connections are dropped.
    pub fn set_routes(&self, execute_on: ExecuteOn) {
        *self.execute_on.write().unwrap_or_else(|p| p.into_inner()) = execute_on;
        self.pool.clear();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How to reach `cage`, or an unknown-cage error. Found routes are remembered until the
    /// site config changes, so delivery does not re-read cage files for every call.
    pub fn route(&self, cage: &str) -> Result<CageRoute, CallError> {
        if let Some(route) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cage)
        {
            return Ok(route.clone());
        }
        let execute_on = self.execute_on.read().unwrap_or_else(|p| p.into_inner());
        let route = self
            .site
            .route(&execute_on, cage)
            .map_err(|e| CallError::with_kind(ErrorKind::UnknownCage, e.to_string()))?;
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cage.to_owned(), route.clone());
        Ok(route)
    }

    /// Calls a method on `cage` synchronously (a step of a direct chain); blocks.
    pub fn call(&self, cage: &str, request: CallRequest) -> Result<Vec<u8>, CallError> {
        let route = self.route(cage)?;
        self.pool
            .with(cage, &route, |c| Ok(c.call(request)))
            .map_err(ClientError::into_call_error)?
            .map_err(|f| CallError::with_kind(f.error.kind, f.to_string()))
    }

    /// Asks `cage` to cancel call `id` (and the chains it started); blocks.
    pub fn cancel(&self, cage: &str, id: &str) -> Result<usize, CallError> {
        let route = self.route(cage)?;
        self.pool
            .with(cage, &route, |c| {
                c.steer(QueueQuery::Cancel(id.to_owned()), ACCEPT_TIMEOUT)
            })
            .map_err(ClientError::into_call_error)
    }

    /// Offers `call` to its target; `Ok` once the target holds it durably (or held it before).
    pub async fn offer(self: Arc<Self>, call: QueuedCall) -> Result<(), CallError> {
        let joined = actix_rt::task::spawn_blocking(move || {
            let route = self.route(&call.target)?;
            let (id, target) = (call.id.clone(), call.target.clone());
            let duplicate_of = self
                .pool
                .with(&target, &route, |c| c.accept(call, ACCEPT_TIMEOUT))
                .map_err(ClientError::into_call_error)?;
            if let Some(of) = duplicate_of {
                tracing::info!(call_id = %id, target, "target already holds this call (as {of})");
            }
            Ok(())
        })
        .await;
        joined.unwrap_or_else(|_| {
            Err(CallError::with_kind(
                ErrorKind::Internal,
                "delivery thread failed",
            ))
        })
    }
}
