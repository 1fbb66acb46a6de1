//! Why discovery found nothing, and why a cage could not be looked up at all.

use crate::config::ConfigError;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

/// Why discovery did not find a cage (or could not be asked).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The site turned discovery off.
    #[error("discovery is off ([cages.unknown] discovery = \"off\")")]
    Off,
    /// Nobody answered in time.
    #[error("no answer to discovery on {target} within {} (cluster {cluster:?})", humantime::format_duration(*timeout))]
    NoAnswer {
        /// Group or broadcast address asked.
        target: SocketAddrV4,
        /// How long answers were awaited.
        timeout: Duration,
        /// The cluster asked in.
        cluster: String,
    },
    /// A query could not be sent (or answers not read).
    #[error("cannot ask discovery on {target} ({step}): {source}")]
    Query {
        /// Group or broadcast address.
        target: SocketAddrV4,
        /// What was being done.
        step: &'static str,
        /// The socket error.
        source: std::io::Error,
    },
    /// A cage could not set up the socket it answers queries on.
    #[error("cannot answer discovery queries on {address} ({step}): {source}")]
    Listen {
        /// The group or broadcast address and port.
        address: SocketAddrV4,
        /// What was being done.
        step: String,
        /// The socket error.
        source: std::io::Error,
    },
}

/// Why a route to a cage could not be had.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A config file is wrong (or unreadable).
    #[error(transparent)]
    Config(ConfigError),
    /// Neither the site lists the cage nor did discovery find it; says each place looked.
    #[error("no cage named {name:?}: no [cages.{name}] entry in {}, no cage file {}, and {cause}", config.display(), cage_file.display())]
    Unknown {
        /// The cage asked for.
        name: String,
        /// The cluster map looked in.
        config: PathBuf,
        /// The cage file looked for.
        cage_file: PathBuf,
        /// What discovery said.
        cause: DiscoveryError,
    },
}
