//! The scheduler's decisions, as plain functions over plain data and a [`Clock`]: how much of
//! the schedule to read, in what order due calls start, whether a call may start (its queue's
//! slots, keep_order), which jobs are due, which attempts need a durable start mark, what counts
//! as a crash and how crashes add up, what follows a failed attempt (a retry at a time, or dead
//! letters), where a pending call moves when the policy changes, and what a history sweep drops. The actor (the rest of this folder) only wires them to the store and the executor;
//! the delivery window is [`super::window`]'s.

use crate::config::Isolation;
use crate::config::{ExecuteOn, QueuePolicy, DEFAULT_QUEUE};
use crate::model::call::CallRecord;
use crate::model::clock::{self, Clock};
use crate::model::job::Job;
use crate::queue::{CrashCount, DueCall};
use crate::retry_policy::{next_attempt_at, MAX_ATTEMPTS};
use cage_sdk::{CallError, ErrorKind};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Due calls looked at per pump.
pub(super) const DUE_BATCH: usize = 1024;
/// Most calls offered to one cage in one request.
pub(super) const DELIVER_BATCH: usize = 128;
/// While every queue's slots are taken by running calls, the schedule is still read this
/// often, for calls to deliver (they need no slot, only room in their cage's window).
pub(super) const SATURATED_SCAN_EVERY: Duration = Duration::from_millis(100);

/// Most argument bytes in one request of several calls, well under a target's frame limit
/// (`max_frame_bytes`, 16 MiB by default); a larger call goes alone, as it would unbatched.
pub(super) const DELIVER_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Splits calls for one cage into requests of at most [`DELIVER_BATCH`] calls and
/// [`DELIVER_BATCH_BYTES`] of arguments (a call larger than that is a request of its own).
pub(super) fn delivery_batches(records: Vec<CallRecord>) -> Vec<Vec<CallRecord>> {
    let mut batches: Vec<Vec<CallRecord>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = r.call.args.len();
        match batches.last_mut() {
            Some(b) if b.len() < DELIVER_BATCH && bytes + size <= DELIVER_BATCH_BYTES => {
                bytes += size;
                b.push(r);
            }
            _ => {
                bytes = size;
                batches.push(vec![r]);
            }
        }
    }
    batches
}

/// How many executions could start now, and how many run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Capacity {
    /// Free slots of the configured queues.
    configured: usize,
    /// Those plus one default queue's worth, for queues without a table of their own.
    free: usize,
    /// Executions running now, over all queues.
    executing: usize,
}

impl Capacity {
    /// The capacity left by `busy` (running executions per queue) under `policies`.
    pub(super) fn of(policies: &ExecuteOn, busy: &HashMap<String, usize>) -> Capacity {
        let configured = policies
            .queues
            .iter()
            .map(|(q, p)| {
                p.concurrency
                    .saturating_sub(busy.get(q).copied().unwrap_or(0))
            })
            .sum();
        Capacity {
            configured,
            free: configured + policies.queue(DEFAULT_QUEUE).concurrency,
            executing: busy.values().sum(),
        }
    }

    /// Whether reading the schedule now is pointless: every slot is taken, and it was read
    /// less than [`SATURATED_SCAN_EVERY`] ago (`last_scan_ms`), so no delivery waits long.
    pub(super) fn may_skip_scan(&self, last_scan_ms: u64, clock: &dyn Clock) -> bool {
        let since = clock.now_ms().saturating_sub(last_scan_ms);
        self.configured == 0
            && self.executing >= self.free
            && since < clock::millis(SATURATED_SCAN_EVERY)
    }

    /// How many due calls to read: no more than could start now, with room for deliveries
    /// (they take no queue slot, only room in their window).
    pub(super) fn scan_size(&self) -> usize {
        (self.free * 2 + 8 + DELIVER_BATCH).min(DUE_BATCH)
    }
}

