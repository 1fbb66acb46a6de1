//! [`Ctx`]: a module's view of the cage during one call.

use crate::abi::{self, Bytes, HostContext, OwnedBytes};
use crate::error::{CallError, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::mem::offset_of;
use std::time::Duration;

/// Splits `target` into module and method and encodes `args`, for requests to `cage`.
fn request_parts<A: Serialize>(
    cage: &str,
    target: &str,
    args: &A,
) -> Result<(String, String, serde_json::Value), CallError> {
    let (module, method) = target.split_once('.').ok_or_else(|| {
        CallError::bad_arguments(format!("target {target:?} is not MODULE.METHOD"))
    })?;
    let args = serde_json::to_value(args).map_err(|e| {
        CallError::bad_arguments(format!("cannot encode arguments for {cage} {target}: {e}"))
    })?;
    Ok((module.to_owned(), method.to_owned(), args))
}

/// How [`Ctx::enqueue_with`] queues a call.
#[derive(Debug, Clone)]
pub struct EnqueueOptions {
    /// Queue whose retry policy applies (`"retry"` by default).
    pub queue: String,
    /// Among due calls of a queue, higher runs first.
    pub priority: i32,
    /// Idempotency key: a second call with the same key is taken as the first.
    pub key: Option<String>,
    /// Group within the queue (a customer, a tenant): what `group_concurrency`,
    /// `group_rate_limit` and round-robin dispatch count by.
    pub group: Option<String>,
}

impl Default for EnqueueOptions {
    fn default() -> Self {
        EnqueueOptions {
            queue: "retry".to_owned(),
            priority: 0,
            key: None,
            group: None,
        }
    }
}

/// The JSON request behind the host's `enqueue` callback.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct EnqueueRequest {
    /// Cage that executes the call.
    pub cage: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// Arguments.
    pub args: serde_json::Value,
    /// Queue.
    pub queue: String,
    /// Priority.
    pub priority: i32,
    /// Idempotency key.
    pub key: Option<String>,
    /// Group within the queue.
    #[serde(default)]
    pub group: Option<String>,
}

/// When a job added with [`Ctx::add_job`] runs.
#[derive(Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobWhen {
    /// Once, this many milliseconds from now.
    InMs(u64),
    /// Every this many milliseconds; a recurring job with the same target and arguments is
    /// replaced.
    EveryMs(u64),
}

/// The JSON request behind the host's `add_job` callback.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq)]
pub struct JobRequest {
    /// Cage that stores and runs the job.
    pub cage: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// Arguments.
    pub args: serde_json::Value,
    /// When.
    pub when: JobWhen,
}

/// Severity of a log line sent through [`Ctx::log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum LogLevel {
    /// Something failed.
    Error = 1,
    /// Something looks wrong.
    Warn = 2,
    /// Normal operation worth telling.
    Info = 3,
    /// Detail for debugging.
    Debug = 4,
    /// Very fine detail.
    Trace = 5,
}

/// The host during one call: identity of the call, logging, and calls to other cages.
///
/// A `Ctx` is only valid inside the method it was handed to; it is neither `Send` nor `Clone`.
pub struct Ctx {
    host: *const HostContext,
}

impl Ctx {
    /// Wraps the host context of the current call.
    ///
    /// # Safety
    /// `host` must point at a live [`HostContext`] for as long as the `Ctx` is used.
    pub unsafe fn from_raw(host: *const HostContext) -> Self {
        Ctx { host }
    }

    pub(crate) fn host(&self) -> &HostContext {
        // SAFETY: `from_raw`'s contract keeps the context alive during the call.
        unsafe { &*self.host }
    }

    pub(crate) fn has_field(&self, end_of_field: usize) -> bool {
        self.host().size as usize >= end_of_field
    }

    fn text(&self, b: Bytes) -> &str {
        // SAFETY: the host keeps these strings alive for the call and writes them as UTF-8.
        std::str::from_utf8(unsafe { b.as_slice() }).unwrap_or("")
    }

    /// Name of the cage running this call.
    pub fn cage(&self) -> &str {
        self.text(self.host().cage)
    }

