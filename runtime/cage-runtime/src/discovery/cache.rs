//! What discovery found, by cage name, and when to ask again: pure decisions over plain data
//! and times passed in, so they are tested without sockets or clocks.
//!
//! A found binding is used for `cache_for`; after that, or once a connect to it failed
//! (`forget`), the next lookup asks again. The entry itself stays, marked stale: a cage that
//! was found once is a name this process knows, even while it is being looked for anew (an
//! enqueue for it is not refused as a typo because it is restarting).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What the cache says about one cage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// Found within `cache_for` and not failed since: use these addresses.
    Fresh(Vec<SocketAddr>),
    /// Found longer ago than `cache_for`: ask again.
    Expired,
    /// A connect to what was found failed: ask again.
    Forgotten,
    /// Never found: ask.
    Unknown,
}

impl Binding {
    /// Whether the cage was found at some point (whatever its state now).
    pub fn seen(&self) -> bool {
        !matches!(self, Binding::Unknown)
    }
}

#[derive(Debug, Clone)]
struct Entry {
    addresses: Vec<SocketAddr>,
    found_at: Instant,
    forgotten: bool,
}

/// Found cages by name.
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<String, Entry>,
}

impl Cache {
    /// What is known of `cage` at `now`, for bindings that live `cache_for`.
    pub fn get(&self, cage: &str, now: Instant, cache_for: Duration) -> Binding {
        match self.entries.get(cage) {
            None => Binding::Unknown,
            Some(e) if e.forgotten => Binding::Forgotten,
            Some(e) if now.saturating_duration_since(e.found_at) >= cache_for => Binding::Expired,
            Some(e) => Binding::Fresh(e.addresses.clone()),
        }
    }

    /// Records that `cage` answered at `addresses` at `now`.
    pub fn found(&mut self, cage: &str, addresses: Vec<SocketAddr>, now: Instant) {
        self.entries.insert(
            cage.to_owned(),
            Entry {
                addresses,
                found_at: now,
                forgotten: false,
            },
        );
    }

    /// Marks `cage`'s binding as failed, so the next lookup asks again; answers whether there
    /// was a binding to forget.
    pub fn forget(&mut self, cage: &str) -> bool {
        match self.entries.get_mut(cage) {
            Some(e) if !e.forgotten => {
                e.forgotten = true;
                true
            }
            _ => false,
        }
    }

    /// Drops everything (the discovery settings changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIVE_MIN: Duration = Duration::from_secs(300);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 3], port))
    }

    #[test]
    fn a_binding_is_fresh_for_cache_for_then_expired() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        assert_eq!(cache.get("c", t0, FIVE_MIN), Binding::Unknown);
        cache.found("c", vec![addr(1), addr(2)], t0);
        assert_eq!(
            cache.get("c", t0 + Duration::from_secs(299), FIVE_MIN),
            Binding::Fresh(vec![addr(1), addr(2)])
        );
        assert_eq!(cache.get("c", t0 + FIVE_MIN, FIVE_MIN), Binding::Expired);
        assert_eq!(cache.get("other", t0, FIVE_MIN), Binding::Unknown);
        // A clock read before the entry was made (another thread's `now`) is not an expiry.
        cache.found("late", vec![addr(3)], t0 + Duration::from_secs(10));
        assert!(matches!(cache.get("late", t0, FIVE_MIN), Binding::Fresh(_)));
    }

    #[test]
    fn a_zero_cache_for_asks_every_time() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        cache.found("c", vec![addr(1)], t0);
        assert_eq!(cache.get("c", t0, Duration::ZERO), Binding::Expired);
    }

    #[test]
    fn a_forgotten_binding_is_asked_again_until_found_anew() {
        let t0 = Instant::now();
        let mut cache = Cache::default();
        assert!(!cache.forget("c"), "nothing to forget");
        cache.found("c", vec![addr(1)], t0);
        assert!(cache.forget("c"));
        assert!(!cache.forget("c"), "forgotten once");
        let b = cache.get("c", t0, FIVE_MIN);
        assert_eq!(b, Binding::Forgotten);
        assert!(b.seen(), "a forgotten cage is still a known name");
        cache.found("c", vec![addr(9)], t0 + Duration::from_secs(1));
        assert_eq!(
            cache.get("c", t0 + Duration::from_secs(1), FIVE_MIN),
            Binding::Fresh(vec![addr(9)])
        );
        cache.clear();
        assert!(!cache.get("c", t0, FIVE_MIN).seen());
    }
}
