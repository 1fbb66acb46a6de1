//! The scheduler actor: runs one cage's durable queue. It takes enqueues and acceptances (and
//! acknowledges them only once durable), starts due attempts within each queue's concurrency,
//! and records how they ended: done, retried later by the queue's policy, or dead.
//!
//! An attempt of a call in the *deliver* stage offers it to its target cage; one in the
//! *execute* stage runs the module here. The decisions (when next, when to give up) are
//! [`crate::retry_policy`]'s; the storage is [`crate::queue`]'s.

mod chains;
mod jobs;
mod window;
use window::DeliveryWindows;

pub use chains::StartChains;
pub use jobs::{JobCommand, JobsDeclared};

use crate::chains::{ChainWatch, REPORT_MODULE};
use crate::config::ExecuteOn;
use crate::delivery::Delivery;
use crate::executor::{CallExecutor, Execute};
use crate::host::Output;
use crate::metrics::{Metrics, QueueEvent};
use crate::model::call::Attempt;
use crate::model::call::CallRecord;
use crate::model::call::QueuedCall;
use crate::model::call::Stage;
use crate::model::chain::StepOutcome;
use crate::model::ids::new_call_id;
use crate::model::job::Job;
use crate::names::{self, NameKind};
use crate::queue::{Acceptance, GroupCommit, QueueError, QueueStore};
use crate::registry::{ModuleRegistry, Resolve};
use crate::retry_policy::{next_attempt_at, MAX_ATTEMPTS};
use crate::transport::protocol::{
    CallView, EnqueueRequest, Filter, QueueQuery, QueueStats, Response,
};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often due calls are looked for (also right after every enqueue and every attempt).
const PUMP_EVERY: Duration = Duration::from_millis(10);
/// Due calls looked at per pump.
const DUE_BATCH: usize = 1024;
/// Most calls offered to one cage in one request.
const DELIVER_BATCH: usize = 128;
/// Most argument bytes in one request of several calls, well under a target's frame limit
/// (`max_frame_bytes`, 16 MiB by default); a larger call goes alone, as it would unbatched.
const DELIVER_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// While every queue's slots are taken by running calls, the schedule is still read this
/// often, for calls to deliver (they need no slot, only room in their cage's window).
const SATURATED_SCAN_EVERY: Duration = Duration::from_millis(100);
/// How often expired deduplication history is dropped.
const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Most calls a listing returns when the operator gives no limit.
const DEFAULT_LISTING: usize = 1000;

