//! Chains of calls seen from a module: start child chains, wait for them as they finish, read
//! their results, and continue the chain the current call belongs to.
//!
//! A chain is an ordered list of calls (`"m.a | m.b | other:m.c"`) run with a *bag*: a JSON
//! object holding the chain's inputs, into which each call's returned object is merged; each
//! call receives the bag as it stands. A chain runs on a durable queue (each step retried by
//! the queue's policy, the bag kept on disk between steps) or directly (sync calls, gone if
//! the cage restarts).

use crate::abi::{self, Bytes, HostContext, OwnedBytes};
use crate::ctx::Ctx;
use crate::error::{CallError, ErrorKind};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;
use std::mem::offset_of;
use std::time::Duration;

/// A chain to start: its steps, its inputs, and where it runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Chain {
    /// Steps in order, each `module.method` (this cage) or `cage:module.method`.
    pub steps: Vec<String>,
    /// The bag the first step receives.
    pub inputs: Map<String, Value>,
    /// Queue the steps go through (durable, retried); `None` runs them directly.
    pub queue: Option<String>,
}

impl Chain {
    /// A chain of `steps` separated by `|`, e.g. `"m.a | m.b | other:m.c"`, run directly.
    pub fn new(steps: &str) -> Self {
        Chain {
            steps: steps
                .split('|')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
            ..Chain::default()
        }
    }

    /// Sets input `key` to `value` (anything that serialises to JSON).
    pub fn input(mut self, key: &str, value: impl Serialize) -> Self {
        self.inputs.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    /// Runs the chain durably through `queue` (e.g. `"retry"`).
    pub fn on_queue(mut self, queue: &str) -> Self {
        self.queue = Some(queue.to_owned());
        self
    }
}

/// A started chain, as returned by [`Ctx::enqueue_child`]; its id is the chain id on this cage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Handle(pub String);

impl Handle {
    /// The chain id (shown by `cage chains` and `cage show`).
    pub fn id(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which results [`Ctx::get_results`] returns and in what shape.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResultOptions {
    /// With keys: a JSON array of their values in this order (`null` for a missing key);
    /// without: a JSON object.
    pub return_keys: Option<Vec<String>>,
    /// Also take the results of chains that the chain's calls themselves started.
    pub merge_children_results: bool,
    /// Leave the chain's inputs out: only keys some call returned (default true).
    pub return_keys_only: bool,
}

impl Default for ResultOptions {
    fn default() -> Self {
        ResultOptions {
            return_keys: None,
            merge_children_results: false,
            return_keys_only: true,
        }
    }
}

impl ResultOptions {
    /// Return the values of `keys`, in this order.
    pub fn keys(keys: &[&str]) -> Self {
        ResultOptions {
            return_keys: Some(keys.iter().map(|k| (*k).to_owned()).collect()),
            ..ResultOptions::default()
        }
    }
}

/// Why a chain failed: the call that failed, where, and the reason.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ChainFailure {
    /// The chain.
    pub chain: String,
    /// Index of the failed step (0-based).
    pub step: u32,
    /// The failed call as written in the chain (`cage:module.method`).
    pub call: String,
    /// Cage that ran it.
    pub cage: String,
    /// Its call id.
    pub call_id: String,
    /// What went wrong.
    pub reason: String,
}

impl fmt::Display for ChainFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "chain {} failed at step {} ({} on cage {}, call {}): {}",
            self.chain,
            self.step + 1,
            self.call,
            self.cage,
            self.call_id,
            self.reason
        )
    }
}

impl From<ChainFailure> for CallError {
    fn from(f: ChainFailure) -> Self {
        CallError::with_kind(ErrorKind::ChildFailed, f.to_string())
    }
}

/// A child chain that finished, as a wait yields it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Finished {
    /// The chain.
    pub handle: Handle,
    /// Its results (shaped by the waiter's [`ResultOptions`]); `null` if it failed.
    pub results: Value,
    /// Why it failed, if it did.
    pub failure: Option<ChainFailure>,
}

