//! The retry schedule: pure functions from a queue's policy and a call's history to the time of
//! its next attempt. Nothing here reads clocks, files or randomness; callers pass them in.

use crate::model::clock;
use std::time::Duration;

/// Most attempts any queued call makes: each is kept in the call's record, so a call retried
/// without end would grow without end (a queue whose schedule implies more is refused).
pub const MAX_ATTEMPTS: u32 = 1000;

/// Shortest delay kept between two attempts of a call, jitter included (a zero delay retried a
/// failing call in a busy loop); also the least `first_retry` a queue may set.
pub const MIN_RETRY: Duration = Duration::from_millis(10);

/// The part of a queue's policy that decides when attempts run (the queue's config carries it).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub first_retry: Duration,
    /// Each delay is this many times the previous one.
    pub growth: f64,
    /// Delays never exceed this.
    pub max_delay: Duration,
    /// No attempt starts later than this after the call was enqueued.
    pub give_up_after: Duration,
    /// Random spread applied to each delay, as a fraction of it (0 to 1).
    pub jitter: f64,
}

impl Default for Backoff {
    /// A minute, growing 1.6 times to an hourly cap, for three days, without jitter.
    fn default() -> Self {
        Backoff {
            first_retry: Duration::from_secs(60),
            growth: 1.6,
            max_delay: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(3 * 24 * 3600),
            jitter: 0.0,
        }
    }
}

