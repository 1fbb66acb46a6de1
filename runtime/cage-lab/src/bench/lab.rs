//! The benchmarks' own site: two cages (`a` and `b`) serving the example module `echo` on
//! loopback in a temporary directory, started as child processes of `cage bench` and removed
//! with everything they wrote when the run ends.

use crate::site::{free_addr, CageProcess, LabSite, Launch};
use cage_runtime::config::Site;
use cage_runtime::transport::credential::{self, SiteSecret};
use cage_runtime::transport::tls;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cages of a lab.
pub const CAGES: [&str; 2] = ["a", "b"];

/// Queue whose calls the benchmarks make: fast retries, so the retry scenario finishes in
/// milliseconds, and a high concurrency, so the queue is not the limit being measured.
const RETRY_QUEUE: &str = "[queues.retry]\nfirst_retry = \"10ms\"\ngrowth = 2.0\nmax_delay = \"5s\"\ngive_up_after = \"1h\"\njitter = 0.1\nconcurrency = 256\n";

/// The other queue of the benchmarks (calls due later, cancelled after).
const BENCH_QUEUE: &str = "\n[queues.bench]\nconcurrency = 256\n";

/// Cage file lines of a lab whose queues do not sync to the device before acknowledging
/// (`cage bench ... --no-fsync`): what durability costs, read against the durable run.
pub const NO_FSYNC: &str = "fdatasync = false\n";

/// A temporary site with its cage processes.
pub struct Lab {
    /// The `[tls]` and `[cages.*]` part of its execute-on file.
    routes: String,
    site: LabSite,
    cages: Vec<(String, Option<CageProcess>)>,
    echo: PathBuf,
    /// Whether its cages speak mutual TLS.
    tls: bool,
}

/// Where `libecho.so` is: `modules` if given, else the site's `modules/`, else beside the
/// `cage` binary (where `cargo build` puts it).
pub fn find_echo(site: &Site, modules: Option<&Path>) -> Result<PathBuf, String> {
    let mut places: Vec<PathBuf> = Vec::new();
    match modules {
        Some(m) => places.push(m.to_owned()),
        None => {
            places.push(site.modules_dir());
            if let Some(dir) = std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(Path::to_owned))
            {
                places.push(dir);
            }
        }
    }
    places
        .iter()
        .map(|d| d.join("libecho.so"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "libecho.so not found in {}: build the example module (cargo build --release) or pass --modules DIR",
                places.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
            )
        })
}

impl Lab {
    /// Makes the site (with `tls`, a CA and a key pair per cage, and this process speaking
    /// as the site's `cli`) and starts its cages.
    pub fn start(echo: &Path, tls: bool) -> Result<Lab, String> {
        Self::start_with(echo, tls, "")
    }

    /// [`Lab::start`], with `settings` (cage file lines) added to every cage's file.
    pub fn start_with(echo: &Path, tls: bool, settings: &str) -> Result<Lab, String> {
        let site = LabSite::temporary("bench")?;
        let dir = site.dir().to_owned();
        site.install_atomic("echo", echo)?;
        let keys = dir.join("config/keys");
        // The lab is a site of its own: its cages and this process's clients share its
        // credential, made here before any cage starts.
        let secret = SiteSecret::of_keys_dir(&keys).map_err(|e| e.to_string())?;
        credential::present_secret(secret);
        if tls {
            cage_runtime::keys::init(&keys, false).map_err(|e| e.to_string())?;
            for name in CAGES {
                cage_runtime::keys::issue(&keys, name, &[], false).map_err(|e| e.to_string())?;
            }
            tls::act_as(tls::Identity::new(tls::CLI_IDENTITY, &keys));
        }
        let mut routes = if tls {
            "[tls]\nenabled = true\n\n".to_owned()
        } else {
            String::new()
        };
        for name in CAGES {
            let addr = free_addr().map_err(|e| e.to_string())?;
            site.cage_file(
                name,
                addr,
                &["echo"],
                &format!("reload_debounce = \"50ms\"\nrescan_interval = \"1s\"\nshutdown_grace = \"5s\"\ntls = {tls}\n{settings}"),
            )?;
            routes.push_str(&format!("[cages.{name}]\naddresses = [\"{addr}\"]\n\n"));
        }
        site.write(
            "config/config_execute_on.toml",
            &format!("{routes}{RETRY_QUEUE}{BENCH_QUEUE}"),
        )?;
        let mut lab = Lab {
            routes,
            site,
            cages: CAGES.iter().map(|c| ((*c).to_owned(), None)).collect(),
            echo: echo.to_owned(),
            tls,
        };
        for name in CAGES {
            lab.run(name)?;
        }
        Ok(lab)
    }

    /// Makes this process's clients present this lab's credential (and, with TLS, its client
    /// identity) again: another lab started since has put its own in place.
    pub fn present(&self) -> Result<(), String> {
        let keys = self.site.dir().join("config/keys");
        let secret = SiteSecret::of_keys_dir(&keys).map_err(|e| e.to_string())?;
        credential::present_secret(secret);
        if self.tls {
            tls::act_as(tls::Identity::new(tls::CLI_IDENTITY, &keys));
        }
        Ok(())
    }

    /// Rewrites the site's execute-on file with `settings` added to the `retry` queue (the
    /// queue of the calls the benchmarks execute): running cages re-read it, a cage started
    /// later reads it at its start.
    pub fn set_retry_queue(&self, settings: &str) -> Result<(), String> {
        self.site.write(
            "config/config_execute_on.toml",
            &format!("{}{RETRY_QUEUE}{settings}{BENCH_QUEUE}", self.routes),
        )
    }

    /// The lab's site.
    pub fn site(&self) -> Site {
        Site::new(self.site.dir())
    }

    /// The echo build the lab serves.
    pub fn echo(&self) -> &Path {
        &self.echo
    }

    /// Starts cage `name` and waits until it answers; returns how long that took.
    pub fn run(&mut self, name: &str) -> Result<Duration, String> {
        let started = Instant::now();
        let site = self.site();
        let addr = site
            .cage(name)
            .map(|c| c.listen)
            .map_err(|e| e.to_string())?;
        let mut launch = Launch::new(self.site.dir(), name, addr)?;
        launch.log_level = "warn";
        let mut cage = launch.spawn()?;
        let tls = site.cage(name).map(|c| c.tls).unwrap_or(false);
        let waited = cage.wait_ready(Duration::from_secs(120), tls);
        if let Some(slot) = self.cages.iter_mut().find(|(n, _)| n == name) {
            slot.1 = Some(cage);
        }
        waited?;
        Ok(started.elapsed())
    }

    /// Stops cage `name` gracefully (SIGTERM), killing it if it takes over 30 s.
    pub fn stop(&mut self, name: &str) {
        if let Some(mut cage) = self
            .cages
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|s| s.1.take())
        {
            cage.stop(Duration::from_secs(30));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in CAGES {
            self.stop(name);
        }
    }
}
