//! `cage bench`: measure a running cage, one file per scenario.

mod chain;
mod e2e;
mod enqueue;
mod load;
mod pending;
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
    /// Durable enqueue rate (acknowledged = on disk) with 1 and with C concurrent clients,
    /// against the disk's raw fdatasync rate.
    Enqueue {
        /// The cage to enqueue into (the calls are due a day later and cancelled afterwards).
        cage: String,
        /// Calls per run.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Concurrent clients of the second run (the first has one).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queued calls from SOURCE to TARGET: first enqueue to last completion, calls/s.
    E2e {
        /// The cage that takes the enqueues.
        source: String,
        /// The cage that executes the calls.
        target: String,
        /// MODULE.METHOD of every call (called with null).
        #[arg(long, default_value = "echo.version")]
        call: String,
        /// Calls in all.
        #[arg(long, default_value_t = 20_000)]
        calls: usize,
        /// Concurrent enqueuing clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fill a cage with calls due in a week, then report queue bytes on disk and the cage's RSS.
    Pending {
        /// The cage to fill.
        cage: String,
        /// Calls to add.
        #[arg(long, default_value_t = 1_000_000)]
        calls: usize,
        /// Concurrent enqueuing clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Chain step overhead: chains of one and of STEPS steps, start to finish, local and (with
    /// --other) across cages, direct and queued.
    Chain {
        /// The cage that runs the chains.
        cage: String,
        /// A second cage serving the same step, for the across-cages rows.
        #[arg(long)]
        other: Option<String>,
        /// MODULE.METHOD of every step.
        #[arg(long, default_value = "orders.reserve")]
        step: String,
        /// Inputs of every chain.
        #[arg(long, default_value = "{\"qty\": 1}")]
        inputs: String,
        /// Steps of the long chains.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Chains timed per row.
        #[arg(long, default_value_t = 100)]
        chains: usize,
        /// Queue of the queued rows.
        #[arg(long, default_value = "retry")]
        queue: String,
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
        Scenario::Enqueue {
            cage,
            calls,
            clients,
            json,
        } => enqueue::enqueue(site, &cage, calls, &[1, clients.max(1)], json),
        Scenario::E2e {
            source,
            target,
            call,
            calls,
            clients,
            json,
        } => e2e::e2e(site, &source, &target, &call, calls, clients.max(1), json),
        Scenario::Pending {
            cage,
            calls,
            clients,
            json,
        } => pending::pending(site, &cage, calls, clients.max(1), json),
        Scenario::Chain {
            cage,
            other,
            step,
            inputs,
            steps,
            chains,
            queue,
            json,
        } => chain::chain(
            site,
            chain::ChainBench {
                cage: &cage,
                other: other.as_deref(),
                step: &step,
                inputs: &inputs,
                steps,
                chains: chains.max(1),
                queue: &queue,
                json,
            },
        ),
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
