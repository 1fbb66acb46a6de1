//! The cages lab: what measures and tortures cages from outside, as real processes.
//!
//! - [`bench`]: `cage bench`, one file per scenario (durable enqueue, e2e, RPC, retries,
//!   pending-call scale, burn-down of a backlog, latency under load, soak, idle CPU, hot
//!   reload, chains) and their report.
//! - [`chaos`]: `cage chaos`, a seeded workload under injected faults, checked against the
//!   invariants (nothing lost, nothing run twice).
//! - [`site`]: the site harness: a temporary site directory and the `cage run` processes on
//!   it, started, awaited and stopped one way (bench, chaos and the end-to-end tests use it).
//! - [`proxy`]: the fault proxy: forwards, delays, drops, truncates or cuts connections to a
//!   cage (the chaos suite and the end-to-end network tests use it).
//!
//! Nothing here is in a cage's request path: the lab starts cages and talks to them as a
//! client would.

pub mod bench;
pub mod chaos;

pub mod proxy;
pub mod site;

use std::path::PathBuf;

/// Why a lab run did not finish well.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A benchmark could not run or finish.
    #[error("bench: {0}")]
    Bench(String),
    /// The lab's own site could not be set up.
    #[error("{0}")]
    Setup(String),
    /// A chaos run stopped before its end.
    #[error("chaos run (seed {seed}) stopped: {why}; its site is kept at {}", site.display())]
    Stopped {
        /// The run's seed, to repeat it.
        seed: u64,
        /// What stopped it.
        why: String,
        /// The run's site, kept for its logs and data.
        site: PathBuf,
    },
    /// A chaos run broke an invariant (the report says which).
    #[error("invariants violated (seed {seed})")]
    Invariants {
        /// The run's seed, to repeat it.
        seed: u64,
    },
}
