//! The C ABI between a cage and a module: versioned, `#[repr(C)]`, bytes and function pointers only.
//!
//! Nothing here is Rust-layout dependent, so a module built by another rustc still loads. Fields are
//! only ever appended; each struct carries its own size so either side can tell which fields the
//! other knows.

use std::ffi::c_void;

/// The ABI version this SDK speaks; a cage refuses a module whose descriptor says otherwise.
pub const ABI_VERSION: u32 = 1;

/// Name of the entry symbol a module exports for [`ABI_VERSION`].
pub const ENTRY_SYMBOL: &str = "cage_module_v1";

/// Prefix shared by the entry symbols of every ABI version, used to explain a version mismatch.
pub const ENTRY_SYMBOL_PREFIX: &str = "cage_module_v";

/// Status codes returned by [`CallFn`] and [`HostCallFn`]; the output buffer's meaning depends on them.
pub mod status {
    /// Success: the buffer holds the JSON result.
    pub const OK: u32 = 0;
    /// Failure: the buffer holds a JSON [`crate::CallError`].
    pub const ERROR: u32 = 1;
}

/// A borrowed byte string: valid for the duration of the call that hands it over.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// First byte; may be null when `len` is zero.
    pub ptr: *const u8,
    /// Number of bytes.
    pub len: usize,
}

// SAFETY: a `Bytes` is a read-only view; the ones stored in statics point at immutable 'static data.
unsafe impl Sync for Bytes {}
// SAFETY: as above, the view is read-only.
unsafe impl Send for Bytes {}

