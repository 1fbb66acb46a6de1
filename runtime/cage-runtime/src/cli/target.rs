//! Resolving what a command addresses: a cage's route and a `MODULE.METHOD` target.

use super::exit;
use cage_runtime::config::{CageRoute, ConfigError, Site};
use cage_runtime::discovery::{self, Finder, LookupError};
use cage_sdk::ErrorKind;
use std::process::ExitCode;

/// Splits `MODULE.METHOD`, or says what is wrong with it.
pub fn parse(target: &str) -> Result<(&str, &str), String> {
    target
        .split_once('.')
        .filter(|(m, f)| !m.is_empty() && !f.is_empty())
        .ok_or_else(|| format!("target {target:?} is not MODULE.METHOD (e.g. echo.shout)"))
}

/// Splits `MODULE.METHOD`, or fails with the bad-arguments exit code.
pub fn split(target: &str) -> Result<(&str, &str), ExitCode> {
    parse(target).map_err(|e| exit::fail(exit::for_kind(ErrorKind::BadArguments), e))
}

/// How to reach `cage`: the site's entries, else discovery; or fails with the unknown-cage
/// or config exit code.
pub fn route(site: &Site, cage: &str) -> Result<CageRoute, ExitCode> {
    let execute_on = site.execute_on().map_err(|e| exit::fail(exit::CONFIG, e))?;
    discovery::route(site, &execute_on, &Finder::new(), cage)
        .map(|found| found.route)
        .map_err(|e| match e {
            LookupError::Unknown { .. } | LookupError::Config(ConfigError::NoSuchCage { .. }) => {
                exit::fail(exit::for_kind(ErrorKind::UnknownCage), e)
            }
            LookupError::Config(e) => exit::fail(exit::CONFIG, e),
        })
}
