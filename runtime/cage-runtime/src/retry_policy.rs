//! The retry schedule: pure functions from a queue's policy and a call's history to the time of
//! its next attempt. Nothing here reads clocks, files or randomness; callers pass them in.

use crate::clock;
use crate::config::QueuePolicy;
use std::time::Duration;

/// Most attempts [`schedule`] lists, so a pathological policy cannot exhaust memory.
pub const SCHEDULE_LIMIT: usize = 100_000;

/// Delay before attempt `attempt` (1-based; attempt 1 runs at enqueue), without jitter.
pub fn delay_before(policy: &QueuePolicy, attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let first = policy.first_retry.as_secs_f64();
    let cap = policy.max_delay.as_secs_f64();
    // growth^(attempt-2) overflows to infinity for large attempts; min() then gives the cap.
    let grown = first
        * policy
            .growth
            .powi(i32::try_from(attempt - 2).unwrap_or(i32::MAX));
    // A cap near Duration::MAX rounds up past it as f64: saturate rather than panic.
    clock::from_secs_f64(grown.min(cap))
}

/// When attempt `attempt` (≥ 2) should start, in ms since the epoch, after the previous attempt
/// ended at `previous_end_ms`; `None` once that would be later than `give_up_after` from the
/// enqueue time, i.e. the call is dead. `jitter_sample` in [-1, 1] spreads the delay by up to
/// `policy.jitter` of itself (pass 0 for the plain schedule).
pub fn next_attempt_at(
    policy: &QueuePolicy,
    attempt: u32,
    enqueued_at_ms: u64,
    previous_end_ms: u64,
    jitter_sample: f64,
) -> Option<u64> {
    let base = delay_before(policy, attempt).as_secs_f64();
    let spread = policy.jitter * jitter_sample.clamp(-1.0, 1.0);
    let delay_ms = (base * (1.0 + spread) * 1000.0).round().max(0.0) as u64;
    let at = previous_end_ms.max(enqueued_at_ms).saturating_add(delay_ms);
    let give_up_at = clock::after(enqueued_at_ms, policy.give_up_after);
    (at <= give_up_at).then_some(at)
}

/// One attempt of the plain schedule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlannedAttempt {
    /// 1-based attempt number; attempt 1 is the one at enqueue.
    pub attempt: u32,
    /// Delay before this attempt, in seconds.
    pub delay_secs: f64,
    /// Time from enqueue to this attempt, in seconds.
    pub at_secs: f64,
}

/// The attempts `policy` implies for a call whose attempts all fail instantly, without jitter.
pub fn schedule(policy: &QueuePolicy) -> Vec<PlannedAttempt> {
    let horizon = policy.give_up_after.as_secs_f64();
    let mut plan = vec![PlannedAttempt {
        attempt: 1,
        delay_secs: 0.0,
        at_secs: 0.0,
    }];
    let mut at = 0.0;
    for attempt in 2.. {
        if plan.len() >= SCHEDULE_LIMIT {
            break;
        }
        let delay = delay_before(policy, attempt).as_secs_f64();
        if delay <= 0.0 || at + delay > horizon {
            break;
        }
        at += delay;
        plan.push(PlannedAttempt {
            attempt,
            delay_secs: delay,
            at_secs: at,
        });
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(policy: &mut QueuePolicy, first: u64, max: u64, give_up: u64) {
        policy.first_retry = Duration::from_millis(first);
        policy.max_delay = Duration::from_millis(max);
        policy.give_up_after = Duration::from_millis(give_up);
    }

    #[test]
    fn defaults_give_80_attempts_within_three_days() {
        let plan = schedule(&QueuePolicy::default());
        assert_eq!(plan.len(), 80);
        assert_eq!(plan[1].delay_secs, 60.0);
        assert!((plan[2].delay_secs - 96.0).abs() < 1e-9);
        assert_eq!(plan.last().unwrap().delay_secs, 3600.0);
        assert!(plan.last().unwrap().at_secs < 3.0 * 86400.0);
    }

    #[test]
    fn delays_grow_then_cap() {
        let mut p = QueuePolicy::default();
        ms(&mut p, 10, 50, 1000);
        p.growth = 2.0;
        let d: Vec<u128> = (1..=6).map(|a| delay_before(&p, a).as_millis()).collect();
        assert_eq!(d, vec![0, 10, 20, 40, 50, 50]);
        assert_eq!(delay_before(&p, u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn next_attempt_follows_previous_end_and_gives_up() {
        let mut p = QueuePolicy::default();
        ms(&mut p, 100, 1000, 1000);
        p.growth = 2.0;
        assert_eq!(next_attempt_at(&p, 2, 5_000, 5_010, 0.0), Some(5_110));
        assert_eq!(next_attempt_at(&p, 3, 5_000, 5_110, 0.0), Some(5_310));
        // Past give_up_after from enqueue: dead.
        assert_eq!(next_attempt_at(&p, 5, 5_000, 5_900, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut p = QueuePolicy::default();
        ms(&mut p, 1000, 1000, 100_000);
        p.jitter = 0.2;
        assert_eq!(next_attempt_at(&p, 2, 0, 0, 1.0), Some(1200));
        assert_eq!(next_attempt_at(&p, 2, 0, 0, -1.0), Some(800));
        assert_eq!(next_attempt_at(&p, 2, 0, 0, 7.0), Some(1200));
    }

    proptest::proptest! {
        #[test]
        fn any_policy_and_times_give_a_time_or_death_without_panic(
            first in proptest::prelude::any::<u64>(),
            max in proptest::prelude::any::<u64>(),
            give_up in proptest::prelude::any::<u64>(),
            growth in proptest::prelude::any::<f64>(),
            jitter in proptest::prelude::any::<f64>(),
            attempt in proptest::prelude::any::<u32>(),
            enqueued in proptest::prelude::any::<u64>(),
            ended in proptest::prelude::any::<u64>(),
            sample in proptest::prelude::any::<f64>(),
        ) {
            let p = QueuePolicy {
                first_retry: Duration::from_secs(first),
                max_delay: Duration::from_secs(max),
                give_up_after: Duration::from_secs(give_up),
                growth,
                jitter,
                ..QueuePolicy::default()
            };
            let _ = delay_before(&p, attempt);
            if let Some(at) = next_attempt_at(&p, attempt, enqueued, ended, sample) {
                proptest::prop_assert!(at >= enqueued.max(ended));
            }
        }
    }

    #[test]
    fn schedule_is_bounded() {
        let mut p = QueuePolicy::default();
        ms(&mut p, 1, 1, 10_000_000);
        assert_eq!(schedule(&p).len(), SCHEDULE_LIMIT);
    }
}
