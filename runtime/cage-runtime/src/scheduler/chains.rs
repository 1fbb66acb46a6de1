//! The scheduler's part in chains: starting them, turning each step's end into the chain's
//! next step (or a report to the chain's owner), running direct chains, cancelling a call's
//! children. Every change that must not be split (a step's completion, its chain's new state,
//! the next step's call) is one [`Txn`]. The decisions are [`crate::chains`]'.

use super::{storage_error, Scheduler};
use crate::chains::{merge_children, object_bytes, Advance, REPORT_METHOD, REPORT_MODULE};
use crate::config::valid_name;
use crate::model::call::{CallRecord, QueuedCall, Stage};
use crate::model::chain::{ChainRecord, ChainState, Group, StepOutcome, StepReport};
use crate::model::ids::new_call_id;
use crate::queue::{QueueError, QueueStore, Txn};
use crate::run::{check_target, stage_for, Limit, Run};
use crate::transport::protocol::{CallRequest, NewChain};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use std::time::Instant;

/// Start chains on this cage; answers their ids once they are durable.
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, CallError>")]
pub struct StartChains {
    /// The chains.
    pub chains: Vec<NewChain>,
    /// Cap on how many run at once (0: all).
    pub max_parallel: u32,
    /// Call id of the invocation starting them.
    pub parent: Option<String>,
}

/// A step of a direct chain ended.
#[derive(Message)]
#[rtype(result = "()")]
struct DirectStepDone(StepReport);

impl Scheduler {
    /// Stores new chains and their first steps; returns every id and those stored now.
    fn start_chains(&mut self, s: StartChains) -> Result<(Vec<String>, Vec<String>), CallError> {
        if s.chains.is_empty() {
            return Err(CallError::bad_arguments("no chain to start"));
        }
        let now = self.now();
        let mut ids = Vec::with_capacity(s.chains.len());
        let mut records = Vec::new();
        for (i, new) in s.chains.into_iter().enumerate() {
            let which = format!("chain {}", i + 1);
            if new.steps.is_empty() {
                return Err(CallError::bad_arguments(format!(
                    "{which}: a chain needs at least one step"
                )));
            }
            if let Some(q) = new.queue.as_deref().filter(|q| !valid_name(q)) {
                return Err(CallError::bad_arguments(format!(
                    "{which}: {q:?} is not a queue name"
                )));
            }
            for (n, step) in new.steps.iter().enumerate() {
                let cage = step.cage_or(&self.cage);
                // A frame need not come from a parsed chain: its names are checked as a call's
                // (the message quotes a bad name cut short, so not the step's whole label).
                let queue = new.queue.as_deref().unwrap_or(crate::config::DEFAULT_QUEUE);
                super::intake::check_names(cage, Some(&step.module), &step.method, queue, None)
                    .map_err(|e| {
                        CallError::bad_arguments(format!("{which}, step {}: {}", n + 1, e.message))
                    })?;
                // Refuse now what could never run, rather than retry it for days.
                check_target(self.delivery.peers(), &self.cage, cage).map_err(|e| {
                    CallError::with_kind(e.kind, format!("{which}, step {}: {e}", step.label()))
                })?;
            }
            let inputs = object_bytes(&new.inputs)
                .map_err(|e| CallError::bad_arguments(format!("{which}: {e}")))?;
            let id = new.id.unwrap_or_else(|| new_call_id(&self.cage));
            ids.push(id.clone());
            records.push((id, new.steps, inputs, new.queue, new.ordinal));
        }
        let cap = s.max_parallel as usize;
        let group = (cap > 0 && ids.len() > cap).then(|| Group {
            id: format!("{}.g", ids[0]),
            max_parallel: s.max_parallel,
        });
        let store = self.store.clone();
        let mut t = store.txn();
        let mut fresh = Vec::new();
        for (i, (id, steps, inputs, queue, ordinal)) in records.into_iter().enumerate() {
            // Started before (a retried parent asks again with the same ids): nothing new.
            if self.store.chain(&id).map_err(storage_error)?.is_some() {
                continue;
            }
            let held = group.is_some() && i >= cap;
            let chain = ChainRecord::new(
                id,
                &self.cage,
                s.parent.clone(),
                ordinal,
                group.clone(),
                steps,
                inputs,
                queue,
                now,
                held,
            );
            if !held {
                self.start_step(&mut t, &chain).map_err(storage_error)?;
            }
            fresh.push(chain.id.clone());
            t.put_chain(&chain, None);
        }
        if let (Some(g), false) = (&group, fresh.is_empty()) {
            t.put_group(&g.id, &ids);
        }
        t.commit().map_err(storage_error)?;
        if !fresh.is_empty() {
            tracing::info!(cage = %self.cage, parent = ?s.parent, "{} chain(s) started: {}", fresh.len(), fresh.join(", "));
        }
        Ok((ids, fresh))
    }

