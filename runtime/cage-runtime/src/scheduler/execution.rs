//! The scheduler's execution: each pump reads the due calls, starts those that may start
//! (attempts here, their start marks made durable together first, or a delivery to their cage,
//! batched per cage), and records how each attempt ended. What may start, what counts as a
//! crash and what follows a failure are [`super::decide`]'s.

use super::admission::{Held, Hold};
use super::decide::{self, delivery_batches, AfterFailure, Capacity, Crash};
use super::Scheduler;
use crate::chains::REPORT_MODULE;
use crate::config::Fairness;
use crate::host::Output;
use crate::metrics::QueueEvent;
use crate::model::call::{Attempt, CallRecord, QueuedCall, Stage};
use crate::model::chain::StepOutcome;
use crate::queue::{DueCall, DueValue, QueueError, Room, StartMark};
use crate::run::{Limit, Run};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use rand::Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct AttemptDone {
    id: String,
    started_ms: u64,
    duration: Duration,
    outcome: Result<Output, CallError>,
    version: Option<String>,
}

/// The rate limits an attempt's start is paced by: its queue's and its group's, by key.
type Pace = Vec<(String, super::rate::Limit)>;

/// Where queues served in turn ended a pump: queue, and partition of the due index.
type Turns = Vec<(String, Vec<u8>)>;

/// Partitions of the due index a queue served in turn may look at in one pump, beyond the
/// calls it reads: most of a queue's groups may have nothing due, and the ring must still come
/// round to those that do.
const TURN_SCAN: usize = 16_384;

/// What a running attempt occupies: a slot of its queue and of its group (an execution), or
/// room in its target cage's delivery window (a delivery).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Slot {
    Queue(String, Option<String>),
    Window(String),
}

impl Scheduler {
    /// Starts what is due, then sets when to look again.
    pub(super) fn pump(&mut self, ctx: &mut Context<Self>) {
        self.start_due(ctx);
        self.arm_pump(ctx);
    }

