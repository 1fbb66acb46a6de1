//! What a cage counts about its own work, for `/metrics` and the dashboard.
//!
//! - [`Metrics`]: the live counters, shared by the scheduler (queue events per queue) and the
//!   executor (attempts per module method, with a duration histogram and the last error).
//! - [`MetricsSnapshot`]: a copy of them plus the gauges read at that moment (pending and dead
//!   calls per queue, module loads), as it crosses the wire to `cage dashboard`.
//! - [`exposition`]: snapshots in the Prometheus text format.
//!
//! Counters start at zero when the cage starts, as Prometheus expects of counters; the
//! per-minute series behind the dashboard's chart keeps the last [`SERIES_MINUTES`] minutes.

pub mod exposition;

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the attempt duration histogram's buckets; `+Inf` is implied.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// How many minutes of attempts and failures each queue's series keeps.
pub const SERIES_MINUTES: usize = 180;

/// A queue event the scheduler counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueEvent {
    /// A call was taken by enqueue on this cage.
    Enqueued,
    /// A call was accepted from another cage.
    Accepted,
    /// A call held here was handed to its target, which accepted it.
    Delivered,
    /// Handing a call to its target failed (it stays here and is retried).
    DeliveryFailed,
    /// An execution attempt succeeded.
    Succeeded,
    /// An execution attempt failed.
    Failed,
    /// A call moved to dead letters.
    Died,
}

/// Attempts and failures of one minute.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Default)]
pub struct MinuteCount {
    /// Minutes since the epoch.
    pub minute: u64,
    /// Execution attempts that ended in that minute.
    pub attempts: u64,
    /// Those of them that failed.
    pub failures: u64,
}

/// Counters of one queue since the cage started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct QueueCounters {
    /// Calls taken by enqueue on this cage.
    pub enqueued: u64,
    /// Calls accepted from other cages.
    pub accepted: u64,
    /// Calls handed to their target cage.
    pub delivered: u64,
    /// Failed hand-overs to a target cage.
    pub delivery_failures: u64,
    /// Execution attempts that ended.
    pub attempts: u64,
    /// Attempts that succeeded.
    pub successes: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Calls moved to dead letters.
    pub dead: u64,
    /// Attempts and failures per minute, oldest first.
    pub series: VecDeque<MinuteCount>,
}

impl QueueCounters {
    fn count(&mut self, event: QueueEvent, minute: u64) {
        match event {
            QueueEvent::Enqueued => self.enqueued += 1,
            QueueEvent::Accepted => self.accepted += 1,
            QueueEvent::Delivered => self.delivered += 1,
            QueueEvent::DeliveryFailed => self.delivery_failures += 1,
            QueueEvent::Died => self.dead += 1,
            QueueEvent::Succeeded | QueueEvent::Failed => {
                let failed = event == QueueEvent::Failed;
                self.attempts += 1;
                if failed {
                    self.failures += 1;
                } else {
                    self.successes += 1;
                }
                if self.series.back().is_none_or(|m| m.minute != minute) {
                    self.series.push_back(MinuteCount {
                        minute,
                        ..MinuteCount::default()
                    });
                    while self.series.len() > SERIES_MINUTES {
                        self.series.pop_front();
                    }
                }
                if let Some(m) = self.series.back_mut() {
                    m.attempts += 1;
                    m.failures += u64::from(failed);
                }
            }
        }
    }
}

/// Calls of one module method since the cage started (sync and queued attempts alike).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MethodCounters {
    /// Runs that ended.
    pub calls: u64,
    /// Those of them that returned an error.
    pub errors: u64,
    /// Runs per duration bucket (same order as [`DURATION_BUCKETS`], then `+Inf`), not cumulative.
    pub buckets: Vec<u64>,
    /// Sum of the run durations, in seconds.
    pub seconds: f64,
    /// The last error and when it happened (ms since the epoch).
    pub last_error: Option<(u64, String)>,
}

impl MethodCounters {
    fn observe(&mut self, took: Duration, error: Option<&str>, now_ms: u64) {
        if self.buckets.is_empty() {
            self.buckets = vec![0; DURATION_BUCKETS.len() + 1];
        }
        let s = took.as_secs_f64();
        let slot = DURATION_BUCKETS
            .iter()
            .position(|le| s <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[slot] += 1;
        self.seconds += s;
        self.calls += 1;
        if let Some(e) = error {
            self.errors += 1;
            self.last_error = Some((now_ms, e.to_owned()));
        }
    }
}

/// Worker processes of one module (every version together), and how they ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct WorkerCounters {
    /// Workers running a call now.
    pub running: u64,
    /// Workers waiting for a call now.
    pub idle: u64,
    /// Workers started since the cage started.
    pub started: u64,
    /// Workers that crashed, by reason (`SIGSEGV`, `stack_overflow`, `exit_3`…).
    pub crashed: BTreeMap<String, u64>,
    /// Workers killed because their call passed its deadline.
    pub killed: u64,
    /// Executor threads left to a call that passed its deadline in process (and replaced).
    pub threads_written_off: u64,
}

