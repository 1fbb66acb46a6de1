//! Peers: the one way a cage reaches another. A name becomes a route (the cluster map
//! `config/config_execute_on.toml`, then the cage files, then discovery), the route a pooled
//! connection, and a failed connection to a discovered cage makes discovery ask again.
//!
//! The handle holds the cluster map in force: a good edit of the file replaces it
//! ([`Peers::set_map`]), and every later lookup, by delivery as by a module's `ctx.call`,
//! follows the new map.

use crate::config::{CageRoute, ExecuteOn, Site};
use crate::discovery::{self, Finder, Found, Known, LookupError};
use crate::transport::client::{Client, ClientError};
use crate::transport::pool::Pool;
use cage_sdk::CallError;
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

/// How this process reaches other cages: the live cluster map, remembered routes, discovery
/// and pooled connections.
pub struct Peers {
    site: Site,
    map: RwLock<ExecuteOn>,
    finder: Finder,
    routes: Mutex<HashMap<String, Found>>,
    pool: Pool,
}

impl Peers {
    /// Peers of `site`, found through the cluster map `map`, the cage files and discovery.
    pub fn new(site: Site, map: ExecuteOn) -> Self {
        Peers {
            site,
            map: RwLock::new(map),
            finder: Finder::new(),
            routes: Mutex::new(HashMap::new()),
            pool: Pool::default(),
        }
    }

    /// Puts a new cluster map in force: remembered routes, discovered bindings and idle
    /// connections are dropped, so the next request to any cage looks it up again.
    pub fn set_map(&self, map: ExecuteOn) {
        *self.map.write().unwrap_or_else(|p| p.into_inner()) = map;
        self.pool.clear();
        self.finder.clear();
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// How to reach `cage`, or why it is unknown. Routes from the site's files are remembered
    /// until the map changes, so the cage files are not re-read for every call; discovered
    /// ones are kept by the finder, for its `cache_for`. Blocks up to the discovery
    /// `query_timeout` for a cage that must be looked for.
    pub fn find(&self, cage: &str) -> Result<Found, LookupError> {
        if let Some(found) = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cage)
        {
            return Ok(found.clone());
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        let found = discovery::route(&self.site, &map, &self.finder, cage)?;
        if found.known != Known::Discovered {
            self.routes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(cage.to_owned(), found.clone());
        }
        Ok(found)
    }

    /// Like [`Peers::find`], as the call error a caller sees (unknown cage, or a bad name).
    pub fn route(&self, cage: &str) -> Result<Found, CallError> {
        self.find(cage).map_err(LookupError::into_call_error)
    }

    /// Whether calls for `cage` can be queued: known already, or found now (only a cage never
    /// found is asked for, up to the discovery `query_timeout`).
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
                .map
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .cages
                .contains_key(cage)
            || self.finder.seen(cage)
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
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.cages.get(cage).map_or(map.unknown.window, |r| r.window)
    }

    /// Runs `request` on a pooled connection to `cage` by `found`; a discovered cage that
    /// cannot be reached where it was found is forgotten, so the next attempt looks again.
    pub fn with<T>(
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

    /// Looks `cage` up and runs `request` on a pooled connection to it; any failure is the
    /// call error a caller sees.
    pub fn reach<T>(
        &self,
        cage: &str,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, CallError> {
        let found = self.route(cage)?;
        self.with(cage, &found, request)
            .map_err(ClientError::into_call_error)
    }

    /// Runs `request` on a pooled connection to `cage` at a route known without a lookup
    /// (this cage's own listener).
    pub fn at<T>(
        &self,
        cage: &str,
        route: &CageRoute,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        self.pool.with(cage, route, request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EXECUTE_ON_FILE;

    fn map(text: &str) -> ExecuteOn {
        ExecuteOn::parse(std::path::Path::new(EXECUTE_ON_FILE), text).unwrap()
    }

    #[test]
    fn a_new_map_replaces_the_remembered_routes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cages")).unwrap();
        let peers = Peers::new(
            Site::new(dir.path()),
            map("[cages.b]\naddresses = [\"127.0.0.1:7001\"]\n"),
        );
        let at = |peers: &Peers| peers.route("b").unwrap().route.addresses;
        assert_eq!(
            at(&peers),
            map("[cages.b]\naddresses = [\"127.0.0.1:7001\"]\n").cages["b"].addresses
        );
        assert!(peers.known("b"));
        let moved = map("[cages.b]\naddresses = [\"127.0.0.1:7002\"]\nwindow = 3\n");
        peers.set_map(moved.clone());
        assert_eq!(at(&peers), moved.cages["b"].addresses);
        assert_eq!(peers.window("b"), 3);
        peers.set_map(map("[cages.unknown]\ndiscovery = \"off\"\n"));
        assert!(
            !peers.known("b"),
            "a cage the map no longer lists is forgotten"
        );
        assert!(peers.route("b").is_err());
    }
}
