//! The host side of chains: a module starts child chains, waits on them, reads their results
//! and continues the chain it is a step of. Starting is a request to the cage's own queue, in
//! process (the scheduler makes every queue write and answers once the chains are durable);
//! waiting and reading look at the store, woken by the cage's [`crate::chains::ChainWatch`].

use super::{answer, CallScope};
use crate::chains::ChainWatch;
use crate::model::chain::{ChainRecord, ChainState, StepSpec};
use crate::queue::{QueueError, QueueStore};
use crate::transport::client::{self, ClientError};
use crate::transport::protocol::{ChainRequest, NewChain, Request};
use cage_sdk::abi::{Bytes, OwnedBytes};
use cage_sdk::chain::{ChainCall, Finished};
use cage_sdk::{CallError, Chain, ErrorKind, Handle, ResultOptions};
use serde::Serialize;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

/// Longest the cage may take to store new chains durably.
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn storage(e: QueueError) -> CallError {
    CallError::with_kind(ErrorKind::Internal, format!("chain storage: {e}"))
}

fn json(value: impl Serialize) -> Result<Vec<u8>, CallError> {
    serde_json::to_vec(&value).map_err(|e| CallError::with_kind(ErrorKind::Internal, e.to_string()))
}

impl CallScope {
    fn serve_chain(&self, call: ChainCall) -> Result<Vec<u8>, CallError> {
        match call {
            ChainCall::Start {
                chains,
                max_parallel,
            } => json(self.start(&chains, max_parallel)?),
            ChainCall::Children => json(
                self.env
                    .store
                    .children(&self.call_id)
                    .map_err(storage)?
                    .into_iter()
                    .map(|c| Handle(c.id))
                    .collect::<Vec<_>>(),
            ),
            ChainCall::Wait {
                handles,
                any,
                options,
                timeout_ms,
            } => json(self.wait(&handles, any, &options, timeout_ms)?),
            ChainCall::Results { handle, options } => {
                let chain = self.chain(&handle)?;
                match chain.state {
                    ChainState::Done => json(chain.results(&options)),
                    ChainState::Failed(_) | ChainState::Cancelled(_) => {
                        Err(chain.failure().map(Into::into).unwrap_or_else(|| {
                            CallError::with_kind(ErrorKind::ChildFailed, "chain failed")
                        }))
                    }
                    ChainState::Held | ChainState::Running => Err(CallError::with_kind(
                        ErrorKind::Refused,
                        format!(
                            "chain {handle} is still {} (step {} of {}); wait on it first",
                            chain.state.as_str(),
                            chain.step + 1,
                            chain.steps.len()
                        ),
                    )),
                }
            }
            ChainCall::Next { target, args } => {
                self.continue_with(&target, &args)?;
                json(serde_json::Value::Null)
            }
            ChainCall::Begin {
                target,
                args,
                queue,
            } => {
                let args = serde_json::to_vec(&args).unwrap_or_default();
                let step = StepSpec::parse_dotted(&target, args)
                    .map_err(|e| CallError::bad_arguments(e.to_string()))?;
                let new = self.new_chain(vec![step], b"{}".to_vec(), Some(queue));
                let mut ids = self.send_start(vec![new], 0)?;
                json(Handle(ids.pop().unwrap_or_default()))
            }
        }
    }

    /// The next child's id and ordinal: the same sequence on every attempt of this call, so a
    /// retried call finds the children its earlier attempt started instead of starting more.
    fn new_chain(&self, steps: Vec<StepSpec>, inputs: Vec<u8>, queue: Option<String>) -> NewChain {
        let ordinal = self.children.get();
        self.children.set(ordinal + 1);
        NewChain {
            id: Some(format!("{}.c{ordinal}", self.call_id)),
            steps,
            inputs,
            queue,
            ordinal,
        }
    }

