//! [`CallError`]: what a method returns on failure, and the wire form of every call failure.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a call failed; each kind is one cause an operator or caller can act on.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The method ran and reported a failure.
    ModuleError,
    /// The arguments did not decode into the method's argument type.
    BadArguments,
    /// The module has no such method.
    UnknownMethod,
    /// The cage serves no such module (or it has not loaded).
    UnknownModule,
    /// No cage of that name is known.
    UnknownCage,
    /// The method panicked; the panic was caught inside the module.
    Panic,
    /// The call did not finish in time.
    Timeout,
    /// The target cage could not be reached.
    Unreachable,
    /// The target cage is shutting down or refused the request.
    Refused,
    /// A fault in the cage or protocol, not in the module.
    Internal,
    /// The module refuses the call for good: a queued call goes to dead letters, not retried.
    Permanent,
    /// A message's target invocation has already finished.
    InvocationFinished,
    /// A message's target invocation never existed (or is from before a restart).
    UnknownInvocation,
    /// No message arrived on the ports waited on in time.
    ReceiveTimeout,
    /// A child chain the call waited on failed.
    ChildFailed,
    /// The module's process died during the call (a signal, an abort, a stack overflow, an
    /// exit, out of memory): the message names how, and what it last wrote to stderr.
    Crashed,
}

impl ErrorKind {
    /// Short human name used in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ModuleError => "module error",
            ErrorKind::BadArguments => "bad arguments",
            ErrorKind::UnknownMethod => "unknown method",
            ErrorKind::UnknownModule => "unknown module",
            ErrorKind::UnknownCage => "unknown cage",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Unreachable => "cage unreachable",
            ErrorKind::Refused => "refused",
            ErrorKind::Internal => "internal error",
            ErrorKind::Permanent => "permanent rejection",
            ErrorKind::InvocationFinished => "invocation finished",
            ErrorKind::UnknownInvocation => "unknown invocation",
            ErrorKind::ReceiveTimeout => "receive timeout",
            ErrorKind::ChildFailed => "child chain failed",
            ErrorKind::Crashed => "module crash",
        }
    }
}

/// A failed call: its kind and a message meant for people.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// Why it failed.
    pub kind: ErrorKind,
    /// What happened, in words.
    pub message: String,
}

impl CallError {
    /// A failure reported by module code.
    pub fn new(message: impl Into<String>) -> Self {
        CallError {
            kind: ErrorKind::ModuleError,
            message: message.into(),
        }
    }

    /// A failure of the given kind.
    pub fn with_kind(kind: ErrorKind, message: impl Into<String>) -> Self {
        CallError {
            kind,
            message: message.into(),
        }
    }

    /// A refusal that no retry can change: a queued call moves straight to dead letters.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::Permanent, message)
    }

    /// Arguments that the method cannot accept.
    pub fn bad_arguments(message: impl Into<String>) -> Self {
        Self::with_kind(ErrorKind::BadArguments, message)
    }
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            // A panic message already reads "panic: …".
            ErrorKind::Panic => f.write_str(&self.message),
            kind => write!(f, "{}: {}", kind.as_str(), self.message),
        }
    }
}

impl std::error::Error for CallError {}

impl From<String> for CallError {
    fn from(message: String) -> Self {
        CallError::new(message)
    }
}

impl From<&str> for CallError {
    fn from(message: &str) -> Self {
        CallError::new(message)
    }
}
