//! Resolving what a command addresses: a cage's route and a `MODULE.METHOD` target; every
//! name is checked ([`cage_runtime::names`]) before anything is looked up or sent.

use super::exit;
use cage_runtime::config::{CageRoute, ConfigError, Site};
use cage_runtime::discovery::LookupError;
use cage_runtime::names::{self, NameKind};
use cage_runtime::peers::Peers;
use cage_sdk::ErrorKind;
use std::process::ExitCode;

/// Splits `MODULE.METHOD`, or fails with the bad-arguments exit code.
pub fn split(target: &str) -> Result<(&str, &str), ExitCode> {
    names::split_target(target).map_err(bad_arguments)
}

/// Checks a cage name given on the command line, or fails with the bad-arguments exit code
/// (a name such as `../x` is refused as a name, never looked up as a file).
pub fn cage(name: &str) -> Result<(), ExitCode> {
    names::check(NameKind::Cage, name).map_err(bad_arguments)
}

/// Checks a queue name given on the command line, or fails with the bad-arguments exit code.
pub fn queue(name: &str) -> Result<(), ExitCode> {
    names::check(NameKind::Queue, name).map_err(bad_arguments)
}

/// Checks the group of a call to enqueue, or fails with the bad-arguments exit code.
pub fn group(name: &str) -> Result<(), ExitCode> {
    names::check(NameKind::Group, name).map_err(bad_arguments)
}

fn bad_arguments(e: impl std::fmt::Display) -> ExitCode {
    exit::fail(exit::for_kind(ErrorKind::BadArguments), e)
}

/// How to reach `cage`: the site's entries, else discovery; or fails with the bad-arguments,
/// unknown-cage or config exit code.
pub fn route(site: &Site, cage: &str) -> Result<CageRoute, ExitCode> {
    self::cage(cage)?;
    let execute_on = site.execute_on().map_err(|e| exit::fail(exit::CONFIG, e))?;
    Peers::new(site.clone(), execute_on)
        .find(cage)
        .map(|found| found.route)
        .map_err(|e| match e {
            LookupError::Unknown { .. } | LookupError::Config(ConfigError::NoSuchCage { .. }) => {
                exit::fail(exit::for_kind(ErrorKind::UnknownCage), e)
            }
            LookupError::Config(e @ ConfigError::BadName(_)) => bad_arguments(e),
            LookupError::Config(e) => exit::fail(exit::CONFIG, e),
        })
}