    fn start(&self, chains: &[Chain], max_parallel: u32) -> Result<Vec<Handle>, CallError> {
        let mut new = Vec::with_capacity(chains.len());
        for (i, chain) in chains.iter().enumerate() {
            let steps = chain
                .steps
                .iter()
                .map(|s| StepSpec::parse(s))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| CallError::bad_arguments(format!("chain {}: {e}", i + 1)))?;
            let inputs = serde_json::to_vec(&chain.inputs).unwrap_or_else(|_| b"{}".to_vec());
            new.push(self.new_chain(steps, inputs, chain.queue.clone()));
        }
        Ok(self
            .send_start(new, max_parallel)?
            .into_iter()
            .map(Handle)
            .collect())
    }

    fn send_start(
        &self,
        chains: Vec<NewChain>,
        max_parallel: u32,
    ) -> Result<Vec<String>, CallError> {
        let env = &self.env;
        let request = Request::Chain(ChainRequest::Start {
            chains,
            max_parallel,
            parent: Some(self.call_id.clone()),
        });
        let ids = env
            .own
            .request(&env.cage, request, START_TIMEOUT)
            .and_then(|answer| client::chains_started(&env.cage, answer))
            .map_err(ClientError::into_call_error)??;
        tracing::debug!(parent = %self.call_id, chains = ?ids, "module started chains");
        Ok(ids)
    }

    fn chain(&self, handle: &Handle) -> Result<ChainRecord, CallError> {
        self.env
            .store
            .chain(handle.id())
            .map_err(storage)?
            .ok_or_else(|| unknown(&self.env.cage, handle.id()))
    }

    fn wait(
        &self,
        handles: &[Handle],
        any: bool,
        options: &ResultOptions,
        timeout_ms: Option<u64>,
    ) -> Result<Finished, CallError> {
        // This call blocks a worker while its children may need one: lend the pool a thread.
        let _spare = self.env.spare.hold();
        let ids: Vec<String> = handles.iter().map(|h| h.id().to_owned()).collect();
        let timeout = timeout_ms.map(Duration::from_millis);
        let chain = wait_for_chain(
            &self.env.store,
            &self.env.chains,
            &self.env.cage,
            &ids,
            any,
            timeout,
        )?;
        let failure = chain.failure();
        Ok(Finished {
            handle: Handle(chain.id.clone()),
            results: if failure.is_none() {
                chain.results(options)
            } else {
                serde_json::Value::Null
            },
            failure,
        })
    }

    fn continue_with(&self, target: &str, args: &serde_json::Value) -> Result<(), CallError> {
        if self.chain.is_none() {
            return Err(CallError::bad_arguments(
                "chain_next needs a call that is a step of a queued chain (cage chain start, \
                 ctx.chain_start, or a chain on a queue)",
            ));
        }
        let mut next = self.next.borrow_mut();
        if let Some(already) = next.as_ref() {
            return Err(CallError::bad_arguments(format!(
                "chain_next was already called in this call (with {})",
                already.label()
            )));
        }
        let args = serde_json::to_vec(args).unwrap_or_default();
        *next = Some(
            StepSpec::parse_dotted(target, args)
                .map_err(|e| CallError::bad_arguments(e.to_string()))?,
        );
        Ok(())
    }
}

/// The error for a chain id `cage` does not hold.
fn unknown(cage: &str, id: &str) -> CallError {
    CallError::bad_arguments(format!(
        "no chain {id} on cage {cage} (a chain is held by the cage that started it)"
    ))
}

/// Most chains one client's wait may name: every change to a chain makes each waiting
/// request read every chain it names again.
pub const MAX_WAIT_IDS: usize = 16;

/// The chains a wait on `ids` watches: the first, or with `any` all of them; no chain at all
/// is a mistake, not a wait.
fn watched(ids: &[String], any: bool) -> Result<&[String], CallError> {
    match ids.first() {
        None => Err(CallError::bad_arguments(
            "a wait names no chain: give the id of at least one chain to wait on",
        )),
        Some(_) if any => Ok(ids),
        Some(_) => Ok(&ids[..1]),
    }
}

/// The first of `watched` that has finished, or the error that ends the wait.
fn first_finished(
    store: &QueueStore,
    cage: &str,
    watched: &[String],
) -> Option<Result<ChainRecord, CallError>> {
    for id in watched {
        match store.chain(id) {
            Ok(Some(c)) if c.is_finished() => return Some(Ok(c)),
            Ok(Some(_)) => {}
            Ok(None) => return Some(Err(unknown(cage, id))),
            Err(e) => return Some(Err(storage(e))),
        }
    }
    None
}

fn timed_out(watched: &[String], timeout: Duration, why: &str) -> CallError {
    CallError::with_kind(
        ErrorKind::Timeout,
        format!(
            "no chain of {} finished within {}{why}",
            watched.join(", "),
            humantime::format_duration(timeout)
        ),
    )
}

