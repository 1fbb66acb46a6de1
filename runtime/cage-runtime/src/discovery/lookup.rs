//! Where a cage is: the site's static entries first (`[cages.NAME]`, then `cages/NAME.toml`),
//! discovery only for a cage neither lists, and what to do when a found cage cannot be reached.

use super::error::LookupError;
use super::finder::Finder;
use crate::config::{valid_name, CageRoute, ConfigError, ExecuteOn, Site, EXECUTE_ON_FILE};
use crate::transport::client::ClientError;
use cage_sdk::{CallError, ErrorKind};

/// How a cage's route was learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Known {
    /// Its `[cages.NAME]` entry in `config/config_execute_on.toml`.
    Config,
    /// Its cage file `cages/NAME.toml` in the site.
    CageFile,
    /// A discovery answer.
    Discovered,
}

impl Known {
    /// How operators read it.
    pub fn label(self) -> &'static str {
        match self {
            Known::Config => "config",
            Known::CageFile => "cage file",
            Known::Discovered => "discovered",
        }
    }
}

/// A route to a cage and how it was learnt.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// How to reach it.
    pub route: CageRoute,
    /// Where the route came from.
    pub known: Known,
}

/// How to reach `name`: a static entry always wins; `finder` is asked only when the site has
/// neither `[cages.NAME]` nor `cages/NAME.toml`.
pub fn route(
    site: &Site,
    execute_on: &ExecuteOn,
    finder: &Finder,
    name: &str,
) -> Result<Found, LookupError> {
    if let Some(route) = execute_on.cages.get(name) {
        return Ok(Found {
            route: route.clone(),
            known: Known::Config,
        });
    }
    match site.route(execute_on, name) {
        Ok(route) => Ok(Found {
            route,
            known: Known::CageFile,
        }),
        Err(ConfigError::NoSuchCage { path, .. }) if valid_name(name) => {
            match finder.find(&execute_on.unknown, name) {
                Ok(route) => Ok(Found {
                    route,
                    known: Known::Discovered,
                }),
                Err(cause) => Err(LookupError::Unknown {
                    name: name.to_owned(),
                    config: site.root().join(EXECUTE_ON_FILE),
                    cage_file: path,
                    cause,
                }),
            }
        }
        Err(e) => Err(LookupError::Config(e)),
    }
}

/// After `error` on a connection to `cage` by `found`: a discovered cage that was unreachable
/// where it was found is forgotten, so the next attempt asks where it is now.
pub fn note_failure(finder: &Finder, cage: &str, found: &Found, error: &ClientError) {
    if found.known == Known::Discovered && matches!(error, ClientError::Unreachable { .. }) {
        finder.forget(cage);
    }
}

impl LookupError {
    /// The call error a caller sees: the cage is unknown, and why (or its name is no name).
    pub fn into_call_error(self) -> CallError {
        let kind = match self {
            LookupError::Config(ConfigError::BadName(_)) => ErrorKind::BadArguments,
            _ => ErrorKind::UnknownCage,
        };
        CallError::with_kind(kind, self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Discovery;

    fn site_with(
        cage_file: Option<&str>,
        execute_on: &str,
    ) -> (tempfile::TempDir, Site, ExecuteOn) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cages")).unwrap();
        if let Some(body) = cage_file {
            std::fs::write(dir.path().join("cages/c.toml"), body).unwrap();
        }
        let site = Site::new(dir.path());
        let e = ExecuteOn::parse(std::path::Path::new(EXECUTE_ON_FILE), execute_on).unwrap();
        (dir, site, e)
    }

    #[test]
    fn static_entries_win_and_say_where_they_came_from() {
        let finder = Finder::new();
        let (_d, site, e) = site_with(
            Some("listen = \"127.0.0.1:7401\"\n"),
            "[cages.c]\naddresses = [\"127.0.0.9:1\"]\n",
        );
        assert_eq!(route(&site, &e, &finder, "c").unwrap().known, Known::Config);
        let (_d, site, e) = site_with(Some("listen = \"127.0.0.1:7401\"\n"), "");
        assert_eq!(
            route(&site, &e, &finder, "c").unwrap().known,
            Known::CageFile
        );
    }

    #[test]
    fn an_unknown_cage_with_discovery_off_names_every_place_looked() {
        let finder = Finder::new();
        let (_d, site, e) = site_with(None, "[cages.unknown]\ndiscovery = \"off\"\n");
        assert_eq!(e.unknown.discovery, Discovery::Off);
        let err = route(&site, &e, &finder, "c").unwrap_err().to_string();
        assert!(
            err.starts_with("no cage named \"c\": no [cages.c] entry in ")
                && err.contains("config/config_execute_on.toml")
                && err.contains("cages/c.toml")
                && err.contains("discovery is off"),
            "{err}"
        );
        assert!(!finder.seen("c"), "a name never found is not known");
        // Not a name at all: refused as a name, nothing asked.
        let err = route(&site, &e, &finder, "a/b").unwrap_err();
        assert!(
            matches!(err, LookupError::Config(ConfigError::BadName(_))),
            "{err}"
        );
    }

    #[test]
    fn only_a_discovered_cage_that_was_unreachable_is_forgotten() {
        let addr: std::net::SocketAddr = "127.0.0.3:9".parse().unwrap();
        let unreachable = ClientError::Unreachable {
            cage: "c".into(),
            addresses: addr.to_string(),
            reason: "refused".into(),
        };
        let timeout = ClientError::Timeout {
            cage: "c".into(),
            after: std::time::Duration::from_secs(1),
        };
        let found = |known| Found {
            route: CageRoute::single(addr, std::time::Duration::from_secs(1)),
            known,
        };
        let (_d, site, mut e) = site_with(None, "");
        e.unknown.discovery = Discovery::Off;
        let fresh = |finder: &Finder| route(&site, &e, finder, "c").is_ok();

        let finder = Finder::new();
        finder.remember("c", vec![addr]);
        note_failure(&finder, "c", &found(Known::CageFile), &unreachable);
        note_failure(&finder, "c", &found(Known::Discovered), &timeout);
        assert!(
            fresh(&finder),
            "kept: not discovered, or not a connect failure"
        );
        note_failure(&finder, "c", &found(Known::Discovered), &unreachable);
        assert!(!fresh(&finder), "forgotten: the next lookup asks again");
        assert!(
            finder.seen("c"),
            "but still a known name (calls for it may be queued)"
        );
    }
}
