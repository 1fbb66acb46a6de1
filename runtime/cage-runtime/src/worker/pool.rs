//! The worker pools of a cage: per module version, worker processes started on demand up to
//! the module's `workers` (plus one per call lent a spare thread while it waits on its
//! children), reused one call at a time, replaced when one dies, retired when their version
//! is replaced. Starting workers that die before they are ready backs off, so a module that
//! crashes as it loads never makes the cage fork in a loop.

use super::exit::Death;
use super::process::{last_words, Exiting, Spawn, StartFailure, Worker};
use super::remote::{self, Broken};
use super::watchdog::{WatchKey, Watchdog};
use crate::blocking::Lane;
use crate::config::ModuleRunning;
use crate::host::{CallScope, SpareWorkers};
use crate::loader::library::decode_outcome;
use crate::loader::LoadedModule;
use crate::metrics::{Metrics, WorkerEvent};
use cage_sdk::abi::HostContext;
use cage_sdk::{CallError, ErrorKind};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

/// Reaping workers lost under calls driven from the event loop (a reap waits for the process
/// to end and for its last words).
static REAPS: Lane = Lane::new("worker reaps", 16);

/// How often retired workers are reaped and pools of unloaded versions retired.
const SWEEP: Duration = Duration::from_secs(1);

/// First wait after a worker died before it was ready; doubled for each one after, up to
/// [`START_BACKOFF_MAX`].
const START_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between starts of workers that keep dying before they are ready.
const START_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// The wait before the next start after `failures` workers in a row died before Ready.
pub fn start_backoff(failures: u32) -> Duration {
    START_BACKOFF
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(START_BACKOFF_MAX)
}

struct PoolState {
    idle: Vec<Worker>,
    /// Workers out on a call (or starting for one).
    busy: usize,
    /// Executor threads waiting for a worker to be freed: an idle one is theirs, not for a
    /// call that came later.
    waiting: usize,
    retired: bool,
    start_failures: u32,
    /// No worker starts before this, after starts failed.
    next_start: Option<Instant>,
    last_failure: String,
}

/// The workers of one module version.
struct Pool {
    module: Weak<LoadedModule>,
    loaded_at: std::time::SystemTime,
    name: String,
    version: String,
    spawn: Spawn,
    limit: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A worker taken from its pool for one call driven from the event loop.
pub struct Taken {
    pool: Arc<Pool>,
    worker: Worker,
}

/// What [`Workers::on_deadline`] armed; dropping it (the call ended) disarms it.
pub struct DeadlineGuard {
    workers: Arc<Workers>,
    key: WatchKey,
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        self.workers.watchdog.disarm(self.key);
    }
}

/// Every worker of the cage: pools per module version, one watchdog, workers being reaped.
pub struct Workers {
    exe: PathBuf,
    cage: String,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    exiting: Mutex<Vec<Exiting>>,
    watchdog: Watchdog,
    spare: SpareWorkers,
    metrics: Arc<Metrics>,
}

