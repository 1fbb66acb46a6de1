//! The host side of the module ABI: the [`HostContext`] a module receives for one call, and the
//! callbacks behind it (log, call another cage). No callback ever unwinds into module code.
//!
//! Other cages are reached through the cage's one [`Peers`] handle; this cage's own queue
//! (a module's enqueues, chain starts and jobs here) in process, through [`OwnCage`].

use crate::chains::ChainWatch;
use crate::config::Site;
use crate::loader::LoadedModule;
use crate::messaging::{parse_invocation, Mailboxes};
use crate::metrics::Metrics;
use crate::model::call::ChainLink;
use crate::model::chain::StepSpec;
use crate::peers::Peers;
use crate::queue::QueueStore;
use chains::host_chain;
pub use chains::{query_chains, wait_for_chain, wait_for_chain_async};
use serde::{Deserialize, Serialize};
use state::{host_state_get, host_state_put, StateTx};
use std::cell::{Cell, RefCell};

mod chains;
mod own;
mod spare;
mod state;

use crate::model::ids::new_call_id;
use crate::transport::client::{self, ClientError};
use crate::transport::protocol::{CallFailure, CallRequest, EnqueueRequest, Request};
use cage_sdk::abi::{self, Bytes, HostContext, OwnedBytes};
use cage_sdk::{CallError, ErrorKind};
pub use own::{OwnCage, Reply};
pub use spare::{SpareGuard, SpareWorkers};
pub use state::StateLocks;
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// Longest a cage may take to store a module's enqueue or job durably (its group commit too).
const STORE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the host offers every call of one cage: its name and how to reach other cages.
pub struct HostEnv {
    /// This cage's name.
    pub cage: String,
    /// The site.
    pub site: Site,
    /// Other cages: the live cluster map, discovery and pooled connections.
    pub peers: Arc<Peers>,
    /// This cage's own queue, reached in process by its modules.
    pub own: OwnCage,
    /// This cage's own address, for its HTTP API.
    pub listen: std::net::SocketAddr,
    /// Whether the cage serves TLS (its own listener is reached over TLS too).
    pub tls: bool,
    /// Mailboxes of this cage's running invocations.
    pub mailboxes: Arc<Mailboxes>,
    /// How long a message waits for a receiver to open its port.
    pub port_wait: Duration,
    /// Base URL of this cage's HTTP API.
    pub api_url: String,
    /// Directory of the Python client, for children's `PYTHONPATH`.
    pub client_path: String,
    /// The cage's database, for modules' state.
    pub store: Arc<QueueStore>,
    /// One state lock per module.
    pub state_locks: StateLocks,
    /// Wakes calls waiting for chains of this cage.
    pub chains: Arc<ChainWatch>,
    /// Extra executor threads for calls that block waiting for their children.
    pub spare: SpareWorkers,
    /// What the cage counts.
    pub metrics: Arc<Metrics>,
}

/// What a call returned: its JSON result and, for a chain step, the continuation it asked for.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Output {
    /// The JSON result.
    pub result: Vec<u8>,
    /// The next call of its chain, from `ctx.chain_next`.
    pub next: Option<StepSpec>,
}

impl Output {
    /// A plain result.
    pub fn result(result: Vec<u8>) -> Self {
        Output { result, next: None }
    }
}

/// One call's identity and its pending effects, passed to callbacks through
/// `HostContext::data`. It owns all it holds, so a call driven in a worker process keeps it
/// across the callbacks it serves on other threads; dropping it ends the call's invocation.
pub struct CallScope {
    env: Arc<HostEnv>,
    call_id: String,
    module: String,
    method: String,
    attempt: u32,
    queued: bool,
    invocation: u64,
    invocation_id: String,
    token: String,
    state: RefCell<StateTx>,
    /// The chain this call is a step of.
    chain: Option<ChainLink>,
    /// The continuation asked for with `chain_next`.
    next: RefCell<Option<StepSpec>>,
    /// Child chains started so far (their ordinals, and part of their ids).
    children: Cell<u32>,
}

impl Drop for CallScope {
    fn drop(&mut self) {
        self.env.mailboxes.end(self.invocation);
    }
}

