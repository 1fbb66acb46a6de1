//! The scheduler actor: runs one cage's durable queue. It takes enqueues and acceptances (and
//! acknowledges them only once durable), starts due attempts within each queue's concurrency,
//! and records how they ended: done, retried later by the queue's policy, or dead.
//!
//! An attempt of a call in the *deliver* stage offers it to its target cage; one in the
//! *execute* stage runs the module here ([`crate::run`]). The decisions (what starts, when next,
//! when to give up) are [`decide`]'s, over [`crate::retry_policy`]; the storage is
//! [`crate::queue`]'s; "now" is the scheduler's [`Clock`].
//!
//! The actor is wired here; its concerns each have a file: [`intake`] (enqueues and offered
//! calls, checked and acknowledged once durable), [`execution`] (the pump, attempts and
//! deliveries, and how they ended), [`operator`] (listings and orders), [`policies`] (new
//! settings), [`history`] (sweeps), [`restart`] (attempts the cage died during, found at its
//! start), [`jobs`], [`chains`]; and the decisions, as plain functions, in [`decide`] and
//! [`window`].

mod admission;
mod chains;
mod decide;
mod execution;
mod history;
mod intake;
mod jobs;
mod operator;
mod policies;
mod rate;
mod restart;
mod window;
use crate::config::Isolation;
use execution::Slot;
use history::HISTORY_SWEEP_EVERY;
use window::DeliveryWindows;

pub use chains::StartChains;
pub use intake::{Accept, AcceptMany, Enqueue};
pub use jobs::{JobCommand, JobsDeclared};
pub use operator::Query;
pub use policies::{rules as store_rules, PoliciesChanged};

use crate::chains::ChainWatch;
use crate::config::ExecuteOn;
use crate::delivery::Delivery;
use crate::executor::CallExecutor;
use crate::metrics::Metrics;
use crate::model::clock::{Clock, SystemClock};
use crate::model::job::Job;
use crate::queue::{GroupCommit, QueueError, QueueStore};
use crate::registry::ModuleRegistry;
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// A storage error as the caller is told it: refused for good, or perhaps half done.
pub(super) fn storage_error(e: QueueError) -> CallError {
    // A change the queue took back (or never wrote) is refused for good; any other storage
    // error may have left it half done.
    if e.is_refusal() {
        return CallError::with_kind(
            ErrorKind::Refused,
            format!("not accepted: queue storage: {e}"),
        );
    }
    CallError::with_kind(ErrorKind::Internal, format!("queue storage: {e}"))
}

/// Stop starting attempts (the cage is stopping); running ones finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pause;

/// The cage stops now: attempts still running are left unfinished by a deliberate stop, which
/// is no crash of theirs, so their start marks go (their calls run again at the next start).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

/// The scheduler of one cage.
pub struct Scheduler {
    cage: String,
    store: Arc<QueueStore>,
    commit: Arc<GroupCommit>,
    policies: ExecuteOn,
    registry: Addr<ModuleRegistry>,
    executor: Addr<CallExecutor>,
    delivery: Arc<Delivery>,
    running: HashMap<String, Slot>,
    /// Attempts running per queue and group, and their rate limits' buckets.
    admission: admission::Admission,
    windows: DeliveryWindows,
    last_scan_ms: u64,
    clock: Arc<dyn Clock>,
    paused: bool,
    rng: SmallRng,
    metrics: Arc<Metrics>,
    pump_asked: bool,
    /// The next pump set by the last one, and when it runs.
    pump_timer: Option<(SpawnHandle, std::time::Instant)>,
    /// A sweep of a history backlog is set to follow the last one (the regular sweep waits).
    sweep_follows: bool,
    jobs: std::collections::BTreeMap<String, Job>,
    /// Jobs whose last firing failed to be stored, and when to try them again: the pump runs
    /// every few milliseconds, and a queue that takes no writes would be asked (and logged
    /// about) at each tick.
    jobs_held: std::collections::HashMap<String, u64>,
    watch: Arc<ChainWatch>,
    direct_due: Vec<String>,
    chains_touched: bool,
    /// How each module's calls run here (which attempts need a start mark).
    isolation_of: IsolationOf,
    /// Paces the starts of rate-limited queues as they run.
    pacer: rate::Pacer,
    /// What held back due calls at the last pump.
    held: admission::Held,
    /// For each queue served in turn (`fairness = "round_robin"`): the partition of the due
    /// index its last pump ended at.
    turns: HashMap<String, Vec<u8>>,
}