/// Splits calls for one cage into requests of at most [`DELIVER_BATCH`] calls and
/// [`DELIVER_BATCH_BYTES`] of arguments (a call larger than that is a request of its own).
fn delivery_batches(records: Vec<CallRecord>) -> Vec<Vec<CallRecord>> {
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

pub(super) use crate::model::clock::now_ms;

/// How a successful attempt of a call at `stage` is counted.
fn success_of(stage: Stage) -> QueueEvent {
    match stage {
        Stage::Execute => QueueEvent::Succeeded,
        Stage::Deliver => QueueEvent::Delivered,
    }
}

/// How a failed attempt of a call at `stage` is counted.
fn failure_of(stage: Stage) -> QueueEvent {
    match stage {
        Stage::Execute => QueueEvent::Failed,
        Stage::Deliver => QueueEvent::DeliveryFailed,
    }
}

/// The queue counters of every queue added up, as `cage pending --stats` shows them.
fn totals(metrics: &Metrics) -> QueueStats {
    let mut stats = QueueStats::default();
    for q in metrics.queues().values() {
        stats.enqueued += q.enqueued;
        stats.accepted += q.accepted;
        stats.delivered += q.delivered;
        stats.executed += q.successes;
        stats.failed_attempts += q.failures + q.delivery_failures;
        stats.died += q.dead;
    }
    stats
}

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

/// Put a call into this cage's queue; answers (id, earlier duplicate) once durable.
#[derive(Message)]
#[rtype(result = "Result<(String, Option<String>), CallError>")]
pub struct Enqueue(pub EnqueueRequest);

/// Accept a call from its source cage; answers the id it duplicates, if any, once durable.
#[derive(Message)]
#[rtype(result = "Result<Option<String>, CallError>")]
pub struct Accept(pub QueuedCall);

/// Accept several calls from their source cage; answers each as [`Accept`] would, after one
/// group commit for all of them.
#[derive(Message)]
#[rtype(result = "Vec<Result<Option<String>, CallError>>")]
pub struct AcceptMany(pub Vec<QueuedCall>);

/// An operator's question or order.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct Query(pub QueueQuery);

/// New queue policies and cage locations (the site config changed).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PoliciesChanged(pub ExecuteOn);

/// Stop starting attempts (the cage is stopping); running ones finish.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Pause;

#[derive(Message)]
#[rtype(result = "()")]
struct AttemptDone {
    id: String,
    started_ms: u64,
    duration: Duration,
    outcome: Result<Output, CallError>,
    version: Option<String>,
}

/// What a running attempt occupies: a slot of its queue (an execution), or room in its target
/// cage's delivery window (a delivery).
#[derive(Debug, Clone, PartialEq)]
enum Slot {
    Queue(String),
    Window(String),
}

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
    busy: HashMap<String, usize>,
    windows: DeliveryWindows,
    last_scan: Instant,
    paused: bool,
    rng: SmallRng,
    metrics: Arc<Metrics>,
    pump_asked: bool,
    jobs: std::collections::BTreeMap<String, Job>,
    /// Jobs whose last firing failed to be stored, and when to try them again: the pump runs
    /// every few milliseconds, and a queue that takes no writes would be asked (and logged
    /// about) at each tick.
    jobs_held: std::collections::HashMap<String, u64>,
    watch: Arc<ChainWatch>,
    direct_due: Vec<String>,
    chains_touched: bool,
}

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
            busy: HashMap::new(),
            windows: DeliveryWindows::default(),
            last_scan: Instant::now(),
            paused: false,
            rng: SmallRng::from_entropy(),
            metrics,
            pump_asked: false,
            jobs: std::collections::BTreeMap::new(),
            jobs_held: std::collections::HashMap::new(),
            watch,
            direct_due: Vec::new(),
            chains_touched: false,
        }
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

    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.paused {
            return;
        }
        self.fire_due_jobs();
        // Free slots of the configured queues, plus one queue's worth for queues without a table
        // of their own: no point reading more of the schedule than could start now.
        let configured: usize = self
            .policies
            .queues
            .iter()
            .map(|(q, p)| {
                p.concurrency
                    .saturating_sub(self.busy.get(q).copied().unwrap_or(0))
            })
            .sum();
        let free = configured
            + self
                .policies
                .queue(crate::config::DEFAULT_QUEUE)
                .concurrency;
        let executing = self.busy.values().sum::<usize>();
        if configured == 0 && executing >= free && self.last_scan.elapsed() < SATURATED_SCAN_EVERY {
            return;
        }
        self.last_scan = Instant::now();
        // Room to read deliveries too: they take no queue slot, only room in their window.
        let want = (free * 2 + 8 + DELIVER_BATCH).min(DUE_BATCH);
        let (running, windows) = (&self.running, &self.windows);
        let due = match self.store.due_where(
            now_ms(),
            want,
            want + running.len() + windows.held() + 64,
            &|id| running.contains_key(id) || windows.is_held(id),
        ) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(cage = %self.cage, "cannot read the schedule: {e}");
                return;
            }
        };
        let mut due = due;
        let mut deliveries: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
        // Higher priority first; the sort is stable, so due order holds within a priority.
        due.sort_by_key(|d| std::cmp::Reverse(d.priority));
        for d in due {
            let policy = self.policies.queue(&d.queue);
            let (concurrency, keep_order) = (policy.concurrency, policy.keep_order);
            match &d.target {
                Some(target) => {
                    if self.held_back(target, &d.id) {
                        continue;
                    }
                }
                None => {
                    if self.busy.get(&d.queue).copied().unwrap_or(0) >= concurrency {
                        continue;
                    }
                }
            }
            // keep_order: a call waits until every call stored before it in its queue is done.
            if keep_order
                && self.store.head_of(&d.queue).ok().flatten().as_deref() != Some(d.id.as_str())
            {
                continue;
            }
            let record = match self.store.get(&d.id) {
                // Not on disk yet: running it now could leave an effect for a call whose
                // acknowledgement then fails. The next pump after its flush starts it.
                Ok(Some(r)) if r.seq > self.commit.durable_seq() => continue,
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    // Unreadable (corrupt, or an unknown format): move it aside, keep the queue going.
                    match self.store.quarantine(&d) {
                        Ok(()) => {
                            tracing::error!(cage = %self.cage, call_id = %d.id, "{e}; record moved to quarantine")
                        }
                        Err(q) => {
                            tracing::error!(cage = %self.cage, call_id = %d.id, "{e}; and quarantine failed: {q}")
                        }
                    }
                    continue;
                }
            };
            if record.stage == Stage::Execute && record.call.module == REPORT_MODULE {
                // A chain step's report for this cage (the chain's owner): applied here.
                if let Err(e) = self.take_report(record) {
                    tracing::error!(cage = %self.cage, call_id = %d.id, "cannot apply the chain step report: {e}");
                }
                continue;
            }
            if record.stage == Stage::Deliver {
                let target = record.call.target.clone();
                // An index entry from before targets were recorded in it.
                if d.target.is_none() && self.held_back(&target, &d.id) {
                    continue;
                }
                self.windows.start(&target);
                self.running
                    .insert(d.id.clone(), Slot::Window(target.clone()));
                deliveries.entry(target).or_default().push(record);
            } else {
                self.running
                    .insert(d.id.clone(), Slot::Queue(d.queue.clone()));
                *self.busy.entry(d.queue).or_default() += 1;
                self.start_attempt(record, ctx);
            }
        }
        // Calls for the same cage go in one request (one round trip, one commit on the target).
        for (target, records) in deliveries {
            for batch in delivery_batches(records) {
                self.start_deliveries(target.clone(), batch, ctx);
            }
        }
        self.after_chains(ctx);
    }

    fn start_attempt(&mut self, record: CallRecord, ctx: &mut Context<Self>) {
        let (addr, started_ms, t0) = (ctx.address(), now_ms(), Instant::now());
        let attempt = record.next_attempt();
        let call = record.call;
        tracing::debug!(call_id = %call.id, stage = record.stage.as_str(), attempt, "attempt starts");
        let time_limit = self.policies.queue(&call.queue).time_limit;
        let (registry, executor) = (self.registry.clone(), self.executor.clone());
        actix_rt::spawn(async move {
            let (outcome, version) =
                execute(registry, executor, &call, attempt, time_limit, true).await;
            addr.do_send(AttemptDone {
                id: call.id,
                started_ms,
                duration: t0.elapsed(),
                outcome,
                version,
            });
        });
    }

    /// Offers `records` (all for cage `target`) in one request; each outcome is an attempt of
    /// its own call.
    fn start_deliveries(
        &mut self,
        target: String,
        records: Vec<CallRecord>,
        ctx: &mut Context<Self>,
    ) {
        let (addr, started_ms, t0) = (ctx.address(), now_ms(), Instant::now());
        let calls: Vec<QueuedCall> = records
            .into_iter()
            .map(|r| {
                tracing::debug!(call_id = %r.call.id, stage = r.stage.as_str(), attempt = r.next_attempt(), "attempt starts");
                r.call
            })
            .collect();
        let delivery = self.delivery.clone();
        actix_rt::spawn(async move {
            for (id, outcome) in delivery.offer_many(target, calls).await {
                addr.do_send(AttemptDone {
                    id,
                    started_ms,
                    duration: t0.elapsed(),
                    outcome: outcome.map(|()| Output::result(Vec::new())),
                    version: None,
                });
            }
        });
    }

    fn count(&self, record: &CallRecord, event: QueueEvent) {
        self.metrics
            .queue_event(&record.call.queue, event, now_ms());
    }

    /// Whether due call `id` for `target` must wait because `target`'s delivery window is
    /// full; if so, it is noted as held, so the due scan passes over it until room frees.
    fn held_back(&mut self, target: &str, id: &str) -> bool {
        let window = self.delivery.window(target);
        if self.windows.has_room(target, window) {
            return false;
        }
        tracing::debug!(cage = %self.cage, target, call_id = id, "delivery window full ({window} calls being handed over)");
        self.windows.hold(target, id);
        true
    }

    fn attempt_done(&mut self, done: AttemptDone) -> Result<(), QueueError> {
        match self.running.remove(&done.id) {
            Some(Slot::Queue(queue)) => {
                if let Some(n) = self.busy.get_mut(&queue) {
                    *n = n.saturating_sub(1);
                }
            }
            Some(Slot::Window(target)) => self.windows.end(&target),
            None => {}
        }
        // Cancelled while it ran: nothing left to record.
        let Some(record) = self.store.get(&done.id)? else {
            return Ok(());
        };
        let mut updated = record.clone();
        let number = record.next_attempt();
        updated.attempts.push(Attempt {
            number,
            started_ms: done.started_ms,
            duration_us: done.duration.as_micros() as u64,
            error: done.outcome.as_ref().err().map(ToString::to_string),
            module_version: done.version,
        });
        let call = &record.call;
        let span = tracing::info_span!("call", call_id = %call.id, cage = %self.cage, module = %call.module, method = %call.method, attempt = number);
        let _entered = span.enter();
        let job_outcome = match done.outcome {
            Ok(output) => {
                if record.stage == Stage::Execute && record.call.chain.is_some() {
                    let outcome = StepOutcome::Done {
                        result: output.result,
                        next: output.next,
                        children: chains::children_results(&self.store, &record.call.id),
                    };
                    self.end_step(&record, None, done.started_ms, outcome)?;
                } else {
                    self.store.finish(&record)?;
                }
                self.count(&record, success_of(record.stage));
                match record.stage {
                    Stage::Execute => tracing::info!("done after {number} attempt(s)"),
                    Stage::Deliver => {
                        tracing::info!(target = %call.target, "accepted by cage {} after {number} attempt(s)", call.target)
                    }
                }
                match record.stage {
                    Stage::Execute => "done".to_owned(),
                    Stage::Deliver => format!("handed to cage {}", call.target),
                }
            }
            Err(e) if e.kind == ErrorKind::Permanent => {
                updated.dead_reason = Some(format!("permanent rejection: {}", e.message));
                let reason = StepOutcome::Failed(format!("permanent rejection: {}", e.message));
                self.end_step(&record, Some(&updated), done.started_ms, reason)?;
                self.count(&record, failure_of(record.stage));
                self.count(&record, QueueEvent::Died);
                tracing::warn!("moved to dead letters: permanent rejection: {}", e.message);
                format!("dead: permanent rejection: {}", e.message)
            }
            Err(e) => {
                self.count(&record, failure_of(record.stage));
                let policy = self.policies.queue(&call.queue);
                let jitter = self.rng.gen_range(-1.0..=1.0);
                match next_attempt_at(
                    &policy.backoff(),
                    number + 1,
                    updated.window_start_ms,
                    now_ms(),
                    jitter,
                ) {
                    Some(at) => {
                        updated.next_at_ms = at;
                        self.store.update(&record, &updated)?;
                        let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                        tracing::warn!(
                            "attempt {number} failed: {e}; next attempt in {}",
                            humantime::format_duration(Duration::from_millis(
                                wait.as_millis() as u64
                            ))
                        );
                        format!("attempt {number} failed, retrying: {e}")
                    }
                    None => {
                        let limit = if number >= MAX_ATTEMPTS {
                            format!("the most attempts a call makes; queue {}", call.queue)
                        } else {
                            format!("give_up_after of queue {}", call.queue)
                        };
                        updated.dead_reason = Some(format!(
                            "gave up after {number} attempt(s) in {} ({limit}); last error: {e}",
                            humantime::format_duration(Duration::from_secs(
                                (now_ms().saturating_sub(updated.window_start_ms)) / 1000
                            )),
                        ));
                        let reason =
                            StepOutcome::Failed(updated.dead_reason.clone().unwrap_or_default());
                        self.end_step(&record, Some(&updated), done.started_ms, reason)?;
                        self.count(&record, QueueEvent::Died);
                        tracing::warn!("moved to dead letters: gave up after {number} attempt(s); last error: {e}");
                        format!("dead: gave up after {number} attempt(s): {e}")
                    }
                }
            }
        };
        self.job_run_ended(&record.call.id, job_outcome);
        self.commit.nudge();
        Ok(())
    }

    /// After the flush that was to make call `stored` durable: on failure the call is taken back
    /// (it never ran: the scheduler starts only durable calls), so "not accepted" is the truth.
    fn settle(
        &mut self,
        durable: Result<(), QueueError>,
        stored: Option<&str>,
    ) -> Result<(), CallError> {
        let Err(e) = durable else { return Ok(()) };
        if let Some(id) = stored {
            match self.store.take_back(id) {
                Ok(_) => {
                    tracing::error!(cage = %self.cage, call_id = %id, "not accepted, and removed again: {e}")
                }
                Err(c) => {
                    // Still stored, perhaps durably: "not accepted" could be a lie.
                    tracing::error!(cage = %self.cage, call_id = %id, "not made durable ({e}), and could not be removed: {c}");
                    return Err(CallError::with_kind(
                        ErrorKind::Internal,
                        format!("outcome unknown: the call was not made durable ({e}), and taking it back failed ({c}); it may run after a restart"),
                    ));
                }
            }
        }
        Err(CallError::with_kind(
            ErrorKind::Refused,
            format!("not accepted: {e}"),
        ))
    }

    /// Stores a call for execution here; returns the id it duplicates, if any.
    fn take_for_execution(&mut self, call: QueuedCall) -> Result<Option<String>, CallError> {
        let now = now_ms();
        let expires = crate::model::clock::after(now, self.policies.queue(&call.queue).retention);
        let record = CallRecord::new(call, Stage::Execute, now);
        match self
            .store
            .accept(&record, now, expires)
            .map_err(storage_error)?
        {
            Acceptance::Accepted => Ok(None),
            Acceptance::AlreadyAccepted => Ok(Some(record.call.id)),
            Acceptance::DuplicateKey(of) => Ok(Some(of)),
        }
    }

    fn enqueue(&mut self, r: EnqueueRequest) -> Result<(String, Option<String>), CallError> {
        if r.module.starts_with('$') {
            return Err(CallError::bad_arguments(format!(
                "{:?} is reserved for the cage's own use",
                r.module
            )));
        }
        // Refuse now a call no cage could ever run, rather than keep and retry it for days.
        check_names(&r.target, Some(&r.module), &r.method, &r.queue)?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&r.args)
            .map_err(|e| CallError::bad_arguments(format!("arguments are not JSON: {e}")))?;
        if r.target != self.cage {
            // Refuse now what could never be delivered, rather than retry it for days.
            self.delivery.check(&r.target)?;
        }
        let now = now_ms();
        crate::model::clock::span_within_horizon("delay", Duration::from_millis(r.delay_ms))
            .map_err(|e| {
                CallError::bad_arguments(format!("enqueue of {}.{}: {e}", r.module, r.method))
            })?;
        let call = QueuedCall {
            id: new_call_id(&self.cage),
            source: self.cage.clone(),
            target: r.target,
            module: r.module,
            method: r.method,
            args: r.args,
            queue: r.queue,
            priority: r.priority,
            key: r.key,
            not_before_ms: if r.delay_ms == 0 {
                0
            } else {
                now.saturating_add(r.delay_ms)
            },
            enqueued_at_ms: now,
            chain: None,
        };
        let id = call.id.clone();
        let queue = call.queue.clone();
        let duplicate_of = if call.target == self.cage {
            self.take_for_execution(call)?
        } else {
            self.store
                .insert(&CallRecord::new(call, Stage::Deliver, now))
                .map_err(storage_error)?;
            None
        };
        self.metrics.queue_event(&queue, QueueEvent::Enqueued, now);
        Ok((id, duplicate_of))
    }

    fn view(&self, record: CallRecord) -> CallView {
        CallView {
            cage: self.cage.clone(),
            running: self.running.contains_key(&record.call.id),
            waiting: self.windows.is_held(&record.call.id).then(|| {
                let target = &record.call.target;
                format!(
                    "waiting for room: {} of cage {target}'s window of {} calls are being handed over",
                    self.windows.in_flight(target),
                    self.delivery.window(target)
                )
            }),
            record,
        }
    }

    fn listing(&self, filter: &Filter, dead: bool) -> Result<Vec<CallView>, QueueError> {
        let limit = if filter.limit == 0 {
            DEFAULT_LISTING
        } else {
            filter.limit
        };
        let keep = |r: &CallRecord| filter.keeps(r);
        let records = if dead {
            self.store.dead(&keep, limit)?
        } else {
            self.store.pending(&keep, limit)?
        };
        Ok(records.into_iter().map(|r| self.view(r).listed()).collect())
    }

    fn retry_now(&mut self, id: &str) -> Result<usize, QueueError> {
        let Some(record) = self.store.get(id)? else {
            return Ok(0);
        };
        let mut updated = record.clone();
        updated.next_at_ms = now_ms();
        self.store.update(&record, &updated)?;
        Ok(1)
    }

    fn query(&mut self, q: QueueQuery) -> Result<Response, QueueError> {
        let changed = |n: usize, commit: &GroupCommit| {
            commit.nudge();
            Response::Changed(n)
        };
        Ok(match q {
            QueueQuery::Pending(f) => Response::Calls(self.listing(&f, false)?),
            QueueQuery::Dead(f) => Response::Calls(self.listing(&f, true)?),
            QueueQuery::Show(id) => {
                let found = match self.store.get(&id)? {
                    Some(r) => Some(r),
                    None => self.store.get_dead(&id)?,
                };
                Response::Calls(found.into_iter().map(|r| self.view(r)).collect())
            }
            QueueQuery::RetryNow(id) => changed(self.retry_now(&id)?, &self.commit),
            QueueQuery::RetryAllNow(f) => {
                let ids: Vec<String> = self
                    .store
                    .pending(&|r| f.keeps(r), usize::MAX)?
                    .into_iter()
                    .map(|r| r.call.id)
                    .collect();
                let mut n = 0;
                for id in ids {
                    n += self.retry_now(&id)?;
                }
                changed(n, &self.commit)
            }
            QueueQuery::Cancel(id) => {
                let n = self.cancel_cascade(&id, "cancelled by an operator")?;
                if n >= 1 {
                    tracing::info!(cage = %self.cage, call_id = %id, "cancelled by an operator");
                }
                changed(n, &self.commit)
            }
            QueueQuery::CancelAll(f) => {
                let ids: Vec<String> = self
                    .store
                    .pending(&|r| f.keeps(r), usize::MAX)?
                    .into_iter()
                    .map(|r| r.call.id)
                    .collect();
                let mut n = 0;
                for id in &ids {
                    n += self.cancel_cascade(id, "cancelled by an operator")?;
                }
                tracing::info!(cage = %self.cage, "{n} pending call(s) cancelled by an operator");
                changed(n, &self.commit)
            }
            QueueQuery::Stats(count) => {
                let mut stats = totals(&self.metrics);
                if count {
                    let (pending, dead) = self.store.counts();
                    (stats.pending, stats.dead) = (Some(pending as u64), Some(dead as u64));
                }
                Response::Stats(stats)
            }
            QueueQuery::Revive(id) => {
                let n = usize::from(self.store.revive(&id, now_ms())?.is_some());
                if n == 1 {
                    tracing::info!(cage = %self.cage, call_id = %id, "revived by an operator: pending again, due now");
                }
                changed(n, &self.commit)
            }
        })
    }

    /// Moves pending calls that already failed to the schedule the current policies imply.
    fn reschedule_all(&mut self) -> Result<usize, QueueError> {
        let waiting = self
            .store
            .pending(&|r| !r.attempts.is_empty(), usize::MAX)?;
        let mut moved = 0;
        for record in waiting {
            if self.running.contains_key(&record.call.id) {
                continue;
            }
            let Some(last) = record.attempts.last() else {
                continue;
            };
            let ended = last.started_ms + last.duration_us / 1000;
            let policy = self.policies.queue(&record.call.queue);
            let jitter = self.rng.gen_range(-1.0..=1.0);
            let mut updated = record.clone();
            match next_attempt_at(
                &policy.backoff(),
                record.next_attempt(),
                record.window_start_ms,
                ended,
                jitter,
            ) {
                Some(at) => updated.next_at_ms = at,
                // Past the new give-up time: one more attempt now decides (and buries it if it fails).
                None => updated.next_at_ms = now_ms(),
            }
            if updated.next_at_ms != record.next_at_ms {
                self.store.update(&record, &updated)?;
                moved += 1;
            }
        }
        self.commit.nudge();
        Ok(moved)
    }
}