/// How a call begins: already executed (its committed outcome), or ready to run in a scope.
pub enum Begun {
    /// A queued call whose state writes were committed by an earlier attempt: its outcome.
    Executed(Output),
    /// The call's scope, to run the module in.
    Running(Box<CallScope>),
}

impl HostEnv {
    /// Begins call `call_id` of `module.method`: a `queued` call whose state writes were
    /// already committed (by an attempt cut short before its completion was recorded) is not
    /// run again, and its committed outcome is answered; any other gets its scope.
    #[allow(clippy::too_many_arguments)]
    pub fn begin(
        self: &Arc<Self>,
        module: &str,
        call_id: &str,
        method: &str,
        attempt: u32,
        queued: bool,
        chain: Option<&ChainLink>,
    ) -> Result<Begun, CallError> {
        if queued {
            if let Some(outcome) = self.store.executed(call_id).map_err(storage)? {
                tracing::info!(
                    "already executed (its effects were committed before a restart); not run again"
                );
                return Ok(Begun::Executed(
                    postcard::from_bytes(&outcome)
                        .unwrap_or_else(|_| Output::result(b"null".to_vec())),
                ));
            }
        }
        let (invocation, token) = self.mailboxes.begin();
        Ok(Begun::Running(Box::new(CallScope {
            env: self.clone(),
            call_id: call_id.to_owned(),
            module: module.to_owned(),
            method: method.to_owned(),
            attempt,
            queued,
            invocation,
            invocation_id: self.mailboxes.id(invocation),
            token,
            state: RefCell::new(StateTx::default()),
            chain: chain.cloned(),
            next: RefCell::new(None),
            children: Cell::new(0),
        })))
    }

    /// Runs `method` of `module` with JSON `args`, giving it a host context: `invoke` is the
    /// one step that runs the module's code with that context (in this thread, or in a worker
    /// process whose callbacks are served with it); everything around it, the call's scope,
    /// its state writes and their commit, is this one path either way.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        self: &Arc<Self>,
        module: &LoadedModule,
        call_id: &str,
        method: &str,
        args: &[u8],
        attempt: u32,
        queued: bool,
        chain: Option<&ChainLink>,
        invoke: impl FnOnce(&HostContext, &str, &[u8]) -> Result<Vec<u8>, CallError>,
    ) -> Result<Output, CallError> {
        match self.begin(&module.name, call_id, method, attempt, queued, chain)? {
            Begun::Executed(output) => Ok(output),
            Begun::Running(scope) => {
                let result = scope.with_context(|ctx| invoke(ctx, method, args));
                scope.finish(result)
            }
        }
    }
}

fn storage(e: crate::queue::QueueError) -> CallError {
    CallError::with_kind(ErrorKind::Internal, format!("state storage: {e}"))
}

impl CallScope {
    /// Runs `f` with the host context of this call, whose views and callbacks hold while `f`
    /// runs.
    pub fn with_context<R>(&self, f: impl FnOnce(&HostContext) -> R) -> R {
        let ctx = HostContext {
            abi_version: abi::ABI_VERSION,
            size: std::mem::size_of::<HostContext>() as u32,
            data: self as *const CallScope as *const c_void,
            cage: Bytes::from_slice(self.env.cage.as_bytes()),
            module: Bytes::from_slice(self.module.as_bytes()),
            method: Bytes::from_slice(self.method.as_bytes()),
            call_id: Bytes::from_slice(self.call_id.as_bytes()),
            log: host_log,
            call: host_call,
            free: cage_sdk::export::free_bytes,
            attempt: self.attempt,
            enqueue: host_enqueue,
            add_job: host_add_job,
            invocation_id: Bytes::from_slice(self.invocation_id.as_bytes()),
            send_message: host_send,
            receive_message: host_receive,
            api_url: Bytes::from_slice(self.env.api_url.as_bytes()),
            api_token: Bytes::from_slice(self.token.as_bytes()),
            client_path: Bytes::from_slice(self.env.client_path.as_bytes()),
            state_get: host_state_get,
            state_put: host_state_put,
            chain: host_chain,
        };
        f(&ctx)
    }

    /// Whether finishing this call writes to the store (it wrote state), and so may block.
    pub fn commits(&self) -> bool {
        !self.state.borrow().writes.is_empty()
    }