/// Puts due calls in the order they start: higher priority first, due order within a priority.
pub(super) fn start_order(due: &mut [DueCall]) {
    // The sort is stable, so due order holds within a priority.
    due.sort_by_key(|d| std::cmp::Reverse(d.priority));
}

/// keep_order: whether call `id` may start, given the `head` of its queue (the call stored
/// first among those still pending); a queue without keep_order never asks for the head.
pub(super) fn in_order(
    policy: &QueuePolicy,
    id: &str,
    head: impl FnOnce() -> Option<String>,
) -> bool {
    !policy.keep_order || head().as_deref() == Some(id)
}

/// Jobs whose next run is due now, less those held back after a failed firing until the time
/// `held` gives them.
pub(super) fn due_jobs(
    jobs: &BTreeMap<String, Job>,
    held: &HashMap<String, u64>,
    clock: &dyn Clock,
) -> Vec<String> {
    let now = clock.now_ms();
    jobs.values()
        .filter(|j| j.next_run_ms.is_some_and(|t| t <= now))
        .filter(|j| held.get(&j.id).is_none_or(|&until| until <= now))
        .map(|j| j.id.clone())
        .collect()
}

/// How often due calls are looked for while attempts run (also right after every enqueue
/// and every attempt's end).
pub(super) const PUMP_EVERY: Duration = Duration::from_millis(10);

/// The longest an idle cage sleeps between looks at its schedule: it wakes for the next due
/// call or job run, for new work, and at least this often (should the wall clock jump, or
/// a change reach the queue without a word to the scheduler).
pub(super) const PUMP_IDLE_MAX: Duration = Duration::from_secs(5);

/// When the next job run is due (a job held after a failed firing counts from its retry).
pub(super) fn next_job_ms(
    jobs: &BTreeMap<String, Job>,
    held: &HashMap<String, u64>,
) -> Option<u64> {
    jobs.values()
        .filter_map(|j| {
            let next = j.next_run_ms?;
            Some(held.get(&j.id).map_or(next, |&until| next.max(until)))
        })
        .min()
}

/// How long the pump waits before looking again, at `now_ms`: [`PUMP_EVERY`] while `busy`
/// (attempts running, calls held for room) or while something due could not start; else
/// until the next due call or job run, and never longer than [`PUMP_IDLE_MAX`].
pub(super) fn pump_wait(
    now_ms: u64,
    busy: bool,
    next_due_ms: Option<u64>,
    next_job_ms: Option<u64>,
) -> Duration {
    if busy {
        return PUMP_EVERY;
    }
    match next_due_ms.into_iter().chain(next_job_ms).min() {
        None => PUMP_IDLE_MAX,
        Some(at) => {
            Duration::from_millis(at.saturating_sub(now_ms)).clamp(PUMP_EVERY, PUMP_IDLE_MAX)
        }
    }
}

/// Whether an attempt of a call here, of a module run with `isolation`, needs a durable start
/// mark before it runs: the mark is how a restarted cage learns that it died during the
/// attempt. Only a module run in the cage's own process needs one; a module whose calls run
/// in a worker process needs none (its cage sees the worker die, stays up, and fails the
/// attempt as [`ErrorKind::Crashed`]).
pub(super) fn marks_start(isolation: Isolation) -> bool {
    isolation == Isolation::InProcess
}

/// A process an attempt took down with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Crash {
    /// The cage process died while the attempt ran (its start mark was found at the next
    /// start).
    Cage,
    /// The worker process running the attempt died; the signal, when the error names one.
    Worker {
        /// `SIGSEGV`, `SIGABRT`…
        signal: Option<String>,
    },
}

/// The crash a failed attempt's `error` reports, if it is one.
pub(super) fn crash_of(error: &CallError) -> Option<Crash> {
    (error.kind == ErrorKind::Crashed).then(|| Crash::Worker {
        signal: signal_in(&error.message),
    })
}