/// Checks the names of a call to be queued: a bad one is refused as bad arguments, so it is
/// never stored (`module` is `None` for the cage's own built-in module).
fn check_names(
    target: &str,
    module: Option<&str>,
    method: &str,
    queue: &str,
) -> Result<(), CallError> {
    [
        (NameKind::Cage, Some(target)),
        (NameKind::Module, module),
        (NameKind::Method, Some(method)),
        (NameKind::Queue, Some(queue)),
    ]
    .into_iter()
    .filter_map(|(kind, name)| Some((kind, name?)))
    .try_for_each(|(kind, name)| names::check(kind, name))
    .map_err(|e| CallError::bad_arguments(e.to_string()))
}

/// Runs one attempt of `call` on this cage's module; returns its outcome and the module version.
async fn execute(
    registry: Addr<ModuleRegistry>,
    executor: Addr<CallExecutor>,
    call: &QueuedCall,
    attempt: u32,
    time_limit: Duration,
    queued: bool,
) -> (Result<Output, CallError>, Option<String>) {
    let gone = |_| CallError::with_kind(ErrorKind::Refused, "cage is shutting down");
    let module = match registry
        .send(Resolve(call.module.clone()))
        .await
        .map_err(gone)
        .and_then(|r| r)
    {
        Ok(m) => m,
        Err(e) => return (Err(e), None),
    };
    let version = Some(module.version.clone());
    if !module.has_method(&call.method) {
        let e = CallError::with_kind(
            ErrorKind::UnknownMethod,
            format!(
                "module {} {} has no method {:?}",
                module.name, module.version, call.method
            ),
        );
        return (Err(e), version);
    }
    let deadline = Instant::now() + time_limit;
    let execute = Execute {
        module,
        call_id: call.id.clone(),
        method: call.method.clone(),
        args: call.args.clone(),
        deadline,
        attempt,
        queued,
        chain: call.chain.clone(),
    };
    let reply = match executor.send(execute).await.map_err(gone).and_then(|r| r) {
        Ok(r) => r,
        Err(e) => return (Err(e), version),
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), reply).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(CallError::with_kind(
            ErrorKind::Internal,
            "executor thread ended without an answer",
        )),
        Err(_) => Err(CallError::with_kind(
            ErrorKind::Timeout,
            format!(
                "attempt ran longer than the queue's time_limit of {}",
                humantime::format_duration(time_limit)
            ),
        )),
    };
    (outcome, version)
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.load_jobs();
        self.fail_interrupted_direct_chains();
        // No count here: with a million pending calls a count is a full scan, and a restart
        // must reach its first due call without one.
        match self.store.next_due_ms() {
            Ok(Some(at)) => {
                let wait = Duration::from_millis(at.saturating_sub(now_ms()));
                tracing::info!(cage = %self.cage, "queue open; next call due in {}", humantime::format_duration(Duration::from_secs(wait.as_secs())));
            }
            Ok(None) => tracing::info!(cage = %self.cage, "queue open; nothing scheduled"),
            Err(e) => {
                tracing::error!(cage = %self.cage, "queue open, but its schedule is unreadable: {e}")
            }
        }
        ctx.run_interval(PUMP_EVERY, |this, ctx| this.pump(ctx));
        ctx.run_interval(HISTORY_SWEEP_EVERY, |this, _| {
            let recheck = crate::model::clock::millis(
                this.policies.queue(crate::config::DEFAULT_QUEUE).retention,
            );
            match this.store.expire_history(now_ms(), recheck, 10_000) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(cage = %this.cage, "dropped {n} expired deduplication entries");
                    this.commit.nudge();
                }
                Err(e) => tracing::error!(cage = %this.cage, "cannot expire history: {e}"),
            }
            match this
                .store
                .expire_chains(now_ms().saturating_sub(recheck), 10_000)
            {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(cage = %this.cage, "dropped {n} finished chains past retention")
                }
                Err(e) => tracing::error!(cage = %this.cage, "cannot expire chains: {e}"),
            }
        });
    }
}