    /// Name of the module being called.
    pub fn module(&self) -> &str {
        self.text(self.host().module)
    }

    /// Name of the method being called.
    pub fn method(&self) -> &str {
        self.text(self.host().method)
    }

    /// Id of this call, as it appears in the cage's logs and errors.
    pub fn call_id(&self) -> &str {
        self.text(self.host().call_id)
    }

    /// Attempt number of this call: 1 for a sync call or a queued call's first attempt, then 2, 3…
    /// A module whose effects must happen once can key them on `(call_id, attempt)`.
    pub fn attempt(&self) -> u32 {
        if self.has_field(offset_of!(HostContext, attempt) + size_of::<u32>()) {
            self.host().attempt
        } else {
            1
        }
    }

    /// Queues `target` (`"module.method"`) on `cage` with `args` in the default queue; returns
    /// the call id once the call is durable. It runs later, retried on failure.
    pub fn enqueue<A: Serialize>(
        &self,
        cage: &str,
        target: &str,
        args: &A,
    ) -> Result<String, CallError> {
        self.enqueue_with(cage, target, args, EnqueueOptions::default())
    }

    /// [`Ctx::enqueue`] with a queue, priority and idempotency key.
    pub fn enqueue_with<A: Serialize>(
        &self,
        cage: &str,
        target: &str,
        args: &A,
        options: EnqueueOptions,
    ) -> Result<String, CallError> {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, enqueue) + size_of::<abi::HostEnqueueFn>()) {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer queued calls to modules",
            ));
        }
        let (module, method, args) = request_parts(cage, target, args)?;
        let request = EnqueueRequest {
            cage: cage.to_owned(),
            module,
            method,
            args,
            queue: options.queue,
            priority: options.priority,
            key: options.key,
            group: options.group,
        };
        self.json_request(host.enqueue, &request)
    }

    /// Adds a job on `cage` calling `target` (`"module.method"`) with `args`: once after `delay`,
    /// or, with `every`, at that interval from one interval from now. Returns the job id once
    /// the job is stored.
    pub fn add_job<A: Serialize>(
        &self,
        cage: &str,
        target: &str,
        args: &A,
        when: JobWhen,
    ) -> Result<String, CallError> {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, add_job) + size_of::<abi::HostJobFn>()) {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer jobs to modules",
            ));
        }
        let (module, method, args) = request_parts(cage, target, args)?;
        self.json_request(
            host.add_job,
            &JobRequest {
                cage: cage.to_owned(),
                module,
                method,
                args,
                when,
            },
        )
    }

    /// Sends a JSON request through a host callback that answers an id as a JSON string.
    fn json_request<R: Serialize>(
        &self,
        callback: abi::HostEnqueueFn,
        request: &R,
    ) -> Result<String, CallError> {
        let host = self.host();
        let request = serde_json::to_vec(request)
            .map_err(|e| CallError::with_kind(ErrorKind::Internal, e.to_string()))?;
        let mut out = OwnedBytes::empty();
        // SAFETY: the callback and views are valid for the call; `out` is written by the host.
        let status = unsafe { callback(host.data, Bytes::from_slice(&request), &mut out) };
        let bytes = self.finish(status, out)?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CallError::with_kind(ErrorKind::Internal, e.to_string()))
    }

    /// Id of this invocation (`CAGE/N`); pass it to children so they can send messages back.
    pub fn invocation_id(&self) -> &str {
        if self.has_field(offset_of!(HostContext, invocation_id) + size_of::<Bytes>()) {
            self.text(self.host().invocation_id)
        } else {
            ""
        }
    }

    /// Hands `message` to a receiver waiting on `port` of invocation `target`; returns once it
    /// has been handed over. Fails at once if the target has finished or never existed, and
    /// with a timeout if no receiver appears within the cage's `port_wait` (or `timeout`).
    pub fn send_message(
        &self,
        target: &str,
        port: &str,
        message: &[u8],
        timeout: Duration,
    ) -> Result<(), CallError> {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, send_message) + size_of::<abi::HostSendFn>()) {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer messages",
            ));
        }
        let mut out = OwnedBytes::empty();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: callback and views valid for the call; `out` is written by the host.
        let status = unsafe {
            (host.send_message)(
                host.data,
                Bytes::from_slice(target.as_bytes()),
                Bytes::from_slice(port.as_bytes()),
                Bytes::from_slice(message),
                timeout_ms,
                &mut out,
            )
        };
        self.finish(status, out).map(drop)
    }

    /// Waits for one message on `port` (forever with `None`); a timeout is a
    /// [`ErrorKind::ReceiveTimeout`] error.
    pub fn receive_message(
        &self,
        port: &str,
        timeout: Option<Duration>,
    ) -> Result<Vec<u8>, CallError> {
        self.receive_any(&[port], timeout).map(|(_, m)| m)
    }

    /// Waits for one message on any of `ports`; returns the port it came through and the message.
    pub fn receive_any(
        &self,
        ports: &[&str],
        timeout: Option<Duration>,
    ) -> Result<(String, Vec<u8>), CallError> {
        let host = self.host();
        if !self
            .has_field(offset_of!(HostContext, receive_message) + size_of::<abi::HostReceiveFn>())
        {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer messages",
            ));
        }
        if ports.iter().any(|p| p.contains('\0')) {
            return Err(CallError::bad_arguments("port names cannot contain NUL"));
        }
        let joined = ports.join("\0");
        let timeout_ms = timeout.map_or(u64::MAX, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX - 1)
        });
        let mut out = OwnedBytes::empty();
        // SAFETY: callback and views valid for the call; `out` is written by the host.
        let status = unsafe {
            (host.receive_message)(
                host.data,
                Bytes::from_slice(joined.as_bytes()),
                timeout_ms,
                &mut out,
            )
        };
        let bytes = self.finish(status, out)?;
        let split = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        let port = String::from_utf8_lossy(&bytes[..split]).into_owned();
        Ok((port, bytes.get(split + 1..).unwrap_or_default().to_vec()))
    }

    /// The module's key-value state in its cage. Writes made during a call take effect only if
    /// the call succeeds, atomically with its completion, so a queued call retried or delivered
    /// again never applies them twice; calls of one module that use state run one at a time.
    pub fn state(&self) -> State<'_> {
        State { ctx: self }
    }

    /// A command for a child process that can act as this invocation through the cage's HTTP
    /// API: its environment carries `CAGE_API`, `CAGE_INVOCATION_ID`, `CAGE_TOKEN` and a
    /// `PYTHONPATH` entry for the Python client `cage_connection`.
    pub fn child_command(&self, program: impl AsRef<std::ffi::OsStr>) -> std::process::Command {
        let mut command = std::process::Command::new(program);
        if self.has_field(offset_of!(HostContext, client_path) + size_of::<Bytes>()) {
            let host = self.host();
            let client_path = self.text(host.client_path);
            let python_path = match std::env::var_os("PYTHONPATH") {
                Some(existing) if !existing.is_empty() => {
                    let mut p = std::ffi::OsString::from(client_path);
                    p.push(":");
                    p.push(existing);
                    p
                }
                _ => std::ffi::OsString::from(client_path),
            };
            command
                .env("CAGE_API", self.text(host.api_url))
                .env("CAGE_INVOCATION_ID", self.invocation_id())
                .env("CAGE_TOKEN", self.text(host.api_token))
                .env("PYTHONPATH", python_path);
        }
        command
    }

    /// Reads a host answer, gives its buffer back, and turns a failure status into its error.
    pub(crate) fn finish(&self, status: u32, out: OwnedBytes) -> Result<Vec<u8>, CallError> {
        let host = self.host();
        // SAFETY: `out` was filled by the host and is read before being handed back to it.
        let bytes = unsafe { out.as_slice() }.to_vec();
        // SAFETY: the host allocated `out`; only its own `free` may release it.
        unsafe { (host.free)(out) };
        if status == abi::status::OK {
            Ok(bytes)
        } else {
            Err(serde_json::from_slice(&bytes).unwrap_or_else(|_| {
                CallError::with_kind(
                    ErrorKind::Internal,
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            }))
        }
    }

    /// Logs `message` through the cage's logger, tagged with this call.
    pub fn log(&self, level: LogLevel, message: &str) {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, log) + size_of::<abi::HostLogFn>()) {
            return;
        }
        // SAFETY: the host provided this callback for the duration of the call.
        unsafe {
            (host.log)(
                host.data,
                level as u32,
                Bytes::from_slice(message.as_bytes()),
            )
        }
    }

    /// Logs at info level.
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message)
    }

    /// Logs at warn level.
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message)
    }

    /// Logs at error level.
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message)
    }

    /// Calls `target` (`"module.method"`) on `cage` synchronously and decodes its result.
    pub fn call<A: Serialize, R: DeserializeOwned>(
        &self,
        cage: &str,
        target: &str,
        args: &A,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let args = serde_json::to_vec(args).map_err(|e| {
            CallError::bad_arguments(format!("cannot encode arguments for {cage} {target}: {e}"))
        })?;
        let result = self.call_json(cage, target, &args, timeout)?;
        serde_json::from_slice(&result).map_err(|e| {
            CallError::with_kind(
                ErrorKind::Internal,
                format!("result of {cage} {target} does not decode: {e}"),
            )
        })
    }

    /// Calls `target` on `cage` with raw JSON arguments and returns the raw JSON result.
    pub fn call_json(
        &self,
        cage: &str,
        target: &str,
        args: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, CallError> {
        let host = self.host();
        if !self.has_field(offset_of!(HostContext, free) + size_of::<abi::FreeFn>()) {
            return Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer calls to modules",
            ));
        }
        let mut out = OwnedBytes::empty();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: callbacks and strings are valid for the call; `out` is written by the host.
        let status = unsafe {
            (host.call)(
                host.data,
                Bytes::from_slice(cage.as_bytes()),
                Bytes::from_slice(target.as_bytes()),
                Bytes::from_slice(args),
                timeout_ms,
                &mut out,
            )
        };
        self.finish(status, out)
    }
}