    /// Sets the next pump: soon while attempts run or calls wait for room, else at the next
    /// due call or job run (within [`decide::PUMP_IDLE_MAX`]); an earlier one already set stays.
    fn arm_pump(&mut self, ctx: &mut Context<Self>) {
        let busy = !self.running.is_empty() || self.windows.held() > 0;
        let now = self.now();
        let next_due = if busy {
            None
        } else {
            // Calls waiting for a rate limit are due when it gives the next start.
            let held = &self.held;
            let next_start = held.next_start().map(|w| now + w.as_millis() as u64 + 1);
            let next = self
                .store
                .next_due_ms_where(&|v| held.waits_for_rate(v))
                .unwrap_or_else(|e| {
                    tracing::error!(cage = %self.cage, "cannot read the schedule: {e}");
                    None
                });
            next.into_iter().chain(next_start).min()
        };
        let next_job = decide::next_job_ms(&self.jobs, &self.jobs_held);
        let wait = decide::pump_wait(now, busy, next_due, next_job);
        let at = Instant::now() + wait;
        if let Some((handle, set_for)) = self.pump_timer {
            if set_for <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let handle = ctx.run_later(wait, |this, ctx| {
            this.pump_timer = None;
            this.pump(ctx);
        });
        self.pump_timer = Some((handle, at));
    }

    /// Starts the due calls that may start now.
    fn start_due(&mut self, ctx: &mut Context<Self>) {
        if self.paused {
            return;
        }
        self.fire_due_jobs();
        let capacity = Capacity::of(&self.policies, self.admission.busy_by_queue());
        if capacity.may_skip_scan(self.last_scan_ms, &*self.clock) {
            return;
        }
        let now = self.now();
        self.last_scan_ms = now;
        let instant = Instant::now();
        self.admission.prune(instant);
        self.pacer.prune(instant, super::admission::PRUNE_ABOVE);
        let (mut due, turns, mut held) = self.read_due(now, capacity.scan_size(), instant);
        self.turns.extend(turns);
        let mut deliveries: BTreeMap<String, Vec<CallRecord>> = BTreeMap::new();
        // Queues (and groups) with a rate limit that started attempts at this pump.
        let mut paced: BTreeSet<(String, Option<String>)> = BTreeSet::new();
        let mut attempts = Vec::new();
        decide::start_order(&mut due);
        for d in due {
            let policy = self.policies.queue(&d.queue).clone();
            match &d.target {
                Some(target) => {
                    if self.held_back(target, &d.id) {
                        continue;
                    }
                }
                None => {
                    let group = d.group.as_deref();
                    if let Some(hold) = self.admission.hold(&d.queue, group, &policy, instant) {
                        held.note(&d.queue, group, hold);
                        continue;
                    }
                }
            }
            // keep_order: a call waits until every call stored before it in its queue (or its
            // group) is done.
            if !decide::in_order(&policy, &d.id, || {
                self.store
                    .head_of(&d.queue, d.group.as_deref())
                    .ok()
                    .flatten()
            }) {
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
                self.admission
                    .start(&d.queue, d.group.as_deref(), &policy, instant);
                if policy.rate_limit.is_some() || policy.group_rate_limit.is_some() {
                    paced.insert((d.queue.clone(), d.group.clone()));
                }
                self.running
                    .insert(d.id.clone(), Slot::Queue(d.queue, d.group));
                attempts.push(record);
            }
        }
        self.note_rate_held(&paced, now, instant, &mut held);
        if held.queue_rate.len() != self.held.queue_rate.len()
            || held.groups != self.held.groups
            || held
                .queue_rate
                .keys()
                .any(|q| !self.held.queue_rate.contains_key(q))
        {
            self.metrics.set_held(
                held.queue_rate.keys().cloned().collect(),
                held.groups.clone(),
            );
        }
        self.held = held;
        self.start_attempts(attempts, ctx);
        // Calls for the same cage go in one request (one round trip, one commit on the target).
        for (target, records) in deliveries {
            for batch in delivery_batches(records) {
                self.start_deliveries(target.clone(), batch, ctx);
            }
        }
        self.after_chains(ctx);
    }

    /// Notes in `held` the queues and groups of `paced` (those with a rate limit that started
    /// attempts at this pump) whose limit now gives no start while more of their calls are due:
    /// the scan took only what their limits allowed, so it saw nothing held back.
    fn note_rate_held(
        &self,
        paced: &BTreeSet<(String, Option<String>)>,
        now: u64,
        instant: Instant,
        held: &mut Held,
    ) {
        for (queue, group) in paced {
            let policy = self.policies.queue(queue);
            let hold = self
                .admission
                .hold(queue, group.as_deref(), policy, instant);
            let of_group = match hold {
                Some(Hold::QueueRate(_)) => false,
                Some(Hold::GroupRate(_)) => true,
                _ => continue,
            };
            // Another due call of the group (or the queue) that is not running.
            let running = &self.running;
            let skip = |id: &str| running.contains_key(id);
            let more = if of_group {
                self.store.has_due_in(queue, group.as_deref(), now, &skip)
            } else {
                self.store
                    .due_where(now, 1, running.len() + 64, &skip, &|v| {
                        if v.target.is_none() && v.queue == queue {
                            Room::ANY
                        } else {
                            Room { queue: 0, part: 0 }
                        }
                    })
                    .map(|d| !d.is_empty())
            };
            if more.unwrap_or(false) {
                if let Some(hold) = hold {
                    held.note(queue, group.as_deref(), hold);
                }
            }
        }
    }

    /// Reads up to `want` due calls that may start at `now`: in due order, passing over the
    /// queues and groups without room (see [`crate::queue::QueueStore::due_where`]), and for
    /// each queue served in turn, from its groups in turn after where its last pump ended;
    /// also where each such queue ended this time, and what held calls back.
    fn read_due(&self, now: u64, want: usize, instant: Instant) -> (Vec<DueCall>, Turns, Held) {
        let (running, windows, policies) = (&self.running, &self.windows, &self.policies);
        let admission = &self.admission;
        let held = std::cell::RefCell::new(Held::default());
        let skip = |id: &str| running.contains_key(id) || windows.is_held(id);
        let max_scan = want + running.len() + windows.held() + 64;
        // Queues served in turn: those named so, and any other whose calls the scan met.
        let mut in_turn: BTreeSet<String> = policies
            .queues
            .iter()
            .filter(|(_, p)| p.fairness == Fairness::RoundRobin)
            .map(|(q, _)| q.clone())
            .collect();
        let met = std::cell::RefCell::new(BTreeSet::new());
        let in_due_order = |v: &DueValue<'_>| {
            let policy = policies.queue(v.queue);
            if v.target.is_none() && policy.fairness == Fairness::RoundRobin {
                if !in_turn.contains(v.queue) {
                    met.borrow_mut().insert(v.queue.to_owned());
                }
                return Room { queue: 0, part: 0 };
            }
            admission.room(v, policy, instant, &mut held.borrow_mut())
        };
        let mut due = self
            .store
            .due_where(now, want, max_scan, &skip, &in_due_order)
            .unwrap_or_else(|e| {
                tracing::error!(cage = %self.cage, "cannot read the schedule: {e}");
                Vec::new()
            });
        in_turn.extend(met.into_inner());
        let mut turns = Vec::new();
        for queue in in_turn {
            let policy = policies.queue(&queue);
            let room =
                |v: &DueValue<'_>| admission.room(v, policy, instant, &mut held.borrow_mut());
            let after = self.turns.get(&queue).map(Vec::as_slice);
            let scan = max_scan.max(TURN_SCAN);
            match self
                .store
                .due_in_turn(&queue, now, want, scan, after, &skip, &room)
            {
                Ok((calls, cursor)) => {
                    due.extend(calls);
                    turns.extend(cursor.map(|c| (queue, c)));
                }
                Err(e) => {
                    tracing::error!(cage = %self.cage, queue, "cannot read the schedule: {e}")
                }
            }
        }
        (due, turns, held.into_inner())
    }