impl WorkerCounters {
    /// Crashes of every reason.
    pub fn crashes(&self) -> u64 {
        self.crashed.values().sum()
    }
}

/// A change in a module's workers the pool reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A worker started (it is running the call that started it).
    Started,
    /// An idle worker took a call.
    Took,
    /// A worker finished its call and waits for the next.
    Finished,
    /// A worker finished its call and exits (its version was replaced).
    Retired,
    /// An idle worker exits (its version was replaced).
    IdleRetired,
    /// A worker died in its call (the reason given with the event labels it).
    Crashed,
    /// A worker was killed at its call's deadline.
    Killed,
    /// An executor thread was left to a call running in process past its deadline.
    ThreadWrittenOff,
}

#[derive(Default)]
struct Counts {
    queues: BTreeMap<String, QueueCounters>,
    methods: BTreeMap<(String, String), MethodCounters>,
    workers: BTreeMap<String, WorkerCounters>,
    /// Queues whose due calls wait for their rate limit, as the last pump found them.
    rate_held: BTreeSet<String>,
    /// Groups, by queue, whose due calls wait for their group's slots or rate limit, as the
    /// last pump found them.
    group_held: BTreeMap<String, BTreeSet<String>>,
}

/// The live counters of one cage.
#[derive(Default)]
pub struct Metrics {
    counts: Mutex<Counts>,
}

impl Metrics {
    /// Counts `event` on `queue` at `now_ms`.
    pub fn queue_event(&self, queue: &str, event: QueueEvent, now_ms: u64) {
        let mut counts = self.lock();
        match counts.queues.get_mut(queue) {
            Some(q) => q.count(event, now_ms / 60_000),
            None => {
                let mut q = QueueCounters::default();
                q.count(event, now_ms / 60_000);
                counts.queues.insert(queue.to_owned(), q);
            }
        }
    }

    /// Counts one run of `module.method` that took `took` and failed with `error`, if it did.
    pub fn method_run(
        &self,
        module: &str,
        method: &str,
        took: Duration,
        error: Option<&str>,
        now_ms: u64,
    ) {
        self.lock()
            .methods
            .entry((module.to_owned(), method.to_owned()))
            .or_default()
            .observe(took, error, now_ms);
    }

    /// Counts a change in the workers of `module`; `reason` labels a crash.
    pub fn worker_event(&self, module: &str, event: WorkerEvent, reason: &str) {
        let mut counts = self.lock();
        let w = counts.workers.entry(module.to_owned()).or_default();
        let less = |n: &mut u64| *n = n.saturating_sub(1);
        match event {
            WorkerEvent::Started => {
                w.started += 1;
                w.running += 1;
            }
            WorkerEvent::Took => {
                less(&mut w.idle);
                w.running += 1;
            }
            WorkerEvent::Finished => {
                less(&mut w.running);
                w.idle += 1;
            }
            WorkerEvent::Retired => less(&mut w.running),
            WorkerEvent::IdleRetired => less(&mut w.idle),
            WorkerEvent::Crashed => {
                less(&mut w.running);
                *w.crashed.entry(reason.to_owned()).or_default() += 1;
            }
            WorkerEvent::Killed => {
                less(&mut w.running);
                w.killed += 1;
            }
            WorkerEvent::ThreadWrittenOff => w.threads_written_off += 1,
        }
    }

    /// Worker counters of every module that had workers.
    pub fn workers(&self) -> BTreeMap<String, WorkerCounters> {
        self.lock().workers.clone()
    }

    /// Counters of every queue that saw an event.
    pub fn queues(&self) -> BTreeMap<String, QueueCounters> {
        self.lock().queues.clone()
    }

    /// Records which queues' due calls wait for their rate limit now, and which groups' (by
    /// queue) for their group's slots or rate limit.
    pub fn set_held(&self, queues: BTreeSet<String>, groups: BTreeMap<String, BTreeSet<String>>) {
        let mut counts = self.lock();
        counts.rate_held = queues;
        counts.group_held = groups;
    }

