//! Idle connections to cages, kept and reused across requests, so a cage talking to another
//! does not pay a TCP handshake per message or call.

use super::client::{Client, ClientError};
use crate::config::CageRoute;
use std::collections::HashMap;
use std::sync::Mutex;

/// Idle connections kept per cage.
const IDLE_PER_CAGE: usize = 16;

/// A pool of connections, by cage name.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Client>>>,
}

impl Pool {
    /// Runs `request` on an idle connection to `cage` that is still open, or on a new one;
    /// the connection goes back to the pool unless the request failed.
    pub fn with<T>(
        &self,
        cage: &str,
        route: &CageRoute,
        request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut client = loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(cage)
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
            let kept = idle.entry(cage.to_owned()).or_default();
            if kept.len() < IDLE_PER_CAGE {
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
