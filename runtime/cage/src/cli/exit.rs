//! Exit codes of the `cage` command, one per kind of failure, so scripts can tell them apart.

use cage_sdk::ErrorKind;
use std::process::ExitCode;

/// A configuration file is wrong (the message names file, line and reason).
pub const CONFIG: u8 = 3;
/// The call id asked about is held by no cage.
pub const NOT_FOUND: u8 = 4;
/// Anything else that stopped the command.
pub const OTHER: u8 = 1;

/// The exit code for a failed call of `kind`.
pub fn for_kind(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::ModuleError => 10,
        ErrorKind::BadArguments => 11,
        ErrorKind::UnknownMethod => 12,
        ErrorKind::UnknownModule => 13,
        ErrorKind::UnknownCage => 14,
        ErrorKind::Panic => 15,
        ErrorKind::Timeout => 16,
        ErrorKind::Unreachable => 17,
        ErrorKind::Refused => 18,
        ErrorKind::Internal => 19,
        ErrorKind::Permanent => 20,
        ErrorKind::InvocationFinished => 21,
        ErrorKind::UnknownInvocation => 22,
        ErrorKind::ReceiveTimeout => 23,
        ErrorKind::ChildFailed => 24,
        ErrorKind::Crashed => 25,
    }
}

/// Prints `message` as an error on stderr and returns `code`.
pub fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(code)
}