/// Delay before attempt `attempt` (1-based; attempt 1 runs at enqueue), without jitter.
pub fn delay_before(policy: &Backoff, attempt: u32) -> Duration {
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
/// enqueue time, or the attempt would be past [`MAX_ATTEMPTS`], i.e. the call is dead.
/// `jitter_sample` in [-1, 1] spreads the delay by up to `policy.jitter` of itself (pass 0 for
/// the plain schedule); the delay is never under [`MIN_RETRY`].
///
/// The scheduler and [`schedule`] (what `cage schedule` prints) both ask this function, so
/// the listing cannot disagree with what the cage does.
pub fn next_attempt_at(
    policy: &Backoff,
    attempt: u32,
    enqueued_at_ms: u64,
    previous_end_ms: u64,
    jitter_sample: f64,
) -> Option<u64> {
    if attempt > MAX_ATTEMPTS {
        return None;
    }
    uncapped_next_attempt_at(
        policy,
        attempt,
        enqueued_at_ms,
        previous_end_ms,
        jitter_sample,
    )
}

/// [`next_attempt_at`] without the attempt cap: what the policy alone implies.
fn uncapped_next_attempt_at(
    policy: &Backoff,
    attempt: u32,
    enqueued_at_ms: u64,
    previous_end_ms: u64,
    jitter_sample: f64,
) -> Option<u64> {
    let base = delay_before(policy, attempt).as_secs_f64();
    let spread = policy.jitter * jitter_sample.clamp(-1.0, 1.0);
    let floor = MIN_RETRY.as_secs_f64() * 1000.0;
    let delay_ms = (base * (1.0 + spread) * 1000.0).round().max(floor) as u64;
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

/// Start times (ms after enqueue) of the attempts `policy` implies for a call whose attempts
/// all fail instantly, without jitter, as [`next_attempt_at`] decides them; at most `limit`.
fn plain_times(
    policy: &Backoff,
    limit: u32,
    next: fn(&Backoff, u32, u64, u64, f64) -> Option<u64>,
) -> Vec<u64> {
    let mut times = vec![0];
    let mut attempt: u32 = 1;
    while attempt < limit {
        let previous = times[times.len() - 1];
        attempt += 1;
        match next(policy, attempt, 0, previous, 0.0) {
            Some(at) => times.push(at),
            None => break,
        }
    }
    times
}

/// The attempts `policy` implies for a call whose attempts all fail instantly, without jitter:
/// exactly the times the scheduler gives such a call (one function decides both).
pub fn schedule(policy: &Backoff) -> Vec<PlannedAttempt> {
    let times = plain_times(policy, MAX_ATTEMPTS, next_attempt_at);
    let mut previous = 0;
    let mut plan = Vec::with_capacity(times.len());
    for (i, &at) in times.iter().enumerate() {
        plan.push(PlannedAttempt {
            attempt: i as u32 + 1,
            delay_secs: at.saturating_sub(previous) as f64 / 1000.0,
            at_secs: at as f64 / 1000.0,
        });
        previous = at;
    }
    plan
}

/// Why `policy` cannot be used, if it cannot: its schedule would make more than
/// [`MAX_ATTEMPTS`] attempts before `give_up_after` (the cage would stop it at the cap, so the
/// policy would not say what happens).
pub fn refusal(policy: &Backoff) -> Option<String> {
    let times = plain_times(policy, MAX_ATTEMPTS + 1, uncapped_next_attempt_at);
    if times.len() <= MAX_ATTEMPTS as usize {
        return None;
    }
    let last = times[MAX_ATTEMPTS as usize - 1];
    Some(format!(
        "this schedule makes more than {MAX_ATTEMPTS} attempts (the most a call makes): its first {MAX_ATTEMPTS} span {} of give_up_after {}; raise first_retry, growth or max_delay, or shorten give_up_after (see `cage schedule`)",
        humantime::format_duration(Duration::from_millis(last)),
        humantime::format_duration(policy.give_up_after),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(policy: &mut Backoff, first: u64, max: u64, give_up: u64) {
        policy.first_retry = Duration::from_millis(first);
        policy.max_delay = Duration::from_millis(max);
        policy.give_up_after = Duration::from_millis(give_up);
    }

    #[test]
    fn defaults_give_80_attempts_within_three_days() {
        let plan = schedule(&Backoff::default());
        assert_eq!(plan.len(), 80);
        assert_eq!(plan[1].delay_secs, 60.0);
        assert!((plan[2].delay_secs - 96.0).abs() < 1e-9);
        assert_eq!(plan.last().unwrap().delay_secs, 3600.0);
        assert!(plan.last().unwrap().at_secs < 3.0 * 86400.0);
    }

    #[test]
    fn delays_grow_then_cap() {
        let mut p = Backoff::default();
        ms(&mut p, 10, 50, 1000);
        p.growth = 2.0;
        let d: Vec<u128> = (1..=6).map(|a| delay_before(&p, a).as_millis()).collect();
        assert_eq!(d, vec![0, 10, 20, 40, 50, 50]);
        assert_eq!(delay_before(&p, u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn next_attempt_follows_previous_end_and_gives_up() {
        let mut p = Backoff::default();
        ms(&mut p, 100, 1000, 1000);
        p.growth = 2.0;
        assert_eq!(next_attempt_at(&p, 2, 5_000, 5_010, 0.0), Some(5_110));
        assert_eq!(next_attempt_at(&p, 3, 5_000, 5_110, 0.0), Some(5_310));
        // Past give_up_after from enqueue: dead.
        assert_eq!(next_attempt_at(&p, 5, 5_000, 5_900, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let mut p = Backoff::default();
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
            let p = Backoff {
                first_retry: Duration::from_secs(first),
                max_delay: Duration::from_secs(max),
                give_up_after: Duration::from_secs(give_up),
                growth,
                jitter,
            };
            let _ = delay_before(&p, attempt);
            if let Some(at) = next_attempt_at(&p, attempt, enqueued, ended, sample) {
                proptest::prop_assert!(at >= enqueued.max(ended));
            }
        }
    }

    #[test]
    fn schedule_is_bounded_by_the_attempt_cap_and_such_a_policy_is_refused() {
        let mut p = Backoff::default();
        ms(&mut p, 1, 1, 10_000_000);
        assert_eq!(schedule(&p).len(), MAX_ATTEMPTS as usize);
        assert_eq!(next_attempt_at(&p, MAX_ATTEMPTS + 1, 0, 0, 0.0), None);
        let why = refusal(&p).expect("more than MAX_ATTEMPTS attempts");
        // The floor, not the policy's 1 ms, spaces the attempts: 999 gaps of 10 ms.
        assert!(
            why.contains("span 9s 990ms of give_up_after 2h 46m 40s"),
            "{why}"
        );
        assert_eq!(refusal(&Backoff::default()), None);
    }

    #[test]
    fn a_zero_delay_is_raised_to_the_floor_jitter_included() {
        // The policy that once retried 1 512 times in 3 s: the schedule said 1 attempt.
        let mut p = Backoff::default();
        ms(&mut p, 0, 0, 3 * 86_400_000);
        let floor = MIN_RETRY.as_millis() as u64;
        assert_eq!(next_attempt_at(&p, 2, 0, 0, 0.0), Some(floor));
        ms(&mut p, 20, 20, 60_000);
        p.jitter = 1.0;
        assert_eq!(next_attempt_at(&p, 2, 0, 0, -1.0), Some(floor));
        assert!(refusal(&p).is_some());
    }

    /// What the scheduler does with a call whose attempts fail at once: each failure asks
    /// `next_attempt_at` for the next one, until it says none (dead letters).
    fn as_the_scheduler_runs(p: &Backoff) -> Vec<u64> {
        let mut starts = vec![0];
        loop {
            let number = starts.len() as u32;
            let previous_end = *starts.last().unwrap();
            match next_attempt_at(p, number + 1, 0, previous_end, 0.0) {
                Some(at) => starts.push(at),
                None => return starts,
            }
        }
    }

    #[test]
    fn the_schedule_is_what_the_scheduler_does() {
        let mut odd = Backoff::default();
        ms(&mut odd, 0, 250, 5_000);
        odd.growth = 3.0;
        let mut capped = Backoff::default();
        ms(&mut capped, 10, 10, 3_600_000);
        for p in [Backoff::default(), odd, capped] {
            let listed: Vec<u64> = schedule(&p)
                .iter()
                .map(|a| (a.at_secs * 1000.0).round() as u64)
                .collect();
            assert_eq!(listed, as_the_scheduler_runs(&p), "{p:?}");
        }
    }
}
