//! The call executor: an actor in front of a bounded pool of worker threads that run module
//! code, so a slow call never blocks the actor threads or other calls. Each thread runs its
//! call's module in place (`in_process`) or drives it in one of the module's worker
//! processes (`process`, [`crate::worker`]); the threads bound the calls running at once.
//!
//! A call for a module in worker processes that finds one of its workers idle, with no call
//! waiting before it, skips the threads: the event loop hands it to the worker and takes the
//! answer, so a quick call costs no thread wake-up on either way. Under load, calls queue for
//! the threads, which feed the workers without waiting for the event loop.

use crate::config::{Isolation, ModuleRunning};
use crate::host::{Begun, HostEnv, Output};
use crate::loader::LoadedModule;
use crate::metrics::WorkerEvent;
use crate::model::call::ChainLink;
use crate::model::clock::unix_ms;
use crate::worker::pool::Taken;
use crate::worker::Workers;
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tracing::Instrument;

/// Calls driven from the event loop that wrote state, committing it with their completion.
static COMMITS: crate::blocking::Lane = crate::blocking::Lane::new("state commits", 16);

/// Calls that may wait for a worker per worker thread before new ones are refused.
const BACKLOG_PER_WORKER: usize = 256;

/// Where a call's result arrives, and how the call runs.
pub struct Reply {
    /// The result, once the call ends.
    pub result: oneshot::Receiver<Result<Output, CallError>>,
    /// Where the module's code runs (what a timeout does to it depends on it).
    pub isolation: Isolation,
}

/// How a cage's executor runs modules.
#[derive(Debug, Clone)]
pub struct ExecutorSettings {
    /// Threads running calls.
    pub threads: usize,
    /// How modules run unless `modules` says otherwise.
    pub running: ModuleRunning,
    /// How named modules run.
    pub modules: BTreeMap<String, ModuleRunning>,
    /// The binary started as a worker process (the `cage` binary itself).
    pub worker_exe: PathBuf,
}

impl ExecutorSettings {
    fn running_of(&self, module: &str) -> ModuleRunning {
        self.modules.get(module).copied().unwrap_or(self.running)
    }
}

/// A call of one method, whichever way it came (sync, queued, a chain step).
#[derive(Debug, Clone)]
pub struct MethodCall {
    /// Id of the call.
    pub call_id: String,
    /// Method to run.
    pub method: String,
    /// JSON arguments.
    pub args: Vec<u8>,
    /// Attempt number, as the module's `ctx.attempt()` reports it.
    pub attempt: u32,
    /// A queued call (its committed effects mark it executed) rather than a sync one.
    pub queued: bool,
    /// The chain the call is a step of, if any.
    pub chain: Option<ChainLink>,
}

/// Run one method on the pool.
#[derive(Message)]
#[rtype(result = "Result<Reply, CallError>")]
pub struct Execute {
    /// The module version to run; held until the call ends, so a swap cannot unload it.
    pub module: Arc<LoadedModule>,
    /// The call.
    pub call: MethodCall,
    /// A call still waiting for a worker at this instant is not started.
    pub deadline: Instant,
}

struct Job {
    call: Execute,
    reply: oneshot::Sender<Result<Output, CallError>>,
}

/// What every executor thread shares: the host, where modules run, and the calls to run.
struct Runner {
    env: Arc<HostEnv>,
    settings: ExecutorSettings,
    workers: Arc<Workers>,
    queue: Receiver<Job>,
    /// Names threads started to replace ones written off.
    replacements: AtomicUsize,
}

/// Which kind of executor thread runs a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seat {
    /// One of the pool's threads: replaced when written off, so the pool keeps its size.
    Pool,
    /// A spare lent to a call waiting on its children: not replaced.
    Spare,
}

/// Starts one pool thread taking calls from the queue until it closes, or until the thread
/// is written off (its call ran past its deadline in process: the thread is left to it).
fn start_pool_thread(runner: Arc<Runner>, name: String) -> std::io::Result<()> {
    std::thread::Builder::new().name(name).spawn(move || {
        for job in runner.queue.iter() {
            if run_job(&runner, job, Seat::Pool) {
                break;
            }
        }
    })?;
    Ok(())
}

/// The executor actor; dropping it closes the pool once queued calls have run.
pub struct CallExecutor {
    jobs: Sender<Job>,
    workers: usize,
    runner: Arc<Runner>,
}

