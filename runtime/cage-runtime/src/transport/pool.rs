//! Idle connections to cages, kept and reused across requests, so a cage talking to another
//! does not pay a TCP handshake per message or call.

use super::client::{Client, ClientError};
use crate::config::{Address, CageRoute};
use std::collections::HashMap;
use std::sync::Mutex;

/// Idle connections kept per cage and route.
const IDLE_PER_ROUTE: usize = 16;

/// Where a pooled connection leads: a cage at the addresses and in the mode of one route.
/// A connection opened on a route is reused only for the same route, so a cage that moved is
/// never reached at its old address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Destination {
    cage: String,
    addresses: Vec<Address>,
    tls: bool,
}

impl Destination {
    fn of(cage: &str, route: &CageRoute) -> Self {
        Destination {
            cage: cage.to_owned(),
            addresses: route.addresses.clone(),
            tls: route.tls,
        }
    }
}

/// A pool of connections, by cage and route.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Destination, Vec<Client>>>,
}

impl Pool {
    /// Runs `request` on an idle connection to `cage` by `route` that is still open, or on a
    /// new one; the connection goes back to the pool unless the request failed.
    pub fn with<T>(
        &self,
        cage: &str,
        route: &CageRoute,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let destination = Destination::of(cage, route);
        let mut client = loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(&destination)
                .and_then(Vec::pop);
            match idle {
                // A connection the cage closed meanwhile (restart, idle timeout) is dropped
                // before use, so a request is never sent twice.
                Some(mut c) => {
                    if c.is_open() {
                        break c;
                    }
                }
                None => break Client::connect(cage, route)?,
            }
        };
        let result = request(&mut client);
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let kept = idle.entry(destination).or_default();
            if kept.len() < IDLE_PER_ROUTE {
                kept.push(client);
            }
        }
        result
    }

    /// Drops every idle connection (cage locations changed).
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_connection_is_kept_for_its_route_not_only_its_cage() {
        let at = |addr: &str| CageRoute::single(addr.parse().unwrap(), Duration::from_secs(1));
        let old = Destination::of("b", &at("127.0.0.1:7001"));
        assert_eq!(old, Destination::of("b", &at("127.0.0.1:7001")));
        assert_ne!(old, Destination::of("b", &at("127.0.0.1:7002")));
        assert_ne!(
            old,
            Destination::of("b", &at("127.0.0.1:7001").with_tls(true))
        );
        assert_ne!(old, Destination::of("c", &at("127.0.0.1:7001")));
    }
}