/// The first signal name in `message` (`SIGSEGV` in "crashed its worker (SIGSEGV)").
fn signal_in(message: &str) -> Option<String> {
    message
        .split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| {
            w.len() > 3
                && w.starts_with("SIG")
                && w[3..]
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
        .map(str::to_owned)
}

/// The crash count of a call after one more `crash` (`before`: its count so far).
pub(super) fn count_crash(before: Option<CrashCount>, crash: &Crash) -> CrashCount {
    let mut count = before.unwrap_or_default();
    match crash {
        Crash::Cage => count.cage += 1,
        Crash::Worker { signal } => {
            count.worker += 1;
            if signal.is_some() {
                count.signal.clone_from(signal);
            }
        }
    }
    count
}

/// The error an attempt is recorded with when it crashed, `count` including it: for the cage's
/// own death, which nobody reported, one that says so; a worker's report as it came. Both say
/// how many crashes the queue's `policy` allows.
pub(super) fn crash_error(
    crash: &Crash,
    reported: Option<&CallError>,
    count: &CrashCount,
    policy: &QueuePolicy,
) -> CallError {
    let of = format!("crash {} of {}", count.total(), policy.max_crashes);
    match (crash, reported) {
        (Crash::Worker { .. }, Some(e)) => {
            CallError::with_kind(ErrorKind::Crashed, format!("{} ({of})", e.message))
        }
        _ => CallError::with_kind(
            ErrorKind::Crashed,
            format!("the cage process died while this attempt ran ({of})"),
        ),
    }
}

/// The dead letter's reason when `record`'s crashes (`count`) reached its queue's
/// `max_crashes` (`policy`), if they did.
pub(super) fn poisoned(
    policy: &QueuePolicy,
    record: &CallRecord,
    count: &CrashCount,
) -> Option<String> {
    let n = count.total();
    if (n as usize) < policy.max_crashes {
        return None;
    }
    let how = match (count.cage, count.worker) {
        (_, 0) => format!("crashed its cage {n} times"),
        (0, _) => format!("crashed its worker {n} times"),
        (cage, worker) => format!("crashed {n} times (its cage {cage}, its worker {worker})"),
    };
    let signal = match (&count.signal, count.worker) {
        (Some(s), 1..) => format!(" ({s})"),
        _ => String::new(),
    };
    let call = &record.call;
    Some(format!(
        "{how}{signal}: {}.{} of call {} on cage {} (max_crashes {} of queue {})",
        call.module, call.method, call.id, call.target, policy.max_crashes, call.queue
    ))
}

/// What follows a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum AfterFailure {
    /// Try again at this instant.
    Retry {
        /// When the next attempt is due (ms since the epoch).
        at_ms: u64,
    },
    /// Refused for good (a permanent error): dead at once, for this reason.
    Rejected(String),
    /// Out of time or attempts under the queue's policy: dead, for this reason.
    GaveUp(String),
    /// A poison call: it crashed the process running it `max_crashes` times; dead, for this
    /// reason.
    Poison(String),
}

impl AfterFailure {
    /// The dead letter's reason, if the call is dead.
    pub(super) fn dead_reason(&self) -> Option<&str> {
        match self {
            AfterFailure::Retry { .. } => None,
            AfterFailure::Rejected(r) | AfterFailure::GaveUp(r) | AfterFailure::Poison(r) => {
                Some(r)
            }
        }
    }
}