    /// Ends the call with the module's `result`: a successful call's state writes are
    /// committed (with the executed mark of a queued call) before its module's state lock is
    /// released.
    pub fn finish(
        self: Box<Self>,
        result: Result<Vec<u8>, CallError>,
    ) -> Result<Output, CallError> {
        let result = result.map(|result| Output {
            result,
            next: self.next.take(),
        });
        let tx = self.state.take();
        if let (Ok(output), false) = (&result, tx.writes.is_empty()) {
            // The writes and the executed mark (with the outcome) go in one batch; the lock (in
            // `tx`) is released only after it, so the next call of the module reads what this
            // one wrote.
            let outcome = postcard::to_allocvec(output).unwrap_or_default();
            self.env
                .store
                .commit_state(
                    &self.module,
                    &tx.writes,
                    self.queued
                        .then_some((self.call_id.as_str(), outcome.as_slice())),
                )
                .map_err(storage)?;
        }
        drop(tx);
        result
    }
}

impl HostEnv {
    /// Calls `target` (`module.method`) on `cage` synchronously, on behalf of call `parent`.
    pub fn call(
        &self,
        cage: &str,
        target: &str,
        args: &[u8],
        timeout: Duration,
        parent: &str,
    ) -> Result<Vec<u8>, Box<CallFailure>> {
        let call_id = new_call_id(&self.cage);
        let (module, method) = target.split_once('.').unwrap_or((target, ""));
        let failure = |error: CallError| {
            Box::new(CallFailure {
                cage: cage.to_owned(),
                module: module.to_owned(),
                method: method.to_owned(),
                call_id: call_id.clone(),
                error,
            })
        };
        if method.is_empty() {
            return Err(failure(CallError::bad_arguments(format!(
                "target {target:?} is not MODULE.METHOD"
            ))));
        }
        let found = self.peers.route(cage).map_err(failure)?;
        tracing::debug!(parent, child = %call_id, cage, target, "module calls another cage");
        let request = CallRequest {
            call_id: call_id.clone(),
            module: module.to_owned(),
            method: method.to_owned(),
            args: args.to_vec(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        self.peers
            .with(cage, &found, |c| Ok(c.call(request)))
            .map_err(|e| failure(e.into_call_error()))?
    }
}

impl HostEnv {
    /// How this cage's HTTP API reaches its own listener.
    pub fn own_route(&self) -> crate::config::CageRoute {
        crate::config::CageRoute::single(self.listen, crate::config::CageFileDefaults::CALL_TIMEOUT)
            .with_tls(self.tls)
    }

    /// Queues a call through this cage's own queue on behalf of call `parent`; returns its id.
    pub fn enqueue(
        &self,
        request: cage_sdk::ctx::EnqueueRequest,
        parent: &str,
    ) -> Result<String, CallError> {
        let target = format!("{}.{}", request.module, request.method);
        let enqueue = Request::Enqueue(EnqueueRequest {
            target: request.cage.clone(),
            module: request.module,
            method: request.method,
            args: serde_json::to_vec(&request.args).unwrap_or_default(),
            queue: request.queue,
            priority: request.priority,
            key: request.key,
            delay_ms: 0,
            group: request.group,
        });
        let (id, _) = self
            .own
            .request(&self.cage, enqueue, STORE_TIMEOUT)
            .and_then(|answer| client::enqueued(&self.cage, answer))
            .map_err(ClientError::into_call_error)?;
        tracing::debug!(parent, child = %id, cage = %request.cage, target, "module queued a call");
        Ok(id)
    }
}

/// # Safety
/// `data` is the `CallScope` of a running call; `msg` a valid view.
unsafe extern "C" fn host_log(data: *const c_void, level: u32, msg: Bytes) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the call that is running this callback.
        let scope = unsafe { &*(data as *const CallScope) };
        // SAFETY: the module passes a live view.
        let msg = String::from_utf8_lossy(unsafe { msg.as_slice() });
        let (module, method, call_id) = (&*scope.module, &*scope.method, &*scope.call_id);
        match level {
            1 => tracing::error!(target: "module", module, method, call_id, "{msg}"),
            2 => tracing::warn!(target: "module", module, method, call_id, "{msg}"),
            3 => tracing::info!(target: "module", module, method, call_id, "{msg}"),
            4 => tracing::debug!(target: "module", module, method, call_id, "{msg}"),
            _ => tracing::trace!(target: "module", module, method, call_id, "{msg}"),
        }
    }));
}