    /// Takes back chains whose start could not be made durable: they never ran (only durable
    /// steps are started), so "not stored" stays the truth, unless taking one back failed
    /// (the first such error).
    fn take_back_chains(&mut self, ids: &[String]) -> Result<(), QueueError> {
        let mut result = Ok(());
        for id in ids {
            let removed = self.store.chain(id).and_then(|chain| match chain {
                Some(c) => {
                    self.store.cancel(&c.step_call_id())?;
                    self.store.remove_chain(&c)
                }
                None => Ok(()),
            });
            if let Err(e) = removed {
                tracing::error!(cage = %self.cage, chain = %id, "chain not stored, and could not be removed: {e}");
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
        result
    }

    /// Schedules the current step of `chain`: a queued call, or a direct run after the commit.
    fn start_step(&mut self, t: &mut Txn, chain: &ChainRecord) -> Result<(), QueueError> {
        match chain.step_call(self.now()) {
            Some(call) => {
                let stage = stage_for(&self.cage, &call.target);
                t.insert_call(&CallRecord::new(call, stage, self.now()))
            }
            None => {
                self.direct_due.push(chain.id.clone());
                Ok(())
            }
        }
    }

    /// Applies how a step of a chain held here ended, in `t`.
    fn apply_report(&mut self, t: &mut Txn, report: &StepReport) -> Result<(), QueueError> {
        let Some(mut chain) = self.store.chain(&report.chain)? else {
            tracing::warn!(cage = %self.cage, chain = %report.chain, call_id = %report.call_id, "report for a chain this cage does not hold (expired?); ignored");
            return Ok(());
        };
        let old = chain.clone();
        match chain.apply(report) {
            Advance::Ignored => {
                tracing::debug!(chain = %chain.id, step = report.step, "repeated or late step report ignored");
                return Ok(());
            }
            Advance::Next => self.start_step(t, &chain)?,
            Advance::Ended => {
                match &chain.state {
                    ChainState::Done => {
                        tracing::info!(cage = %self.cage, chain = %chain.id, "chain done after {} step(s)", chain.path.len())
                    }
                    _ => {
                        if let Some(f) = chain.failure() {
                            tracing::warn!(cage = %self.cage, chain = %chain.id, call_id = %f.call_id, "{f}")
                        }
                    }
                }
                if let Some(g) = chain.group.clone() {
                    self.release_group(t, &g, &chain.id)?;
                }
            }
        }
        t.put_chain(&chain, Some(&old));
        Ok(())
    }

    /// Starts held chains of group `g` while fewer than its cap run (`ended` just ended).
    fn release_group(&mut self, t: &mut Txn, g: &Group, ended: &str) -> Result<(), QueueError> {
        let members: Vec<ChainRecord> = self
            .store
            .group(&g.id)?
            .iter()
            .filter(|id| id.as_str() != ended)
            .filter_map(|id| self.store.chain(id).ok().flatten())
            .collect();
        let running = members
            .iter()
            .filter(|c| c.state == ChainState::Running)
            .count();
        let free = (g.max_parallel as usize).saturating_sub(running);
        for held in members
            .iter()
            .filter(|c| c.state == ChainState::Held)
            .take(free)
        {
            let mut started = held.clone();
            started.state = ChainState::Running;
            self.start_step(t, &started)?;
            t.put_chain(&started, Some(held));
        }
        Ok(())
    }

    /// Ends chain step `record` (moving it to dead letters as `dead` if given) and passes how it
    /// ended to its chain, in one batch: applied here if this cage holds the chain, else as a
    /// report queued to the cage that does.
    pub(super) fn end_step(
        &mut self,
        record: &CallRecord,
        dead: Option<&CallRecord>,
        started_ms: u64,
        outcome: StepOutcome,
    ) -> Result<(), QueueError> {
        let Some(link) = record.call.chain.clone() else {
            return match dead {
                Some(d) => self.store.bury(record, d),
                None => self.store.finish(record),
            };
        };
        let report = StepReport {
            chain: link.chain,
            step: link.step,
            call_id: record.call.id.clone(),
            cage: self.cage.clone(),
            started_ms,
            ended_ms: self.now(),
            outcome,
        };
        let store = self.store.clone();
        let mut t = store.txn();
        match dead {
            Some(d) => t.bury(record, d),
            None => t.finish(record),
        }
        if link.owner == self.cage {
            self.apply_report(&mut t, &report)?;
        } else {
            let call = QueuedCall {
                id: new_call_id(&self.cage),
                source: self.cage.clone(),
                target: link.owner.clone(),
                module: REPORT_MODULE.to_owned(),
                method: REPORT_METHOD.to_owned(),
                args: serde_json::to_vec(&report).unwrap_or_default(),
                queue: record.call.queue.clone(),
                priority: 0,
                key: None,
                enqueued_at_ms: self.now(),
                not_before_ms: 0,
                chain: None,
                group: None,
            };
            t.insert_call(&CallRecord::new(call, Stage::Deliver, self.now()))?;
        }
        t.commit()?;
        self.chains_touched = true;
        Ok(())
    }

    /// Applies a step report that reached this cage (the chain's owner) as a queued call.
    pub(super) fn take_report(&mut self, record: CallRecord) -> Result<(), QueueError> {
        match serde_json::from_slice::<StepReport>(&record.call.args) {
            Ok(report) => {
                let store = self.store.clone();
                let mut t = store.txn();
                t.finish(&record);
                self.apply_report(&mut t, &report)?;
                t.commit()?;
            }
            Err(e) => {
                let mut dead = record.clone();
                dead.dead_reason = Some(format!("unreadable chain step report: {e}"));
                self.store.bury(&record, &dead)?;
                tracing::error!(cage = %self.cage, call_id = %record.call.id, "unreadable chain step report moved to dead letters: {e}");
            }
        }
        self.chains_touched = true;
        Ok(())
    }

    /// After chains changed: run due direct steps, wake waiters, make the change durable.
    pub(super) fn after_chains(&mut self, ctx: &mut Context<Self>) {
        if !self.chains_touched && self.direct_due.is_empty() {
            return;
        }
        self.chains_touched = false;
        for id in std::mem::take(&mut self.direct_due) {
            self.run_direct_step(&id, ctx);
        }
        self.watch.changed();
        self.commit.nudge();
        self.pump_soon(ctx);
    }

    /// Runs the current step of direct chain `id` as a sync call, here or on its cage.
    fn run_direct_step(&mut self, id: &str, ctx: &mut Context<Self>) {
        let chain = match self.store.chain(id) {
            Ok(Some(c)) if c.state == ChainState::Running => c,
            Ok(_) => return,
            Err(e) => {
                tracing::error!(cage = %self.cage, chain = %id, "cannot read chain: {e}");
                return;
            }
        };
        let Some(call) = chain.step_call_on(crate::config::DEFAULT_QUEUE, self.now()) else {
            return;
        };
        let (addr, step, cage, chain_id) = (
            ctx.address(),
            chain.step,
            self.cage.clone(),
            chain.id.clone(),
        );
        let time_limit = self.policies.queue(crate::config::DEFAULT_QUEUE).time_limit;
        let (registry, executor, delivery) = (
            self.registry.clone(),
            self.executor.clone(),
            self.delivery.clone(),
        );
        let (store, clock) = (self.store.clone(), self.clock.clone());
        actix_rt::spawn(async move {
            let started_ms = clock.now_ms();
            let t0 = Instant::now();
            let outcome = if stage_for(&cage, &call.target) == Stage::Execute {
                let run = Run::of_queued(call.clone(), 1, false, Limit::Attempt(time_limit));
                crate::run::run(&registry, &executor, run)
                    .await
                    .outcome
                    .map(|o| o.result)
            } else {
                let request = CallRequest {
                    call_id: call.id.clone(),
                    module: call.module.clone(),
                    method: call.method.clone(),
                    args: call.args.clone(),
                    timeout_ms: time_limit.as_millis() as u64,
                };
                let target = call.target.clone();
                // A blocking client call: in the bounded lane, so many direct chains started
                // at once cannot fill the blocking pool the cage needs for other work.
                crate::blocking::CALLS_OUT
                    .run(move || delivery.call(&target, request))
                    .await
                    .unwrap_or_else(|e| {
                        Err(CallError::with_kind(ErrorKind::Internal, e.to_string()))
                    })
            };
            let outcome = match outcome {
                Ok(result) => StepOutcome::Done {
                    result,
                    next: None,
                    children: children_results(&store, &call.id),
                },
                Err(e) => StepOutcome::Failed(e.to_string()),
            };
            tracing::debug!(call_id = %call.id, elapsed = ?t0.elapsed(), "direct chain step ended");
            addr.do_send(DirectStepDone(StepReport {
                chain: chain_id,
                step,
                call_id: call.id,
                cage: call.target,
                started_ms,
                ended_ms: clock.now_ms(),
                outcome,
            }));
        });
    }

    /// Cancels `id`: a chain, or a pending or dead call; then the chains it started. Returns
    /// how many calls and chains it cancelled.
    pub(super) fn cancel_cascade(&mut self, id: &str, reason: &str) -> Result<usize, QueueError> {
        if let Some(chain) = self.store.chain(id)? {
            return self.cancel_chain(chain, reason);
        }
        let mut n = 0;
        if let Some(record) = self.store.get(id)? {
            let outcome = StepOutcome::Failed(format!("cancelled: {reason}"));
            self.end_step(&record, None, self.now(), outcome)?;
            n += 1;
        } else if self.store.cancel(id)?.is_some() {
            n += 1;
        }
        for child in self.store.children(id)? {
            if !child.is_finished() {
                n += self.cancel_chain(child, &format!("its parent call {id} was cancelled"))?;
            }
        }
        Ok(n)
    }

    fn cancel_chain(&mut self, mut chain: ChainRecord, reason: &str) -> Result<usize, QueueError> {
        let old = chain.clone();
        if !chain.cancel(reason, self.now()) {
            return Ok(0);
        }
        let store = self.store.clone();
        let mut t = store.txn();
        t.put_chain(&chain, Some(&old));
        if let Some(g) = chain.group.clone() {
            // Siblings are not the chain's to cancel: the next one may start.
            self.release_group(&mut t, &g, &chain.id)?;
        }
        t.commit()?;
        self.chains_touched = true;
        tracing::info!(cage = %self.cage, chain = %chain.id, "chain cancelled: {reason}");
        let mut n = 1;
        if old.state == ChainState::Running && chain.queue.is_some() {
            let step = chain.step_call_id();
            let cage = chain
                .current()
                .map(|s| s.cage_or(&chain.owner).to_owned())
                .unwrap_or_default();
            let here = self.store.get(&step)?.is_some();
            n += self.cancel_cascade(&step, reason)?;
            if !here && cage != self.cage {
                // Accepted by its cage already: ask that cage to cancel it (and its children).
                let delivery = self.delivery.clone();
                actix_rt::spawn(crate::blocking::CALLS_OUT.run(move || {
                    if let Err(e) = delivery.cancel(&cage, &step) {
                        tracing::warn!(call_id = %step, "could not cancel the step on cage {cage}: {e}");
                    }
                }));
            }
        }
        Ok(n)
    }

    /// On start: direct chains that were running when the cage stopped cannot go on.
    pub(super) fn fail_interrupted_direct_chains(&mut self) {
        let interrupted = match self.store.chains(
            &|c| c.queue.is_none() && c.state == ChainState::Running,
            usize::MAX,
        ) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(cage = %self.cage, "cannot read chains: {e}");
                return;
            }
        };
        for chain in interrupted {
            let report = StepReport {
                chain: chain.id.clone(),
                step: chain.step,
                call_id: chain.step_call_id(),
                cage: self.cage.clone(),
                started_ms: self.now(),
                ended_ms: self.now(),
                outcome: StepOutcome::Failed(
                    "the cage restarted while this chain ran directly (run it on a queue to \
                     survive restarts)"
                        .to_owned(),
                ),
            };
            let store = self.store.clone();
            let mut t = store.txn();
            let applied = self.apply_report(&mut t, &report).and_then(|()| t.commit());
            if let Err(e) = applied {
                tracing::error!(cage = %self.cage, chain = %chain.id, "cannot end interrupted chain: {e}");
            }
        }
        self.chains_touched = true;
    }
}