/// The JSON requests behind the host's `chain` callback.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ChainCall {
    /// Start chains as children of the current call, at most `max_parallel` at once (0: all);
    /// answers their handles in input order.
    Start {
        /// The chains.
        chains: Vec<Chain>,
        /// Cap on chains running at once.
        max_parallel: u32,
    },
    /// Handles of every chain the current call started, oldest first.
    Children,
    /// Waits until one of `handles` finished (`any`) or the first of them did; answers it.
    Wait {
        /// Chains to wait on.
        handles: Vec<Handle>,
        /// Any of them (completion order) rather than the first.
        any: bool,
        /// Shape of the results in the answer.
        options: ResultOptions,
        /// Longest to wait, in milliseconds (`None`: as long as it takes).
        timeout_ms: Option<u64>,
    },
    /// The results of a finished chain.
    Results {
        /// The chain.
        handle: Handle,
        /// Their shape.
        options: ResultOptions,
    },
    /// Ends the current chain step and continues its chain with this call.
    Next {
        /// Target, `cage.module.method` or `module.method`.
        target: String,
        /// Its arguments.
        args: Value,
    },
    /// Starts a continuation chain whose first call is `target`, through `queue`.
    Begin {
        /// Target, `cage.module.method` or `module.method`.
        target: String,
        /// Its arguments.
        args: Value,
        /// Queue of its calls.
        queue: String,
    },
}

/// Chains a call waits for, yielded as they finish; see [`Ctx::wait_for_children`].
pub struct Waiter<'a> {
    ctx: &'a Ctx,
    pending: Vec<Handle>,
    any: bool,
    raise_on_failure: bool,
    options: ResultOptions,
    timeout: Option<Duration>,
    failed: Option<CallError>,
}

impl Waiter<'_> {
    /// With `false`, a failed chain is yielded as `Ok` with its [`Finished::failure`] set
    /// instead of as an error.
    pub fn raise_on_failure(mut self, raise: bool) -> Self {
        self.raise_on_failure = raise;
        self
    }

    /// Shapes the results each [`Finished`] carries.
    pub fn results(mut self, options: ResultOptions) -> Self {
        self.options = options;
        self
    }

    /// Gives up waiting for any one chain after `timeout` (a [`ErrorKind::Timeout`] error).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }
}

impl Iterator for Waiter<'_> {
    type Item = Result<Finished, CallError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            return Some(Err(e));
        }
        if self.pending.is_empty() {
            return None;
        }
        let request = ChainCall::Wait {
            handles: self.pending.clone(),
            any: self.any,
            options: self.options.clone(),
            timeout_ms: self.timeout.map(|t| t.as_millis() as u64),
        };
        let finished: Finished = match self.ctx.chain_request(&request) {
            Ok(f) => f,
            Err(e) => {
                self.pending.clear();
                return Some(Err(e));
            }
        };
        self.pending.retain(|h| *h != finished.handle);
        match &finished.failure {
            Some(failure) if self.raise_on_failure => Some(Err(failure.clone().into())),
            _ => Some(Ok(finished)),
        }
    }
}

