//! The lab's site harness: a temporary site directory (layout, site credential, cage files,
//! modules) and the `cage run` processes started on it. `cage bench`, `cage chaos` and the
//! end-to-end tests build their sites with it, so a cage is started, awaited and stopped one
//! way everywhere.

use cage_runtime::config::CageRoute;
use cage_runtime::transport::client::{Client, ClientError};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback address to give a cage (bound once, then released for the cage).
pub fn free_addr() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Reload settings for a lab's cages: a dropped module is picked up within a second.
pub const QUICK_RELOAD: &str = "reload_debounce = \"100ms\"\nrescan_interval = \"500ms\"\n";

/// The text of a cage file: listening on `addr`, serving `modules`, with `settings` lines.
pub fn cage_file(addr: SocketAddr, modules: &[&str], settings: &str) -> String {
    let modules: Vec<String> = modules.iter().map(|m| format!("{m:?}")).collect();
    format!(
        "listen = \"{addr}\"\nmodules = [{}]\n{settings}",
        modules.join(", ")
    )
}

/// A temporary site directory with the layout a cage expects.
pub struct LabSite {
    dir: PathBuf,
    keep: bool,
}

impl LabSite {
    /// Creates `dir` with `cages/`, `config/`, `modules/` and `clients/python/`; the directory
    /// is removed when this is dropped unless [`LabSite::keep`] is called.
    pub fn create(dir: PathBuf) -> Result<LabSite, String> {
        for d in ["cages", "config", "modules", "clients/python"] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(|e| format!("{}: {e}", dir.join(d).display()))?;
        }
        Ok(LabSite { dir, keep: false })
    }

    /// A fresh directory under the system's temporary directory, named for `purpose`.
    pub fn temporary(purpose: &str) -> Result<LabSite, String> {
        let stamp = cage_runtime::model::clock::now_ms();
        Self::create(
            std::env::temp_dir().join(format!("cage-{purpose}-{}-{stamp}", std::process::id())),
        )
    }

    /// The site directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Leaves the directory in place when this is dropped (for its logs and data).
    pub fn keep(&mut self) {
        self.keep = true;
    }

    /// Writes file `rel` of the site, creating its directory.
    pub fn write(&self, rel: &str, body: &str) -> Result<(), String> {
        let path = self.dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Writes `cages/NAME.toml`: cage `name` listening on `addr`, serving `modules`, with
    /// `settings` lines (e.g. [`QUICK_RELOAD`] and more).
    pub fn cage_file(
        &self,
        name: &str,
        addr: SocketAddr,
        modules: &[&str],
        settings: &str,
    ) -> Result<(), String> {
        self.write(
            &format!("cages/{name}.toml"),
            &cage_file(addr, modules, settings),
        )
    }

    /// Where module `name`'s library goes.
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("modules/lib{name}.so"))
    }

    /// Puts `so` in place of module `name` by atomic rename, like `mv` from the same disk.
    pub fn install_atomic(&self, name: &str, so: &Path) -> Result<(), String> {
        let tmp = self.dir.join(format!("modules/.lib{name}.so.tmp"));
        std::fs::copy(so, &tmp)
            .and_then(|_| std::fs::rename(&tmp, self.module_path(name)))
            .map(|_| ())
            .map_err(|e| format!("cannot install module {name}: {e}"))
    }

    /// What cage `name` logged, from `NAME.log` in the site.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for LabSite {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How to start a `cage run` process.
pub struct Launch<'a> {
    /// The `cage` binary.
    pub binary: PathBuf,
    /// The site directory.
    pub site: &'a Path,
    /// The cage's name.
    pub name: &'a str,
    /// Where it listens (to wait for it).
    pub addr: SocketAddr,
    /// Options before `run` (e.g. `--log-format json`).
    pub before: &'a [&'a str],
    /// Options after `run NAME --site DIR` (e.g. `--listen`, `--data-dir`).
    pub after: &'a [&'a str],
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// `RUST_LOG` for the cage.
    pub log_level: &'a str,
    /// The log file (stderr).
    pub log: PathBuf,
    /// Append to the log (a restart keeps earlier lines) rather than start it anew.
    pub append_log: bool,
}