/// A module's key-value state, from [`Ctx::state`].
pub struct State<'a> {
    ctx: &'a Ctx,
}

impl State<'_> {
    fn available(&self) -> Result<&HostContext, CallError> {
        if self
            .ctx
            .has_field(offset_of!(HostContext, state_put) + size_of::<abi::HostStatePutFn>())
        {
            Ok(self.ctx.host())
        } else {
            Err(CallError::with_kind(
                ErrorKind::Internal,
                "this cage does not offer module state",
            ))
        }
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CallError> {
        let host = self.available()?;
        let mut out = OwnedBytes::empty();
        // SAFETY: callback and views valid for the call; `out` is written by the host.
        let status =
            unsafe { (host.state_get)(host.data, Bytes::from_slice(key.as_bytes()), &mut out) };
        let bytes = self.ctx.finish(status, out)?;
        Ok(match bytes.split_first() {
            Some((1, value)) => Some(value.to_vec()),
            _ => None,
        })
    }

    fn write(&self, key: &str, value: Option<&[u8]>) -> Result<(), CallError> {
        let host = self.available()?;
        let mut out = OwnedBytes::empty();
        let (value, present) = match value {
            Some(v) => (Bytes::from_slice(v), 1),
            None => (Bytes::from_slice(&[]), 0),
        };
        // SAFETY: callback and views valid for the call; `out` is written by the host.
        let status = unsafe {
            (host.state_put)(
                host.data,
                Bytes::from_slice(key.as_bytes()),
                value,
                present,
                &mut out,
            )
        };
        self.ctx.finish(status, out).map(drop)
    }

    /// Sets `key` to `value` (when the call succeeds).
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(), CallError> {
        self.write(key, Some(value))
    }

    /// Deletes `key` (when the call succeeds).
    pub fn delete(&self, key: &str) -> Result<(), CallError> {
        self.write(key, None)
    }

    /// The value of `key` decoded from JSON, if set.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CallError> {
        match self.get(key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CallError::with_kind(
                    ErrorKind::Internal,
                    format!("state {key:?} does not decode: {e}"),
                )
            }),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value` encoded as JSON (when the call succeeds).
    pub fn put_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), CallError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| CallError::bad_arguments(format!("state {key:?}: {e}")))?;
        self.put(key, &bytes)
    }
}