impl CallExecutor {
    /// Starts `settings.threads` threads that run calls with `env` as their host.
    pub fn new(settings: ExecutorSettings, env: Arc<HostEnv>) -> std::io::Result<Self> {
        let workers = settings.threads;
        let processes = Workers::start(
            settings.worker_exe.clone(),
            &env.cage,
            env.spare.clone(),
            env.metrics.clone(),
        )?;
        let (jobs, queue) = bounded::<Job>(workers * BACKLOG_PER_WORKER);
        let runner = Arc::new(Runner {
            env: env.clone(),
            settings: settings.clone(),
            workers: processes,
            queue: queue.clone(),
            replacements: AtomicUsize::new(0),
        });
        let env = runner;
        let spare_queue = queue.clone();
        let spare_env: Weak<Runner> = Arc::downgrade(&env);
        env.env.spare.install(move |alive: Arc<AtomicBool>| {
            let Some(env) = spare_env.upgrade() else {
                return false;
            };
            let queue = spare_queue.clone();
            std::thread::Builder::new()
                .name("cage-exec-spare".to_owned())
                .spawn(move || {
                    while alive.load(Ordering::Acquire) {
                        match queue.recv_timeout(Duration::from_millis(100)) {
                            Ok(job) => {
                                if run_job(&env, job, Seat::Spare) {
                                    break;
                                }
                            }
                            Err(RecvTimeoutError::Timeout) => {}
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                })
                .is_ok()
        });
        for i in 0..workers {
            start_pool_thread(env.clone(), format!("cage-exec-{i}"))?;
        }
        Ok(CallExecutor {
            jobs,
            workers,
            runner: env,
        })
    }
}

/// Runs one call; answers whether this thread was written off meanwhile (and so must stop).
fn run_job(runner: &Arc<Runner>, job: Job, seat: Seat) -> bool {
    let env = &runner.env;
    let Job {
        call: Execute {
            module,
            call,
            deadline,
        },
        reply,
    } = job;
    let span = call_span(env, &module, &call);
    let _entered = span.enter();
    if reply.is_closed() || Instant::now() >= deadline {
        tracing::warn!("not started: its caller stopped waiting while it queued for a worker");
        let _ = reply.send(Err(CallError::with_kind(
            ErrorKind::Timeout,
            "deadline passed while waiting for a free executor thread",
        )));
        return false;
    }
    let started = Instant::now();
    let running = runner.settings.running_of(&module.name);
    let written_off = Arc::new(AtomicBool::new(false));
    // In process, a call past its deadline cannot be stopped: its thread is left to it and,
    // for a pool thread, another takes its place, so hung calls never drain the pool.
    let _watched = (running.isolation == Isolation::InProcess).then(|| {
        let (runner, written_off) = (runner.clone(), written_off.clone());
        let name = module.name.clone();
        let call_id = call.call_id.clone();
        runner.workers.clone().on_deadline(deadline, move || {
            written_off.store(true, Ordering::Release);
            runner.env.metrics.worker_event(&name, WorkerEvent::ThreadWrittenOff, "");
            tracing::warn!(call_id = %call_id, module = %name, "executor thread written off: its call passed its deadline and cannot be stopped in process");
            if seat == Seat::Pool {
                let n = runner.replacements.fetch_add(1, Ordering::Relaxed);
                if let Err(e) = start_pool_thread(runner.clone(), format!("cage-exec-r{n}")) {
                    tracing::error!("cannot start an executor thread to replace one written off: {e}");
                }
            }
        })
    });
    let result = env.run(
        &module,
        &call.call_id,
        &call.method,
        &call.args,
        call.attempt,
        call.queued,
        call.chain.as_ref(),
        |ctx, method, args| match running.isolation {
            Isolation::InProcess => module.call(ctx, method, args),
            Isolation::Process => runner
                .workers
                .call(&module, running, ctx, method, args, deadline),
        },
    );
    report(env, &module, &call, started.elapsed(), &result);
    let _ = reply.send(result);
    drop(_watched);
    written_off.load(Ordering::Acquire)
    // `module` drops here; if a newer version was swapped in meanwhile and this was the last
    // call on the old one, the old library is unloaded now, on this worker thread.
}

/// The span of one call's run: its id and what it runs.
fn call_span(env: &HostEnv, module: &LoadedModule, call: &MethodCall) -> tracing::Span {
    tracing::info_span!("call", call_id = %call.call_id, cage = %env.cage, module = %module.name, method = %call.method, attempt = call.attempt)
}

/// Counts and logs how a call's run ended.
fn report(
    env: &HostEnv,
    module: &LoadedModule,
    call: &MethodCall,
    took: Duration,
    result: &Result<Output, CallError>,
) {
    let error = result.as_ref().err().map(ToString::to_string);
    env.metrics.method_run(
        &module.name,
        &call.method,
        took,
        error.as_deref(),
        unix_ms(std::time::SystemTime::now()),
    );
    match &error {
        None => tracing::debug!(version = %module.version, elapsed = ?took, "call done"),
        // A queued attempt's failure is logged once, by the scheduler, with what follows it
        // (the next attempt, or dead letters).
        Some(e) if call.queued => {
            tracing::debug!(version = %module.version, elapsed = ?took, "attempt failed: {e}")
        }
        Some(e) => {
            tracing::warn!(version = %module.version, elapsed = ?took, "call failed: {e}")
        }
    }
}

impl Runner {
    /// Runs a call in the worker `taken` for it, from the event loop.
    async fn remote(
        self: Arc<Self>,
        taken: Taken,
        execute: Execute,
        reply: oneshot::Sender<Result<Output, CallError>>,
    ) {
        let Execute {
            module,
            call,
            deadline,
        } = execute;
        let span = call_span(&self.env, &module, &call);
        async {
            let started = Instant::now();
            let result = self.run_taken(taken, &module, &call, deadline).await;
            report(&self.env, &module, &call, started.elapsed(), &result);
            let _ = reply.send(result);
        }
        .instrument(span)
        .await
    }

    async fn run_taken(
        &self,
        taken: Taken,
        module: &Arc<LoadedModule>,
        call: &MethodCall,
        deadline: Instant,
    ) -> Result<Output, CallError> {
        let begun = self.env.begin(
            &module.name,
            &call.call_id,
            &call.method,
            call.attempt,
            call.queued,
            call.chain.as_ref(),
        );
        let scope = match begun {
            Ok(Begun::Running(scope)) => scope,
            Ok(Begun::Executed(output)) => {
                self.workers.put_back(taken);
                return Ok(output);
            }
            Err(e) => {
                self.workers.put_back(taken);
                return Err(e);
            }
        };
        let (scope, result) = self
            .workers
            .call_taken(taken, module, scope, &call.method, &call.args, deadline)
            .await;
        let Some(scope) = scope else {
            return result.map(Output::result);
        };
        if result.is_ok() && scope.commits() {
            // The commit writes to the store, which may wait for the disk.
            COMMITS
                .run(move || scope.finish(result))
                .await
                .unwrap_or_else(|e| Err(CallError::with_kind(ErrorKind::Internal, e.to_string())))
        } else {
            scope.finish(result)
        }
    }
}

impl Actor for CallExecutor {
    type Context = Context<Self>;
}

impl Handler<Execute> for CallExecutor {
    type Result = Result<Reply, CallError>;

    fn handle(&mut self, call: Execute, _: &mut Context<Self>) -> Self::Result {
        let (reply, rx) = oneshot::channel();
        let running = self.runner.settings.running_of(&call.module.name);
        let isolation = running.isolation;
        if isolation == Isolation::Process && self.jobs.is_empty() {
            if let Some(taken) = self.runner.workers.take_idle(&call.module, running) {
                actix::spawn(self.runner.clone().remote(taken, call, reply));
                return Ok(Reply {
                    result: rx,
                    isolation,
                });
            }
        }
        match self.jobs.try_send(Job { call, reply }) {
            Ok(()) => Ok(Reply {
                result: rx,
                isolation,
            }),
            Err(TrySendError::Full(_)) => Err(CallError::with_kind(
                ErrorKind::Refused,
                format!(
                    "executor overloaded: {} calls already waiting for {} threads",
                    self.workers * BACKLOG_PER_WORKER,
                    self.workers
                ),
            )),
            Err(TrySendError::Disconnected(_)) => Err(CallError::with_kind(
                ErrorKind::Refused,
                "executor is shutting down",
            )),
        }
    }
}
