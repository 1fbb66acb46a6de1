//! The scheduler's intake: enqueues from clients and modules, and calls offered by other
//! cages, checked (names, arguments, target), stored, and acknowledged only once durable.

use super::{storage_error, Scheduler};
use crate::chains::REPORT_MODULE;
use crate::metrics::QueueEvent;
use crate::model::call::{CallRecord, QueuedCall, Stage};
use crate::model::ids::new_call_id;
use crate::names::{self, NameKind};
use crate::queue::{Acceptance, QueueError};
use crate::run::{check_target, stage_for};
use crate::transport::protocol::EnqueueRequest;
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use std::time::Duration;

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

impl Scheduler {
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
        let now = self.now();
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
        check_names(
            &r.target,
            Some(&r.module),
            &r.method,
            &r.queue,
            r.group.as_deref(),
        )?;
        serde_json::from_slice::<serde::de::IgnoredAny>(&r.args)
            .map_err(|e| CallError::bad_arguments(format!("arguments are not JSON: {e}")))?;
        check_target(self.delivery.peers(), &self.cage, &r.target)?;
        let now = self.now();
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
            group: r.group,
        };
        let id = call.id.clone();
        let queue = call.queue.clone();
        let duplicate_of = match stage_for(&self.cage, &call.target) {
            Stage::Execute => self.take_for_execution(call)?,
            Stage::Deliver => {
                self.store
                    .insert(&CallRecord::new(call, Stage::Deliver, now))
                    .map_err(storage_error)?;
                None
            }
        };
        self.metrics.queue_event(&queue, QueueEvent::Enqueued, now);
        Ok((id, duplicate_of))
    }

    /// Takes an offered call into this cage's queue; also what was stored (to take back if the
    /// commit fails).
    fn take_offered(
        &mut self,
        call: QueuedCall,
    ) -> (Result<Option<String>, CallError>, Option<String>) {
        let id = call.id.clone();
        let far = crate::model::clock::within_horizon("not_before", call.not_before_ms, self.now());
        // A chain step's report goes to the owner's built-in module, whose `$` name no module
        // file can have (enqueue refuses `$` names).
        let module = (call.module != REPORT_MODULE).then_some(call.module.as_str());
        let taken = if let Err(e) = far {
            // Never valid, whoever offers it: the offering cage dead-letters it at once.
            Err(CallError::with_kind(
                ErrorKind::Permanent,
                format!("call {id}: {e}"),
            ))
        } else if let Err(e) = check_names(
            &call.target,
            module,
            &call.method,
            &call.queue,
            call.group.as_deref(),
        ) {
            Err(e)
        } else if stage_for(&self.cage, &call.target) == Stage::Execute {
            self.metrics
                .queue_event(&call.queue, QueueEvent::Accepted, self.now());
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

/// Checks the names (and group) of a call to be queued: a bad one is refused as bad arguments, so it is
/// never stored (`module` is `None` for the cage's own built-in module).
pub(super) fn check_names(
    target: &str,
    module: Option<&str>,
    method: &str,
    queue: &str,
    group: Option<&str>,
) -> Result<(), CallError> {
    [
        (NameKind::Cage, Some(target)),
        (NameKind::Module, module),
        (NameKind::Method, Some(method)),
        (NameKind::Queue, Some(queue)),
        (NameKind::Group, group),
    ]
    .into_iter()
    .filter_map(|(kind, name)| Some((kind, name?)))
    .try_for_each(|(kind, name)| names::check(kind, name))
    .map_err(|e| CallError::bad_arguments(e.to_string()))
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

impl Handler<Accept> for Scheduler {
    type Result = ResponseActFuture<Self, Result<Option<String>, CallError>>;

    fn handle(&mut self, Accept(call): Accept, _: &mut Context<Self>) -> Self::Result {
        let (taken, stored) = self.take_offered(call);
        let durable = self.commit.durable();
        // Pumped once durable: the pump starts only durable calls, so one before would skip it
        // and the call would wait for the next pump for another reason.
        Box::pin(durable.into_actor(self).map(move |durable, this, ctx| {
            this.pump_soon(ctx);
            let taken = taken?;
            this.settle(durable, stored.as_deref())?;
            Ok(taken)
        }))
    }
}

impl Handler<AcceptMany> for Scheduler {
    type Result = ResponseActFuture<Self, Vec<Result<Option<String>, CallError>>>;

    fn handle(&mut self, AcceptMany(calls): AcceptMany, _: &mut Context<Self>) -> Self::Result {
        let taken: Vec<_> = calls.into_iter().map(|c| self.take_offered(c)).collect();
        let durable = self.commit.durable();
        // Pumped once durable (see `Accept`).
        Box::pin(durable.into_actor(self).map(move |durable, this, ctx| {
            this.pump_soon(ctx);
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
