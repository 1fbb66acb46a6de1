//! Test sites: a temporary directory with `cages/`, `config/` and `modules/`, real `cage`
//! processes started in it (by the lab's site harness, `cages::lab::site`, as `cage bench`
//! and `cage chaos` start theirs), and the `cage` CLI to talk to them, exactly as a user would.

#![allow(dead_code)]

pub mod fake_cage;

use cages::lab::site::{cage_file, CageProcess, Launch, QUICK_RELOAD};
use cages::runtime::config::CageRoute;
use cages::runtime::transport::client::Client;
use cages::runtime::transport::credential::{self, SiteSecret, SITE_SECRET};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(workspace());
    // `cargo test` gives test processes the variables it gives a crate's build (the package's
    // manifest dir, name, version…). Build scripts that watch one of them (ring's does) would
    // see a change from the top-level build and rebuild everything above them, in every test
    // process; a nested build must see the environment the top-level one saw.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name == "CARGO_MANIFEST_DIR"
            || name == "CARGO_MANIFEST_PATH"
            || name == "CARGO_CRATE_NAME"
            || name == "CARGO_PRIMARY_PACKAGE"
            || name == "CARGO_TARGET_TMPDIR"
            || name == "CARGO_RUSTC_CURRENT_DIR"
            || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_BIN_")
        {
            c.env_remove(name.as_ref());
        }
    }
    c
}

/// The `cage` binary, built once per test process.
pub fn cage_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // The same target directory as the tests: `cargo test` has released its build lock by the
        // time tests run, and the binary is usually built already, so this is a quick check.
        let status = cargo()
            .args(["build", "-q", "-p", "cage", "--bin", "cage"])
            .status()
            .expect("run cargo build for the cage binary");
        assert!(status.success(), "building the cage binary failed");
        target_dir().join("debug/cage")
    })
    .clone()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Builds example module `krate` with `features` (`"no-default"` turns default features off)
/// and returns a copy of its `.so` that no later build overwrites (cached per process).
pub fn module_so(krate: &str, features: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let key = format!(
        "{krate}-{}",
        if features.is_empty() {
            "default".to_owned()
        } else {
            features.join("+")
        }
    );
    let built = BUILT.get_or_init(Default::default);
    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = built.get(&key) {
        return p.clone();
    }
    // One target directory for every variant (dependencies build once); the file lock keeps
    // another test process from overwriting the output between our build and our copy.
    let target = target_dir().join("e2e/modules");
    std::fs::create_dir_all(&target).unwrap();
    let lock = std::fs::File::create(target.join("build.lock")).unwrap();
    lock.lock().unwrap();
    let mut cmd = cargo();
    cmd.args(["build", "-q", "-p", krate, "--target-dir"])
        .arg(&target);
    if features.contains(&"no-default") {
        cmd.arg("--no-default-features");
    }
    let features: Vec<&str> = features
        .iter()
        .copied()
        .filter(|f| *f != "no-default")
        .collect();
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let status = cmd.status().expect("run cargo build for a module");
    assert!(status.success(), "building module {key} failed");
    let so = target_dir().join(format!("e2e/{key}.so"));
    std::fs::copy(target.join(format!("debug/lib{krate}.so")), &so).unwrap();
    drop(lock);
    built.insert(key, so.clone());
    so
}

/// Compiles a C fixture from `tests/fixtures` into a shared library.
pub fn c_fixture_so(name: &str) -> PathBuf {
    let out = target_dir().join("e2e/fixtures");
    std::fs::create_dir_all(&out).unwrap();
    let so = out.join(format!("{name}.so"));
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&so)
        .arg(workspace().join(format!("tests/fixtures/{name}.c")))
        .status()
        .expect("run cc");
    assert!(status.success(), "compiling fixture {name} failed");
    so
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The site credential of every site this test process makes (random per process).
pub fn test_secret() -> &'static str {
    static SECRET: OnceLock<String> = OnceLock::new();
    SECRET.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        format!("test-site-credential-{}-{nanos:x}", std::process::id())
    })
}

