//! `cage chaos`: three cages on loopback in a temporary site, a stream of queued calls, chains,
//! a recurring job and calls of a module that crashes its worker process at random, while
//! cages are killed with SIGKILL and restarted, module files are replaced by garbage and
//! restored, flushes fail (the storage fault hook) and connections are cut (a proxy in front
//! of every cage). Then the faults stop, the queues drain, and the
//! invariants are checked: see [`check`].

mod check;

mod workload;

use crate::proxy::Proxy;
use crate::site::{free_addr, CageProcess, LabSite, Launch, QUICK_RELOAD};
use crate::LabError;
use cage_runtime::config::{CageRoute, Site};
use cage_runtime::model::clock::unix_ms;
use cage_runtime::model::job::{CatchUp, Schedule};
use cage_runtime::transport::client::Client;
use cage_runtime::transport::credential::{self, SiteSecret};
use cage_runtime::transport::protocol::{ChainRequest, Filter, JobRequest, JobSpec, QueueQuery};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// The cages of a chaos run.
const CAGES: [&str; 3] = ["alpha", "beta", "gamma"];
/// Modules every cage serves (their `.so` files come from `--modules`); `crash` crashes its
/// worker process at random.
const MODULES: [&str; 3] = ["echo", "orders", "crash"];

/// What `cage chaos` was told.
#[derive(clap::Args)]
pub struct ChaosArgs {
    /// How long to inject faults, in minutes (fractions allowed).
    #[arg(long, default_value_t = 1.0)]
    minutes: f64,
    /// Seed of the fault schedule (default: from the clock); a failing run replays with it.
    #[arg(long)]
    seed: Option<u64>,
    /// Directory holding libecho.so, liborders.so and libcrash.so (default: the site's modules/).
    #[arg(long)]
    modules: Option<PathBuf>,
    /// Longest to wait for the queues to drain once the faults stop.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    drain: Duration,
    /// Keep the temporary site (logs, data) afterwards.
    #[arg(long)]
    keep: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// A small deterministic generator, so a run can be replayed from its seed.
pub struct Lcg(u64);

impl Lcg {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Faults injected, by kind.
#[derive(Serialize, Default, Debug)]
pub struct Faults {
    kills: usize,
    restarts: usize,
    broken_module_drops: usize,
    disk_faults: usize,
    connection_cuts: usize,
    connections_cut: usize,
    /// Cages found dead that the run had not killed (a module's crash must not do that).
    unexpected_deaths: Vec<String>,
}

/// The final report.
#[derive(Serialize)]
pub struct Report {
    seed: u64,
    minutes: f64,
    site: String,
    faults: Faults,
    workload: workload::Tally,
    outcome: check::Outcome,
    drained_in_secs: f64,
}

/// One cage of the run: where it listens, and its process while it runs.
struct CageProc {
    name: &'static str,
    addr: SocketAddr,
    process: Option<CageProcess>,
}

/// The temporary site and its processes.
pub struct Lab {
    site: LabSite,
    cages: Vec<CageProc>,
    proxies: Vec<Proxy>,
    modules: PathBuf,
}

impl Lab {
    fn create(modules: &Path) -> Result<Lab, String> {
        for m in MODULES {
            let so = modules.join(format!("lib{m}.so"));
            if !so.is_file() {
                return Err(format!(
                    "{} is missing: build the modules (cargo build -p echo -p orders -p crash) and \
                     pass --modules target/debug, or copy them into the site's modules/",
                    so.display()
                ));
            }
        }
        let mut site = LabSite::temporary("chaos")?;
        // Kept until the run is judged: a failed run's logs and data are what explain it.
        site.keep();
        let dir = site.dir().to_owned();
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        // The lab is a site of its own: its cages and this process's clients share its
        // credential, made here before any cage starts.
        let secret =
            SiteSecret::of_keys_dir(&dir.join("config/keys")).map_err(|e| e.to_string())?;
        credential::present_secret(secret);
        let mut cages = Vec::new();
        let mut proxies = Vec::new();
        let mut routes = String::new();
        for name in CAGES {
            let addr = free_addr().map_err(io)?;
            site.cage_file(
                name,
                addr,
                &MODULES,
                &format!("{QUICK_RELOAD}shutdown_grace = \"2s\"\n"),
            )?;
            let proxy = Proxy::start(addr).map_err(io)?;
            routes.push_str(&format!(
                "[cages.{name}]\naddresses = [\"{}\"]\nconnect_timeout = \"1s\"\ncall_timeout = \"10s\"\n\n",
                proxy.addr
            ));
            proxies.push(proxy);
            cages.push(CageProc {
                name,
                addr,
                process: None,
            });
        }
        routes.push_str(
            "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"5s\"\ngive_up_after = \"1h\"\njitter = 0.1\nconcurrency = 8\n",
        );
        site.write("config/config_execute_on.toml", &routes)?;
        let lab = Lab {
            site,
            cages,
            proxies,
            modules: modules.to_owned(),
        };
        for m in MODULES {
            lab.restore_module(m)?;
        }
        Ok(lab)
    }

