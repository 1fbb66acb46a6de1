//! The scheduler's jobs: kept in memory and in the queue database, fired through the queue
//! when due, reconciled with the jobs declared in the cage file.

use super::{storage_error, Scheduler};
use crate::config::DeclaredJob;
use crate::jobs::{due_runs, job_of_run, run_id};
use crate::model::call::{CallRecord, QueuedCall};
use crate::model::clock;
use crate::model::ids::new_call_id;
use crate::model::job::{Job, LastRun, Schedule};
use crate::run::stage_for;
use crate::transport::protocol::{JobRequest, JobSpec, Response};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};

/// A question or order about jobs.
#[derive(Message)]
#[rtype(result = "Result<Response, CallError>")]
pub struct JobCommand(pub JobRequest);

/// The jobs the cage file declares now (at start, and whenever the file changes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct JobsDeclared(pub Vec<DeclaredJob>);

/// The stored id of a job declared under `name`.
fn declared_id(name: &str) -> String {
    format!("job-decl-{name}")
}

/// How long a job whose firing could not be stored waits before it is tried again.
const JOB_FIRE_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl Scheduler {
    /// Loads the stored jobs.
    pub(super) fn load_jobs(&mut self) {
        match self.store.jobs() {
            Ok(jobs) => self.jobs = jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
            Err(e) => tracing::error!(cage = %self.cage, "cannot read jobs: {e}"),
        }
    }

    /// The queued call of one run of `job`.
    fn run_record(&self, job: &Job, scheduled_ms: u64, now: u64) -> CallRecord {
        let call = QueuedCall {
            id: run_id(&job.id, scheduled_ms),
            source: self.cage.clone(),
            target: job.cage.clone(),
            module: job.module.clone(),
            method: job.method.clone(),
            args: job.args.clone(),
            queue: job.queue.clone(),
            priority: 0,
            key: None,
            enqueued_at_ms: now,
            not_before_ms: 0,
            chain: None,
            group: None,
        };
        CallRecord::new(call, stage_for(&self.cage, &job.cage), now)
    }

    /// Fires every job whose next run is due (a job that could not be fired is tried again
    /// [`JOB_FIRE_RETRY`] later).
    pub(super) fn fire_due_jobs(&mut self) {
        let due = super::decide::due_jobs(&self.jobs, &self.jobs_held, &*self.clock);
        // Read after the due check, so every job found due is due at `now` too.
        let now = self.now();
        for id in due {
            let Some(job) = self.jobs.get(&id).cloned() else {
                continue;
            };
            let (runs, next) = due_runs(&job, now);
            let mut updated = job.clone();
            updated.next_run_ms = next;
            if let Some(&latest) = runs.last() {
                updated.last_run = Some(LastRun {
                    scheduled_ms: latest,
                    call_id: run_id(&job.id, latest),
                    outcome: None,
                });
            }
            let records: Vec<CallRecord> = runs
                .iter()
                .map(|&t| self.run_record(&job, t, now))
                .collect();
            match self.store.fire(&updated, &records) {
                Ok(()) => {
                    if runs.len() > 1 {
                        tracing::info!(cage = %self.cage, job = %id, "{} missed runs queued (catch_up = all)", runs.len());
                    } else if runs.is_empty() {
                        tracing::info!(cage = %self.cage, job = %id, "missed runs skipped (catch_up = skip)");
                    }
                    for r in &records {
                        tracing::debug!(cage = %self.cage, job = %id, call_id = %r.call.id, "job run queued");
                    }
                    self.jobs_held.remove(&id);
                    self.jobs.insert(id, updated);
                    self.commit.nudge();
                }
                // Its runs stay due (nothing was stored), and are tried again after a pause.
                Err(e) => {
                    tracing::error!(cage = %self.cage, job = %id, "cannot fire the job (trying again in {}): {e}", humantime::format_duration(JOB_FIRE_RETRY));
                    self.jobs_held
                        .insert(id, now.saturating_add(clock::millis(JOB_FIRE_RETRY)));
                }
            }
        }
    }

    /// Notes how a job's run ended, if `call_id` is the latest run of a job.
    pub(super) fn job_run_ended(&mut self, call_id: &str, outcome: String) {
        let Some(job_id) = job_of_run(call_id) else {
            return;
        };
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        match &mut job.last_run {
            Some(last) if last.call_id == call_id => last.outcome = Some(outcome),
            _ => return,
        }
        if let Err(e) = self.store.put_job(job) {
            tracing::error!(cage = %self.cage, job = %job_id, "cannot record the run's outcome: {e}");
        }
    }

    fn add_job(&mut self, spec: JobSpec, replace: bool) -> Result<Job, CallError> {
        super::intake::check_names(
            &self.cage,
            Some(&spec.module),
            &spec.method,
            &spec.queue,
            None,
        )?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&spec.args)
            .map_err(|e| CallError::bad_arguments(format!("arguments are not JSON: {e}")))?;
        let now = self.now();
        if let Schedule::Every { interval_ms: 0, .. } = spec.schedule {
            return Err(CallError::bad_arguments("--every must be longer than zero"));
        }
        // Refused here too, not only by the command: a job frame or a module's context can ask.
        let next = spec.schedule.first_run_within_horizon(now).map_err(|e| {
            CallError::bad_arguments(format!("job for {}.{}: {e}", spec.module, spec.method))
        })?;
        let job = Job {
            id: new_call_id("job"),
            cage: self.cage.clone(),
            module: spec.module,
            method: spec.method,
            args: spec.args,
            queue: spec.queue,
            schedule: spec.schedule,
            catch_up: spec.catch_up,
            declared: false,
            next_run_ms: Some(next.max(now.min(next))),
            last_run: None,
        };
        if job.recurring() {
            let signature = job.signature();
            let same: Vec<Job> = self
                .jobs
                .values()
                .filter(|j| j.recurring() && j.signature() == signature)
                .cloned()
                .collect();
            for existing in same {
                if !replace {
                    return Err(CallError::with_kind(
                        ErrorKind::Refused,
                        format!("recurring job {} already calls {signature} ({}); add with --replace to replace it", existing.id, existing.schedule.words()),
                    ));
                }
                if existing.declared {
                    return Err(CallError::with_kind(
                        ErrorKind::Refused,
                        format!(
                            "job {} is declared in the cage file; change it there",
                            existing.id
                        ),
                    ));
                }
                self.store.remove_job(&existing.id).map_err(storage_error)?;
                self.jobs.remove(&existing.id);
                self.jobs_held.remove(&existing.id);
                tracing::info!(cage = %self.cage, job = %existing.id, "replaced by a new job with the same signature");
            }
        }
        self.store.put_job(&job).map_err(storage_error)?;
        self.jobs.insert(job.id.clone(), job.clone());
        tracing::info!(cage = %self.cage, job = %job.id, "job added: {} {}", job.signature(), job.schedule.words());
        Ok(job)
    }

    fn job_command(&mut self, request: JobRequest) -> Result<Response, CallError> {
        let unknown = |id: &str| {
            CallError::with_kind(
                ErrorKind::UnknownModule,
                format!("cage {} has no job {id:?}", self.cage),
            )
        };
        match request {
            JobRequest::Add { spec, replace } => {
                Ok(Response::Jobs(vec![self.add_job(spec, replace)?]))
            }
            JobRequest::List => Ok(Response::Jobs(self.jobs.values().cloned().collect())),
            JobRequest::Remove(id) => {
                let Some(job) = self.jobs.get(&id) else {
                    return Err(unknown(&id));
                };
                if job.declared {
                    return Err(CallError::with_kind(
                        ErrorKind::Refused,
                        format!(
                            "job {id} is declared in cages/{}.toml; remove it there and it stops",
                            self.cage
                        ),
                    ));
                }
                self.store.remove_job(&id).map_err(storage_error)?;
                self.jobs.remove(&id);
                self.jobs_held.remove(&id);
                tracing::info!(cage = %self.cage, job = %id, "job removed");
                Ok(Response::Changed(1))
            }
            JobRequest::RunNow(id) => {
                let Some(job) = self.jobs.get(&id).cloned() else {
                    return Err(unknown(&id));
                };
                let now = self.now();
                let mut updated = job.clone();
                updated.last_run = Some(LastRun {
                    scheduled_ms: now,
                    call_id: run_id(&id, now),
                    outcome: None,
                });
                let record = self.run_record(&job, now, now);
                self.store
                    .fire(&updated, &[record])
                    .map_err(storage_error)?;
                self.jobs.insert(id.clone(), updated);
                tracing::info!(cage = %self.cage, job = %id, "run started by an operator");
                Ok(Response::Changed(1))
            }
        }
    }

    /// Makes the stored declared jobs match the cage file: new ones added, changed ones
    /// replaced, ones no longer declared removed (so they stop).
    fn reconcile(&mut self, declared: Vec<DeclaredJob>) {
        let now = self.now();
        let wanted: Vec<Job> = declared
            .into_iter()
            .map(|d| Job {
                id: declared_id(&d.name),
                cage: self.cage.clone(),
                module: d.module,
                method: d.method,
                args: d.args,
                queue: d.queue,
                schedule: Schedule::Every {
                    interval_ms: clock::millis(d.every),
                    first_ms: clock::after(now, d.every),
                },
                catch_up: d.catch_up,
                declared: true,
                next_run_ms: Some(clock::after(now, d.every)),
                last_run: None,
            })
            .collect();
        let stale: Vec<String> = self
            .jobs
            .values()
            .filter(|j| j.declared && !wanted.iter().any(|w| w.id == j.id))
            .map(|j| j.id.clone())
            .collect();
        for id in stale {
            match self.store.remove_job(&id) {
                Ok(_) => {
                    tracing::info!(cage = %self.cage, job = %id, "no longer declared in the cage file: stopped")
                }
                Err(e) => tracing::error!(cage = %self.cage, job = %id, "cannot remove: {e}"),
            }
            self.jobs.remove(&id);
            self.jobs_held.remove(&id);
        }
        for job in wanted {
            let same = |old: &Job| {
                old.signature() == job.signature()
                    && old.queue == job.queue
                    && old.catch_up == job.catch_up
                    && matches!((&old.schedule, &job.schedule), (Schedule::Every { interval_ms: a, .. }, Schedule::Every { interval_ms: b, .. }) if a == b)
            };
            if self.jobs.get(&job.id).is_some_and(same) {
                continue; // unchanged: keep its next run and history
            }
            match self.store.put_job(&job) {
                Ok(()) => {
                    tracing::info!(cage = %self.cage, job = %job.id, "declared in the cage file: {} {}", job.signature(), job.schedule.words());
                    self.jobs.insert(job.id.clone(), job);
                }
                Err(e) => tracing::error!(cage = %self.cage, job = %job.id, "cannot store: {e}"),
            }
        }
        self.commit.nudge();
    }
}

impl Handler<JobCommand> for Scheduler {
    type Result = ResponseFuture<Result<Response, CallError>>;

    fn handle(&mut self, JobCommand(request): JobCommand, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.job_command(request);
        let durable = self.commit.durable();
        self.pump_soon(ctx);
        Box::pin(async move {
            let answer = answer?;
            // A job is on disk before the command that added it returns.
            durable.await.map_err(storage_error)?;
            Ok(answer)
        })
    }
}

impl Handler<JobsDeclared> for Scheduler {
    type Result = ();

    fn handle(&mut self, JobsDeclared(declared): JobsDeclared, _: &mut Context<Self>) {
        self.reconcile(declared);
    }
}
