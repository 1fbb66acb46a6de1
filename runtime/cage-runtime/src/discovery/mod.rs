//! Discovery: finding cages the site does not list, by asking the local network.
//!
//! A cage not under `[cages.NAME]` in `config/config_execute_on.toml` and without a
//! `cages/NAME.toml` in the site is looked for with a UDP query (multicast by default, or
//! broadcast) as `[cages.unknown]` says; every running cage of a site with discovery on
//! answers queries for its own name. Static entries always win: discovery is consulted only
//! for a name the site does not know.
//!
//! - [`wire`]: the datagrams (query, answer) and their pure encode and decode.
//! - [`responder`]: the answering side, one per running cage, started and stopped with it.
//! - [`finder`]: the asking side: one query, answers gathered until `query_timeout`, and a
//!   [`Finder`] that keeps each binding for `cache_for`.
//! - [`cache`]: when a binding is fresh, expired or forgotten (pure decisions).
//! - [`lookup`]: static entries first, then the finder; forgetting a binding that failed.
//! - [`error`]: why a cage was not found.
//!
//! A lookup's path: [`lookup::route`] → `Site::route` says no such cage → [`Finder::find`] →
//! a fresh cached binding, or a query → answers from every instance → a route whose TLS
//! setting is the asker's `[cages.unknown] tls` (never the answer's). A connect to it that
//! fails ([`lookup::note_failure`]) forgets the binding, so the next attempt asks again.

pub mod cache;
pub mod error;
pub mod finder;
pub mod lookup;
pub mod responder;
pub mod wire;

pub use error::{DiscoveryError, LookupError};
pub use finder::{find_all, Finder, Heard};
pub use lookup::{note_failure, route, Found, Known};
pub use responder::{Identity, Responder};