impl Handler<Enqueue> for Scheduler {
    type Result = ResponseActFuture<Self, Result<(String, Option<String>), CallError>>;

    fn handle(&mut self, Enqueue(request): Enqueue, _: &mut Context<Self>) -> Self::Result {
        // A call due later is found by the periodic pump; one due now is pumped as soon as it
        // is durable (the pump starts only durable calls, so a pump before would skip it).
        let due_now = request.delay_ms == 0;
        let taken = self.enqueue(request);
        // A key duplicate of a call held here stored nothing new: nothing to take back.
        let stored = taken
            .as_ref()
            .ok()
            .filter(|(_, dup)| dup.is_none())
            .map(|(id, _)| id.clone());
        let durable = self.commit.durable();
        // Acknowledge only after the group flush, or a crash loses an acknowledged call.
        Box::pin(durable.into_actor(self).map(move |durable, this, ctx| {
            if due_now {
                this.pump_soon(ctx);
            }
            let taken = taken?;
            this.settle(durable, stored.as_deref())?;
            Ok(taken)
        }))
    }
}

impl Scheduler {
    /// Takes an offered call into this cage's queue; also what was stored (to take back if the
    /// commit fails).
    fn take_offered(
        &mut self,
        call: QueuedCall,
    ) -> (Result<Option<String>, CallError>, Option<String>) {
        let id = call.id.clone();
        let far = crate::model::clock::within_horizon("not_before", call.not_before_ms, now_ms());
        // A chain step's report goes to the owner's built-in module, whose `$` name no module
        // file can have (enqueue refuses `$` names).
        let module = (call.module != REPORT_MODULE).then_some(call.module.as_str());
        let taken = if let Err(e) = far {
            // Never valid, whoever offers it: the offering cage dead-letters it at once.
            Err(CallError::with_kind(
                ErrorKind::Permanent,
                format!("call {id}: {e}"),
            ))
        } else if let Err(e) = check_names(&call.target, module, &call.method, &call.queue) {
            Err(e)
        } else if call.target == self.cage {
            self.metrics
                .queue_event(&call.queue, QueueEvent::Accepted, now_ms());
            self.take_for_execution(call)
        } else {
            Err(CallError::with_kind(
                ErrorKind::UnknownCage,
                format!(
                    "this is cage {}, not {} (check config/config_execute_on.toml on {})",
                    self.cage, call.target, call.source
                ),
            ))
        };
        // Only a newly accepted call was stored by this request.
        let stored = matches!(taken, Ok(None)).then_some(id);
        (taken, stored)
    }
}

