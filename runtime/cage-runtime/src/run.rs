//! Where a call runs, and the one path that runs it here.
//!
//! Every call is either for this cage (its module runs here) or for another (it is delivered
//! there): [`stage_for`] decides which, and [`check_target`] refuses up front a call for a cage
//! no one could reach. A call that runs here, whether a sync call, an attempt of a queued call
//! or a step of a direct chain, takes [`run`]: resolve the module's current version, check the
//! method, set the deadline, hand it to the executor and wait for it within the deadline.

use crate::config::Isolation;
use crate::executor::{CallExecutor, Execute, MethodCall};
use crate::host::Output;
use crate::model::call::{QueuedCall, Stage};
use crate::peers::Peers;
use crate::registry::{ModuleRegistry, Resolve};
use actix::Addr;
use cage_sdk::{CallError, ErrorKind};
use std::time::{Duration, Instant};

/// Whether a call for cage `target`, taken by cage `here`, runs here or is delivered.
pub fn stage_for(here: &str, target: &str) -> Stage {
    if target == here {
        Stage::Execute
    } else {
        Stage::Deliver
    }
}

/// Whether taking a call for `target` on cage `here` needs a look-up first (a cage never
/// found yet): answered from memory, so it costs nothing on the hot path.
pub fn needs_lookup(peers: &Peers, here: &str, target: &str) -> bool {
    stage_for(here, target) == Stage::Deliver && !peers.known(target)
}

/// Refuses now a call for `target` that could never be delivered, rather than keep and retry
/// it for days; a call for this cage (`here`) always passes. May block on a discovery query
/// for a cage never found ([`needs_lookup`] tells when).
pub fn check_target(peers: &Peers, here: &str, target: &str) -> Result<(), CallError> {
    match stage_for(here, target) {
        Stage::Execute => Ok(()),
        Stage::Deliver => peers.check(target),
    }
}

/// What bounds a run, and so how running out of time is told.
#[derive(Debug, Clone, Copy)]
pub enum Limit {
    /// A sync call's timeout (the caller's, or the cage's default).
    Call(Duration),
    /// A queue's `time_limit` on one attempt (queued calls and direct chain steps).
    Attempt(Duration),
}

impl Limit {
    fn span(self) -> Duration {
        match self {
            Limit::Call(d) | Limit::Attempt(d) => d,
        }
    }

    fn exceeded(self, isolation: Isolation) -> CallError {
        let fate = match isolation {
            Isolation::Process => "its worker process was killed at the limit",
            Isolation::InProcess => "the method keeps running on its executor thread",
        };
        let text = match self {
            Limit::Call(d) => format!(
                "did not finish within {} ({fate})",
                humantime::format_duration(d)
            ),
            Limit::Attempt(d) => format!(
                "attempt ran longer than the queue's time_limit of {} ({fate})",
                humantime::format_duration(d)
            ),
        };
        CallError::with_kind(ErrorKind::Timeout, text)
    }
}

/// One call to run here.
#[derive(Debug, Clone)]
pub struct Run {
    /// Module to run (its current version is resolved).
    pub module: String,
    /// The call of its method.
    pub call: MethodCall,
    /// How long it may take, resolving the module included.
    pub limit: Limit,
}

impl Run {
    /// Attempt `attempt` of queued call `call` (or, not `queued`, a direct chain step's run).
    pub fn of_queued(call: QueuedCall, attempt: u32, queued: bool, limit: Limit) -> Run {
        Run {
            module: call.module,
            call: MethodCall {
                call_id: call.id,
                method: call.method,
                args: call.args,
                attempt,
                queued,
                chain: call.chain,
            },
            limit,
        }
    }
}

/// How a run ended, and the module version that ran it (none if no module was resolved).
#[derive(Debug)]
pub struct Ran {
    /// The module's output, or why there is none.
    pub outcome: Result<Output, CallError>,
    /// The version resolved for the call.
    pub version: Option<String>,
}

/// Runs `call` on this cage's module through `registry` and `executor`, within its limit.
pub async fn run(registry: &Addr<ModuleRegistry>, executor: &Addr<CallExecutor>, run: Run) -> Ran {
    let gone = |_| CallError::with_kind(ErrorKind::Refused, "cage is shutting down");
    // A client may ask for any limit; past the clock's range it is as good as none.
    let now = Instant::now();
    let deadline = now
        .checked_add(run.limit.span())
        .unwrap_or_else(|| now + crate::model::clock::HORIZON);
    let module = match registry
        .send(Resolve(run.module))
        .await
        .map_err(gone)
        .and_then(|r| r)
    {
        Ok(m) => m,
        Err(e) => {
            return Ran {
                outcome: Err(e),
                version: None,
            }
        }
    };
    let version = Some(module.version.clone());
    if !module.has_method(&run.call.method) {
        let e = CallError::with_kind(
            ErrorKind::UnknownMethod,
            format!(
                "module {} {} has no method {:?} (methods: {})",
                module.name,
                module.version,
                run.call.method,
                module.methods.join(", ")
            ),
        );
        return Ran {
            outcome: Err(e),
            version,
        };
    }
    let execute = Execute {
        module,
        call: run.call,
        deadline,
    };
    let reply = match executor.send(execute).await.map_err(gone).and_then(|r| r) {
        Ok(r) => r,
        Err(e) => {
            return Ran {
                outcome: Err(e),
                version,
            }
        }
    };
    let outcome = match tokio::time::timeout_at(deadline.into(), reply.result).await {
        // A worker is killed at this same deadline; its answer can beat the timer. Either way
        // the limit was passed, and the limit says so, in one wording.
        Ok(Ok(Err(e))) if e.kind == ErrorKind::Timeout && Instant::now() >= deadline => {
            Err(run.limit.exceeded(reply.isolation))
        }
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(CallError::with_kind(
            ErrorKind::Internal,
            "executor thread ended without an answer",
        )),
        Err(_) => Err(run.limit.exceeded(reply.isolation)),
    };
    Ran { outcome, version }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_for_this_cage_runs_here_and_any_other_is_delivered() {
        assert_eq!(stage_for("a", "a"), Stage::Execute);
        assert_eq!(stage_for("a", "b"), Stage::Deliver);
    }

    #[test]
    fn running_out_of_time_is_told_by_what_set_the_limit() {
        let call = Limit::Call(Duration::from_millis(300)).exceeded(Isolation::InProcess);
        assert_eq!(call.kind, ErrorKind::Timeout);
        assert_eq!(
            call.message,
            "did not finish within 300ms (the method keeps running on its executor thread)"
        );
        let attempt = Limit::Attempt(Duration::from_secs(2)).exceeded(Isolation::Process);
        assert_eq!(
            attempt.message,
            "attempt ran longer than the queue's time_limit of 2s (its worker process was killed at the limit)"
        );
    }
}
