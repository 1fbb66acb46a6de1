//! `cage bench`: measure cages, one file per scenario; without cage names a scenario starts
//! its own cages in a temporary site (`lab`), runs, reports (`report`) and cleans up.

mod burn_down;
mod chain;
mod e2e;
mod enqueue;
mod footprint;
mod groups;
mod idle;
mod isolation;
mod lab;
mod latency;
mod load;
mod pending;
mod reload;
mod report;
mod retry;
mod rpc;
mod soak;
mod stamps;

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

/// `--no-fsync`, for the scenarios whose figures the disk's sync bounds.
#[derive(Args, Clone, Copy)]
pub struct NoFsync {
    /// Also run on a second pair of the benchmark's own cages whose cage files say
    /// `fdatasync = false`; those rows say "(no fsync)" and follow the durable ones.
    #[arg(long)]
    no_fsync: bool,
}

impl NoFsync {
    /// The durable run only (the scenarios that take no `--no-fsync`).
    const OFF: NoFsync = NoFsync { no_fsync: false };
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
    /// Every scenario below but soak, on the benchmark's own cages, with the targets of each
    /// figure.
    All {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fsync: NoFsync,
    },
    /// Durable enqueue rate (acknowledged = on disk) with 1 and with C concurrent clients.
    Enqueue {
        /// A running cage to enqueue into (its calls are due a day later and cancelled after).
        cage: Option<String>,
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fsync: NoFsync,
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
        #[command(flatten)]
        fsync: NoFsync,
    },
    /// A backlog of calls (100 000 by default) already queued when the cage that executes
    /// them starts: calls/s from its start to the last call done, and the start to the first
    /// call executed (the benchmark's own cages: it stops and starts the second).
    BurnDown {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        fsync: NoFsync,
    },
    /// What groups and fair dispatch cost: a burn-down without groups, then over N groups
    /// (100 000 by default) with fairness "fifo", "round_robin", and round robin with
    /// group_concurrency = 1 (the benchmark's own cages), calls/s of each.
    Groups {
        /// Groups the calls are spread over, in turn.
        #[arg(long, default_value_t = groups::GROUPS)]
        groups: usize,
        #[command(flatten)]
        common: Common,
    },
    /// Enqueue → start of execution p50/p99 for calls SOURCE → TARGET offered at a steady rate
    /// in an open loop (10 s of calls by default); the target's echo needs `stamp`.
    Latency {
        /// The cage that takes the enqueues.
        source: Option<String>,
        /// The cage that executes the calls (on this machine: it stamps a temporary file).
        #[arg(requires = "source")]
        target: Option<String>,
        /// Calls offered per second.
        #[arg(long, default_value_t = latency::RATE)]
        rate: f64,
        #[command(flatten)]
        common: Common,
    },
    /// Many queued calls SOURCE → TARGET (10 000 000 by default) in rounds: bytes on disk
    /// per call the target holds, and its RSS at the start, middle and end.
    Soak {
        /// The cage that takes the enqueues.
        source: Option<String>,
        /// The cage that executes the calls (its RSS is read when it runs on this machine).
        #[arg(requires = "source")]
        target: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// CPU use of an idle cage and its worker processes, in % of one core.
    Idle {
        /// A running cage of this machine (default: both of the benchmark's own cages).
        cage: Option<String>,
        /// Seconds of the quiet window.
        #[arg(long, default_value_t = idle::WINDOW.as_secs_f64())]
        seconds: f64,
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
        /// Spread the calls over this many groups, in turn (0: no groups).
        #[arg(long, default_value_t = 0)]
        groups: usize,
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

const BURN_DOWN: (usize, usize) = (100_000, 64);
/// Calls of each burn-down of `cage bench groups`.
const GROUPS_CALLS: usize = 200_000;
/// Calls of the burn-down in `all` without --calls: a modest backlog, to keep `all` short.
const BURN_DOWN_IN_ALL: usize = 20_000;

/// Runs one scenario where `first` (and `second`) say, or on the benchmark's own cages, and
/// prints its report; with `fsync.no_fsync`, runs it again on cages that do not fdatasync.
fn measure(
    site: &Site,
    first: Option<String>,
    second: Option<String>,
    common: &Common,
    fsync: NoFsync,
    scenario: impl Fn(&mut Place, &mut Report) -> Result<(), String>,
) -> Result<(), LabError> {
    if fsync.no_fsync && first.is_some() {
        return finish(
            Err("--no-fsync writes `fdatasync = false` into the benchmark's own cage files: drop the cage names".into()),
            common.json,
        );
    }
    let report =
        Place::of(site, first, second, common.modules.as_deref(), common.tls).and_then(|mut p| {
            let mut r = p.report()?;
            scenario(&mut p, &mut r)?;
            drop(p);
            if fsync.no_fsync {
                without_fsync(site, common, &mut r, &scenario)?;
            }
            Ok(r)
        });
    finish(report, common.json)
}

/// Runs `scenario` once more, on a lab of the benchmark's own cages whose cage files say
/// `fdatasync = false`, and adds its figures to `report` with "(no fsync)" in their names,
/// after the durable figures, which stay the headline.
fn without_fsync(
    site: &Site,
    common: &Common,
    report: &mut Report,
    scenario: impl FnOnce(&mut Place, &mut Report) -> Result<(), String>,
) -> Result<(), String> {
    let echo = lab::find_echo(site, common.modules.as_deref())?;
    eprintln!("bench: again on cages that do not fdatasync (fdatasync = false)");
    let mut place = Place::of_lab(Lab::start_with(&echo, common.tls, lab::NO_FSYNC)?);
    let mut own = Report {
        fdatasync_per_sec: report.fdatasync_per_sec,
        figures: Vec::new(),
    };
    scenario(&mut place, &mut own)?;
    for f in own.figures {
        report.add(
            f.scenario,
            format!("{} (no fsync)", f.name),
            f.value,
            f.unit,
            f.goal,
        );
    }
    Ok(())
}

/// Runs one scenario (or all of them).
pub fn bench(site: &Site, scenario: Scenario) -> Result<(), LabError> {
    match scenario {
        Scenario::All { common, fsync } => finish(all(site, &common, fsync), common.json),
        Scenario::Enqueue {
            cage,
            common,
            fsync,
        } => measure(site, cage, None, &common, fsync, |p, r| {
            enqueue::run(p, common.calls(ENQUEUE.0), common.clients(ENQUEUE.1), r)
        }),
        Scenario::E2e {
            source,
            target,
            common,
            fsync,
        } => measure(site, source, target, &common, fsync, |p, r| {
            e2e::run(p, common.calls(E2E.0), common.clients(E2E.1), r)
        }),
        Scenario::BurnDown { common, fsync } => {
            measure(site, None, None, &common, fsync, |p, r| {
                burn_down::run(p, common.calls(BURN_DOWN.0), common.clients(BURN_DOWN.1), r)
            })
        }
        Scenario::Groups { groups, common } => {
            measure(site, None, None, &common, NoFsync::OFF, |p, r| {
                groups::run(
                    p,
                    common.calls(GROUPS_CALLS),
                    common.clients(BURN_DOWN.1),
                    groups.max(1),
                    r,
                )
            })
        }
        Scenario::Latency {
            source,
            target,
            rate,
            common,
        } => measure(site, source, target, &common, NoFsync::OFF, |p, r| {
            latency::run(
                p,
                rate,
                common.calls((rate * latency::SECONDS) as usize),
                common.clients(latency::CLIENTS),
                r,
            )
        }),
        Scenario::Soak {
            source,
            target,
            common,
        } => measure(site, source, target, &common, NoFsync::OFF, |p, r| {
            soak::run(p, common.calls(soak::CALLS), common.clients(E2E.1), r)
        }),
        Scenario::Idle {
            cage,
            seconds,
            common,
        } => match Duration::try_from_secs_f64(seconds) {
            Ok(window) => measure(site, cage, None, &common, NoFsync::OFF, |p, r| {
                idle::run(p, idle::SETTLE, window, r)
            }),
            Err(_) => finish(
                Err(format!(
                    "--seconds {seconds}: give a positive number of seconds"
                )),
                common.json,
            ),
        },
        Scenario::Retry {
            source,
            target,
            queue,
            common,
        } => measure(site, source, target, &common, NoFsync::OFF, |p, r| {
            retry::run(p, &queue, common.calls(RETRY.0), common.clients(RETRY.1), r)
        }),
        Scenario::Rpc {
            cage,
            target,
            args,
            common,
        } => measure(site, cage, None, &common, NoFsync::OFF, |p, r| {
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
        Scenario::Pending {
            cage,
            groups,
            common,
        } => measure(site, cage, None, &common, NoFsync::OFF, |p, r| {
            pending::run(
                p,
                common.calls(PENDING.0),
                common.clients(PENDING.1),
                groups,
                r,
            )
        }),
        Scenario::Reload {
            cage,
            module,
            files,
            call,
            rounds,
            common,
        } => measure(site, cage, None, &common, NoFsync::OFF, |p, r| {
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

/// Every scenario but soak on one set of the benchmark's own cages: `idle` first, while
/// they are fresh; `pending` late, as it leaves a million calls behind; `isolation` on labs
/// of its own; with `fsync.no_fsync`, the enqueue, e2e and burn-down again on cages that do
/// not fdatasync, after every durable figure.
fn all(site: &Site, common: &Common, fsync: NoFsync) -> Result<Report, String> {
    let mut place = Place::own(site, common.modules.as_deref(), common.tls)?;
    let mut r = place.report()?;
    // --calls makes a quick run (CI's smoke test): shorter windows where time, not calls,
    // sets the length.
    let quick = common.calls.is_some();
    let rounds = if quick { 3 } else { 10 };
    let calls = |default: (usize, usize)| (common.calls(default.0), common.clients(default.1));
    // Progress bars show only on a terminal; a line per scenario shows in logs too.
    let step = |name: &str| eprintln!("bench: {name}");
    step("idle");
    let (settle, window) = if quick {
        (Duration::from_secs(1), Duration::from_secs(3))
    } else {
        (idle::SETTLE, idle::WINDOW)
    };
    idle::run(&place, settle, window, &mut r)?;
    step("rpc");
    let (n, c) = calls(RPC);
    rpc::run(&place, "echo.shout", "\"ping\"", n, c, &mut r)?;
    step("enqueue");
    let (n, c) = calls(ENQUEUE);
    enqueue::run(&place, n, c, &mut r)?;
    step("e2e");
    let (n, c) = calls(E2E);
    e2e::run(&place, n, c, &mut r)?;
    step("latency");
    let (n, c) = calls((
        (latency::RATE * latency::SECONDS) as usize,
        latency::CLIENTS,
    ));
    latency::run(&place, latency::RATE, n, c, &mut r)?;
    step("retry");
    let (n, c) = calls(RETRY);
    retry::run(&place, "retry", n, c, &mut r)?;
    step("reload");
    reload::run(&place, "echo", &[], "echo.version", rounds, &mut r)?;
    step("burn-down");
    let (n, c) = calls((BURN_DOWN_IN_ALL, BURN_DOWN.1));
    burn_down::run(&mut place, n, c, &mut r)?;
    step("pending");
    let (n, c) = calls(PENDING);
    pending::run(&mut place, n, c, 0, &mut r)?;
    // Two labs of its own, one per mode, once the million pending calls are gone.
    drop(place);
    step("isolation");
    let echo = lab::find_echo(site, common.modules.as_deref())?;
    isolation::run(&echo, common.tls, common.calls, common.clients, &mut r)?;
    if fsync.no_fsync {
        step("enqueue, e2e and burn-down without fdatasync");
        without_fsync(site, common, &mut r, |p, r| {
            let (n, c) = calls(ENQUEUE);
            enqueue::run(p, n, c, r)?;
            let (n, c) = calls(E2E);
            e2e::run(p, n, c, r)?;
            let (n, c) = calls((BURN_DOWN_IN_ALL, BURN_DOWN.1));
            burn_down::run(p, n, c, r)
        })?;
    }
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
