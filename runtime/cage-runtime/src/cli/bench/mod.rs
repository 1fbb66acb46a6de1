//! `cage bench`: measure a running cage, one file per scenario.

mod reload;
mod rpc;

use cage_runtime::config::Site;
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum Scenario {
    /// Sync call latency (p50/p90/p99/p99.9) and calls/s against a running cage.
    Rpc {
        /// The cage to call.
        cage: String,
        /// MODULE.METHOD to call.
        #[arg(long, default_value = "echo.shout")]
        target: String,
        /// JSON arguments of every call.
        #[arg(long, default_value = "\"ping\"")]
        args: String,
        /// Calls in all, after warm-up.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Concurrent callers, each on its own connection.
        #[arg(long, default_value_t = 1)]
        clients: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Hot-reload latency: from dropping a new `.so` into modules/ to the first call it answers.
    Reload {
        /// The running cage (of this site) serving the module.
        cage: String,
        /// The module to swap.
        #[arg(long, default_value = "echo")]
        module: String,
        /// Two or more builds of the module, dropped in turn (they must differ).
        #[arg(long = "file", required = true, num_args = 1)]
        files: Vec<PathBuf>,
        /// MODULE.METHOD called once each swap is seen, timed as the first call on new code.
        #[arg(long, default_value = "echo.version")]
        call: String,
        /// Swaps to time.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one scenario.
pub fn bench(site: &Site, scenario: Scenario) -> ExitCode {
    match scenario {
        Scenario::Rpc {
            cage,
            target,
            args,
            calls,
            clients,
            json,
        } => rpc::rpc(site, &cage, &target, &args, calls, clients.max(1), json),
        Scenario::Reload {
            cage,
            module,
            files,
            call,
            rounds,
            json,
        } => reload::reload(site, &cage, &module, &files, &call, rounds.max(1), json),
    }
}

/// The `p` quantile (0 to 1) of sorted durations, in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}
