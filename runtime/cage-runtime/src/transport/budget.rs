//! Bytes of frames in flight: one budget per connection and one for the whole cage. A frame
//! is charged before its body is read, so a spent budget stops reading (the peer's sends back
//! up in TCP) instead of growing the cage; the frame's answer takes the charge over and gives
//! it back once it is written.
//!
//! A charge that would overrun a budget waits, except when the budget holds nothing at all (a
//! frame larger than the budget still goes, alone) and for answers, which are always counted
//! (an answer computed must go out; counting it stops further reading until it has).

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use tokio::sync::Notify;

/// Frames up to this size are charged to the cage's budget without waiting for it: control
/// requests (ping, listings, metrics) keep flowing while large frames fill it. Each
/// connection's own budget still applies to them.
pub const SMALL_FRAME: usize = 64 * 1024;

/// A budget of bytes; clones share it.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

// Atomics, not a lock: every request and every answer of every connection passes the cage's
// budget, and a lock there (with a wake-up call on each release) cost a tenth of the calls/s
// of 64 concurrent clients on two cores.
struct Inner {
    cap: usize,
    used: AtomicUsize,
    /// Charges waiting for room: a release wakes them only when there are any.
    waiting: AtomicUsize,
    freed: Notify,
}

impl Budget {
    /// A budget of `cap` bytes.
    pub fn new(cap: usize) -> Self {
        Budget {
            inner: Arc::new(Inner {
                cap,
                used: AtomicUsize::new(0),
                waiting: AtomicUsize::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// Its size in bytes.
    pub fn cap(&self) -> usize {
        self.inner.cap
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.inner.used.load(SeqCst)
    }

    /// Charges `n` bytes if they fit (or the budget holds nothing).
    pub fn try_take(&self, n: usize) -> Option<Reservation> {
        let cap = self.inner.cap;
        self.inner
            .used
            .fetch_update(SeqCst, SeqCst, |used| {
                (used == 0 || used.saturating_add(n) <= cap).then(|| used.saturating_add(n))
            })
            .ok()
            .map(|_| self.reservation(n))
    }

    /// Charges `n` bytes once they fit, waiting for other charges to be given back.
    pub async fn take(&self, n: usize) -> Reservation {
        if let Some(r) = self.try_take(n) {
            return r;
        }
        // Counted as waiting before looking again, and the wake-up registered before that look:
        // a release after the look sees the count and wakes this wait.
        let _waiting = Waiting::new(&self.inner.waiting);
        loop {
            let freed = self.inner.freed.notified();
            if let Some(r) = self.try_take(n) {
                return r;
            }
            freed.await;
        }
    }

    /// Charges `n` bytes now, over the budget if need be.
    pub fn force(&self, n: usize) -> Reservation {
        self.add(n);
        self.reservation(n)
    }

    fn add(&self, n: usize) {
        let _ = self
            .inner
            .used
            .fetch_update(SeqCst, SeqCst, |used| Some(used.saturating_add(n)));
    }

    fn reservation(&self, bytes: usize) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    fn give_back(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self
            .inner
            .used
            .fetch_update(SeqCst, SeqCst, |used| Some(used.saturating_sub(n)));
        if self.inner.waiting.load(SeqCst) > 0 {
            self.inner.freed.notify_waiters();
        }
    }
}

/// One charge counted as waiting for room, while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, SeqCst);
    }
}

/// Bytes charged to a budget, given back when dropped.
pub struct Reservation {
    budget: Budget,
    bytes: usize,
}

impl Reservation {
    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Charges `n` bytes instead, over the budget if need be.
    pub fn resize(&mut self, n: usize) {
        if n > self.bytes {
            self.budget.add(n - self.bytes);
        } else {
            self.budget.give_back(self.bytes - n);
        }
        self.bytes = n;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// One frame's bytes, charged to its connection's budget and to the cage's.
pub struct Charge {
    connection: Reservation,
    cage: Reservation,
}

impl Charge {
    /// Charges `n` bytes of a request about to be read: waits for room on the connection,
    /// then (unless the frame is small) for room on the cage.
    pub async fn for_request(connection: &Budget, cage: &Budget, n: usize) -> Charge {
        let connection = connection.take(n).await;
        let cage = match n <= SMALL_FRAME {
            true => cage.force(n),
            false => match cage.try_take(n) {
                Some(r) => r,
                None => {
                    tracing::debug!(
                        "the cage's budget for frames in flight ({} bytes, max_inflight_bytes) is spent: a frame of {n} bytes waits to be read",
                        cage.cap()
                    );
                    cage.take(n).await
                }
            },
        };
        Charge { connection, cage }
    }

    /// A charge of no bytes, for a frame the cage sends unasked (its last word on a
    /// connection it closes): small, and never worth waiting for room.
    pub fn unasked(connection: &Budget, cage: &Budget) -> Charge {
        Charge {
            connection: connection.force(0),
            cage: cage.force(0),
        }
    }

    /// Charges `n` bytes instead (a request's charge passing to its answer).
    pub fn resize(&mut self, n: usize) {
        self.connection.resize(n);
        self.cage.resize(n);
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.connection.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn takes_within_the_cap_and_alone_beyond_it() {
        let b = Budget::new(100);
        let a = b.try_take(60).unwrap();
        assert!(b.try_take(50).is_none(), "60 + 50 is over 100");
        let c = b.try_take(40).unwrap();
        assert_eq!(b.used(), 100);
        drop((a, c));
        assert_eq!(b.used(), 0);
        // An empty budget takes a frame larger than itself: it goes alone.
        let big = b.try_take(500).unwrap();
        assert!(b.try_take(1).is_none());
        drop(big);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn answers_are_counted_over_the_cap_and_resizing_moves_the_charge() {
        let b = Budget::new(100);
        let mut r = b.try_take(80).unwrap();
        r.resize(150);
        assert_eq!((b.used(), r.bytes()), (150, 150));
        assert!(b.try_take(1).is_none());
        r.resize(10);
        assert_eq!(b.used(), 10);
        let forced = b.force(500);
        assert_eq!(b.used(), 510);
        drop((r, forced));
        assert_eq!(b.used(), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_charge_waits_until_room_is_given_back() {
        let (conn, cage) = (Budget::new(1 << 20), Budget::new(1 << 20));
        let first = Charge::for_request(&conn, &cage, 900 * 1024).await;
        let (conn2, cage2) = (conn.clone(), cage.clone());
        let waiting = tokio::spawn(async move {
            let c = Charge::for_request(&conn2, &cage2, 900 * 1024).await;
            c.bytes()
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiting.is_finished(),
            "no room yet: the second frame waits"
        );
        drop(first);
        assert_eq!(waiting.await.unwrap(), 900 * 1024);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn small_frames_pass_a_spent_cage_budget_but_not_their_connections() {
        let cage = Budget::new(SMALL_FRAME * 2);
        let (a, b) = (Budget::new(SMALL_FRAME * 4), Budget::new(SMALL_FRAME * 4));
        let _big = Charge::for_request(&a, &cage, SMALL_FRAME * 2).await;
        // The cage's budget is spent; a small frame on another connection still goes.
        let small = Charge::for_request(&b, &cage, 100).await;
        assert_eq!(cage.used(), SMALL_FRAME * 2 + 100);
        let mut answer = small;
        answer.resize(10);
        assert_eq!(b.used(), 10);
        assert!(cage.try_take(SMALL_FRAME + 1).is_none());
        // An answer larger than its request is counted whole, over the budget.
        answer.resize(SMALL_FRAME * 5);
        assert_eq!(
            (b.used(), answer.bytes()),
            (SMALL_FRAME * 5, SMALL_FRAME * 5)
        );
    }
}