/// How module `name`'s calls run on this cage.
pub type IsolationOf = Arc<dyn Fn(&str) -> Isolation + Send + Sync>;

impl Scheduler {
    /// A scheduler over `store` for cage `cage`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cage: &str,
        store: Arc<QueueStore>,
        commit: Arc<GroupCommit>,
        policies: ExecuteOn,
        registry: Addr<ModuleRegistry>,
        executor: Addr<CallExecutor>,
        delivery: Arc<Delivery>,
        watch: Arc<ChainWatch>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Scheduler {
            cage: cage.to_owned(),
            store,
            commit,
            policies,
            registry,
            executor,
            delivery,
            running: HashMap::new(),
            admission: admission::Admission::default(),
            windows: DeliveryWindows::default(),
            last_scan_ms: 0,
            clock: Arc::new(SystemClock),
            paused: false,
            rng: SmallRng::from_entropy(),
            metrics,
            pump_asked: false,
            pump_timer: None,
            sweep_follows: false,
            jobs: std::collections::BTreeMap::new(),
            jobs_held: std::collections::HashMap::new(),
            watch,
            direct_due: Vec::new(),
            chains_touched: false,
            // Until told otherwise, every module is taken to run in this process: every
            // attempt is marked, so no crash of the cage goes uncounted.
            isolation_of: Arc::new(|_| Isolation::InProcess),
            pacer: rate::Pacer::default(),
            held: admission::Held::default(),
            turns: HashMap::new(),
        }
    }

    /// The same scheduler, told how each module's calls run here.
    pub fn with_isolation(mut self, isolation_of: IsolationOf) -> Self {
        self.isolation_of = isolation_of;
        self
    }

    /// The same scheduler reading the time from `clock` (the system's by default).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Now, by the scheduler's clock: every decision reads the time here.
    pub(super) fn now(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Pumps once after the messages already waiting are handled, however many ask for it.
    pub(super) fn pump_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_asked {
            self.pump_asked = true;
            ctx.run_later(Duration::ZERO, |this, ctx| {
                this.pump_asked = false;
                this.pump(ctx);
            });
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_jobs();
        self.record_crashes_of_the_last_run();
        self.fail_interrupted_direct_chains();
        // No count here: with a million pending calls a count is a full scan, and a restart
        // must reach its first due call without one.
        match self.store.next_due_ms() {
            Ok(Some(at)) => {
                let wait = Duration::from_millis(at.saturating_sub(self.now()));
                tracing::info!(cage = %self.cage, "queue open; next call due in {}", humantime::format_duration(Duration::from_secs(wait.as_secs())));
            }
            Ok(None) => tracing::info!(cage = %self.cage, "queue open; nothing scheduled"),
            Err(e) => {
                tracing::error!(cage = %self.cage, "queue open, but its schedule is unreadable: {e}")
            }
        }
        // From here the pump sets its own next run (see `execution::arm_pump`).
        self.pump_soon(ctx);
        ctx.run_interval(HISTORY_SWEEP_EVERY, |this, ctx| this.sweep_history(ctx));
    }
}

impl Handler<Stop> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Stop, _: &mut Context<Self>) {
        let running: Vec<&str> = self
            .running
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Queue(..)))
            .map(|(id, _)| id.as_str())
            .collect();
        if running.is_empty() {
            return;
        }
        match self.store.drop_start_marks(&running) {
            Ok(()) => {
                tracing::info!(cage = %self.cage, "{} attempt(s) left unfinished by the stop run again at the next start", running.len())
            }
            Err(e) => {
                tracing::error!(cage = %self.cage, "cannot drop the start marks of {} attempt(s) left unfinished by the stop (the next start counts them as crashes): {e}", running.len())
            }
        }
    }
}

impl Handler<Pause> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Pause, _: &mut Context<Self>) {
        self.paused = true;
    }
}