impl Ctx {
    fn chain_request<R: for<'de> Deserialize<'de>>(
        &self,
        request: &ChainCall,
    ) -> Result<R, CallError> {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, chain) + size_of::<abi::HostChainFn>()) {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer chains to modules",
            ));
        }
        let request = serde_json::to_vec(request)
            .map_err(|e| CallError::with_kind(ErrorKind::Internal, e.to_string()))?;
        let mut out = OwnedBytes::empty();
        // SAFETY: the callback and views are valid for the call; `out` is written by the host.
        let status = unsafe { (host.chain)(host.data, Bytes::from_slice(&request), &mut out) };
        let bytes = self.finish(status, out)?;
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::with_kind(
                ErrorKind::Internal,
                format!("chain answer does not decode: {e}"),
            )
        })
    }

    /// Starts `chain` as a child of this call and waits for it; returns its results shaped by
    /// `options`, or its failure as a [`ErrorKind::ChildFailed`] error.
    pub fn enqueue_child_and_get_results(
        &self,
        chain: &Chain,
        options: &ResultOptions,
    ) -> Result<Value, CallError> {
        let handle = self.enqueue_child(chain)?;
        self.wait_on(&handle)?;
        self.get_results(&handle, options)
    }

    /// Starts `chain` as a child of this call and returns at once. A queued call retried after
    /// a crash gets the same handles for the same sequence of starts, so its children are not
    /// started twice.
    pub fn enqueue_child(&self, chain: &Chain) -> Result<Handle, CallError> {
        let mut handles = self.enqueue_in_parallel(std::slice::from_ref(chain), 0)?;
        handles
            .pop()
            .ok_or_else(|| CallError::with_kind(ErrorKind::Internal, "no handle for the chain"))
    }

    /// Starts every chain of `chains` as a child of this call, at most `max_parallel` running
    /// at once (0: no cap); returns their handles in input order.
    pub fn enqueue_in_parallel(
        &self,
        chains: &[Chain],
        max_parallel: u32,
    ) -> Result<Vec<Handle>, CallError> {
        self.chain_request(&ChainCall::Start {
            chains: chains.to_vec(),
            max_parallel,
        })
    }

    /// Waits until the chain of `handle` finished; its failure is an error.
    pub fn wait_on(&self, handle: &Handle) -> Result<Finished, CallError> {
        self.wait_for_any(std::slice::from_ref(handle))
            .next()
            .unwrap_or_else(|| {
                Err(CallError::with_kind(
                    ErrorKind::Internal,
                    "nothing to wait on",
                ))
            })
    }

    /// Every chain this call started, yielded in the order they were started, each once it has
    /// finished.
    pub fn wait_for_children(&self) -> Waiter<'_> {
        self.waiter(self.children(), false)
    }

    /// Every chain this call started, yielded in the order they finish.
    pub fn wait_for_any_children(&self) -> Waiter<'_> {
        self.waiter(self.children(), true)
    }

    /// The chains of `handles`, yielded in the order they finish.
    pub fn wait_for_any(&self, handles: &[Handle]) -> Waiter<'_> {
        self.waiter(Ok(handles.to_vec()), true)
    }

    fn children(&self) -> Result<Vec<Handle>, CallError> {
        self.chain_request(&ChainCall::Children)
    }

    fn waiter(&self, handles: Result<Vec<Handle>, CallError>, any: bool) -> Waiter<'_> {
        // A failure to list the children is the first item, not an empty iteration.
        let (pending, failed) = match handles {
            Ok(h) => (h, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Waiter {
            failed,
            ctx: self,
            pending,
            any,
            raise_on_failure: true,
            options: ResultOptions::default(),
            timeout: None,
        }
    }

    /// The results of the finished chain of `handle`, shaped by `options`.
    pub fn get_results(
        &self,
        handle: &Handle,
        options: &ResultOptions,
    ) -> Result<Value, CallError> {
        self.chain_request(&ChainCall::Results {
            handle: handle.clone(),
            options: options.clone(),
        })
    }

    /// Continues the chain this call belongs to with `target` (`"cage.module.method"` or
    /// `"module.method"`) and `args`, and ends this call successfully: return what it returns.
    /// The next call is stored together with this call's completion, so neither a retry nor
    /// a crash enqueues it twice or loses it.
    pub fn chain_next<A: Serialize, R: Default>(
        &self,
        target: &str,
        args: &A,
    ) -> Result<R, CallError> {
        let args = serde_json::to_value(args)
            .map_err(|e| CallError::bad_arguments(format!("arguments for {target}: {e}")))?;
        let _: Value = self.chain_request(&ChainCall::Next {
            target: target.to_owned(),
            args,
        })?;
        Ok(R::default())
    }

    /// Starts a continuation chain through `queue` whose first call is `target`
    /// (`"cage.module.method"` or `"module.method"`); returns the chain id once it is durable.
    pub fn chain_start<A: Serialize>(
        &self,
        target: &str,
        args: &A,
        queue: &str,
    ) -> Result<Handle, CallError> {
        let args = serde_json::to_value(args)
            .map_err(|e| CallError::bad_arguments(format!("arguments for {target}: {e}")))?;
        self.chain_request(&ChainCall::Begin {
            target: target.to_owned(),
            args,
            queue: queue.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_split_on_bars() {
        let c = Chain::new(" m.a | m.b|other:m.c ").input("n", 3);
        assert_eq!(c.steps, vec!["m.a", "m.b", "other:m.c"]);
        assert_eq!(c.inputs["n"], 3);
        assert_eq!(c.queue, None);
    }

    #[test]
    fn chain_calls_are_tagged_json() {
        let json = serde_json::to_value(ChainCall::Children).unwrap();
        assert_eq!(json, serde_json::json!({"op": "children"}));
    }
}
