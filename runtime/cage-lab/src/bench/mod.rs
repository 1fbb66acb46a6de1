//! `cage bench`: measure cages, one file per scenario; without cage names a scenario starts
//! its own cages in a temporary site (`lab`), runs, reports (`report`) and cleans up.

mod chain;
mod e2e;
mod enqueue;
mod footprint;
mod isolation;
mod lab;
mod load;
mod pending;
mod reload;
mod report;
mod retry;
mod rpc;

use crate::LabError;
use cage_runtime::config::Site;
use clap::{Args, Subcommand};
use lab::Lab;
use report::Report;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Options every scenario takes.
#[derive(Args, Clone)]
pub struct Common {
    /// Calls per scenario (default: each scenario's own; `all` with --calls uses it for every
    /// scenario, e.g. a quick smoke run).
    #[arg(long)]
    calls: Option<usize>,
    /// Concurrent clients (default: each scenario's own).
    #[arg(long)]
    clients: Option<usize>,
    /// Directory holding libecho.so for the benchmark's own cages (default: the site's
    /// modules/, then beside the cage binary).
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The benchmark's own cages speak mutual TLS (a CA and key pairs made for the run).
    #[arg(long)]
    tls: bool,
}

impl Common {
    fn calls(&self, default: usize) -> usize {
        self.calls.unwrap_or(default).max(1)
    }
    fn clients(&self, default: usize) -> usize {
        self.clients.unwrap_or(default).max(1)
    }
}

