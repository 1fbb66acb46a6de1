//! Start-rate limits of queues and of their groups (`rate_limit`, `burst`, `group_rate_limit`,
//! `group_burst` in `[queues.NAME]`): the pump starts an attempt only while the buckets of its
//! queue and of its group hold a start, and each start is paced again as it begins to run, so
//! the starts a module sees keep the rate even when the commit of their start marks holds some
//! back and releases them together. Deliveries to another cage are not attempts here and are
//! not limited. The limits in force are read at each start, so an edited limit applies from the
//! next one. A bucket that has refilled to its burst is the same as none, so buckets of groups
//! gone quiet are dropped ([`Rates::prune`], [`Pacer::prune`]) and memory follows the groups
//! that start calls, not every group ever seen.

use crate::config::Rate;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A rate and its burst, as one queue or group is limited.
pub(super) type Limit = (Rate, usize);

/// A bucket: the starts it may make now (up to its burst), refilled at its rate.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    starts: f64,
    at: Instant,
    /// The limit it was last drawn on, to tell when it is full again.
    limit: Limit,
}

impl Bucket {
    /// The bucket as it stands at `now` under `limit`.
    fn at(self, (rate, burst): Limit, now: Instant) -> Bucket {
        let per_sec = f64::from(rate.count) / rate.per.as_secs_f64();
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        Bucket {
            starts: (self.starts + gained).min(burst as f64),
            at: now.max(self.at),
            limit: (rate, burst),
        }
    }
}

/// The buckets of the rate-limited queues and groups, by key (a queue's name, or a group's key),
/// as the pump draws on them.
#[derive(Debug, Default)]
pub(super) struct Rates {
    buckets: HashMap<String, Bucket>,
}

impl Rates {
    /// How long until `key` may start an attempt under `limit` (zero: now, or no limit).
    pub(super) fn wait(&self, key: &str, limit: Option<Limit>, now: Instant) -> Duration {
        let Some(limit) = limit else {
            return Duration::ZERO;
        };
        let bucket = self.bucket(key, limit, now);
        if bucket.starts >= 1.0 {
            Duration::ZERO
        } else {
            limit.0.interval().mul_f64(1.0 - bucket.starts)
        }
    }

    /// How many attempts `key` may start now under `limit` (`usize::MAX` without one).
    pub(super) fn available(&self, key: &str, limit: Option<Limit>, now: Instant) -> usize {
        match limit {
            None => usize::MAX,
            Some(limit) => self.bucket(key, limit, now).starts.max(0.0) as usize,
        }
    }

    /// Takes one start of `key` (nothing without a limit).
    pub(super) fn take(&mut self, key: &str, limit: Option<Limit>, now: Instant) {
        if let Some(limit) = limit {
            let mut bucket = self.bucket(key, limit, now);
            bucket.starts -= 1.0;
            self.buckets.insert(key.to_owned(), bucket);
        }
    }

    /// Drops the buckets that have refilled to their burst by `now`.
    pub(super) fn prune(&mut self, now: Instant) {
        self.buckets.retain(|_, b| {
            let limit = b.limit;
            b.at(limit, now).starts < limit.1 as f64
        });
    }

    /// Buckets held.
    pub(super) fn len(&self) -> usize {
        self.buckets.len()
    }

    fn bucket(&self, key: &str, limit: Limit, now: Instant) -> Bucket {
        match self.buckets.get(key) {
            Some(b) => b.at(limit, now),
            // A key not started from yet has its whole burst.
            None => Bucket {
                starts: limit.1 as f64,
                at: now,
                limit,
            },
        }
    }
}

/// Paces the starts of rate-limited queues and groups as they begin to run: a start waits until
/// one interval after the one before it, less what the burst allows (the generic cell rate
/// algorithm, with the time the next start is due per key). Shared with the tasks that run
/// attempts.
#[derive(Debug, Clone, Default)]
pub(super) struct Pacer(Arc<Mutex<HashMap<String, Instant>>>);