impl Bytes {
    /// A view of a static string, usable in `static` initialisers.
    pub const fn from_static(s: &'static str) -> Self {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// A view of a slice the caller keeps alive for as long as the view is used.
    pub fn from_slice(s: &[u8]) -> Self {
        Bytes {
            ptr: s.as_ptr(),
            len: s.len(),
        }
    }

    /// The viewed bytes.
    ///
    /// # Safety
    /// `ptr` must point at `len` readable bytes that outlive `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 || self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: guaranteed by the caller.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A byte buffer owned by the side that allocated it; the receiver hands it back to that side's
/// `free` function, never to its own allocator.
#[repr(C)]
#[derive(Debug)]
pub struct OwnedBytes {
    /// Start of the allocation (null for an empty buffer).
    pub ptr: *mut u8,
    /// Initialised length.
    pub len: usize,
    /// Allocated capacity.
    pub cap: usize,
}

impl OwnedBytes {
    /// An empty buffer that owns nothing.
    pub const fn empty() -> Self {
        OwnedBytes {
            ptr: std::ptr::null_mut(),
            len: 0,
            cap: 0,
        }
    }

    /// Gives up ownership of a vector so it can cross the boundary.
    pub fn from_vec(v: Vec<u8>) -> Self {
        let mut v = std::mem::ManuallyDrop::new(v);
        OwnedBytes {
            ptr: v.as_mut_ptr(),
            len: v.len(),
            cap: v.capacity(),
        }
    }

    /// Takes back a buffer made by [`OwnedBytes::from_vec`] in this same binary.
    ///
    /// # Safety
    /// The buffer must come from `from_vec` of this binary's allocator and not be used afterwards.
    pub unsafe fn into_vec(self) -> Vec<u8> {
        if self.ptr.is_null() {
            Vec::new()
        } else {
            // SAFETY: guaranteed by the caller: the parts come from a Vec of this allocator.
            unsafe { Vec::from_raw_parts(self.ptr, self.len, self.cap) }
        }
    }

    /// The buffer's bytes.
    ///
    /// # Safety
    /// The buffer must be live (not yet freed).
    pub unsafe fn as_slice(&self) -> &[u8] {
        if self.ptr.is_null() {
            &[]
        } else {
            // SAFETY: a live buffer holds `len` initialised bytes.
            unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
        }
    }
}

/// A module's method entry: runs `method` with JSON `args`, writes the result or a JSON
/// [`crate::CallError`] into `out`, and returns a [`status`] code. Never unwinds.
pub type CallFn = unsafe extern "C" fn(
    host: *const HostContext,
    method: Bytes,
    args: Bytes,
    out: *mut OwnedBytes,
) -> u32;

/// Frees a buffer allocated by the side that exports this function.
pub type FreeFn = unsafe extern "C" fn(buf: OwnedBytes);

/// Host callback: log `msg` at `level` (see [`crate::LogLevel`]) for the current call.
pub type HostLogFn = unsafe extern "C" fn(data: *const c_void, level: u32, msg: Bytes);

/// Host callback: synchronously call `target` (`module.method`) on `cage` with JSON `args`,
/// waiting at most `timeout_ms`; writes the result or a JSON error into `out` (host-allocated).
pub type HostCallFn = unsafe extern "C" fn(
    data: *const c_void,
    cage: Bytes,
    target: Bytes,
    args: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32;

/// Host callback: put a call into this cage's durable queue. `request` is a JSON
/// [`crate::ctx::EnqueueRequest`]; `out` receives the call id as a JSON string, or a JSON error.
pub type HostEnqueueFn =
    unsafe extern "C" fn(data: *const c_void, request: Bytes, out: *mut OwnedBytes) -> u32;

/// Host callback: add a job (a call at a time or an interval). `request` is a JSON
/// [`crate::ctx::JobRequest`]; `out` receives the job id as a JSON string, or a JSON error.
pub type HostJobFn =
    unsafe extern "C" fn(data: *const c_void, request: Bytes, out: *mut OwnedBytes) -> u32;

/// Host callback: hand `message` to a receiver on `port` of invocation `target` (`CAGE/N`),
/// waiting at most `timeout_ms`; `out` stays empty on success or receives a JSON error.
pub type HostSendFn = unsafe extern "C" fn(
    data: *const c_void,
    target: Bytes,
    port: Bytes,
    message: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32;

/// Host callback: wait up to `timeout_ms` (`u64::MAX`: forever) for a message on any of
/// `ports` (names separated by NUL bytes); `out` receives the port, a NUL byte and the message,
/// or a JSON error.
pub type HostReceiveFn = unsafe extern "C" fn(
    data: *const c_void,
    ports: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32;

/// Host callback: serve a chain request (JSON in, JSON out): start child chains, wait for them,
/// read their results, continue the current chain.
pub type HostChainFn =
    unsafe extern "C" fn(data: *const c_void, request: Bytes, out: *mut OwnedBytes) -> u32;

/// Host callback: read `key` of the calling module's state; `out` receives `1` and the value,
/// `0` when the key is absent, or a JSON error.
pub type HostStateGetFn =
    unsafe extern "C" fn(data: *const c_void, key: Bytes, out: *mut OwnedBytes) -> u32;

/// Host callback: set `key` to `value` (`present` = 1) or delete it (`present` = 0) in the
/// calling module's state. Writes take effect when the call succeeds, atomically with its
/// completion; `out` receives a JSON error on failure.
pub type HostStatePutFn = unsafe extern "C" fn(
    data: *const c_void,
    key: Bytes,
    value: Bytes,
    present: u32,
    out: *mut OwnedBytes,
) -> u32;

/// What a module exports through its entry symbol: identity, methods and its two functions.
#[repr(C)]
pub struct ModuleDescriptor {
    /// Must equal the host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<ModuleDescriptor>()` as the module saw it.
    pub descriptor_size: u32,
    /// Module name; must match the name the cage serves it under.
    pub name: Bytes,
    /// Module version, free-form (usually the crate version).
    pub version: Bytes,
    /// Method names, `method_count` of them.
    pub methods: *const Bytes,
    /// Number of entries in `methods`.
    pub method_count: usize,
    /// Runs one method.
    pub call: CallFn,
    /// Frees buffers returned by `call`.
    pub free: FreeFn,
}

// SAFETY: descriptors are immutable statics that point only at immutable 'static data.
unsafe impl Sync for ModuleDescriptor {}

/// Signature of the entry symbol [`ENTRY_SYMBOL`].
pub type EntryFn = unsafe extern "C" fn() -> *const ModuleDescriptor;

/// The host's side of one call: who is calling, and the callbacks a module may use.
///
/// Later ABI revisions append callbacks; a module checks `size` before touching a field.
#[repr(C)]
pub struct HostContext {
    /// The host's [`ABI_VERSION`].
    pub abi_version: u32,
    /// `size_of::<HostContext>()` as the host saw it.
    pub size: u32,
    /// Opaque host state for this call, passed back to every callback.
    pub data: *const c_void,
    /// Name of the cage running the call.
    pub cage: Bytes,
    /// Module being called.
    pub module: Bytes,
    /// Method being called.
    pub method: Bytes,
    /// Id of this call, for logs and error reports.
    pub call_id: Bytes,
    /// Logs through the cage's logger.
    pub log: HostLogFn,
    /// Calls another cage (or this one) synchronously.
    pub call: HostCallFn,
    /// Frees buffers the host returned through `call` and `enqueue`.
    pub free: FreeFn,
    /// Attempt number of this call: 1 for sync calls and first attempts of queued calls.
    pub attempt: u32,
    /// Puts a call into this cage's durable queue.
    pub enqueue: HostEnqueueFn,
    /// Adds a job.
    pub add_job: HostJobFn,
    /// Id of this invocation, `CAGE/N`: where other invocations send it messages.
    pub invocation_id: Bytes,
    /// Sends a message to another invocation.
    pub send_message: HostSendFn,
    /// Receives a message on one or more ports.
    pub receive_message: HostReceiveFn,
    /// Base URL of the cage's HTTP API, for processes the module starts.
    pub api_url: Bytes,
    /// Token that lets a process act as this invocation through the HTTP API while it runs.
    pub api_token: Bytes,
    /// Directory of the Python client (`cage_connection.py`), for `PYTHONPATH`.
    pub client_path: Bytes,
    /// Reads the module's state.
    pub state_get: HostStateGetFn,
    /// Writes the module's state (committed with the call's success).
    pub state_put: HostStatePutFn,
    /// Starts, waits on and reads chains of calls; continues the current chain.
    pub chain: HostChainFn,
}