/// A raw TCP connection to the cage at `addr` that has shown the site credential: what goes
/// on the wire after it is up to the test.
pub fn raw_connection(addr: SocketAddr) -> std::net::TcpStream {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    credential::prove(&mut s, &SiteSecret::given(test_secret())).unwrap();
    s
}

/// A temporary site.
pub struct Site {
    dir: tempfile::TempDir,
    addrs: HashMap<String, SocketAddr>,
    tls: std::collections::HashSet<String>,
}

/// What a `cage` command printed and returned.
#[derive(Debug)]
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Site {
    /// A site with no cages yet.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in ["cages", "config", "modules", "clients/python"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        // Like the repository, a site carries the Python client its modules' scripts import.
        let client = workspace().join("clients/python/cage_connection.py");
        std::fs::copy(client, dir.path().join("clients/python/cage_connection.py")).unwrap();
        // Every site of a test process holds the same credential, as sites whose cages call
        // each other must (it is copied like the cluster CA); the test's own clients show it.
        let keys = dir.path().join("config/keys");
        std::fs::create_dir_all(&keys).unwrap();
        let secret = keys.join(SITE_SECRET);
        std::fs::write(&secret, test_secret()).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        credential::present_secret(SiteSecret::given(test_secret()));
        Site {
            dir,
            addrs: HashMap::new(),
            tls: Default::default(),
        }
    }

    /// The site directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Adds cage `name` serving `modules` on a free loopback port, with `extra` lines.
    pub fn cage(&mut self, name: &str, modules: &[&str], extra: &str) -> &mut Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        self.cage_at(name, addr, modules, extra)
    }

    /// Adds (or moves) cage `name` listening on loopback address `addr` (127.x.y.z), serving
    /// `modules`, with `extra` lines.
    pub fn cage_at(
        &mut self,
        name: &str,
        addr: SocketAddr,
        modules: &[&str],
        extra: &str,
    ) -> &mut Self {
        self.addrs.insert(name.to_owned(), addr);
        let body = cage_file(addr, modules, &format!("{QUICK_RELOAD}{extra}"));
        self.write(&format!("cages/{name}.toml"), &body);
        self
    }

    /// `cage keys init`: the site's cluster CA and the CLI's key pair.
    pub fn keys_init(&self) {
        let run = self.cage_cmd(&["keys", "init"]);
        assert_eq!(run.code, 0, "cage keys init: {run:?}");
    }

    /// Adds cage `name` at `ip` serving mutual TLS, with its key pair issued by the site's CA
    /// (make that first with [`Site::keys_init`]).
    pub fn tls_cage(&mut self, name: &str, ip: &str, modules: &[&str], extra: &str) -> &mut Self {
        let addr = SocketAddr::new(ip.parse().unwrap(), free_port());
        self.cage_at(name, addr, modules, &format!("tls = true\n{extra}"));
        let run = self.cage_cmd(&["keys", "issue", name]);
        assert_eq!(run.code, 0, "cage keys issue {name}: {run:?}");
        self.tls.insert(name.to_owned());
        self
    }

    /// Notes that cage `name` serves TLS (its files are in place), so starting it waits for
    /// its log instead of pinging it in plain TCP.
    pub fn mark_tls(&mut self, name: &str) {
        self.tls.insert(name.to_owned());
    }

    /// The address cage `name` of this site listens on.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    /// How to reach cage `name` of this site (plain TCP).
    pub fn route(&self, name: &str) -> CageRoute {
        CageRoute::single(self.addrs[name], Duration::from_secs(30))
    }

    /// Writes a file of the site.
    pub fn write(&self, rel: &str, body: &str) {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    /// Where module `name`'s library goes.
    pub fn module_path(&self, name: &str) -> PathBuf {
        self.path().join(format!("modules/lib{name}.so"))
    }

    /// Copies `so` over module `name`'s file in place, like `cp`.
    pub fn install(&self, name: &str, so: &Path) {
        std::fs::copy(so, self.module_path(name)).unwrap();
    }

    /// Puts `so` in place of module `name` by atomic rename, like `mv` from the same disk.
    pub fn install_atomic(&self, name: &str, so: &Path) {
        let tmp = self.path().join(format!("modules/.lib{name}.so.tmp"));
        std::fs::copy(so, &tmp).unwrap();
        std::fs::rename(&tmp, self.module_path(name)).unwrap();
    }

    /// Writes raw bytes as module `name`'s file.
    pub fn install_bytes(&self, name: &str, bytes: &[u8]) {
        std::fs::write(self.module_path(name), bytes).unwrap();
    }

    /// Runs `cage ARGS` in this site and waits for it.
    pub fn cage_cmd(&self, args: &[&str]) -> Run {
        Command::new(cage_bin())
            .args(args)
            .arg("--site")
            .arg(self.path())
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
            .into()
    }

    /// `cage call CAGE TARGET ARGS`.
    pub fn call(&self, cage: &str, target: &str, args: &str) -> Run {
        self.cage_cmd(&["call", cage, target, args])
    }

    /// `cage enqueue CAGE TARGET ARGS EXTRA…`; returns the call id.
    pub fn enqueue(&self, cage: &str, target: &str, args: &str, extra: &[&str]) -> String {
        let mut cmd = vec!["enqueue", cage, target, args];
        cmd.extend_from_slice(extra);
        let run = self.cage_cmd(&cmd);
        assert_eq!(run.code, 0, "enqueue failed: {run:?}");
        run.stdout.trim().to_owned()
    }

    /// Enqueues an `echo.append` for `target` through cage `from`, waits until the line it
    /// appends to `effects.txt` is there, and answers the call id.
    pub fn queued_append_runs(&self, target: &str, from: &str) -> String {
        let out = self.path().join("effects.txt");
        let args = format!(r#"{{"file": {:?}}}"#, out.display().to_string());
        let id = self.enqueue(target, "echo.append", &args, &["--from", from]);
        eventually(Duration::from_secs(20), "the queued call ran", || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|t| t.contains(&id))
        });
        id
    }

    /// `cage show ID --json`: the records of the call on every cage holding it.
    pub fn show(&self, id: &str) -> Vec<serde_json::Value> {
        let run = self.cage_cmd(&["show", id, "--json"]);
        if run.code != 0 {
            return Vec::new();
        }
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// `cage pending [CAGE] --json` (or `cage dead`).
    pub fn listing(&self, command: &str, cage: Option<&str>) -> Vec<serde_json::Value> {
        let mut cmd = vec![command, "--json"];
        cmd.extend(cage);
        let run = self.cage_cmd(&cmd);
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str(&run.stdout).unwrap()
    }

    /// `cage call CAGE TARGET ARGS` on another thread, for a call that stays in flight.
    pub fn call_in_background(
        &self,
        cage: &str,
        target: &str,
        args: &str,
    ) -> std::thread::JoinHandle<Run> {
        let (path, args) = (
            self.path().to_owned(),
            [cage.to_owned(), target.to_owned(), args.to_owned()],
        );
        std::thread::spawn(move || {
            Command::new(cage_bin())
                .arg("call")
                .args(&args)
                .arg("--site")
                .arg(path)
                .output()
                .unwrap()
                .into()
        })
    }

    /// Starts `cage run NAME` and waits until it answers.
    pub fn start(&self, name: &str) -> RunningCage {
        self.start_with_env(name, &[])
    }

    /// Starts `cage run NAME` with extra environment variables and waits until it answers.
    pub fn start_with_env(&self, name: &str, env: &[(&str, &str)]) -> RunningCage {
        self.start_with(name, env, &[])
    }

    /// Starts `cage ARGS… run NAME` with extra environment variables and waits until it answers.
    pub fn start_with(&self, name: &str, env: &[(&str, &str)], args: &[&str]) -> RunningCage {
        self.spawn(
            name,
            env,
            args,
            &[],
            self.addrs[name],
            &format!("{name}.log"),
        )
    }

    /// Starts one more instance of cage `name`, listening on loopback `port` with its own data
    /// directory (`data/NAME-PORT`), and waits until it answers.
    pub fn start_instance(&self, name: &str, port: u16) -> RunningCage {
        let listen = format!("127.0.0.1:{port}");
        let data = format!("data/{name}-{port}");
        self.spawn(
            name,
            &[],
            &[],
            &["--listen", &listen, "--data-dir", &data],
            listen.parse().unwrap(),
            &format!("{name}-{port}.log"),
        )
    }

    fn spawn(
        &self,
        name: &str,
        env: &[(&str, &str)],
        args: &[&str],
        run_args: &[&str],
        addr: SocketAddr,
        log_name: &str,
    ) -> RunningCage {
        let launch = Launch {
            binary: cage_bin(),
            site: self.path(),
            name,
            addr,
            before: args,
            after: run_args,
            env,
            log_level: "info",
            log: self.path().join(log_name),
            append_log: false,
        };
        let mut cage = launch.spawn().unwrap();
        if let Err(e) = cage.wait_ready(Duration::from_secs(30), self.tls.contains(name)) {
            panic!("{e}\n{}", cage.log());
        }
        cage
    }
}

