//! A job as the cage stores it and the wire carries it: when it runs, what it calls, what a
//! missed run does. Which runs are due is decided in `jobs`.

use crate::model::clock;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// When a job runs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Once, at this time (ms since the epoch).
    Once {
        /// When.
        at_ms: u64,
    },
    /// Every `interval_ms`, the first run at `first_ms`.
    Every {
        /// Time between runs.
        interval_ms: u64,
        /// The first run.
        first_ms: u64,
    },
}

/// What a recurring job does about runs missed while the cage was down.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run once for all the missed ticks.
    #[default]
    Once,
    /// Run every missed tick.
    All,
    /// Run none of them; wait for the next tick.
    Skip,
}

/// Most missed runs `catch_up = "all"` fires at once.
pub const CATCH_UP_LIMIT: usize = 1000;

/// A job as stored.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Job {
    /// Job id.
    pub id: String,
    /// Cage that executes its runs.
    pub cage: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments of every run.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Queue the runs go through.
    pub queue: String,
    /// When it runs.
    pub schedule: Schedule,
    /// What to do about missed runs.
    pub catch_up: CatchUp,
    /// Declared in the cage file (reconciled with it) rather than added by a command.
    pub declared: bool,
    /// When the next run is due; `None` once a one-shot job has run.
    pub next_run_ms: Option<u64>,
    /// The latest run fired.
    pub last_run: Option<LastRun>,
}

/// A fired run of a job.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct LastRun {
    /// The time it was scheduled for.
    pub scheduled_ms: u64,
    /// The queued call carrying it.
    pub call_id: String,
    /// How it ended, once known ("done", or the error).
    pub outcome: Option<String>,
}

impl Schedule {
    /// The schedule in words, for tables and logs (total: any stored time renders).
    pub fn words(&self) -> String {
        match self {
            Schedule::Once { at_ms } => format!("once at {}", clock::utc(*at_ms)),
            Schedule::Every { interval_ms, .. } => {
                format!("every {}", clock::span(Duration::from_millis(*interval_ms)))
            }
        }
    }

    /// The first run of this schedule, refused if it lies beyond [`clock::HORIZON`] from
    /// `now_ms` (an interval longer than the horizon puts every run beyond it too).
    pub fn first_run_within_horizon(&self, now_ms: u64) -> Result<u64, clock::BeyondHorizon> {
        match *self {
            Schedule::Once { at_ms } => clock::within_horizon("the run time", at_ms, now_ms),
            Schedule::Every {
                interval_ms,
                first_ms,
            } => {
                clock::span_within_horizon("interval", Duration::from_millis(interval_ms))?;
                clock::within_horizon("the first run", first_ms, now_ms)
            }
        }
    }
}

impl Job {
    /// Identity of what the job does: two recurring jobs with one signature are one job twice.
    pub fn signature(&self) -> String {
        let args = serde_json::from_slice::<serde_json::Value>(&self.args)
            .map(|v| v.to_string())
            .unwrap_or_default();
        format!("{} {}.{} {}", self.cage, self.module, self.method, args)
    }

    /// Whether the job recurs.
    pub fn recurring(&self) -> bool {
        matches!(self.schedule, Schedule::Every { .. })
    }
}