/// # Safety
/// As the ABI's `HostCallFn`: `data` is a running call's scope, views are live, `out` writable.
unsafe extern "C" fn host_call(
    data: *const c_void,
    cage: Bytes,
    target: Bytes,
    args: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the call that is running this callback.
        let scope = unsafe { &*(data as *const CallScope) };
        // SAFETY: the module passes live views.
        let (cage, target, args) = unsafe { (cage.as_slice(), target.as_slice(), args.as_slice()) };
        let cage = String::from_utf8_lossy(cage);
        let target = String::from_utf8_lossy(target);
        scope
            .env
            .call(
                &cage,
                &target,
                args,
                Duration::from_millis(timeout_ms),
                &scope.call_id,
            )
            .map_err(|f| CallError::with_kind(f.error.kind, f.to_string()))
    }));
    // SAFETY: the module passes a writable slot and frees it with our `free`.
    unsafe { answer(out, result) }
}

/// # Safety
/// As the ABI's `HostEnqueueFn`: `data` is a running call's scope, `request` live, `out` writable.
unsafe extern "C" fn host_enqueue(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: forwarded from the module under the same contract.
    unsafe {
        json_callback(
            data,
            request,
            out,
            "enqueue request",
            |scope, r: cage_sdk::ctx::EnqueueRequest| scope.env.enqueue(r, &scope.call_id),
        )
    }
}

impl HostEnv {
    /// Adds a job on the cage the request names, on behalf of call `parent`; returns its id.
    pub fn add_job(
        &self,
        request: cage_sdk::ctx::JobRequest,
        parent: &str,
    ) -> Result<String, CallError> {
        use crate::model::job::{CatchUp, Schedule};
        use crate::transport::protocol::{JobRequest, JobSpec};
        // Saturating: a time past the end is refused by the cage (beyond its horizon), where
        // a wrapped one would run at once.
        let now = crate::model::clock::now_ms();
        let (schedule, replace) = match request.when {
            cage_sdk::JobWhen::InMs(ms) => (
                Schedule::Once {
                    at_ms: now.saturating_add(ms),
                },
                false,
            ),
            cage_sdk::JobWhen::EveryMs(ms) => (
                Schedule::Every {
                    interval_ms: ms,
                    first_ms: now.saturating_add(ms),
                },
                true,
            ),
        };
        let spec = JobSpec {
            module: request.module,
            method: request.method,
            args: serde_json::to_vec(&request.args).unwrap_or_default(),
            queue: crate::config::DEFAULT_QUEUE.to_owned(),
            schedule,
            catch_up: CatchUp::Once,
        };
        let add = JobRequest::Add { spec, replace };
        let jobs = if request.cage == self.cage {
            self.own
                .request(&self.cage, Request::Job(add), STORE_TIMEOUT)
                .and_then(|answer| client::jobs(&self.cage, answer))
                .map_err(ClientError::into_call_error)?
        } else {
            self.peers
                .reach(&request.cage, |c| c.job(add, STORE_TIMEOUT))?
        };
        let id = jobs.into_iter().next().map(|j| j.id).unwrap_or_default();
        tracing::debug!(parent, job = %id, cage = %request.cage, "module added a job");
        Ok(id)
    }
}

/// # Safety
/// As the ABI's `HostJobFn`: `data` is a running call's scope, `request` live, `out` writable.
unsafe extern "C" fn host_add_job(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: forwarded from the module under the same contract.
    unsafe {
        json_callback(
            data,
            request,
            out,
            "job request",
            |scope, r: cage_sdk::ctx::JobRequest| scope.env.add_job(r, &scope.call_id),
        )
    }
}