/// The merged results of the finished chains that call `id` started (none if they cannot be
/// read: the step's own result still counts).
pub(super) fn children_results(store: &QueueStore, id: &str) -> Vec<u8> {
    match store.children(id) {
        Ok(children) => merge_children(&children),
        Err(e) => {
            tracing::error!(call_id = %id, "cannot read child chains: {e}");
            b"{}".to_vec()
        }
    }
}

impl Handler<StartChains> for Scheduler {
    type Result = ResponseActFuture<Self, Result<Vec<String>, CallError>>;

    fn handle(&mut self, s: StartChains, ctx: &mut Context<Self>) -> Self::Result {
        let started = self.start_chains(s);
        let durable = self.commit.durable();
        self.chains_touched = true;
        self.after_chains(ctx);
        // Answer only once durable: the caller may rely on the chains surviving a crash.
        Box::pin(durable.into_actor(self).map(move |durable, this, _| {
            let (ids, fresh) = started?;
            if let Err(e) = durable {
                if let Err(c) = this.take_back_chains(&fresh) {
                    return Err(CallError::with_kind(
                        ErrorKind::Internal,
                        format!("outcome unknown: the chains were not made durable ({e}), and taking them back failed ({c}); they may run after a restart"),
                    ));
                }
                return Err(CallError::with_kind(
                    ErrorKind::Refused,
                    format!("chains not stored: {e}"),
                ));
            }
            Ok(ids)
        }))
    }
}

impl Handler<DirectStepDone> for Scheduler {
    type Result = ();

    fn handle(&mut self, DirectStepDone(report): DirectStepDone, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let mut t = store.txn();
        if let Err(e) = self.apply_report(&mut t, &report).and_then(|()| t.commit()) {
            tracing::error!(cage = %self.cage, chain = %report.chain, call_id = %report.call_id, "cannot record the step: {e}");
        }
        self.chains_touched = true;
        self.after_chains(ctx);
    }
}