    /// Starts attempts of `records` here. Their start marks (those [`decide::marks_start`]
    /// asks for) are one write and one group commit, awaited before any of them runs: a cage
    /// that dies during one then knows at its next start which attempt it was.
    fn start_attempts(&mut self, records: Vec<CallRecord>, ctx: &mut Context<Self>) {
        if records.is_empty() {
            return;
        }
        let (addr, started_ms) = (ctx.address(), self.now());
        let marks: Vec<(&str, StartMark)> = records
            .iter()
            .filter(|r| decide::marks_start((self.isolation_of)(&r.call.module)))
            .map(|r| {
                let mark = StartMark {
                    attempt: r.next_attempt(),
                    started_ms,
                };
                (r.call.id.as_str(), mark)
            })
            .collect();
        let marked = (!marks.is_empty()).then(|| {
            self.store
                .mark_started(&marks)
                .map(|()| self.commit.durable())
        });
        let runs: Vec<(String, Run, Pace)> = records
            .into_iter()
            .map(|record| {
                let attempt = record.next_attempt();
                let call = record.call;
                tracing::debug!(call_id = %call.id, stage = record.stage.as_str(), attempt, "attempt starts");
                let policy = self.policies.queue(&call.queue);
                let limit = Limit::Attempt(policy.time_limit);
                let mut pace = Pace::new();
                if let Some(rate) = policy.rate_limit {
                    pace.push((call.queue.clone(), (rate, policy.burst)));
                }
                if let (Some(rate), Some(group)) = (policy.group_rate_limit, &call.group) {
                    let key = super::admission::group_key(&call.queue, group);
                    pace.push((key, (rate, policy.group_burst)));
                }
                (call.id.clone(), Run::of_queued(call, attempt, true, limit), pace)
            })
            .collect();
        let (registry, executor) = (self.registry.clone(), self.executor.clone());
        let pacer = self.pacer.clone();
        actix_rt::spawn(async move {
            let unmarked = match marked {
                None => None,
                Some(Err(e)) => Some(e),
                Some(Ok(durable)) => durable.await.err(),
            };
            if let Some(e) = unmarked {
                // Run without a durable mark, a crash would go uncounted: the attempt fails
                // unrun instead, and is retried like any failed attempt.
                let why = format!("not run: its start could not be recorded durably: {e}");
                for (id, _, _) in runs {
                    addr.do_send(AttemptDone {
                        id,
                        started_ms,
                        duration: Duration::ZERO,
                        outcome: Err(CallError::with_kind(ErrorKind::Internal, why.clone())),
                        version: None,
                    });
                }
                return;
            }
            for (id, run, pace) in runs {
                let (addr, registry, executor) = (addr.clone(), registry.clone(), executor.clone());
                // In start order, as each may run: a rate-limited queue's starts stay apart
                // however the commit of their marks bunched them.
                let now = Instant::now();
                let wait = pace
                    .iter()
                    .map(|(key, limit)| pacer.delay(key, *limit, now))
                    .max()
                    .unwrap_or_default();
                actix_rt::spawn(async move {
                    if !wait.is_zero() {
                        actix_rt::time::sleep(wait).await;
                    }
                    let t0 = Instant::now();
                    let ran = crate::run::run(&registry, &executor, run).await;
                    addr.do_send(AttemptDone {
                        id,
                        started_ms,
                        duration: t0.elapsed(),
                        outcome: ran.outcome,
                        version: ran.version,
                    });
                });
            }
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
        let (addr, started_ms, t0) = (ctx.address(), self.now(), Instant::now());
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
            .queue_event(&record.call.queue, event, self.now());
    }

    /// Whether due call `id` for `target` must wait because `target`'s delivery window is
    /// full; if so, it is noted as held, so the due scan passes over it until room frees.
    fn held_back(&mut self, target: &str, id: &str) -> bool {
        let window = self.delivery.peers().window(target);
        if self.windows.has_room(target, window) {
            return false;
        }
        tracing::debug!(cage = %self.cage, target, call_id = id, "delivery window full ({window} calls being handed over)");
        self.windows.hold(target, id);
        true
    }

    fn attempt_done(&mut self, done: AttemptDone) -> Result<(), QueueError> {
        match self.running.remove(&done.id) {
            Some(Slot::Queue(queue, group)) => self.admission.end(&queue, group.as_deref()),
            Some(Slot::Window(target)) => self.windows.end(&target),
            None => {}
        }
        // Cancelled while it ran: nothing left to record.
        let Some(record) = self.store.get(&done.id)? else {
            return Ok(());
        };
        let number = record.next_attempt();
        let attempt = Attempt {
            number,
            started_ms: done.started_ms,
            duration_us: done.duration.as_micros() as u64,
            error: None,
            module_version: done.version,
        };
        let call = &record.call;
        let span = tracing::info_span!("call", call_id = %call.id, cage = %self.cage, module = %call.module, method = %call.method, attempt = number);
        let _entered = span.enter();
        let job_outcome = match done.outcome {
            Ok(output) => {
                if record.stage == Stage::Execute && record.call.chain.is_some() {
                    let outcome = StepOutcome::Done {
                        result: output.result,
                        next: output.next,
                        children: super::chains::children_results(&self.store, &record.call.id),
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
            Err(e) => {
                let crash = decide::crash_of(&e);
                self.attempt_failed(&record, attempt, e, crash)?
            }
        };
        self.job_run_ended(&record.call.id, job_outcome);
        self.commit.nudge();
        Ok(())
    }
}

impl Scheduler {
    /// Records that `attempt` of pending `record` failed with `error`, taking down a process
    /// if `crash` says so (then counted, and the error says which crash of how many): the
    /// call is retried later, or dead. Answers the outcome as a job run records it.
    pub(super) fn attempt_failed(
        &mut self,
        record: &CallRecord,
        mut attempt: Attempt,
        error: CallError,
        crash: Option<Crash>,
    ) -> Result<String, QueueError> {
        let policy = self.policies.queue(&record.call.queue).clone();
        let number = attempt.number;
        let (error, crashes) = match &crash {
            Some(c) => {
                let count = decide::count_crash(self.store.crashes(&record.call.id)?, c);
                let reported = matches!(c, Crash::Worker { .. }).then_some(&error);
                (
                    decide::crash_error(c, reported, &count, &policy),
                    Some(count),
                )
            }
            None => (error, None),
        };
        attempt.error = Some(error.to_string());
        let started_ms = attempt.started_ms;
        let mut updated = record.clone();
        updated.attempts.push(attempt);
        let jitter = self.rng.gen_range(-1.0..=1.0);
        let after = decide::after_failure(
            &policy,
            record,
            number,
            &error,
            crashes.as_ref(),
            jitter,
            &*self.clock,
        );
        updated.dead_reason = after.dead_reason().map(str::to_owned);
        self.count(record, failure_of(record.stage));
        let e = error;
        Ok(match after {
            AfterFailure::Retry { at_ms } => {
                updated.next_at_ms = at_ms;
                self.store
                    .attempt_failed(record, &updated, crashes.as_ref())?;
                let wait = Duration::from_millis(at_ms.saturating_sub(self.now()));
                tracing::warn!(
                    "attempt {number} failed: {e}; next attempt in {}",
                    humantime::format_duration(wait)
                );
                format!("attempt {number} failed, retrying: {e}")
            }
            AfterFailure::Rejected(reason) => {
                let outcome = StepOutcome::Failed(reason);
                self.end_step(record, Some(&updated), started_ms, outcome)?;
                self.count(record, QueueEvent::Died);
                tracing::warn!("moved to dead letters: permanent rejection: {}", e.message);
                format!("dead: permanent rejection: {}", e.message)
            }
            AfterFailure::GaveUp(reason) => {
                let outcome = StepOutcome::Failed(reason);
                self.end_step(record, Some(&updated), started_ms, outcome)?;
                self.count(record, QueueEvent::Died);
                tracing::warn!(
                    "moved to dead letters: gave up after {number} attempt(s); last error: {e}"
                );
                format!("dead: gave up after {number} attempt(s): {e}")
            }
            AfterFailure::Poison(reason) => {
                self.end_step(
                    record,
                    Some(&updated),
                    started_ms,
                    StepOutcome::Failed(reason.clone()),
                )?;
                self.count(record, QueueEvent::Died);
                tracing::error!("moved to dead letters: {reason}; last error: {e}");
                format!("dead: {reason}")
            }
        })
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