/// Without cage names, a scenario starts its own two cages in a temporary site (see `lab`);
/// with them, it measures those cages of the site (`--site`), which must be running.
#[derive(Subcommand)]
pub enum Scenario {
    /// Every scenario below, on the benchmark's own cages, with the targets of each figure.
    All(Common),
    /// Durable enqueue rate (acknowledged = on disk) with 1 and with C concurrent clients.
    Enqueue {
        /// A running cage to enqueue into (its calls are due a day later and cancelled after).
        cage: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Queued no-op calls from SOURCE to TARGET: first enqueue to last completion, calls/s.
    E2e {
        /// The cage that takes the enqueues.
        source: Option<String>,
        /// The cage that executes the calls.
        #[arg(requires = "source")]
        target: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Calls that fail twice and then succeed, retried after milliseconds: total time, none lost.
    Retry {
        /// The cage that takes the enqueues.
        source: Option<String>,
        /// The cage that executes the calls (it must serve `echo` with `flaky`).
        #[arg(requires = "source")]
        target: Option<String>,
        /// Queue of the calls (its retry policy should retry within milliseconds).
        #[arg(long, default_value = "retry")]
        queue: String,
        #[command(flatten)]
        common: Common,
    },
    /// Sync call latency (p50/p99/p99.9) with one caller, and calls/s with C callers.
    Rpc {
        /// The cage to call.
        cage: Option<String>,
        /// MODULE.METHOD to call.
        #[arg(long, default_value = "echo.shout")]
        target: String,
        /// JSON arguments of every call.
        #[arg(long, default_value = "\"ping\"")]
        args: String,
        #[command(flatten)]
        common: Common,
    },
    /// Fill a cage with calls due in a week: bytes on disk, RSS, and (own cages only) the time
    /// from a restart to the first due call executed.
    Pending {
        /// The cage to fill.
        cage: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Sync call latency and e2e calls/s with modules in worker processes and in the cage's
    /// process (one lab of the benchmark's own cages each), and what the processes cost.
    Isolation(Common),
    /// Hot-reload latency: from dropping a new `.so` into modules/ to the first call it answers.
    Reload {
        /// The running cage (of this site) serving the module.
        cage: Option<String>,
        /// The module to swap.
        #[arg(long, default_value = "echo")]
        module: String,
        /// Two or more different builds of the module, dropped in turn (default on the
        /// benchmark's own cages: the echo build and a copy of it with bytes appended).
        #[arg(long = "file", num_args = 1)]
        files: Vec<PathBuf>,
        /// MODULE.METHOD called once each swap is seen, timed as the first call on new code.
        #[arg(long, default_value = "echo.version")]
        call: String,
        /// Swaps to time.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        #[command(flatten)]
        common: Common,
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
}

/// Where a scenario runs: the benchmark's own cages, or named running cages of a site.
pub struct Place {
    lab: Option<Lab>,
    site: Site,
    first: String,
    second: String,
}

impl Place {
    fn own(site: &Site, modules: Option<&Path>, tls: bool) -> Result<Place, String> {
        let echo = lab::find_echo(site, modules)?;
        eprintln!(
            "starting the benchmark's own cages{} (echo from {})",
            if tls { " with mutual TLS" } else { "" },
            echo.display()
        );
        Ok(Place::of_lab(Lab::start(&echo, tls)?))
    }

    /// The benchmark's own cages of `lab`.
    fn of_lab(lab: Lab) -> Place {
        Place {
            site: lab.site(),
            lab: Some(lab),
            first: lab::CAGES[0].to_owned(),
            second: lab::CAGES[1].to_owned(),
        }
    }

    fn of(
        site: &Site,
        cage: Option<String>,
        second: Option<String>,
        modules: Option<&Path>,
        tls: bool,
    ) -> Result<Place, String> {
        match cage {
            None => Place::own(site, modules, tls),
            Some(first) => Ok(Place {
                lab: None,
                site: site.clone(),
                second: second.unwrap_or_else(|| first.clone()),
                first,
            }),
        }
    }

    /// How to reach `cage`.
    fn route(&self, cage: &str) -> Result<cage_runtime::config::CageRoute, String> {
        self.site
            .execute_on()
            .and_then(|e| self.site.route(&e, cage))
            .map_err(|e| e.to_string())
    }

    /// The cage's data directory, where the disk's fdatasync rate is measured.
    fn data_dir(&self, cage: &str) -> Result<PathBuf, String> {
        self.site
            .cage(cage)
            .map(|c| c.data_dir)
            .map_err(|e| e.to_string())
    }

    /// A report whose fdatasync rate was measured now, on the disk of the first cage.
    fn report(&self) -> Result<Report, String> {
        report_on(&self.data_dir(&self.first)?)
    }
}

/// A report whose fdatasync rate was measured now, in `dir`.
fn report_on(dir: &Path) -> Result<Report, String> {
    let rate = load::fdatasync_rate(dir, 300)
        .map_err(|e| format!("cannot measure fdatasync in {}: {e}", dir.display()))?;
    Ok(Report {
        fdatasync_per_sec: rate,
        figures: Vec::new(),
    })
}

fn finish(result: Result<Report, String>, json: bool) -> Result<(), LabError> {
    let report = result.map_err(LabError::Bench)?;
    report.print(json);
    Ok(())
}

/// Calls and clients of each scenario when the command line gives none.
pub(crate) const RPC: (usize, usize) = (20_000, 8);
const ENQUEUE: (usize, usize) = (20_000, 64);
pub(crate) const E2E: (usize, usize) = (20_000, 16);
const RETRY: (usize, usize) = (2_000, 16);
const PENDING: (usize, usize) = (1_000_000, 16);

/// Runs one scenario where `first` (and `second`) say, or on the benchmark's own cages, and
/// prints its report.
fn measure(
    site: &Site,
    first: Option<String>,
    second: Option<String>,
    common: &Common,
    scenario: impl FnOnce(&mut Place, &mut Report) -> Result<(), String>,
) -> Result<(), LabError> {
    let report =
        Place::of(site, first, second, common.modules.as_deref(), common.tls).and_then(|mut p| {
            let mut r = p.report()?;
            scenario(&mut p, &mut r)?;
            Ok(r)
        });
    finish(report, common.json)
}

/// Runs one scenario (or all of them).
pub fn bench(site: &Site, scenario: Scenario) -> Result<(), LabError> {
    match scenario {
        Scenario::All(common) => finish(all(site, &common), common.json),
        Scenario::Enqueue { cage, common } => measure(site, cage, None, &common, |p, r| {
            enqueue::run(p, common.calls(ENQUEUE.0), common.clients(ENQUEUE.1), r)
        }),
        Scenario::E2e {
            source,
            target,
            common,
        } => measure(site, source, target, &common, |p, r| {
            e2e::run(p, common.calls(E2E.0), common.clients(E2E.1), r)
        }),
        Scenario::Retry {
            source,
            target,
            queue,
            common,
        } => measure(site, source, target, &common, |p, r| {
            retry::run(p, &queue, common.calls(RETRY.0), common.clients(RETRY.1), r)
        }),
        Scenario::Rpc {
            cage,
            target,
            args,
            common,
        } => measure(site, cage, None, &common, |p, r| {
            rpc::run(
                p,
                &target,
                &args,
                common.calls(RPC.0),
                common.clients(RPC.1),
                r,
            )
        }),
        Scenario::Isolation(common) => {
            let report = lab::find_echo(site, common.modules.as_deref()).and_then(|echo| {
                // The labs go under the temporary directory: their disk is measured there.
                let mut r = report_on(&std::env::temp_dir())?;
                isolation::run(&echo, common.tls, common.calls, common.clients, &mut r)?;
                Ok(r)
            });
            finish(report, common.json)
        }
        Scenario::Pending { cage, common } => measure(site, cage, None, &common, |p, r| {
            pending::run(p, common.calls(PENDING.0), common.clients(PENDING.1), r)
        }),
        Scenario::Reload {
            cage,
            module,
            files,
            call,
            rounds,
            common,
        } => measure(site, cage, None, &common, |p, r| {
            reload::run(p, &module, &files, &call, rounds.max(1), r)
        }),
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
    }
}

/// Every scenario on one set of the benchmark's own cages; `pending` last, as it leaves a
/// million calls behind.
fn all(site: &Site, common: &Common) -> Result<Report, String> {
    let mut place = Place::own(site, common.modules.as_deref(), common.tls)?;
    let mut r = place.report()?;
    let rounds = if common.calls.is_some() { 3 } else { 10 };
    let calls = |default: (usize, usize)| (common.calls(default.0), common.clients(default.1));
    // Progress bars show only on a terminal; a line per scenario shows in logs too.
    let step = |name: &str| eprintln!("bench: {name}");
    step("rpc");
    let (n, c) = calls(RPC);
    rpc::run(&place, "echo.shout", "\"ping\"", n, c, &mut r)?;
    step("enqueue");
    let (n, c) = calls(ENQUEUE);
    enqueue::run(&place, n, c, &mut r)?;
    step("e2e");
    let (n, c) = calls(E2E);
    e2e::run(&place, n, c, &mut r)?;
    step("retry");
    let (n, c) = calls(RETRY);
    retry::run(&place, "retry", n, c, &mut r)?;
    step("reload");
    reload::run(&place, "echo", &[], "echo.version", rounds, &mut r)?;
    step("pending");
    let (n, c) = calls(PENDING);
    pending::run(&mut place, n, c, &mut r)?;
    // Two labs of its own, one per mode, once the million pending calls are gone.
    drop(place);
    step("isolation");
    let echo = lab::find_echo(site, common.modules.as_deref())?;
    isolation::run(&echo, common.tls, common.calls, common.clients, &mut r)?;
    Ok(r)
}

/// The `p` quantile (0 to 1) of sorted durations, in microseconds.
fn percentile_us(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e6
}