    /// The queues whose due calls waited for their rate limit at the last pump, and the
    /// groups (by queue) whose due calls waited for their group's limits.
    pub fn held(&self) -> (BTreeSet<String>, BTreeMap<String, BTreeSet<String>>) {
        let counts = self.lock();
        (counts.rate_held.clone(), counts.group_held.clone())
    }

    /// Counters of every method that ran.
    pub fn methods(&self) -> Vec<MethodMetrics> {
        self.lock()
            .methods
            .iter()
            .map(|((module, method), counters)| MethodMetrics {
                module: module.clone(),
                method: method.clone(),
                counters: counters.clone(),
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        // Counters stay usable after a panic elsewhere: a count off by one beats no metrics.
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One queue's counters and what it holds now.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct QueueMetrics {
    /// Queue name.
    pub queue: String,
    /// Counters since the cage started.
    pub counters: QueueCounters,
    /// Pending calls now.
    pub pending: u64,
    /// Dead letters now.
    pub dead_now: u64,
    /// Due calls waiting for the queue's rate limit now.
    #[serde(default)]
    pub held_by_rate_limit: u64,
    /// Due calls waiting for their group's slots or rate limit now.
    #[serde(default)]
    pub held_by_group: u64,
}

/// One module method's counters.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MethodMetrics {
    /// Module name.
    pub module: String,
    /// Method name.
    pub method: String,
    /// Its counters.
    pub counters: MethodCounters,
}

/// Loads of one module since the cage started.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct ModuleLoads {
    /// Module name.
    pub module: String,
    /// Versions loaded (the first load included).
    pub loads: u64,
    /// Files rejected (not whole, wrong ABI, not a module…).
    pub rejected: u64,
}

/// Everything a cage reports about itself at one moment.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// Cage name.
    pub cage: String,
    /// Seconds since the cage started.
    pub uptime_secs: u64,
    /// Per queue.
    pub queues: Vec<QueueMetrics>,
    /// Per module method.
    pub methods: Vec<MethodMetrics>,
    /// Per module.
    pub modules: Vec<ModuleLoads>,
    /// Worker processes per module.
    pub workers: BTreeMap<String, WorkerCounters>,
}

impl MetricsSnapshot {
    /// Counters of `module.method`, if it ran.
    pub fn method(&self, module: &str, method: &str) -> Option<&MethodCounters> {
        self.methods
            .iter()
            .find(|m| m.module == module && m.method == method)
            .map(|m| &m.counters)
    }

    /// Metrics of `queue`, if it is known.
    pub fn queue(&self, queue: &str) -> Option<&QueueMetrics> {
        self.queues.iter().find(|q| q.queue == queue)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_fill_minutes_and_keep_a_bounded_series() {
        let m = Metrics::default();
        m.queue_event("retry", QueueEvent::Enqueued, 0);
        m.queue_event("retry", QueueEvent::Failed, 60_000);
        m.queue_event("retry", QueueEvent::Succeeded, 61_000);
        m.queue_event("retry", QueueEvent::Succeeded, 120_000);
        let q = &m.queues()["retry"];
        assert_eq!(
            (q.enqueued, q.attempts, q.successes, q.failures),
            (1, 3, 2, 1)
        );
        let minutes: Vec<_> = q
            .series
            .iter()
            .map(|c| (c.minute, c.attempts, c.failures))
            .collect();
        assert_eq!(minutes, vec![(1, 2, 1), (2, 1, 0)]);
        for minute in 0..(SERIES_MINUTES as u64 + 10) {
            m.queue_event("retry", QueueEvent::Succeeded, (minute + 3) * 60_000);
        }
        let q = &m.queues()["retry"];
        assert_eq!(q.series.len(), SERIES_MINUTES);
        assert_eq!(
            q.series.back().map(|c| c.minute),
            Some(SERIES_MINUTES as u64 + 12)
        );
    }

    #[test]
    fn runs_land_in_their_duration_bucket_and_keep_the_last_error() {
        let m = Metrics::default();
        m.method_run("echo", "echo", Duration::from_micros(50), None, 1);
        m.method_run("echo", "echo", Duration::from_millis(3), Some("boom"), 2);
        m.method_run("echo", "echo", Duration::from_secs(100), None, 3);
        let c = &m.methods()[0].counters;
        assert_eq!((c.calls, c.errors), (3, 1));
        assert_eq!(c.buckets[0], 1);
        assert_eq!(
            c.buckets[DURATION_BUCKETS.iter().position(|b| *b == 0.005).unwrap()],
            1
        );
        assert_eq!(c.buckets[DURATION_BUCKETS.len()], 1);
        assert_eq!(c.last_error, Some((2, "boom".to_owned())));
    }
}