/// `[cages.unknown]` for one test story (`mode`: "multicast" or "broadcast"), and a quick
/// retry queue: every cage of every other test answers on the default discovery port, so each
/// story gets its own port and cluster.
pub fn discovery_settings(mode: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let port = std::net::UdpSocket::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cluster = format!(
        "test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    // On loopback, multicast needs both ends on interface 127.0.0.1.
    let place = match mode {
        "broadcast" => {
            format!("discovery = \"broadcast\"\ndiscovery_address = \"127.255.255.255:{port}\"\n")
        }
        _ => format!(
            "discovery_address = \"239.255.74.1:{port}\"\ndiscovery_interface = \"127.0.0.1\"\n"
        ),
    };
    format!(
        "[cages.unknown]\n{place}cluster = \"{cluster}\"\nquery_timeout = \"300ms\"\nconnect_timeout = \"500ms\"\n\n\
         [queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n"
    )
}

/// A call of `echo.METHOD` with JSON `args` for cage `target`, on queue `retry`, due at once,
/// with idempotency key `key`: what the suites that enqueue through a client send.
pub fn echo_call(
    target: &str,
    method: &str,
    args: serde_json::Value,
    key: Option<String>,
) -> cages::runtime::transport::protocol::EnqueueRequest {
    cages::runtime::transport::protocol::EnqueueRequest {
        target: target.to_owned(),
        module: "echo".into(),
        method: method.to_owned(),
        args: serde_json::to_vec(&args).unwrap(),
        queue: "retry".into(),
        priority: 0,
        key,
        delay_ms: 0,
        group: None,
    }
}

/// Enqueues through one cage of a site as a careful client does while that cage may be killed
/// and restarted: on any failure it reconnects and sends the same request again (its
/// idempotency key makes a resent enqueue the first one).
pub struct Enqueuer {
    cage: String,
    route: CageRoute,
    client: Option<Client>,
}

impl Enqueuer {
    /// An enqueuer sending to `cage` of `site`.
    pub fn new(site: &Site, cage: &str) -> Self {
        Enqueuer {
            cage: cage.to_owned(),
            route: site.route(cage),
            client: None,
        }
    }

    /// Sends `request` until it is acknowledged; fails the test after a minute.
    pub fn enqueue(&mut self, request: &cages::runtime::transport::protocol::EnqueueRequest) {
        let started = Instant::now();
        loop {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "could not enqueue {:?}",
                request.key
            );
            if self.client.is_none() {
                self.client = Client::connect(&self.cage, &self.route).ok();
            }
            match self
                .client
                .as_mut()
                .map(|c| c.enqueue(request.clone(), Duration::from_secs(10)))
            {
                Some(Ok(_)) => return,
                _ => {
                    self.client = None;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
}

/// A `cage run` process; killed when dropped.
pub type RunningCage = CageProcess;

/// `cage`'s log once it mentions `needle`, or as it stands after ten seconds: a cage logs a
/// call as done only after the module's effect, which a test may have seen first.
pub fn log_mentioning(cage: &RunningCage, needle: &str) -> String {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let log = cage.log();
        if log.contains(needle) || Instant::now() >= until {
            return log;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