/// What follows the failure (`error`, now) of attempt `number` of `record` in queue `policy`
/// (whose name `queue` the reason quotes); `crashes` is the call's crash count when this
/// attempt crashed (this crash included); `jitter` in [-1, 1] spreads the retry delay.
pub(super) fn after_failure(
    policy: &QueuePolicy,
    record: &CallRecord,
    number: u32,
    error: &CallError,
    crashes: Option<&CrashCount>,
    jitter: f64,
    clock: &dyn Clock,
) -> AfterFailure {
    if error.kind == ErrorKind::Permanent {
        return AfterFailure::Rejected(format!("permanent rejection: {}", error.message));
    }
    if let Some(reason) = crashes.and_then(|c| poisoned(policy, record, c)) {
        return AfterFailure::Poison(reason);
    }
    let now = clock.now_ms();
    let start = record.window_start_ms;
    let queue = &record.call.queue;
    match next_attempt_at(&policy.backoff(), number + 1, start, now, jitter) {
        Some(at_ms) => AfterFailure::Retry { at_ms },
        None => {
            let limit = if number >= MAX_ATTEMPTS {
                format!("the most attempts a call makes; queue {queue}")
            } else {
                format!("give_up_after of queue {queue}")
            };
            AfterFailure::GaveUp(format!(
                "gave up after {number} attempt(s) in {} ({limit}); last error: {error}",
                humantime::format_duration(Duration::from_secs(now.saturating_sub(start) / 1000)),
            ))
        }
    }
}

/// When pending call `record`, which failed before, is due under (new) queue `policy`: its
/// last failure plus the policy's delay, or now if the policy gives up on it already (one more
/// attempt decides, and buries it if it fails). `None` for a call never attempted.
pub(super) fn rescheduled_at(
    policy: &QueuePolicy,
    record: &CallRecord,
    jitter: f64,
    clock: &dyn Clock,
) -> Option<u64> {
    let last = record.attempts.last()?;
    let ended = last.started_ms + last.duration_us / 1000;
    Some(
        next_attempt_at(
            &policy.backoff(),
            record.next_attempt(),
            record.window_start_ms,
            ended,
            jitter,
        )
        .unwrap_or_else(|| clock.now_ms()),
    )
}

/// What one history sweep drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Sweep {
    /// Deduplication entries that expired before this instant.
    pub(super) history_before_ms: u64,
    /// How long an entry found still in use is kept again (the retention, in ms).
    pub(super) recheck_ms: u64,
    /// Finished chains that ended before this instant.
    pub(super) chains_ended_before_ms: u64,
}

/// Deduplication entries (or finished chains) dropped per sweep: one sweep holds the
/// scheduler's thread for the whole batch, so batches stay small and come quickly while a
/// backlog lasts.
pub(super) const SWEEP_BATCH: usize = 1_000;

/// The pause before the next sweep while expired history or chains remain (the last sweep
/// dropped a whole batch): 50 batches a second, enough for 50 000 calls a second.
pub(super) const SWEEP_AGAIN_AFTER: Duration = Duration::from_millis(20);

/// Whether another sweep should follow at once (after [`SWEEP_AGAIN_AFTER`]) rather than at
/// the next regular one: the last dropped `history` entries and `chains`, and a full batch
/// of either means more may be waiting.
pub(super) fn sweep_again(history: usize, chains: usize) -> bool {
    history >= SWEEP_BATCH || chains >= SWEEP_BATCH
}

