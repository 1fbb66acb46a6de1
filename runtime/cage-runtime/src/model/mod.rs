//! The ground floor: plain types every layer shares and that import nothing above them.
//!
//! - [`clock`]: instants and spans (saturating arithmetic, total rendering, the horizon) and
//!   the [`clock::Clock`] that decisions read "now" from.
//! - [`ids`]: call ids.
//! - [`call`]: a queued call and its record (stage, attempts, due time).
//! - [`chain`]: a chain's record, its steps and step reports.
//! - [`job`]: a job's record and schedule.
//!
//! The store writes these records and the wire carries them; neither imports the other.

pub mod call;
pub mod chain;
pub mod clock;
pub mod ids;
pub mod job;