/// Waits until the first of `ids` (with `any`, any of them) has finished and returns it; a
/// timeout, no id at all, or an id `cage` does not hold, is an error.
pub fn wait_for_chain(
    store: &QueueStore,
    watch: &ChainWatch,
    cage: &str,
    ids: &[String],
    any: bool,
    timeout: Option<Duration>,
) -> Result<ChainRecord, CallError> {
    let watched = watched(ids, any)?;
    let found = watch.wait_for(timeout, || first_finished(store, cage, watched));
    found.unwrap_or_else(|| Err(timed_out(watched, timeout.unwrap_or_default(), "")))
}

/// How long a client's wait asking for `asked` may last on a cage whose `max_wait` is
/// `max`, and whether it was shortened to fit.
pub fn wait_limit(asked: Duration, max: Duration) -> (Duration, bool) {
    (asked.min(max), asked > max)
}

/// A client's wait on chains (the request [`ChainRequest::Wait`]), as a future that holds no
/// thread: until the first of `ids` (with `any`, any of them) has finished, for at most the
/// `timeout_ms` asked or `max_wait`, whichever is shorter. A longer wait is shortened, not
/// refused: a wait can simply be made again, and a client cannot know the cage's setting.
pub async fn wait_for_chain_async(
    store: &QueueStore,
    watch: &ChainWatch,
    cage: &str,
    ids: &[String],
    any: bool,
    timeout_ms: u64,
    max_wait: Duration,
) -> Result<ChainRecord, CallError> {
    if ids.len() > MAX_WAIT_IDS {
        return Err(CallError::bad_arguments(format!(
            "a wait names {} chains; at most {MAX_WAIT_IDS} may be waited on at once",
            ids.len()
        )));
    }
    let watched = watched(ids, any)?;
    let (timeout, shortened) = wait_limit(Duration::from_millis(timeout_ms), max_wait);
    let now = tokio::time::Instant::now();
    let deadline = now.checked_add(timeout).unwrap_or(now);
    let found = watch
        .wait_until(deadline, || first_finished(store, cage, watched))
        .await;
    found.unwrap_or_else(|| {
        let why = match shortened {
            true => " (the longest wait this cage allows, its max_wait; wait again for longer)",
            false => "",
        };
        Err(timed_out(watched, timeout, why))
    })
}

/// Answers a question about chains from the store (a wait is served by
/// [`wait_for_chain_async`], a start by the scheduler).
pub fn query_chains(
    store: &QueueStore,
    cage: &str,
    request: ChainRequest,
) -> Result<Vec<ChainRecord>, CallError> {
    match request {
        ChainRequest::Get(id) => Ok(vec![store
            .chain(&id)
            .map_err(storage)?
            .ok_or_else(|| unknown(cage, &id))?]),
        ChainRequest::Children(id) => store.children(&id).map_err(storage),
        ChainRequest::List { all, limit } => {
            let limit = if limit == 0 { 1000 } else { limit };
            let mut chains = store
                .chains(&|c| all || !c.is_finished(), usize::MAX)
                .map_err(storage)?;
            // Newest first: the ones an operator is asking about.
            chains.sort_by_key(|c| std::cmp::Reverse(c.started_ms));
            chains.truncate(limit);
            Ok(chains)
        }
        ChainRequest::Wait { .. } | ChainRequest::Start { .. } => Err(CallError::with_kind(
            ErrorKind::Internal,
            "waits and starts are not store queries",
        )),
    }
}

/// # Safety
/// As the ABI's `HostChainFn`: `data` is a running call's scope, `request` live, `out` writable.
pub(super) unsafe extern "C" fn host_chain(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the running call; the view is live.
        let (scope, request) = unsafe { (&*(data as *const CallScope), request.as_slice()) };
        let call: ChainCall = serde_json::from_slice(request)
            .map_err(|e| CallError::bad_arguments(format!("chain request: {e}")))?;
        scope.serve_chain(call)
    }));
    // SAFETY: the module passes a writable slot and frees it with our `free`.
    unsafe { answer(out, result) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_names_a_chain_and_long_waits_are_shortened() {
        assert_eq!(
            watched(&[], true).unwrap_err().kind,
            ErrorKind::BadArguments
        );
        let ids = vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(watched(&ids, false).unwrap(), &ids[..1]);
        assert_eq!(watched(&ids, true).unwrap(), &ids[..]);
        let five = Duration::from_secs(300);
        assert_eq!(
            wait_limit(Duration::from_millis(u64::MAX), five),
            (five, true)
        );
        assert_eq!(
            wait_limit(Duration::from_secs(3), five),
            (Duration::from_secs(3), false)
        );
    }
}