impl<'a> Launch<'a> {
    /// Starting cage `name` of `site` at `addr` with this process's own binary, logging at
    /// `info` to `NAME.log` in the site.
    pub fn new(site: &'a Path, name: &'a str, addr: SocketAddr) -> Result<Self, String> {
        Ok(Launch {
            binary: std::env::current_exe().map_err(|e| e.to_string())?,
            site,
            name,
            addr,
            before: &[],
            after: &[],
            env: &[],
            log_level: "info",
            log: site.join(format!("{name}.log")),
            append_log: true,
        })
    }

    /// Starts the process (it may not answer yet: see [`CageProcess::wait_ready`]).
    pub fn spawn(&self) -> Result<CageProcess, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.append_log)
            .truncate(!self.append_log)
            .open(&self.log)
            .map_err(|e| format!("{}: {e}", self.log.display()))?;
        let child = Command::new(&self.binary)
            .args(self.before)
            .args(["run", self.name, "--site"])
            .arg(self.site)
            .args(self.after)
            .envs(self.env.iter().copied())
            .env("RUST_LOG", self.log_level)
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start cage {}: {e}", self.name))?;
        Ok(CageProcess {
            name: self.name.to_owned(),
            pid: child.id(),
            child: Some(child),
            log: self.log.clone(),
            addr: self.addr,
        })
    }
}

/// A `cage run` process the lab started; killed when dropped.
pub struct CageProcess {
    /// Its name.
    pub name: String,
    pid: u32,
    child: Option<Child>,
    log: PathBuf,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl CageProcess {
    /// Waits until the cage answers at its address (a cage holding another credential answers
    /// by turning the connection away, which counts; a TLS cage, which answers only holders of
    /// a key pair, counts once its log says it listens); fails at once if the process exits,
    /// quoting its log, and after `limit`. Returns how long it took.
    pub fn wait_ready(&mut self, limit: Duration, tls: bool) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            if tls && self.log().contains("listening on") {
                return Ok(started.elapsed());
            }
            if !tls {
                let route = CageRoute::single(self.addr, Duration::from_secs(1));
                match Client::connect(&self.name, &route) {
                    Ok(mut c) => {
                        if c.ping(Duration::from_secs(2)).is_ok() {
                            return Ok(started.elapsed());
                        }
                    }
                    Err(ClientError::Refused { .. }) => return Ok(started.elapsed()),
                    Err(_) => {}
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "cage {} exited with {status} while starting:\n{}",
                    self.name,
                    self.log()
                ));
            }
            if started.elapsed() >= limit {
                return Err(format!(
                    "cage {} did not answer within {} (log: {})",
                    self.name,
                    humantime::format_duration(limit),
                    self.log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Everything the cage logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Process id of the cage.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills the cage with SIGKILL, as a crash or power cut would, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the cage to stop (SIGTERM) and waits for it to exit; returns its exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        sigterm(&child);
        child.wait().ok().and_then(|s| s.code())
    }

    /// Stops the cage gracefully (SIGTERM, so queued work is left consistent and the last logs
    /// are flushed), killing it if it takes longer than `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        sigterm(&child);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Private module copies the cage process has mapped now (from /proc/PID/maps).
    pub fn mapped_module_copies(&self) -> Vec<String> {
        let maps =
            std::fs::read_to_string(format!("/proc/{}/maps", self.pid())).unwrap_or_default();
        let mut copies: Vec<String> = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .filter(|p| p.contains("/loaded-modules/"))
            .map(str::to_owned)
            .collect();
        copies.sort();
        copies.dedup();
        copies
    }
}

/// Asks `child` to stop gracefully (SIGTERM, as systemd or `kill` would).
fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

impl Drop for CageProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
