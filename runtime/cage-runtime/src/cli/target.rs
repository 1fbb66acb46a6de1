//! Resolving what a command addresses: a cage's route and a `MODULE.METHOD` target; every
//! name is checked ([`cage_runtime::names`]) before anything is looked up or sent.

use super::exit;
use cage_runtime::config::{CageRoute, ConfigError, Site};
use cage_runtime::discovery::LookupError;
use cage_runtime::names::{self, NameKind};
use cage_runtime::peers::Peers;
use cage_sdk::ErrorKind;
use std::process::ExitCode;

/// Splits `MODULE.METHOD` and checks both names, or says what is wrong with it.
pub fn parse(target: &str) -> Result<(&str, &str), String> {
    let (module, method) = target
        .split_once('.')
        .filter(|(m, f)| !m.is_empty() && !f.is_empty())
        .ok_or_else(|| format!("target {target:?} is not MODULE.METHOD (e.g. echo.shout)"))?;
    names::check(NameKind::Module, module)
        .and_then(|()| names::check(NameKind::Method, method))
        .map_err(|e| format!("target {target:?}: {e}"))?;
    Ok((module, method))
}

/// Splits `MODULE.METHOD`, or fails with the bad-arguments exit code.
pub fn split(target: &str) -> Result<(&str, &str), ExitCode> {
    parse(target).map_err(bad_arguments)
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

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn targets_split_and_their_names_are_checked() {
        assert_eq!(parse("echo.shout"), Ok(("echo", "shout")));
        assert_eq!(parse("echo.v2.shout"), Ok(("echo", "v2.shout")));
        for bad in ["echo", ".shout", "echo.", "../evil.x", "echo.../x", "e\0.x"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let e = parse("../evil.x").unwrap_err();
        assert!(
            e.contains("\"..\" is not a module name") || e.contains("is not MODULE.METHOD"),
            "{e}"
        );
        let e = parse("echo.sh/out").unwrap_err();
        assert!(e.contains("\"sh/out\" is not a method name"), "{e}");
    }
}