    /// The site directory.
    pub fn dir(&self) -> &Path {
        self.site.dir()
    }

    /// How clients reach cage `name`: through its proxy, so cuts hit them too.
    pub fn route(&self, name: &str) -> CageRoute {
        let i = CAGES.iter().position(|c| *c == name).unwrap_or(0);
        CageRoute::single(self.proxies[i].addr, Duration::from_secs(10))
    }

    /// How to reach cage `name` directly (for the checks, once the faults stopped).
    pub fn direct(&self, name: &str) -> CageRoute {
        let c = self.cages.iter().find(|c| c.name == name);
        CageRoute::single(
            c.map(|c| c.addr).unwrap_or_else(|| self.cages[0].addr),
            Duration::from_secs(30),
        )
    }

    fn start(&mut self, i: usize) -> Result<(), String> {
        let (name, addr) = (self.cages[i].name, self.cages[i].addr);
        let fault_file = self.fault_file(name);
        let fault_file = fault_file.to_string_lossy();
        let env = [("CAGE_FAULT_FLUSH_FILE", fault_file.as_ref())];
        let mut launch = Launch::new(self.site.dir(), name, addr)?;
        launch.env = &env;
        let mut cage = launch.spawn()?;
        let ready = cage.wait_ready(Duration::from_secs(30), false);
        self.cages[i].process = Some(cage);
        ready.map(|_| ())
    }

    /// Restarts every cage whose process died without the run killing it; names them.
    fn revive_unexpected(&mut self) -> Result<Vec<String>, String> {
        let mut died = Vec::new();
        for i in 0..self.cages.len() {
            let dead = self.cages[i].process.as_mut().is_some_and(|p| !p.alive());
            if dead {
                died.push(self.cages[i].name.to_owned());
                self.start(i)?;
            }
        }
        Ok(died)
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut cage) = self.cages[i].process.take() {
            cage.kill9();
        }
    }

    fn fault_file(&self, name: &str) -> PathBuf {
        self.dir().join(format!("fault-{name}"))
    }

    /// Puts a good build of module `m` in place by atomic rename.
    fn restore_module(&self, m: &str) -> Result<(), String> {
        self.site
            .install_atomic(m, &self.modules.join(format!("lib{m}.so")))
    }

    /// Replaces module `m` by a file that is not a module (cut short, then garbage).
    fn break_module(&self, m: &str, rng: &mut Lcg) {
        let tmp = self.dir().join(format!("modules/.lib{m}.so.tmp"));
        let mut bytes = std::fs::read(self.modules.join(format!("lib{m}.so"))).unwrap_or_default();
        bytes.truncate(rng.below(bytes.len() as u64) as usize);
        bytes.extend((0..4096).map(|i| (i * 31 + 7) as u8));
        let _ = std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, self.site.module_path(m)));
    }

    fn stop_all(&mut self) {
        for cage in &mut self.cages {
            if let Some(mut process) = cage.process.take() {
                process.stop(Duration::from_secs(10));
            }
        }
    }

    /// Every cage log, by cage.
    pub fn logs(&self) -> BTreeMap<String, String> {
        CAGES
            .iter()
            .map(|c| ((*c).to_owned(), self.site.log(c)))
            .collect()
    }

    /// Whether every cage's queue is empty and no chain is running.
    fn drained(&self) -> bool {
        CAGES.iter().all(|c| {
            let route = self.direct(c);
            let Ok(mut client) = Client::connect(c, &route) else {
                return false;
            };
            let pending = client.calls(
                QueueQuery::Pending(Filter::default()),
                Duration::from_secs(30),
            );
            let chains = client.chains(
                ChainRequest::List {
                    all: false,
                    limit: 1,
                },
                Duration::from_secs(30),
            );
            matches!(pending, Ok(p) if p.is_empty()) && matches!(chains, Ok(Ok(c)) if c.is_empty())
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for i in 0..self.cages.len() {
            self.kill(i);
        }
    }
}

/// Adds (or, with `remove`, removes) the recurring job of the run on the first cage.
fn job(lab: &Lab, remove: Option<String>) -> Result<Option<String>, String> {
    let cage = CAGES[0];
    let mut client = Client::connect(cage, &lab.direct(cage)).map_err(|e| e.to_string())?;
    let request = match remove {
        Some(id) => JobRequest::Remove(id),
        None => JobRequest::Add {
            spec: JobSpec {
                module: "echo".into(),
                method: "append".into(),
                args: serde_json::to_vec(&serde_json::json!({
                    "file": lab.dir().join("job-effects.txt"), "tag": "job"
                }))
                .unwrap_or_default(),
                queue: "retry".into(),
                schedule: Schedule::Every {
                    interval_ms: 500,
                    first_ms: unix_ms(SystemTime::now()) + 500,
                },
                catch_up: CatchUp::Once,
            },
            replace: true,
        },
    };
    let jobs = client
        .job(request, Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(jobs.into_iter().next().map(|j| j.id))
}

/// Runs the chaos suite on its own site; fails when the run stops or an invariant breaks.
pub fn chaos(site: &Site, a: ChaosArgs) -> Result<(), LabError> {
    let seed = a
        .seed
        .unwrap_or_else(|| unix_ms(SystemTime::now()) ^ u64::from(std::process::id()));
    let modules = a.modules.unwrap_or_else(|| site.modules_dir());
    let mut lab = Lab::create(&modules).map_err(LabError::Setup)?;
    let result = run(&mut lab, seed, a.minutes, a.drain);
    lab.stop_all();
    let dir = lab.dir().to_owned();
    let report = match result {
        Ok(r) => r,
        Err(why) => {
            return Err(LabError::Stopped {
                seed,
                why,
                site: dir,
            })
        }
    };
    let ok = report.outcome.ok();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        check::print(&report);
    }
    drop(lab);
    if ok && !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("the run's site (logs, data) is kept at {}", dir.display());
    }
    if ok {
        Ok(())
    } else {
        Err(LabError::Invariants { seed })
    }
}