impl Workers {
    /// Workers of cage `cage`, started from the binary `exe`; a thread watches their calls'
    /// deadlines and reaps those retired, for as long as the returned handle lives.
    pub fn start(
        exe: PathBuf,
        cage: &str,
        spare: SpareWorkers,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<Arc<Workers>> {
        let workers = Arc::new(Workers {
            exe,
            cage: cage.to_owned(),
            pools: Mutex::default(),
            exiting: Mutex::default(),
            watchdog: Watchdog::default(),
            spare,
            metrics,
        });
        let weak = Arc::downgrade(&workers);
        std::thread::Builder::new()
            .name("cage-watchdog".to_owned())
            .spawn(move || {
                let mut swept = Instant::now();
                while let Some(workers) = weak.upgrade() {
                    workers.watchdog.patrol(SWEEP);
                    if swept.elapsed() >= SWEEP {
                        workers.sweep();
                        swept = Instant::now();
                    }
                }
            })?;
        Ok(workers)
    }

    /// Runs `expire` at `deadline` unless the returned guard is dropped first (a call running
    /// in process asks so for its thread).
    pub fn on_deadline(
        self: Arc<Self>,
        deadline: Instant,
        expire: impl FnOnce() + Send + 'static,
    ) -> DeadlineGuard {
        let key = self.watchdog.on_deadline(deadline, expire);
        DeadlineGuard { workers: self, key }
    }

    /// Runs `method` of `module` in one of its workers, `ctx` serving the worker's callbacks;
    /// the worker is killed if the call is still running at `deadline`.
    pub fn call(
        &self,
        module: &Arc<LoadedModule>,
        running: ModuleRunning,
        ctx: &HostContext,
        method: &str,
        args: &[u8],
        deadline: Instant,
    ) -> Result<Vec<u8>, CallError> {
        let pool = self.pool_of(module, running);
        let mut worker = self.take(&pool, deadline)?;
        let outcome = {
            let _armed = self
                .watchdog
                .watch(worker.pid, deadline, worker.killed.clone());
            remote::converse(&mut worker.channel, ctx, method, args)
        };
        match outcome {
            Ok((status, bytes)) => {
                self.give_back(&pool, worker);
                decode_outcome(&module.name, status, bytes)
            }
            Err(broken) => Err(self.lost(&pool, worker, method, &broken)),
        }
    }

    /// An idle worker of `module`'s version, taken at once for a call driven from the event
    /// loop, if one is idle and no other call of the module is out or waits for a worker.
    pub fn take_idle(&self, module: &Arc<LoadedModule>, running: ModuleRunning) -> Option<Taken> {
        let pool = self.pool_of(module, running);
        let mut state = pool.lock();
        // With another call of the module out, the cage is busy: executor threads drive
        // workers side by side better than the one event loop, which serves the network
        // and the journal too (measured: 25 % of e2e calls/s against 2-11 %).
        if state.waiting > 0 || state.busy > 0 {
            return None;
        }
        // Reaping may wait for the worker's last words: not on the event loop.
        let worker = self.pop_idle(&pool, &mut state, |reap| {
            tokio::task::spawn_blocking(reap);
        })?;
        drop(state);
        Some(Taken { pool, worker })
    }

    /// Puts back a worker taken for a call that did not run after all.
    pub fn put_back(&self, taken: Taken) {
        self.give_back(&taken.pool, taken.worker);
    }

    /// Runs `method` of `module` in the `taken` worker from the event loop, in the call
    /// `scope` (which serves the worker's callbacks); the worker is killed if the call is
    /// still running at `deadline`. Answers the scope back (gone only if the cage failed to
    /// serve a callback) with the module's result.
    pub async fn call_taken(
        self: &Arc<Self>,
        taken: Taken,
        module: &LoadedModule,
        scope: Box<CallScope>,
        method: &str,
        args: &[u8],
        deadline: Instant,
    ) -> (Option<Box<CallScope>>, Result<Vec<u8>, CallError>) {
        let Taken { pool, mut worker } = taken;
        let (scope, outcome) = {
            let _armed = self
                .watchdog
                .watch(worker.pid, deadline, worker.killed.clone());
            remote::converse_async(&mut worker.channel, scope, method, args).await
        };
        let result = match outcome {
            Ok((status, bytes)) => {
                self.give_back(&pool, worker);
                decode_outcome(&module.name, status, bytes)
            }
            Err(broken) => {
                if matches!(broken, Broken::Host(_)) {
                    // It waits for an answer that will not come.
                    worker.kill();
                }
                let (workers, method) = (self.clone(), method.to_owned());
                let lost = REAPS
                    .run(move || workers.lost(&pool, worker, &method, &broken))
                    .await;
                Err(lost
                    .unwrap_or_else(|e| CallError::with_kind(ErrorKind::Internal, e.to_string())))
            }
        };
        (scope, result)
    }

    /// The pool of `module`'s version, made on its first call; a pool of an older version of
    /// the module is retired then.
    fn pool_of(&self, module: &Arc<LoadedModule>, running: ModuleRunning) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(&module.name) {
            if std::ptr::eq(pool.module.as_ptr(), Arc::as_ptr(module)) {
                return pool.clone();
            }
        }
        let pool = Arc::new(Pool {
            module: Arc::downgrade(module),
            loaded_at: module.loaded_at,
            name: module.name.clone(),
            version: module.version.clone(),
            spawn: Spawn {
                exe: self.exe.clone(),
                cage: self.cage.clone(),
                module: module.name.clone(),
                copy: module.copy().to_owned(),
                memory_limit: running.memory_limit,
            },
            limit: running.workers,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                busy: 0,
                waiting: 0,
                retired: false,
                start_failures: 0,
                next_start: None,
                last_failure: String::new(),
            }),
            freed: Condvar::new(),
        });
        if let Some(current) = pools.get(&module.name) {
            if current.loaded_at > module.loaded_at {
                // A late call of an older version (resolved just before the swap): it runs in
                // a pool of its own, retired at once, so its worker exits after this call.
                pool.lock().retired = true;
                return pool;
            }
        }
        if let Some(old) = pools.insert(module.name.clone(), pool.clone()) {
            // An older version's call still running holds its own `Arc` of that version, so
            // the old pool is live only if a call can still come (never: new calls resolve the
            // new version); an older call may still be in a pool of its own, which it finishes.
            self.retire(&old);
        }
        pool
    }

    /// The most recently idle worker of `pool` still alive, counted as busy; idle workers
    /// found dead meanwhile (killed from outside) are counted and handed to `reap` as the job
    /// that reaps them, for the caller to run where waiting is allowed.
    fn pop_idle(
        &self,
        pool: &Pool,
        state: &mut PoolState,
        reap: impl Fn(Box<dyn FnOnce() + Send>),
    ) -> Option<Worker> {
        while let Some(mut worker) = state.idle.pop() {
            if worker.ended() {
                self.metrics
                    .worker_event(&pool.name, WorkerEvent::IdleRetired, "");
                let name = pool.name.clone();
                reap(Box::new(move || {
                    let pid = worker.pid;
                    let (death, _) = worker.reap();
                    tracing::warn!(module = %name, pid, "idle worker ended ({death}); another takes its place");
                }));
                continue;
            }
            state.busy += 1;
            self.metrics.worker_event(&pool.name, WorkerEvent::Took, "");
            return Some(worker);
        }
        None
    }

    /// An idle worker of `pool`, or a new one if the pool may grow, or the first one freed
    /// before `deadline`.
    fn take(&self, pool: &Pool, deadline: Instant) -> Result<Worker, CallError> {
        let mut state = pool.lock();
        loop {
            if let Some(worker) = self.pop_idle(pool, &mut state, |reap| reap()) {
                return Ok(worker);
            }
            let limit = pool.limit + self.spare.held();
            if state.idle.len() + state.busy < limit {
                if let Some(at) = state.next_start.filter(|at| *at > Instant::now()) {
                    return Err(CallError::with_kind(
                        ErrorKind::Crashed,
                        format!(
                            "{} {}: {}; the next worker starts in {}",
                            pool.name,
                            pool.version,
                            state.last_failure,
                            humantime::format_duration(round_ms(at - Instant::now()))
                        ),
                    ));
                }
                state.busy += 1;
                drop(state);
                return self.start_worker(pool, deadline);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CallError::with_kind(
                    ErrorKind::Timeout,
                    format!(
                        "every worker of {} ({} of them) stayed busy until the deadline",
                        pool.name, limit
                    ),
                ));
            }
            state.waiting += 1;
            state = pool
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            state.waiting -= 1;
        }
    }

    fn start_worker(&self, pool: &Pool, deadline: Instant) -> Result<Worker, CallError> {
        match Worker::start(&pool.spawn, deadline) {
            Ok(worker) => {
                let mut state = pool.lock();
                state.start_failures = 0;
                state.next_start = None;
                tracing::debug!(module = %pool.name, version = %pool.version, pid = worker.pid, "worker started");
                self.metrics
                    .worker_event(&pool.name, WorkerEvent::Started, "");
                Ok(worker)
            }
            Err(failure) => {
                let mut state = pool.lock();
                state.busy -= 1;
                state.start_failures += 1;
                let wait = start_backoff(state.start_failures);
                state.next_start = Some(Instant::now() + wait);
                state.last_failure = failure.to_string();
                drop(state);
                pool.freed.notify_one();
                tracing::warn!(module = %pool.name, version = %pool.version, "worker did not start: {failure}; next start in {}", humantime::format_duration(wait));
                let kind = match failure {
                    StartFailure::Spawn(_) | StartFailure::Load(_) => ErrorKind::Internal,
                    StartFailure::Died(..) | StartFailure::Confused(_) => ErrorKind::Crashed,
                };
                Err(CallError::with_kind(
                    kind,
                    format!("{} {}: {failure}", pool.name, pool.version),
                ))
            }
        }
    }

    fn give_back(&self, pool: &Pool, worker: Worker) {
        let mut state = pool.lock();
        state.busy -= 1;
        if state.retired {
            drop(state);
            self.metrics
                .worker_event(&pool.name, WorkerEvent::Retired, "");
            self.exit(worker);
            return;
        }
        state.idle.push(worker);
        drop(state);
        self.metrics
            .worker_event(&pool.name, WorkerEvent::Finished, "");
        pool.freed.notify_one();
    }

    /// The error of a call whose worker died (or was killed) under it; the worker is reaped
    /// and its place in the pool freed for a new one.
    fn lost(&self, pool: &Pool, worker: Worker, method: &str, broken: &Broken) -> CallError {
        let killed = worker.was_killed();
        let pid = worker.pid;
        let (death, words) = worker.reap();
        {
            let mut state = pool.lock();
            state.busy -= 1;
        }
        pool.freed.notify_one();
        if killed {
            self.metrics
                .worker_event(&pool.name, WorkerEvent::Killed, "");
            tracing::warn!(module = %pool.name, pid, "worker killed at its call's deadline");
            return CallError::with_kind(
                ErrorKind::Timeout,
                format!(
                    "{}.{method} did not finish by its deadline: its worker (pid {pid}) was killed",
                    pool.name
                ),
            );
        }
        self.metrics
            .worker_event(&pool.name, WorkerEvent::Crashed, &death.reason());
        tracing::warn!(module = %pool.name, pid, "worker crashed ({death}): {broken}");
        CallError::with_kind(
            ErrorKind::Crashed,
            crash_message(&pool.name, method, &death, &words),
        )
    }

    fn retire(&self, pool: &Pool) {
        let idle = {
            let mut state = pool.lock();
            state.retired = true;
            std::mem::take(&mut state.idle)
        };
        if !idle.is_empty() {
            tracing::debug!(module = %pool.name, version = %pool.version, workers = idle.len(), "retiring the idle workers of a replaced version");
        }
        for worker in idle {
            self.metrics
                .worker_event(&pool.name, WorkerEvent::IdleRetired, "");
            self.exit(worker);
        }
    }

    /// Tells `worker` to exit; it is reaped by the sweep.
    fn exit(&self, worker: Worker) {
        self.exiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(worker.close());
    }

    /// Retires the pools of versions no longer loaded and reaps workers that have exited.
    fn sweep(&self) {
        let gone: Vec<Arc<Pool>> = {
            let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            let gone = pools
                .values()
                .filter(|p| p.module.strong_count() == 0)
                .cloned()
                .collect();
            pools.retain(|_, p| p.module.strong_count() > 0);
            gone
        };
        for pool in gone {
            self.retire(&pool);
        }
        self.exiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain_mut(|w| !w.reaped());
    }
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// The message of a call whose worker died: what died, how, and its last words.
pub fn crash_message(module: &str, method: &str, death: &Death, words: &[String]) -> String {
    let mut text = format!("{module}.{method} crashed its worker ({death})");
    let _ = last_words(&mut text, words);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_that_keep_failing_wait_longer_up_to_a_bound() {
        assert_eq!(start_backoff(1), Duration::from_millis(500));
        assert_eq!(start_backoff(2), Duration::from_secs(1));
        assert_eq!(start_backoff(4), Duration::from_secs(4));
        assert_eq!(start_backoff(40), START_BACKOFF_MAX);
    }

    #[test]
    fn a_crash_names_the_call_the_death_and_the_last_words() {
        let death = Death {
            signal: Some("SIGABRT"),
            code: None,
            cause: Some("stack overflow"),
        };
        let words = vec![
            "".to_owned(),
            "thread 'main' has overflowed its stack".to_owned(),
            "fatal runtime error: stack overflow".to_owned(),
        ];
        assert_eq!(
            crash_message("crash", "overflow", &death, &words),
            "crash.overflow crashed its worker (SIGABRT, stack overflow); its last words: \
             thread 'main' has overflowed its stack | fatal runtime error: stack overflow"
        );
    }
}