impl Handler<Accept> for Scheduler {
    type Result = ResponseActFuture<Self, Result<Option<String>, CallError>>;

    fn handle(&mut self, Accept(call): Accept, ctx: &mut Context<Self>) -> Self::Result {
        let (taken, stored) = self.take_offered(call);
        let durable = self.commit.durable();
        self.pump_soon(ctx);
        Box::pin(durable.into_actor(self).map(move |durable, this, _| {
            let taken = taken?;
            this.settle(durable, stored.as_deref())?;
            Ok(taken)
        }))
    }
}

impl Handler<AcceptMany> for Scheduler {
    type Result = ResponseActFuture<Self, Vec<Result<Option<String>, CallError>>>;

    fn handle(&mut self, AcceptMany(calls): AcceptMany, ctx: &mut Context<Self>) -> Self::Result {
        let taken: Vec<_> = calls.into_iter().map(|c| self.take_offered(c)).collect();
        let durable = self.commit.durable();
        self.pump_soon(ctx);
        Box::pin(durable.into_actor(self).map(move |durable, this, _| {
            // One commit stands for every call: if it failed, each stored call is taken back.
            let failed = durable.err().map(|e| e.to_string());
            taken
                .into_iter()
                .map(|(taken, stored)| {
                    let taken = taken?;
                    let durable = match &failed {
                        None => Ok(()),
                        Some(e) => Err(QueueError::Flush(e.clone())),
                    };
                    this.settle(durable, stored.as_deref())?;
                    Ok(taken)
                })
                .collect()
        }))
    }
}

