//! The benchmarks' own site: two cages (`a` and `b`) serving the example module `echo` on
//! loopback in a temporary directory, started as child processes of `cage bench` and removed
//! with everything they wrote when the run ends.

use cage_runtime::config::Site;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::credential::{self, SiteSecret};
use cage_runtime::transport::tls;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The cages of a lab.
pub const CAGES: [&str; 2] = ["a", "b"];

/// Queue whose calls the benchmarks make: fast retries, so the retry scenario finishes in
/// milliseconds, and a high concurrency, so the queue is not the limit being measured.
const QUEUES: &str = "[queues.retry]\nfirst_retry = \"10ms\"\ngrowth = 2.0\nmax_delay = \"5s\"\ngive_up_after = \"1h\"\njitter = 0.1\nconcurrency = 256\n\n[queues.bench]\nconcurrency = 256\n";

/// A temporary site with its cage processes.
pub struct Lab {
    dir: PathBuf,
    children: Vec<(String, Option<Child>)>,
    echo: PathBuf,
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
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("cage-bench-{}-{stamp}", std::process::id()));
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        for d in ["cages", "config", "modules"] {
            std::fs::create_dir_all(dir.join(d)).map_err(io)?;
        }
        std::fs::copy(echo, dir.join("modules/libecho.so")).map_err(io)?;
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
            let addr: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(io)?;
            std::fs::write(
                dir.join(format!("cages/{name}.toml")),
                format!("listen = \"{addr}\"\nmodules = [\"echo\"]\nreload_debounce = \"50ms\"\nrescan_interval = \"1s\"\nshutdown_grace = \"5s\"\ntls = {tls}\n"),
            )
            .map_err(io)?;
            routes.push_str(&format!("[cages.{name}]\naddresses = [\"{addr}\"]\n\n"));
        }
        routes.push_str(QUEUES);
        std::fs::write(dir.join("config/config_execute_on.toml"), routes).map_err(io)?;
        let mut lab = Lab {
            dir,
            children: CAGES.iter().map(|c| ((*c).to_owned(), None)).collect(),
            echo: echo.to_owned(),
        };
        for name in CAGES {
            lab.run(name)?;
        }
        Ok(lab)
    }

    /// The lab's site.
    pub fn site(&self) -> Site {
        Site::new(&self.dir)
    }

    /// The echo build the lab serves.
    pub fn echo(&self) -> &Path {
        &self.echo
    }

    /// Starts cage `name` and waits until it answers; returns how long that took.
    pub fn run(&mut self, name: &str) -> Result<Duration, String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
            .args(["run", name, "--site"])
            .arg(&self.dir)
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start cage {name}: {e}"))?;
        if let Some(slot) = self.children.iter_mut().find(|(n, _)| n == name) {
            slot.1 = Some(child);
        }
        let site = self.site();
        let route = site
            .execute_on()
            .and_then(|e| site.route(&e, name))
            .map_err(|e| e.to_string())?;
        while started.elapsed() < Duration::from_secs(120) {
            if Client::connect(name, &route)
                .and_then(|mut c| c.ping(Duration::from_secs(2)))
                .is_ok()
            {
                return Ok(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Err(format!(
            "cage {name} did not answer within 2 minutes (log: {}/{name}.log)",
            self.dir.display()
        ))
    }

    /// Stops cage `name` gracefully (SIGTERM), killing it if it takes over 30 s.
    pub fn stop(&mut self, name: &str) {
        let Some(mut child) = self
            .children
            .iter_mut()
            .find(|(n, _)| n == name)
            .and_then(|s| s.1.take())
        else {
            return;
        };
        crate::cli::child::terminate(&mut child, Duration::from_secs(30));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for name in CAGES {
            self.stop(name);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