fn run(lab: &mut Lab, seed: u64, minutes: f64, drain: Duration) -> Result<Report, String> {
    for i in 0..CAGES.len() {
        lab.start(i)?;
    }
    let job_id = job(lab, None)?;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = workload::start(lab, seed, stop.clone());
    let mut rng = Lcg(seed);
    let mut faults = Faults::default();
    let length = Duration::from_secs_f64((minutes * 60.0).max(1.0));
    let progress = ProgressBar::new(length.as_secs()).with_style(
        ProgressStyle::with_template("chaos [{bar:30}] {pos}/{len} s  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    while started.elapsed() < length {
        std::thread::sleep(Duration::from_millis(300 + rng.below(1200)));
        faults.unexpected_deaths.extend(lab.revive_unexpected()?);
        let i = rng.below(CAGES.len() as u64) as usize;
        match rng.below(8) {
            0..=2 => {
                lab.kill(i);
                faults.kills += 1;
                std::thread::sleep(Duration::from_millis(rng.below(500)));
                lab.start(i)?;
                faults.restarts += 1;
            }
            3 => {
                let m = MODULES[rng.below(MODULES.len() as u64) as usize];
                lab.break_module(m, &mut rng);
                faults.broken_module_drops += 1;
                std::thread::sleep(Duration::from_millis(500 + rng.below(1500)));
                lab.restore_module(m)?;
            }
            4 | 5 => {
                let fault = lab.fault_file(CAGES[i]);
                std::fs::write(&fault, b"").map_err(|e| e.to_string())?;
                faults.disk_faults += 1;
                std::thread::sleep(Duration::from_millis(300 + rng.below(900)));
                std::fs::remove_file(&fault).map_err(|e| e.to_string())?;
            }
            _ => {
                faults.connection_cuts += 1;
                faults.connections_cut += lab.proxies.iter().map(Proxy::cut).sum::<usize>();
            }
        }
        progress.set_position(started.elapsed().as_secs());
        progress.set_message(format!(
            "{} kills, {} broken modules, {} disk faults, {} cuts",
            faults.kills, faults.broken_module_drops, faults.disk_faults, faults.connection_cuts
        ));
    }
    progress.finish_and_clear();
    stop.store(true, Ordering::Release);
    let tally = workload::join(workers)?;
    faults.unexpected_deaths.extend(lab.revive_unexpected()?);
    // Faults off, every cage up, the job gone: what was acknowledged must now finish.
    for m in MODULES {
        lab.restore_module(m)?;
    }
    for c in CAGES {
        let _ = std::fs::remove_file(lab.fault_file(c));
    }
    for i in 0..CAGES.len() {
        let up = lab.cages[i]
            .process
            .as_mut()
            .is_some_and(CageProcess::alive);
        if !up {
            lab.start(i)?;
        }
    }
    if let Some(id) = job_id {
        job(lab, Some(id))?;
    }
    let draining = Instant::now();
    while !lab.drained() {
        if draining.elapsed() > drain {
            return Err(format!(
                "the queues did not drain within {}",
                humantime::format_duration(drain)
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let drained_in_secs = draining.elapsed().as_secs_f64();
    faults.unexpected_deaths.extend(lab.revive_unexpected()?);
    let outcome = check::check(lab, &tally, &faults)?;
    Ok(Report {
        seed,
        minutes,
        site: lab.dir().display().to_string(),
        faults,
        workload: tally,
        outcome,
        drained_in_secs,
    })
}
