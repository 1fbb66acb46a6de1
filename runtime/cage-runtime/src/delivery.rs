//! Delivery: handing a queued call from its source cage to its target cage, which accepts it
//! into its own durable queue. Connections are kept per target and reused.

use crate::config::{CageRoute, ExecuteOn, Site};
use crate::queue::QueuedCall;
use crate::transport::client::{Client, ClientError};
use cage_sdk::{CallError, ErrorKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Longest a target may take to accept a call (its own group commit included).
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle connections kept per target.
const POOL_PER_TARGET: usize = 16;

/// Offers queued calls to their target cages.
pub struct Delivery {
    site: Site,
    execute_on: RwLock<ExecuteOn>,
    pool: Mutex<HashMap<String, Vec<Client>>>,
    routes: Mutex<HashMap<String, CageRoute>>,
}

impl Delivery {
    /// Delivery within `site`, finding cages through `execute_on` and the cage files.
    pub fn new(site: Site, execute_on: ExecuteOn) -> Self {
        Delivery {
            site,
            execute_on: RwLock::new(execute_on),
            pool: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// Uses new cage locations from now on; open connections are dropped.
    pub fn set_routes(&self, execute_on: ExecuteOn) {
        *self.execute_on.write().unwrap_or_else(|p| p.into_inner()) = execute_on;
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).clear();
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

    fn take(&self, cage: &str) -> Result<Client, CallError> {
        if let Some(client) = self
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(cage)
            .and_then(Vec::pop)
        {
            return Ok(client);
        }
        let route = self.route(cage)?;
        Client::connect(cage, &route).map_err(ClientError::into_call_error)
    }

    fn give_back(&self, cage: &str, client: Client) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        let idle = pool.entry(cage.to_owned()).or_default();
        if idle.len() < POOL_PER_TARGET {
            idle.push(client);
        }
    }

    /// Offers `call` to its target; `Ok` once the target holds it durably (or held it before).
    pub async fn offer(self: Arc<Self>, call: QueuedCall) -> Result<(), CallError> {
        let joined = actix_rt::task::spawn_blocking(move || {
            let target = call.target.clone();
            let mut client = self.take(&target)?;
            match client.accept(call.clone(), ACCEPT_TIMEOUT) {
                Ok(duplicate_of) => {
                    if let Some(of) = duplicate_of {
                        tracing::info!(call_id = %call.id, target, "target already holds this call (as {of})");
                    }
                    self.give_back(&target, client);
                    Ok(())
                }
                // A pooled connection may have been closed by the target (restart, idle
                // timeout): one fresh connection before counting the attempt as failed.
                Err(ClientError::Connection { .. }) => {
                    let route = self.route(&target)?;
                    let mut fresh = Client::connect(&target, &route).map_err(ClientError::into_call_error)?;
                    fresh.accept(call, ACCEPT_TIMEOUT).map_err(ClientError::into_call_error)?;
                    self.give_back(&target, fresh);
                    Ok(())
                }
                Err(e) => Err(e.into_call_error()),
            }
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