impl HostEnv {
    /// Hands a message to invocation `target` (`CAGE/N`, here or on another cage).
    pub fn send_message(
        &self,
        target: &str,
        port: &str,
        message: Vec<u8>,
        timeout: Duration,
    ) -> Result<(), CallError> {
        let (cage, n) = parse_invocation(target).ok_or_else(|| {
            CallError::with_kind(
                ErrorKind::UnknownInvocation,
                format!("{target:?} is not an invocation id (CAGE/N)"),
            )
        })?;
        let wait = timeout.min(self.port_wait);
        if cage == self.cage {
            return self.mailboxes.send(n, port, message, wait);
        }
        // Another cage runs it: hand the message to that cage, which waits for the receiver.
        let request = crate::transport::protocol::MessageRequest {
            target: target.to_owned(),
            port: port.to_owned(),
            message,
            timeout_ms: wait.as_millis() as u64,
        };
        self.peers
            .reach(cage, |c| c.message(request, wait + Duration::from_secs(5)))?
    }
}

/// Writes a host answer into the module's slot: `Ok` bytes or a JSON error.
///
/// # Safety
/// `out` must be writable; the module frees it with the host's `free`.
unsafe fn answer(
    out: *mut OwnedBytes,
    result: std::thread::Result<Result<Vec<u8>, CallError>>,
) -> u32 {
    let (status, bytes) = match result {
        Ok(Ok(bytes)) => (abi::status::OK, bytes),
        Ok(Err(e)) => (
            abi::status::ERROR,
            serde_json::to_vec(&e).unwrap_or_default(),
        ),
        Err(_) => (
            abi::status::ERROR,
            serde_json::to_vec(&CallError::with_kind(
                ErrorKind::Internal,
                "the cage failed while serving the module",
            ))
            .unwrap_or_default(),
        ),
    };
    // SAFETY: guaranteed by the caller.
    unsafe { out.write(OwnedBytes::from_vec(bytes)) };
    status
}

/// # Safety
/// As the ABI's `HostSendFn`.
unsafe extern "C" fn host_send(
    data: *const c_void,
    target: Bytes,
    port: Bytes,
    message: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the running call; the views are live.
        let (scope, target, port, message) = unsafe {
            (
                &*(data as *const CallScope),
                target.as_slice(),
                port.as_slice(),
                message.as_slice(),
            )
        };
        let target = String::from_utf8_lossy(target);
        let port = String::from_utf8_lossy(port);
        tracing::debug!(from = %scope.env.mailboxes.id(scope.invocation), to = %target, port = %port, "message sent");
        scope
            .env
            .send_message(
                &target,
                &port,
                message.to_vec(),
                Duration::from_millis(timeout_ms),
            )
            .map(|()| Vec::new())
    }));
    // SAFETY: the module passes a writable slot.
    unsafe { answer(out, result) }
}

/// # Safety
/// As the ABI's `HostReceiveFn`.
unsafe extern "C" fn host_receive(
    data: *const c_void,
    ports: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the running call; the view is live.
        let (scope, ports) = unsafe { (&*(data as *const CallScope), ports.as_slice()) };
        let ports: Vec<String> = ports
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        let timeout = (timeout_ms != u64::MAX).then(|| Duration::from_millis(timeout_ms));
        let got = scope
            .env
            .mailboxes
            .receive(scope.invocation, &ports, timeout)?;
        let mut bytes = got.port.into_bytes();
        bytes.push(0);
        bytes.extend_from_slice(&got.message);
        Ok(bytes)
    }));
    // SAFETY: the module passes a writable slot.
    unsafe { answer(out, result) }
}

/// Serves a host callback whose request is JSON and whose answer is an id (a JSON string).
///
/// # Safety
/// `data` is a running call's scope, `request` a live view, `out` writable.
unsafe fn json_callback<R: serde::de::DeserializeOwned>(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
    what: &str,
    serve: impl FnOnce(&CallScope, R) -> Result<String, CallError>,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the call that is running this callback.
        let scope = unsafe { &*(data as *const CallScope) };
        // SAFETY: the module passes a live view.
        let request: R = serde_json::from_slice(unsafe { request.as_slice() })
            .map_err(|e| CallError::bad_arguments(format!("{what}: {e}")))?;
        serve(scope, request).map(|id| serde_json::to_vec(&id).unwrap_or_default())
    }));
    // SAFETY: the module passes a writable slot and frees it with our `free`.
    unsafe { answer(out, result) }
}
