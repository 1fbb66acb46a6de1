//! Start-rate limits of queues (`rate_limit`, `burst` in `[queues.NAME]`): the pump starts an
//! attempt of a rate-limited queue only while the queue's bucket holds a start, and each start
//! is paced again as it begins to run, so the starts a module sees keep the rate even when the
//! commit of their start marks holds some back and releases them together. Deliveries to
//! another cage are not attempts here and are not limited. The limits in force are read at each
//! start, so an edited limit applies from the next one.

use crate::config::{QueuePolicy, Rate};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A queue's bucket: the starts it may make now (up to its burst), refilled at its rate.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    starts: f64,
    at: Instant,
}

impl Bucket {
    /// The bucket as it stands at `now` under `rate` and `burst`.
    fn at(self, rate: Rate, burst: usize, now: Instant) -> Bucket {
        let per_sec = f64::from(rate.count) / rate.per.as_secs_f64();
        let gained = now.saturating_duration_since(self.at).as_secs_f64() * per_sec;
        Bucket {
            starts: (self.starts + gained).min(burst as f64),
            at: now.max(self.at),
        }
    }
}

/// The buckets of the queues with a rate limit, as the pump draws on them.
#[derive(Debug, Default)]
pub(super) struct Rates {
    buckets: HashMap<String, Bucket>,
}

impl Rates {
    /// How long until `queue` may start an attempt under `policy` (zero: now, or no limit).
    pub(super) fn wait(&self, queue: &str, policy: &QueuePolicy, now: Instant) -> Duration {
        let Some(rate) = policy.rate_limit else {
            return Duration::ZERO;
        };
        let bucket = self.bucket(queue, rate, policy.burst, now);
        if bucket.starts >= 1.0 {
            Duration::ZERO
        } else {
            rate.interval().mul_f64(1.0 - bucket.starts)
        }
    }

    /// Takes one start of `queue` (nothing if it has no limit).
    pub(super) fn take(&mut self, queue: &str, policy: &QueuePolicy, now: Instant) {
        if let Some(rate) = policy.rate_limit {
            let mut bucket = self.bucket(queue, rate, policy.burst, now);
            bucket.starts -= 1.0;
            self.buckets.insert(queue.to_owned(), bucket);
        }
    }

    fn bucket(&self, queue: &str, rate: Rate, burst: usize, now: Instant) -> Bucket {
        match self.buckets.get(queue) {
            Some(b) => b.at(rate, burst, now),
            // A queue not started from yet has its whole burst.
            None => Bucket {
                starts: burst as f64,
                at: now,
            },
        }
    }
}

/// Paces the starts of rate-limited queues as they begin to run: a start waits until one
/// interval after the one before it, less what the burst allows (the generic cell rate
/// algorithm, with the time the next start is due per queue). Shared with the tasks that run
/// attempts.
#[derive(Debug, Clone, Default)]
pub(super) struct Pacer(Arc<Mutex<HashMap<String, Instant>>>);

impl Pacer {
    /// How long a start of `queue` asked for at `now` waits under `rate` and `burst`.
    pub(super) fn delay(&self, queue: &str, rate: Rate, burst: usize, now: Instant) -> Duration {
        let interval = rate.interval();
        let allowance = interval * (burst.max(1) as u32 - 1);
        let mut due = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let next = due.get(queue).map_or(now, |t| (*t).max(now));
        let start = next.checked_sub(allowance).map_or(now, |t| t.max(now));
        due.insert(queue.to_owned(), next + interval);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(rate: &str, burst: usize) -> QueuePolicy {
        QueuePolicy {
            rate_limit: Rate::parse(rate),
            burst,
            ..QueuePolicy::default()
        }
    }

    #[test]
    fn a_bucket_gives_its_burst_then_one_start_per_interval() {
        let policy = limited("10/s", 3);
        let t0 = Instant::now();
        let mut rates = Rates::default();
        for _ in 0..3 {
            assert_eq!(rates.wait("q", &policy, t0), Duration::ZERO);
            rates.take("q", &policy, t0);
        }
        let wait = rates.wait("q", &policy, t0);
        assert_eq!(wait, Duration::from_millis(100));
        assert!(!rates.wait("q", &policy, t0 + wait / 2).is_zero());
        assert_eq!(rates.wait("q", &policy, t0 + wait), Duration::ZERO);
        // Another queue has its own bucket; a queue without a limit never waits.
        assert_eq!(rates.wait("other", &policy, t0), Duration::ZERO);
        let free = QueuePolicy::default();
        rates.take("free", &free, t0);
        assert_eq!(rates.wait("free", &free, t0), Duration::ZERO);
        // A quiet spell refills no more than the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            rates.take("q", &policy, later);
        }
        assert!(!rates.wait("q", &policy, later).is_zero());
    }

    #[test]
    fn an_edited_limit_applies_from_the_next_start() {
        let t0 = Instant::now();
        let mut rates = Rates::default();
        let slow = limited("1/s", 1);
        rates.take("q", &slow, t0);
        assert_eq!(rates.wait("q", &slow, t0), Duration::from_secs(1));
        let fast = limited("100/s", 1);
        assert_eq!(rates.wait("q", &fast, t0), Duration::from_millis(10));
    }

    #[test]
    fn the_pacer_spaces_starts_by_the_interval_after_the_burst() {
        let pacer = Pacer::default();
        let rate = Rate::parse("20/s").unwrap();
        let t0 = Instant::now();
        let delays: Vec<u128> = (0..5)
            .map(|_| pacer.delay("q", rate, 2, t0).as_millis())
            .collect();
        assert_eq!(delays, vec![0, 0, 50, 100, 150]);
        // After a quiet spell the burst is back.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(pacer.delay("q", rate, 2, later), Duration::ZERO);
        assert_eq!(pacer.delay("q", rate, 2, later), Duration::ZERO);
        assert_eq!(pacer.delay("q", rate, 2, later), Duration::from_millis(50));
    }
}