impl Handler<Query> for Scheduler {
    type Result = MessageResult<Query>;

    fn handle(&mut self, Query(q): Query, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.query(q).unwrap_or_else(|e| {
            let why = format!("queue storage: {e}");
            Response::failed(&self.cage, CallError::with_kind(ErrorKind::Refused, why))
        });
        self.after_chains(ctx);
        self.pump_soon(ctx);
        MessageResult(answer)
    }
}

impl Handler<AttemptDone> for Scheduler {
    type Result = ();

    fn handle(&mut self, done: AttemptDone, ctx: &mut Context<Self>) {
        let id = done.id.clone();
        if let Err(e) = self.attempt_done(done) {
            tracing::error!(cage = %self.cage, call_id = %id, "cannot record the attempt: {e}");
        }
        self.after_chains(ctx);
        self.pump_soon(ctx);
    }
}

impl Handler<PoliciesChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, PoliciesChanged(policies): PoliciesChanged, _: &mut Context<Self>) {
        self.delivery.set_routes(policies.clone());
        self.policies = policies;
        match self.reschedule_all() {
            Ok(n) => {
                tracing::info!(cage = %self.cage, "new queue settings in force; {n} pending call(s) rescheduled")
            }
            Err(e) => {
                tracing::error!(cage = %self.cage, "new queue settings in force, but rescheduling failed: {e}")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: usize, args_bytes: usize) -> CallRecord {
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
        };
        CallRecord::new(call, Stage::Deliver, 0)
    }

    #[test]
    fn deliveries_are_split_by_count_and_by_bytes() {
        let sizes = |records: Vec<CallRecord>| -> Vec<usize> {
            delivery_batches(records).iter().map(Vec::len).collect()
        };
        assert_eq!(
            sizes((0..300).map(|n| record(n, 10)).collect()),
            vec![128, 128, 44]
        );
        let mb = 1024 * 1024;
        // 1.5 MiB each: two fit under the byte budget, a third does not.
        assert_eq!(
            sizes((0..5).map(|n| record(n, mb * 3 / 2)).collect()),
            vec![2, 2, 1]
        );
        // A call larger than the budget goes alone, and does not hold back the next ones.
        let mixed = vec![
            record(0, 10),
            record(1, 5 * mb),
            record(2, 10),
            record(3, 10),
        ];
        assert_eq!(sizes(mixed), vec![1, 1, 2]);
        assert!(delivery_batches(Vec::new()).is_empty());
    }
}