/// The sweep due now for history kept `retention` (the default queue's).
pub(super) fn sweep(retention: Duration, clock: &dyn Clock) -> Sweep {
    let now = clock.now_ms();
    let recheck_ms = clock::millis(retention);
    Sweep {
        history_before_ms: now,
        recheck_ms,
        chains_ended_before_ms: now.saturating_sub(recheck_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::call::{Attempt, QueuedCall, Stage};
    use crate::model::clock::ManualClock;
    use crate::model::job::{CatchUp, Schedule};

    const T0: u64 = 1_760_000_000_000;

    fn policy() -> QueuePolicy {
        QueuePolicy {
            first_retry: Duration::from_secs(10),
            growth: 2.0,
            max_delay: Duration::from_secs(60),
            give_up_after: Duration::from_secs(120),
            jitter: 0.0,
            concurrency: 2,
            time_limit: Duration::from_secs(5),
            retention: Duration::from_secs(3600),
            max_crashes: 3,
            ..QueuePolicy::default()
        }
    }

    fn record(queue: &str, enqueued_ms: u64) -> CallRecord {
        let call = QueuedCall {
            id: "a-1-1".into(),
            source: "a".into(),
            target: "a".into(),
            module: "echo".into(),
            method: "echo".into(),
            args: b"{}".to_vec(),
            queue: queue.into(),
            priority: 0,
            key: None,
            enqueued_at_ms: enqueued_ms,
            not_before_ms: 0,
            chain: None,
            group: None,
        };
        CallRecord::new(call, Stage::Execute, enqueued_ms)
    }

    fn due(id: &str, priority: i32) -> DueCall {
        DueCall {
            id: id.into(),
            queue: "q".into(),
            priority,
            due_ms: T0,
            target: None,
            group: None,
        }
    }

    #[test]
    fn a_failed_attempt_is_retried_by_the_backoff_until_give_up_after() {
        let clock = ManualClock::at(T0);
        let (p, r) = (policy(), record("orders", T0));
        let failed = CallError::with_kind(ErrorKind::Refused, "busy");
        assert_eq!(
            after_failure(&p, &r, 1, &failed, None, 0.0, &clock),
            AfterFailure::Retry { at_ms: T0 + 10_000 }
        );
        clock.advance(Duration::from_secs(10));
        assert_eq!(
            after_failure(&p, &r, 2, &failed, None, 0.0, &clock),
            AfterFailure::Retry { at_ms: T0 + 30_000 }
        );
        // The next delay would end past give_up_after (2 minutes after enqueue): dead.
        clock.advance(Duration::from_secs(100));
        let dead = after_failure(&p, &r, 3, &failed, None, 0.0, &clock);
        assert_eq!(
            dead,
            AfterFailure::GaveUp(
                "gave up after 3 attempt(s) in 1m 50s (give_up_after of queue orders); \
                 last error: refused: busy"
                    .into()
            )
        );
        assert!(dead.dead_reason().is_some());
    }

    #[test]
    fn a_permanent_error_is_dead_at_once_and_the_attempt_cap_is_named() {
        let clock = ManualClock::at(T0);
        let (p, r) = (policy(), record("orders", T0));
        let permanent = CallError::with_kind(ErrorKind::Permanent, "no such account");
        assert_eq!(
            after_failure(&p, &r, 1, &permanent, None, 0.0, &clock),
            AfterFailure::Rejected("permanent rejection: no such account".into())
        );
        let mut long = policy();
        long.give_up_after = Duration::from_secs(1_000_000_000);
        let failed = CallError::with_kind(ErrorKind::Internal, "boom");
        let AfterFailure::GaveUp(reason) =
            after_failure(&long, &r, MAX_ATTEMPTS, &failed, None, 0.0, &clock)
        else {
            panic!("the attempt cap buries the call");
        };
        assert!(reason.contains("the most attempts a call makes; queue orders"));
        assert_eq!(
            AfterFailure::Retry { at_ms: 1 }.dead_reason(),
            None,
            "a retry is no dead letter"
        );
    }

    fn worker_crash(message: &str) -> CallError {
        CallError::with_kind(ErrorKind::Crashed, message)
    }

    #[test]
    fn every_attempt_here_needs_a_start_mark_while_modules_run_in_the_cage() {
        assert!(marks_start(Isolation::InProcess));
        assert!(!marks_start(Isolation::Process));
    }

    #[test]
    fn a_crashed_failure_is_a_crash_and_names_its_signal_when_the_message_does() {
        assert_eq!(
            crash_of(&worker_crash(
                "crash.overflow crashed its worker (SIGABRT, stack overflow)"
            )),
            Some(Crash::Worker {
                signal: Some("SIGABRT".into())
            })
        );
        assert_eq!(
            crash_of(&worker_crash("crash.exit: its worker exited with code 3")),
            Some(Crash::Worker { signal: None })
        );
        for kind in [ErrorKind::Internal, ErrorKind::Timeout, ErrorKind::Panic] {
            assert_eq!(crash_of(&CallError::with_kind(kind, "SIGSEGV")), None);
        }
        assert_eq!(signal_in("SIG alone, SIGs, or SIG_X are none"), None);
    }

    #[test]
    fn crashes_add_up_and_the_call_is_dead_at_max_crashes() {
        let clock = ManualClock::at(T0);
        let (p, r) = (policy(), record("orders", T0));
        let failed = CallError::with_kind(ErrorKind::Internal, "gone");
        let mut count = None;
        for n in 1..=2 {
            let c = count_crash(count.take(), &Crash::Cage);
            assert_eq!(c.total(), n);
            assert_eq!(
                crash_error(&Crash::Cage, None, &c, &p).to_string(),
                format!(
                    "module crash: the cage process died while this attempt ran (crash {n} of 3)"
                )
            );
            assert!(matches!(
                after_failure(&p, &r, n, &failed, Some(&c), 0.0, &clock),
                AfterFailure::Retry { .. }
            ));
            count = Some(c);
        }
        let third = count_crash(count, &Crash::Cage);
        let dead = after_failure(&p, &r, 3, &failed, Some(&third), 0.0, &clock);
        assert_eq!(
            dead,
            AfterFailure::Poison(
                "crashed its cage 3 times: echo.echo of call a-1-1 on cage a \
                 (max_crashes 3 of queue orders)"
                    .into()
            )
        );
        assert!(dead.dead_reason().is_some());
        // Without this attempt's crash, its other failures follow the backoff alone.
        assert!(matches!(
            after_failure(&p, &r, 3, &failed, None, 0.0, &clock),
            AfterFailure::Retry { .. }
        ));
    }

    #[test]
    fn worker_crashes_name_their_signal_and_a_fresh_count_starts_at_one() {
        let clock = ManualClock::at(T0);
        let (mut p, r) = (policy(), record("orders", T0));
        p.max_crashes = 2;
        let reported = worker_crash("echo.echo crashed its worker (SIGSEGV)");
        let crash = crash_of(&reported).unwrap();
        let first = count_crash(None, &crash);
        assert_eq!(
            crash_error(&crash, Some(&reported), &first, &p).to_string(),
            "module crash: echo.echo crashed its worker (SIGSEGV) (crash 1 of 2)"
        );
        let second = count_crash(Some(first), &Crash::Worker { signal: None });
        assert_eq!(second.signal.as_deref(), Some("SIGSEGV"), "the last named");
        assert_eq!(
            after_failure(&p, &r, 2, &reported, Some(&second), 0.0, &clock),
            AfterFailure::Poison(
                "crashed its worker 2 times (SIGSEGV): echo.echo of call a-1-1 on cage a \
                 (max_crashes 2 of queue orders)"
                    .into()
            )
        );
        let mixed = count_crash(Some(count_crash(None, &Crash::Cage)), &crash);
        assert!(poisoned(&p, &r, &mixed)
            .unwrap()
            .starts_with("crashed 2 times (its cage 1, its worker 1) (SIGSEGV): "));
        // A revived call has no count left (it went with the call): its next crash is the first.
        assert_eq!(count_crash(None, &Crash::Cage).total(), 1);
        assert_eq!(poisoned(&p, &r, &count_crash(None, &Crash::Cage)), None);
    }

    #[test]
    fn a_policy_change_moves_failed_calls_from_their_last_failure() {
        let clock = ManualClock::at(T0 + 50_000);
        let p = policy();
        let mut r = record("orders", T0);
        assert_eq!(rescheduled_at(&p, &r, 0.0, &clock), None, "never attempted");
        r.attempts.push(Attempt {
            number: 1,
            started_ms: T0,
            duration_us: 2_000_000,
            error: Some("refused: busy".into()),
            module_version: None,
        });
        assert_eq!(rescheduled_at(&p, &r, 0.0, &clock), Some(T0 + 12_000));
        let mut short = policy();
        short.give_up_after = Duration::from_secs(5);
        assert_eq!(
            rescheduled_at(&short, &r, 0.0, &clock),
            Some(T0 + 50_000),
            "past the new give-up time: due now, one more attempt decides"
        );
    }

    #[test]
    fn due_calls_start_by_priority_then_in_due_order() {
        let mut list = vec![
            due("a", 0),
            due("b", 5),
            due("c", 0),
            due("d", 5),
            due("e", -1),
        ];
        start_order(&mut list);
        let ids: Vec<&str> = list.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["b", "d", "a", "c", "e"]);
    }

    #[test]
    fn keep_order_lets_only_the_head_of_its_queue_start() {
        let mut p = policy();
        assert!(
            in_order(&p, "b", || panic!("no head is read without keep_order")),
            "without keep_order any call may start"
        );
        p.keep_order = true;
        assert!(in_order(&p, "a", || Some("a".into())));
        assert!(!in_order(&p, "b", || Some("a".into())));
        assert!(!in_order(&p, "b", || None));
    }

    #[test]
    fn a_saturated_cage_reads_its_schedule_only_every_so_often() {
        let clock = ManualClock::at(T0);
        let mut policies = ExecuteOn::default();
        policies.queues.insert(DEFAULT_QUEUE.into(), policy());
        let idle = Capacity::of(&policies, &HashMap::new());
        // The default queue's two slots, plus one more default queue's worth.
        assert_eq!(idle.scan_size(), 4 * 2 + 8 + DELIVER_BATCH);
        assert!(!idle.may_skip_scan(T0, &clock));
        let busy = HashMap::from([(DEFAULT_QUEUE.to_owned(), 2), ("other".to_owned(), 2)]);
        let full = Capacity::of(&policies, &busy);
        assert!(full.may_skip_scan(T0, &clock));
        clock.advance(SATURATED_SCAN_EVERY);
        assert!(!full.may_skip_scan(T0, &clock), "deliveries are looked for");
        let many = Capacity {
            configured: 10_000,
            free: 10_000,
            executing: 0,
        };
        assert_eq!(many.scan_size(), DUE_BATCH);
    }

    #[test]
    fn jobs_are_due_at_their_next_run_unless_held_after_a_failed_firing() {
        let clock = ManualClock::at(T0);
        let job = |id: &str, next: Option<u64>| Job {
            id: id.into(),
            cage: "a".into(),
            module: "echo".into(),
            method: "echo".into(),
            args: b"{}".to_vec(),
            queue: DEFAULT_QUEUE.into(),
            schedule: Schedule::Once { at_ms: T0 },
            catch_up: CatchUp::default(),
            declared: false,
            next_run_ms: next,
            last_run: None,
        };
        let jobs: BTreeMap<String, Job> = [
            job("now", Some(T0)),
            job("later", Some(T0 + 1000)),
            job("done", None),
            job("held", Some(T0 - 5)),
        ]
        .into_iter()
        .map(|j| (j.id.clone(), j))
        .collect();
        let held = HashMap::from([("held".to_owned(), T0 + 500)]);
        assert_eq!(due_jobs(&jobs, &held, &clock), ["now"]);
        clock.advance(Duration::from_millis(500));
        assert_eq!(due_jobs(&jobs, &held, &clock), ["held", "now"]);
        clock.advance(Duration::from_millis(500));
        assert_eq!(due_jobs(&jobs, &held, &clock), ["held", "later", "now"]);
        // The soonest run: "held" is due at T0 - 5 but waits for its retry at T0 + 500.
        assert_eq!(next_job_ms(&jobs, &held), Some(T0));
        let later_only: BTreeMap<String, Job> =
            jobs.into_iter().filter(|(id, _)| id != "now").collect();
        assert_eq!(next_job_ms(&later_only, &held), Some(T0 + 500));
        assert_eq!(next_job_ms(&BTreeMap::new(), &held), None);
    }

    #[test]
    fn a_full_sweep_is_followed_by_another_until_the_backlog_is_gone() {
        assert!(!sweep_again(0, 0));
        assert!(!sweep_again(SWEEP_BATCH - 1, SWEEP_BATCH - 1));
        assert!(sweep_again(SWEEP_BATCH, 0));
        assert!(sweep_again(3, SWEEP_BATCH));
    }

    #[test]
    fn an_idle_pump_sleeps_until_the_next_due_instant_within_bounds() {
        let ms = Duration::from_millis;
        // Attempts running: look again soon, whatever is scheduled.
        assert_eq!(pump_wait(T0, true, Some(T0 + 900_000), None), PUMP_EVERY);
        // Nothing scheduled: the longest sleep.
        assert_eq!(pump_wait(T0, false, None, None), PUMP_IDLE_MAX);
        // The sooner of the next due call and the next job run.
        assert_eq!(
            pump_wait(T0, false, Some(T0 + 300), Some(T0 + 5_000)),
            ms(300)
        );
        assert_eq!(
            pump_wait(T0, false, Some(T0 + 50_000), Some(T0 + 200)),
            ms(200)
        );
        // Something due that could not start: looked at again soon, never in a busy loop.
        assert_eq!(pump_wait(T0, false, Some(T0 - 10), None), PUMP_EVERY);
        // Far ahead: woken at least every PUMP_IDLE_MAX all the same.
        assert_eq!(
            pump_wait(T0, false, Some(T0 + 3_600_000), None),
            PUMP_IDLE_MAX
        );
    }

    #[test]
    fn a_sweep_drops_what_expired_by_now_and_chains_past_retention() {
        let clock = ManualClock::at(T0);
        let s = sweep(Duration::from_secs(60), &clock);
        assert_eq!(
            s,
            Sweep {
                history_before_ms: T0,
                recheck_ms: 60_000,
                chains_ended_before_ms: T0 - 60_000,
            }
        );
        clock.set(10);
        assert_eq!(
            sweep(Duration::from_secs(60), &clock).chains_ended_before_ms,
            0
        );
    }

    fn delivery(n: usize, args_bytes: usize) -> CallRecord {
        let call = QueuedCall {
            id: format!("a-1-{n}"),
            source: "a".into(),
            target: "b".into(),
            module: "echo".into(),
            method: "echo".into(),
            args: vec![b' '; args_bytes],
            queue: "retry".into(),
            priority: 0,
            key: None,
            enqueued_at_ms: 0,
            not_before_ms: 0,
            chain: None,
            group: None,
        };
        CallRecord::new(call, Stage::Deliver, 0)
    }

    #[test]
    fn deliveries_are_split_by_count_and_by_bytes() {
        let sizes = |records: Vec<CallRecord>| -> Vec<usize> {
            delivery_batches(records).iter().map(Vec::len).collect()
        };
        assert_eq!(
            sizes((0..300).map(|n| delivery(n, 10)).collect()),
            vec![128, 128, 44]
        );
        let mb = 1024 * 1024;
        // 1.5 MiB each: two fit under the byte budget, a third does not.
        assert_eq!(
            sizes((0..5).map(|n| delivery(n, mb * 3 / 2)).collect()),
            vec![2, 2, 1]
        );
        // A call larger than the budget goes alone, and does not hold back the next ones.
        let mixed = vec![
            delivery(0, 10),
            delivery(1, 5 * mb),
            delivery(2, 10),
            delivery(3, 10),
        ];
        assert_eq!(sizes(mixed), vec![1, 1, 2]);
        assert!(delivery_batches(Vec::new()).is_empty());
    }
}
