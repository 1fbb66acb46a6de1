//! What frames carry: a request or response body tagged with the id that pairs them, so one
//! connection can carry many calls at once.

use cage_sdk::CallError;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A request and the id its response will carry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What is asked.
    pub body: Request,
}

/// What a client can ask of a cage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// Run a method now and return its result.
    Call(CallRequest),
    /// List the modules the cage serves.
    Modules,
    /// Say who you are.
    Ping,
}

/// A synchronous call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallRequest {
    /// Id of the call, for logs and errors.
    pub call_id: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments.
    pub args: Vec<u8>,
    /// Longest the caller will wait, in milliseconds (0: the cage's default).
    pub timeout_ms: u64,
}

/// A response and the id of the request it answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub body: Response,
}

/// A cage's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    /// The call's JSON result.
    Result(Vec<u8>),
    /// The call failed.
    Failed(CallFailure),
    /// The modules served.
    Modules(Vec<ModuleInfo>),
    /// Who the cage is.
    Pong(CageInfo),
}

/// A cage's identity, as answered to [`Request::Ping`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CageInfo {
    /// Cage name.
    pub cage: String,
    /// Runtime version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the cage started.
    pub uptime_secs: u64,
}

/// One served module, as `cage modules` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModuleInfo {
    /// Module name.
    pub name: String,
    /// The file it is served from.
    pub file: String,
    /// Loaded version, if any is loaded.
    pub version: Option<String>,
    /// Methods of the loaded version.
    pub methods: Vec<String>,
    /// SHA-256 of the loaded file.
    pub sha256: Option<String>,
    /// When the loaded version was loaded (ms since the epoch).
    pub loaded_at_ms: Option<u64>,
    /// Last load error, if the last attempt to load a file failed.
    pub last_error: Option<String>,
    /// When that error happened (ms since the epoch).
    pub last_error_at_ms: Option<u64>,
    /// Older versions still finishing calls.
    pub draining_versions: usize,
    /// Successful loads since the cage started.
    pub loads: u64,
}

/// Milliseconds since the epoch of `t`.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new call id for calls started by `origin` (a cage name, or `cli`): unique across restarts.
pub fn new_call_id(origin: &str) -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    format!("{origin}-{micros:x}-{n}")
}

/// A failed call with everything an operator needs to find it: cage, module, method, call id.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallFailure {
    /// Cage the call was addressed to.
    pub cage: String,
    /// Module called.
    pub module: String,
    /// Method called.
    pub method: String,
    /// Id of the call.
    pub call_id: String,
    /// What went wrong.
    pub error: CallError,
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cage {} {}.{} (call {}): {}",
            self.cage, self.module, self.method, self.call_id, self.error
        )
    }
}

impl std::error::Error for CallFailure {}