impl Pacer {
    /// How long a start of `key` asked for at `now` waits under `limit`.
    pub(super) fn delay(&self, key: &str, (rate, burst): Limit, now: Instant) -> Duration {
        let interval = rate.interval();
        let allowance = interval * (burst.max(1) as u32 - 1);
        let mut due = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let next = due.get(key).map_or(now, |t| (*t).max(now));
        let start = next.checked_sub(allowance).map_or(now, |t| t.max(now));
        due.insert(key.to_owned(), next + interval);
        start - now
    }

    /// Drops the keys whose next start is due by `now` (the same as a key never paced), once
    /// there are more than `above`.
    pub(super) fn prune(&self, now: Instant, above: usize) {
        let mut due = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if due.len() > above {
            due.retain(|_, next| *next > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(rate: &str, burst: usize) -> Option<Limit> {
        Some((Rate::parse(rate).unwrap(), burst))
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_start_per_interval() {
        let policy = limited("10/s", 3);
        let t0 = Instant::now();
        let mut rates = Rates::default();
        for _ in 0..3 {
            assert_eq!(rates.wait("q", policy, t0), Duration::ZERO);
            rates.take("q", policy, t0);
        }
        let wait = rates.wait("q", policy, t0);
        assert_eq!(wait, Duration::from_millis(100));
        assert!(!rates.wait("q", policy, t0 + wait / 2).is_zero());
        assert_eq!(rates.wait("q", policy, t0 + wait), Duration::ZERO);
        // Another queue has its own bucket; a queue without a limit never waits.
        assert_eq!(rates.wait("other", policy, t0), Duration::ZERO);
        rates.take("free", None, t0);
        assert_eq!(rates.wait("free", None, t0), Duration::ZERO);
        assert_eq!(rates.available("free", None, t0), usize::MAX);
        // A quiet spell refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            rates.take("q", policy, later);
        }
        assert!(!rates.wait("q", policy, later).is_zero());
    }

    #[test]
    fn an_edited_limit_applies_from_the_next_start() {
        let t0 = Instant::now();
        let mut rates = Rates::default();
        let slow = limited("1/s", 1);
        rates.take("q", slow, t0);
        assert_eq!(rates.wait("q", slow, t0), Duration::from_secs(1));
        let fast = limited("100/s", 1);
        assert_eq!(rates.wait("q", fast, t0), Duration::from_millis(10));
    }

    #[test]
    fn the_pacer_spaces_starts_by_the_interval_after_the_burst() {
        let pacer = Pacer::default();
        let rate = Rate::parse("20/s").unwrap();
        let t0 = Instant::now();
        let delays: Vec<u128> = (0..5)
            .map(|_| pacer.delay("q", (rate, 2), t0).as_millis())
            .collect();
        assert_eq!(delays, vec![0, 0, 50, 100, 150]);
        // After a quiet spell the burst is back.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.delay("q", (rate, 2), later), Duration::ZERO);
        assert_eq!(pacer.delay("q", (rate, 2), later), Duration::ZERO);
        assert_eq!(
            pacer.delay("q", (rate, 2), later),
            Duration::from_millis(50)
        );
    }

    #[test]
    fn buckets_and_paces_back_at_rest_are_dropped() {
        let t0 = Instant::now();
        let mut rates = Rates::default();
        let limit = limited("10/s", 2);
        for key in ["a", "b"] {
            rates.take(key, limit, t0);
        }
        rates.take("b", limit, t0);
        assert_eq!(rates.available("b", limit, t0), 0);
        // After 100 ms "a" is full again (2 of 2), "b" is not (1 of 2).
        rates.prune(t0 + Duration::from_millis(100));
        assert_eq!(rates.len(), 1);
        assert_eq!(
            rates.available("b", limit, t0 + Duration::from_millis(100)),
            1
        );
        let pacer = Pacer::default();
        let rate = Rate::parse("10/s").unwrap();
        pacer.delay("a", (rate, 1), t0);
        pacer.prune(t0 + Duration::from_millis(100), 0);
        assert_eq!(
            pacer.delay("a", (rate, 1), t0 + Duration::from_millis(100)),
            Duration::ZERO
        );
    }
}
