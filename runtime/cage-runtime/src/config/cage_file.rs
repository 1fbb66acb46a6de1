//! The cage file `cages/NAME.toml`: where one cage listens, what it serves, how it runs.

use super::error::ConfigError;
use super::ranges::{self, SpannedDuration};
use crate::model::job::CatchUp;
use crate::names::{self, NameKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Defaults a cage file may leave out.
pub struct CageFileDefaults;

impl CageFileDefaults {
    /// Worker threads running module code.
    pub const EXECUTOR_THREADS: usize = 8;
    /// Largest module file read (a larger one is refused unread).
    pub const MAX_MODULE_BYTES: u64 = 512 * 1024 * 1024;
    /// Longest a sync call may run when the caller does not say.
    pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
    /// How long a module file must stay unchanged before it is loaded.
    pub const RELOAD_DEBOUNCE: Duration = Duration::from_millis(200);
    /// How often module files are re-examined in case a file event was missed.
    pub const RESCAN_INTERVAL: Duration = Duration::from_secs(2);
    /// Largest frame accepted on the wire.
    pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;
    /// Most connections served at once.
    pub const MAX_CONNECTIONS: usize = 1024;
    /// A connection with no request for this long is closed.
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
    /// How long a stopping cage waits for calls under way.
    pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
    /// How long a message waits for its receiver to open the port.
    pub const PORT_WAIT: Duration = Duration::from_secs(90);
    /// Largest HTTP request body accepted.
    pub const HTTP_MAX_BODY: usize = 1024 * 1024;
    /// How long a queue sync waits to gather more writers when the last one was shared (0:
    /// sync at once; measured, a window did not raise throughput on this machine's disk).
    pub const COMMIT_WINDOW: Duration = Duration::ZERO;
    /// Memory the queue database may use as its cache, in MiB (32 keeps a cage holding a
    /// million pending calls under 300 MB; 64 enqueued about a third faster into big queues).
    pub const QUEUE_CACHE_MB: usize = 32;
    /// Longest a client's wait on chains may last; a longer one is shortened to it.
    pub const MAX_WAIT: Duration = Duration::from_secs(300);
    /// Waits (on chains, for a message's receiver) one connection may hold at once.
    pub const MAX_WAITS_PER_CONNECTION: usize = 16;
    /// Waits all connections of the cage may hold at once.
    pub const MAX_WAITS: usize = 1024;
    /// Bytes of frames in flight on one connection (four frames of the default size).
    pub const MAX_CONNECTION_BYTES: usize = 64 * 1024 * 1024;
    /// Bytes of frames in flight on all connections of the cage together.
    pub const MAX_INFLIGHT_BYTES: usize = 512 * 1024 * 1024;
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCageFile {
    listen: Spanned<String>,
    #[serde(default)]
    modules: Vec<Spanned<String>>,
    max_module_bytes: Option<Spanned<toml::Value>>,
    strict_methods: Option<bool>,
    data_dir: Option<PathBuf>,
    executor_threads: Option<Spanned<usize>>,
    call_timeout: Option<SpannedDuration>,
    reload_debounce: Option<SpannedDuration>,
    rescan_interval: Option<SpannedDuration>,
    max_frame_bytes: Option<Spanned<usize>>,
    max_connections: Option<Spanned<usize>>,
    idle_timeout: Option<SpannedDuration>,
    shutdown_grace: Option<SpannedDuration>,
    fdatasync: Option<bool>,
    commit_window: Option<SpannedDuration>,
    port_wait: Option<SpannedDuration>,
    http_listen: Option<Spanned<String>>,
    http_max_body: Option<Spanned<usize>>,
    queue_cache_mb: Option<Spanned<usize>>,
    max_wait: Option<SpannedDuration>,
    max_waits_per_connection: Option<Spanned<usize>>,
    max_waits: Option<Spanned<usize>>,
    max_connection_bytes: Option<Spanned<usize>>,
    max_inflight_bytes: Option<Spanned<usize>>,
    tls: Option<bool>,
    #[serde(default)]
    jobs: Vec<Spanned<RawJob>>,
    isolation: Option<Spanned<String>>,
    workers: Option<Spanned<usize>>,
    memory_limit: Option<Spanned<toml::Value>>,
    #[serde(default)]
    module_settings: BTreeMap<String, Spanned<RawModuleSettings>>,
}

/// `[module_settings.NAME]`: how one module runs, where it differs from the cage's.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModuleSettings {
    isolation: Option<Spanned<String>>,
    workers: Option<Spanned<usize>>,
    memory_limit: Option<Spanned<toml::Value>>,
}

/// Where a module's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// In worker processes of its own: a crash or hang fails only the call that caused it.
    Process,
    /// On the cage's executor threads: no hop, but a crash takes the cage down.
    InProcess,
}

impl Isolation {
    /// The setting's value as a file writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::InProcess => "in_process",
        }
    }
}

/// How one module runs: isolated or not, how many worker processes, how much memory each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleRunning {
    /// Worker processes or executor threads.
    pub isolation: Isolation,
    /// Most worker processes of the module at once (process isolation).
    pub workers: usize,
    /// Address space each worker may take, in bytes (none: unlimited).
    pub memory_limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJob {
    name: Spanned<String>,
    call: Spanned<String>,
    #[serde(default)]
    args: Option<toml::Value>,
    every: SpannedDuration,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    queue: Option<Spanned<String>>,
}

/// A recurring job declared in a cage file (`[[jobs]]`).
#[derive(Debug, Clone, PartialEq)]
pub struct DeclaredJob {
    /// Its name, unique in the file.
    pub name: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments.
    pub args: Vec<u8>,
    /// Time between runs.
    pub every: Duration,
    /// What to do about runs missed while the cage was down.
    pub catch_up: CatchUp,
    /// Queue the runs go through.
    pub queue: String,
}

/// A validated cage file.
#[derive(Debug, Clone)]
pub struct CageConfig {
    /// The cage's name (the file's stem).
    pub name: String,
    /// The file it was read from.
    pub path: PathBuf,
    /// Address the cage listens on (beyond loopback only with TLS).
    pub listen: SocketAddr,
    /// Serve mutual TLS with the key pair `config/keys/NAME.{crt,key}` against the cluster CA.
    pub tls: bool,
    /// Modules served, by name; each is `modules/lib<name>.so`.
    pub modules: Vec<String>,
    /// Largest module file read; a larger one is refused unread.
    pub max_module_bytes: u64,
    /// A new module version lacking methods that pending calls target is refused.
    pub strict_methods: bool,
    /// Where the cage keeps its state (absolute).
    pub data_dir: PathBuf,
    /// Worker threads running module code.
    pub executor_threads: usize,
    /// Longest a sync call may run when the caller does not say.
    pub call_timeout: Duration,
    /// How long a module file must stay unchanged before it is loaded.
    pub reload_debounce: Duration,
    /// How often module files are re-examined in case a file event was missed.
    pub rescan_interval: Duration,
    /// Largest frame accepted on the wire.
    pub max_frame_bytes: usize,
    /// Most connections served at once.
    pub max_connections: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// How long a stopping cage waits for calls under way.
    pub shutdown_grace: Duration,
    /// Sync the queue's journal to the device before acknowledging, so acknowledged calls
    /// survive power loss.
    pub fdatasync: bool,
    /// Longest a sync waits to gather more writers under load.
    pub commit_window: Duration,
    /// Recurring jobs declared in the file.
    pub jobs: Vec<DeclaredJob>,
    /// How long a message waits for its receiver to open the port.
    pub port_wait: Duration,
    /// Address of the HTTP API (loopback; port 0 picks a free one).
    pub http_listen: SocketAddr,
    /// Largest HTTP request body accepted.
    pub http_max_body: usize,
    /// Memory the queue database may use as its cache, in MiB.
    pub queue_cache_mb: usize,
    /// Longest a client's wait on chains may last; a longer one is shortened to it.
    pub max_wait: Duration,
    /// Waits one connection may hold at once.
    pub max_waits_per_connection: usize,
    /// Waits all connections may hold at once.
    pub max_waits: usize,
    /// Bytes of frames in flight on one connection (at least one `max_frame_bytes` frame).
    pub max_connection_bytes: usize,
    /// Bytes of frames in flight on all connections together (at least one frame).
    pub max_inflight_bytes: usize,
    /// How modules run unless `module_settings` says otherwise.
    pub running: ModuleRunning,
    /// How named modules run (`[module_settings.NAME]`), where they differ from `running`.
    pub module_settings: BTreeMap<String, ModuleRunning>,
}

impl CageConfig {
    /// How module `module` runs on this cage.
    pub fn running_of(&self, module: &str) -> ModuleRunning {
        self.module_settings
            .get(module)
            .copied()
            .unwrap_or(self.running)
    }
}

/// The isolation `value` names, or the error for `key`.
fn isolation(value: &str, key: &str) -> Result<Isolation, String> {
    match value {
        "process" => Ok(Isolation::Process),
        "in_process" => Ok(Isolation::InProcess),
        other => Err(format!(
            "{key}: expected \"process\" or \"in_process\", found {other:?}"
        )),
    }
}

/// The byte size `value` means: a number of bytes, or a text such as "512MiB" or "64MB";
/// refused outside `min..=max`.
fn byte_size(value: &toml::Value, min: u64, max: u64) -> Result<u64, String> {
    let expected = "expected a byte size such as \"512MiB\", \"64MB\" or a number of bytes";
    let bytes = match value {
        toml::Value::Integer(n) => {
            u64::try_from(*n).map_err(|_| format!("{expected}, found {n}"))?
        }
        toml::Value::String(text) => text
            .trim()
            .parse::<bytesize::ByteSize>()
            .map_err(|_| format!("{expected}, found {text:?}"))?
            .as_u64(),
        other => return Err(format!("{expected}, found {}", other.type_str())),
    };
    let show = |n: u64| format!("{} ({n} bytes)", bytesize::ByteSize(n));
    if bytes < min {
        Err(format!(
            "must be at least {}, found {}",
            show(min),
            show(bytes)
        ))
    } else if bytes > max {
        Err(format!(
            "must be at most {}, found {}",
            show(max),
            show(bytes)
        ))
    } else {
        Ok(bytes)
    }
}

/// Whether `name` can name a cage or module: letters, digits, `-` and `_` ([`crate::names`]).
pub fn valid_name(name: &str) -> bool {
    names::is_valid(NameKind::Cage, name)
}

impl CageConfig {
    /// Parses and validates the cage file `path` of cage `name` in `site`.
    pub fn parse(name: &str, path: &Path, site: &Path, source: &str) -> Result<Self, ConfigError> {
        let raw: RawCageFile =
            toml::from_str(source).map_err(|e| ConfigError::from_toml(path, source, &e))?;
        let at = |span: std::ops::Range<usize>, reason: String| {
            ConfigError::at(path, source, span.start, reason)
        };

        let listen: SocketAddr = raw.listen.get_ref().parse().map_err(|_| {
            at(
                raw.listen.span(),
                format!(
                    "listen: expected an address such as \"127.0.0.1:7401\", found {:?}",
                    raw.listen.get_ref()
                ),
            )
        })?;
        let tls = raw.tls.unwrap_or(false);
        if !listen.ip().is_loopback() && !tls {
            return Err(at(
                raw.listen.span(),
                format!("listen: {listen} is not a loopback address; listening beyond this host needs TLS: set `tls = true` (and run `cage keys issue {name}`), or listen on 127.0.0.1"),
            ));
        }

        let mut modules = Vec::new();
        for m in &raw.modules {
            let module = m.get_ref();
            names::check(NameKind::Module, module)
                .map_err(|e| at(m.span(), format!("modules: {e}")))?;
            if modules.contains(module) {
                return Err(at(m.span(), format!("modules: {module:?} is listed twice")));
            }
            modules.push(module.clone());
        }

        let http_listen: SocketAddr = match &raw.http_listen {
            None => SocketAddr::from(([127, 0, 0, 1], 0)),
            Some(h) => {
                let addr: SocketAddr = h.get_ref().parse().map_err(|_| {
                    at(h.span(), format!("http_listen: expected an address such as \"127.0.0.1:7501\", found {:?}", h.get_ref()))
                })?;
                if !addr.ip().is_loopback() {
                    return Err(at(h.span(), format!("http_listen: {addr} is not a loopback address; the HTTP API serves this host only")));
                }
                addr
            }
        };
        let mut jobs: Vec<DeclaredJob> = Vec::new();
        for j in &raw.jobs {
            let r = j.get_ref();
            let name = r.name.get_ref();
            names::check(NameKind::Job, name)
                .map_err(|e| at(r.name.span(), format!("jobs: {e}")))?;
            if jobs.iter().any(|d| d.name == *name) {
                return Err(at(
                    r.name.span(),
                    format!("jobs: two jobs are named {name:?}"),
                ));
            }
            let Some((module, method)) = r
                .call
                .get_ref()
                .split_once('.')
                .filter(|(m, f)| !m.is_empty() && !f.is_empty())
            else {
                return Err(at(
                    r.call.span(),
                    format!(
                        "jobs.{name}.call: expected MODULE.METHOD, found {:?}",
                        r.call.get_ref()
                    ),
                ));
            };
            names::check(NameKind::Module, module)
                .and_then(|()| names::check(NameKind::Method, method))
                .map_err(|e| at(r.call.span(), format!("jobs.{name}.call: {e}")))?;
            let every = ranges::duration(
                &Some(r.every.clone()),
                &format!("jobs.{name}.every"),
                ranges::JOB_EVERY,
                Duration::ZERO,
                &at,
            )?;
            let queue = match &r.queue {
                None => super::DEFAULT_QUEUE.to_owned(),
                Some(q) => {
                    names::check(NameKind::Queue, q.get_ref())
                        .map_err(|e| at(q.span(), format!("jobs.{name}.queue: {e}")))?;
                    q.get_ref().clone()
                }
            };
            let args = match &r.args {
                Some(v) => serde_json::to_vec(v)
                    .map_err(|e| at(j.span(), format!("jobs.{name}.args: {e}")))?,
                None => b"null".to_vec(),
            };
            jobs.push(DeclaredJob {
                name: name.clone(),
                module: module.to_owned(),
                method: method.to_owned(),
                args,
                every,
                catch_up: r.catch_up,
                queue,
            });
        }
        // The least is an ELF header; the most bounds the memory one load takes, since a file is
        // held whole while it is checked and copied.
        let max_module_bytes = match &raw.max_module_bytes {
            None => CageFileDefaults::MAX_MODULE_BYTES,
            Some(v) => byte_size(v.get_ref(), 64, 4 * 1024 * 1024 * 1024)
                .map_err(|reason| at(v.span(), format!("max_module_bytes: {reason}")))?,
        };
        let executor_threads = ranges::count(
            &raw.executor_threads,
            "executor_threads",
            ranges::EXECUTOR_THREADS,
            CageFileDefaults::EXECUTOR_THREADS,
            &at,
        )?;
        let running_at = |prefix: &str,
                          base: ModuleRunning,
                          iso: &Option<Spanned<String>>,
                          workers: &Option<Spanned<usize>>,
                          memory: &Option<Spanned<toml::Value>>|
         -> Result<ModuleRunning, ConfigError> {
            let isolation = match iso {
                None => base.isolation,
                Some(i) => isolation(i.get_ref(), &format!("{prefix}isolation"))
                    .map_err(|reason| at(i.span(), reason))?,
            };
            let workers = ranges::count(
                workers,
                &format!("{prefix}workers"),
                ranges::WORKERS,
                base.workers,
                &at,
            )?;
            let memory_limit = match memory {
                None => base.memory_limit,
                Some(v) => Some(
                    byte_size(
                        v.get_ref(),
                        ranges::MEMORY_LIMIT.min,
                        ranges::MEMORY_LIMIT.max,
                    )
                    .map_err(|reason| at(v.span(), format!("{prefix}memory_limit: {reason}")))?,
                ),
            };
            Ok(ModuleRunning {
                isolation,
                workers,
                memory_limit,
            })
        };
        let defaults = ModuleRunning {
            isolation: Isolation::Process,
            workers: executor_threads,
            memory_limit: None,
        };
        let running = running_at(
            "",
            defaults,
            &raw.isolation,
            &raw.workers,
            &raw.memory_limit,
        )?;
        let mut module_settings = BTreeMap::new();
        for (module, settings) in &raw.module_settings {
            names::check(NameKind::Module, module)
                .map_err(|e| at(settings.span(), format!("module_settings: {e}")))?;
            let r = settings.get_ref();
            let prefix = format!("module_settings.{module}.");
            module_settings.insert(
                module.clone(),
                running_at(&prefix, running, &r.isolation, &r.workers, &r.memory_limit)?,
            );
        }
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("data").join(name));
        Ok(CageConfig {
            name: name.to_owned(),
            path: path.to_owned(),
            listen,
            tls,
            modules,
            max_module_bytes,
            strict_methods: raw.strict_methods.unwrap_or(false),
            data_dir: if data_dir.is_absolute() {
                data_dir
            } else {
                site.join(data_dir)
            },
            executor_threads,
            call_timeout: ranges::duration(
                &raw.call_timeout,
                "call_timeout",
                ranges::CALL_TIMEOUT,
                CageFileDefaults::CALL_TIMEOUT,
                &at,
            )?,
            reload_debounce: ranges::duration(
                &raw.reload_debounce,
                "reload_debounce",
                ranges::RELOAD_DEBOUNCE,
                CageFileDefaults::RELOAD_DEBOUNCE,
                &at,
            )?,
            rescan_interval: ranges::duration(
                &raw.rescan_interval,
                "rescan_interval",
                ranges::RESCAN_INTERVAL,
                CageFileDefaults::RESCAN_INTERVAL,
                &at,
            )?,
            max_frame_bytes: ranges::count(
                &raw.max_frame_bytes,
                "max_frame_bytes",
                ranges::MAX_FRAME_BYTES,
                CageFileDefaults::MAX_FRAME_BYTES,
                &at,
            )?,
            max_connections: ranges::count(
                &raw.max_connections,
                "max_connections",
                ranges::MAX_CONNECTIONS,
                CageFileDefaults::MAX_CONNECTIONS,
                &at,
            )?,
            idle_timeout: ranges::duration(
                &raw.idle_timeout,
                "idle_timeout",
                ranges::IDLE_TIMEOUT,
                CageFileDefaults::IDLE_TIMEOUT,
                &at,
            )?,
            shutdown_grace: ranges::duration(
                &raw.shutdown_grace,
                "shutdown_grace",
                ranges::SHUTDOWN_GRACE,
                CageFileDefaults::SHUTDOWN_GRACE,
                &at,
            )?,
            fdatasync: raw.fdatasync.unwrap_or(true),
            commit_window: ranges::duration(
                &raw.commit_window,
                "commit_window",
                ranges::COMMIT_WINDOW,
                CageFileDefaults::COMMIT_WINDOW,
                &at,
            )?,
            jobs,
            port_wait: ranges::duration(
                &raw.port_wait,
                "port_wait",
                ranges::PORT_WAIT,
                CageFileDefaults::PORT_WAIT,
                &at,
            )?,
            http_listen,
            http_max_body: ranges::count(
                &raw.http_max_body,
                "http_max_body",
                ranges::HTTP_MAX_BODY,
                CageFileDefaults::HTTP_MAX_BODY,
                &at,
            )?,
            queue_cache_mb: ranges::count(
                &raw.queue_cache_mb,
                "queue_cache_mb",
                ranges::QUEUE_CACHE_MB,
                CageFileDefaults::QUEUE_CACHE_MB,
                &at,
            )?,
            max_wait: ranges::duration(
                &raw.max_wait,
                "max_wait",
                ranges::MAX_WAIT,
                CageFileDefaults::MAX_WAIT,
                &at,
            )?,
            max_waits_per_connection: ranges::count(
                &raw.max_waits_per_connection,
                "max_waits_per_connection",
                ranges::MAX_WAITS_PER_CONNECTION,
                CageFileDefaults::MAX_WAITS_PER_CONNECTION,
                &at,
            )?,
            max_waits: ranges::count(
                &raw.max_waits,
                "max_waits",
                ranges::MAX_WAITS,
                CageFileDefaults::MAX_WAITS,
                &at,
            )?,
            max_connection_bytes: ranges::count(
                &raw.max_connection_bytes,
                "max_connection_bytes",
                ranges::MAX_CONNECTION_BYTES,
                CageFileDefaults::MAX_CONNECTION_BYTES,
                &at,
            )?,
            max_inflight_bytes: ranges::count(
                &raw.max_inflight_bytes,
                "max_inflight_bytes",
                ranges::MAX_INFLIGHT_BYTES,
                CageFileDefaults::MAX_INFLIGHT_BYTES,
                &at,
            )?,
            running,
            module_settings,
        })
    }
}

/// Settings of one instance of a cage that differ from its file: a second instance of the
/// same cage on this host needs its own addresses and data directory.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceOverrides {
    /// Address to listen on instead of the file's `listen`.
    pub listen: Option<SocketAddr>,
    /// Address of the HTTP API instead of the file's `http_listen`.
    pub http_listen: Option<SocketAddr>,
    /// Data directory instead of the file's `data_dir` (relative: to the site).
    pub data_dir: Option<PathBuf>,
}

impl InstanceOverrides {
    /// `config` with these overrides, checked as the file's own settings are.
    pub fn apply(&self, mut config: CageConfig, site: &Path) -> Result<CageConfig, ConfigError> {
        let loopback = |flag: &'static str, addr: SocketAddr, why: &str| {
            if addr.ip().is_loopback() {
                Ok(addr)
            } else {
                Err(ConfigError::Override {
                    flag,
                    value: addr.to_string(),
                    reason: format!("not a loopback address; {why}"),
                })
            }
        };
        if let Some(a) = self.listen {
            config.listen = if config.tls {
                a
            } else {
                loopback(
                    "--listen",
                    a,
                    "listening beyond this host needs TLS: set `tls = true` in the cage file",
                )?
            };
        }
        if let Some(a) = self.http_listen {
            config.http_listen =
                loopback("--http-listen", a, "the HTTP API serves this host only")?;
        }
        if let Some(d) = &self.data_dir {
            config.data_dir = if d.is_absolute() {
                d.clone()
            } else {
                site.join(d)
            };
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<CageConfig, ConfigError> {
        CageConfig::parse(
            "demo",
            Path::new("cages/demo.toml"),
            Path::new("/site"),
            src,
        )
    }

    #[test]
    fn minimal_file_takes_defaults() {
        let c = parse("listen = \"127.0.0.1:7401\"\nmodules = [\"echo\"]\n").unwrap();
        assert_eq!(c.listen.port(), 7401);
        assert_eq!(c.modules, vec!["echo"]);
        assert_eq!(c.data_dir, PathBuf::from("/site/data/demo"));
        assert_eq!(c.executor_threads, CageFileDefaults::EXECUTOR_THREADS);
        assert_eq!(c.queue_cache_mb, CageFileDefaults::QUEUE_CACHE_MB);
        let c = parse("listen = \"127.0.0.1:7401\"\nqueue_cache_mb = 64\n").unwrap();
        assert_eq!(c.queue_cache_mb, 64);
        let e = parse("listen = \"127.0.0.1:7401\"\nqueue_cache_mb = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("cages/demo.toml:2:") && e.contains("queue_cache_mb"),
            "{e}"
        );
    }

    #[test]
    fn max_module_bytes_takes_sizes_and_numbers_in_range() {
        let c = |v: &str| {
            parse(&format!(
                "listen = \"127.0.0.1:7401\"\nmax_module_bytes = {v}\n"
            ))
        };
        assert_eq!(
            parse("listen = \"127.0.0.1:7401\"\n")
                .unwrap()
                .max_module_bytes,
            512 * 1024 * 1024
        );
        assert_eq!(c("\"512MiB\"").unwrap().max_module_bytes, 512 * 1024 * 1024);
        assert_eq!(c("\"64MB\"").unwrap().max_module_bytes, 64_000_000);
        assert_eq!(c("\"1 GiB\"").unwrap().max_module_bytes, 1 << 30);
        assert_eq!(c("1048576").unwrap().max_module_bytes, 1 << 20);
        for (bad, reason) in [
            ("\"lots\"", "expected a byte size such as \"512MiB\""),
            ("\"12 potatoes\"", "found \"12 potatoes\""),
            ("-1", "found -1"),
            ("1.5", "found float"),
            ("0", "must be at least 64 B (64 bytes), found 0 B (0 bytes)"),
            (
                "\"5GiB\"",
                "must be at most 4.0 GiB (4294967296 bytes), found 5.0 GiB",
            ),
            ("\"99EiB\"", "must be at most 4.0 GiB"),
        ] {
            let e = c(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("cages/demo.toml:2:20") && e.contains(reason),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_reason() {
        let e = parse("listen = \"127.0.0.1:7401\"\nexecutor_threads = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cages/demo.toml:2:"), "{e}");
        assert!(e.contains("expected usize"), "{e}");

        let e = parse("listen = \"127.0.0.1:7401\"\n\ncall_timeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cages/demo.toml:3:"), "{e}");

        let e = parse("listen = \"127.0.0.1:7401\"\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cages/demo.toml:2:1"), "{e}");
        assert!(e.contains("unknown field `lisen`"), "{e}");
    }

    #[test]
    fn instance_overrides_replace_addresses_and_data_dir() {
        let c = parse("listen = \"127.0.0.1:7401\"\n").unwrap();
        let o = InstanceOverrides {
            listen: Some("127.0.0.1:7411".parse().unwrap()),
            http_listen: None,
            data_dir: Some(PathBuf::from("data/demo-2")),
        };
        let c = o.apply(c, Path::new("/site")).unwrap();
        assert_eq!(c.listen.port(), 7411);
        assert_eq!(c.data_dir, PathBuf::from("/site/data/demo-2"));
        let far = InstanceOverrides {
            listen: Some("0.0.0.0:7411".parse().unwrap()),
            ..InstanceOverrides::default()
        };
        let e = far
            .apply(
                parse("listen = \"127.0.0.1:7401\"\n").unwrap(),
                Path::new("/site"),
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--listen 0.0.0.0:7411: not a loopback address"),
            "{e}"
        );
    }

    #[test]
    fn refuses_non_loopback_and_bad_names() {
        let e = parse("listen = \"0.0.0.0:7401\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cages/demo.toml:1:10") && e.contains("not a loopback"),
            "{e}"
        );
        let e = parse("listen = \"127.0.0.1:7401\"\nmodules = [\"ok\", \"bad name\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cages/demo.toml:2:18") && e.contains("not a module name"),
            "{e}"
        );
        let e = parse("listen = \"127.0.0.1:7401\"\nexecutor_threads = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cages/demo.toml:2:20")
                && e.contains("executor_threads: 0 is out of range (allowed: 1 to 1024)"),
            "{e}"
        );
        let e = parse("listen = \"127.0.0.1:7401\"\nmodules = [\"../evil\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cages/demo.toml:2:12: modules: \"../evil\" is not a module name: it holds a path separator '/'"),
            "{e}"
        );
    }

    #[test]
    fn harmful_values_are_refused_where_they_stand() {
        let cases = [
            (
                "executor_threads = 100000000",
                "executor_threads: 100000000 is out of range (allowed: 1 to 1024)",
            ),
            (
                "queue_cache_mb = 17592186044416",
                "queue_cache_mb: 17592186044416 is out of range (allowed: 1 to 65536)",
            ),
            (
                "idle_timeout = \"0s\"",
                "idle_timeout: 0s is out of range (allowed: 1s to 1day)",
            ),
            (
                "rescan_interval = \"0s\"",
                "rescan_interval: 0s is out of range (allowed: 100ms to 1h)",
            ),
            (
                "call_timeout = \"0s\"",
                "call_timeout: 0s is out of range (allowed: 10ms to 1day)",
            ),
            (
                "max_frame_bytes = 10",
                "max_frame_bytes: 10 is out of range (allowed: 4096 to 1073741824)",
            ),
            ("max_connections = 0", "max_connections: 0 is out of range"),
            (
                "http_max_body = 5000000000",
                "http_max_body: 5000000000 is out of range",
            ),
            (
                "commit_window = \"1h\"",
                "commit_window: 1h is out of range (allowed: 0s to 1s)",
            ),
            (
                "shutdown_grace = \"2days\"",
                "shutdown_grace: 2days is out of range",
            ),
            ("port_wait = \"2h\"", "port_wait: 2h is out of range"),
            (
                "reload_debounce = \"10m\"",
                "reload_debounce: 10m is out of range",
            ),
        ];
        for (line, says) in cases {
            let e = parse(&format!("listen = \"127.0.0.1:7401\"\n{line}\n"))
                .unwrap_err()
                .to_string();
            let column = line.find('=').unwrap() + 3;
            assert!(
                e.starts_with(&format!("cages/demo.toml:2:{column}: {says}")),
                "{line}: {e}"
            );
        }
        let job = |every: &str, call: &str, queue: &str| {
            parse(&format!("listen = \"127.0.0.1:7401\"\n[[jobs]]\nname = \"tick\"\ncall = \"{call}\"\nevery = \"{every}\"\nqueue = \"{queue}\"\n"))
        };
        assert!(job("1s", "echo.append", "retry").is_ok());
        let e = job("0s", "echo.append", "retry").unwrap_err().to_string();
        assert!(e.starts_with("cages/demo.toml:5:9: jobs.tick.every: 0s is out of range (allowed: 100ms to 1year)"), "{e}");
        let e = job("1s", "echo.ap/pend", "retry").unwrap_err().to_string();
        assert!(
            e.starts_with("cages/demo.toml:4:8: jobs.tick.call: \"ap/pend\" is not a method name"),
            "{e}"
        );
        let e = job("1s", "echo.append", "../q").unwrap_err().to_string();
        assert!(
            e.starts_with("cages/demo.toml:6:9: jobs.tick.queue: \"../q\" is not a queue name"),
            "{e}"
        );
    }

    #[test]
    fn declared_jobs_parse_and_are_checked() {
        let c = parse("listen = \"127.0.0.1:7401\"\n[[jobs]]\nname = \"tick\"\ncall = \"echo.append\"\nargs = { file = \"/tmp/x\" }\nevery = \"2s\"\ncatch_up = \"all\"\n").unwrap();
        assert_eq!(c.jobs.len(), 1);
        assert_eq!(
            (c.jobs[0].module.as_str(), c.jobs[0].method.as_str()),
            ("echo", "append")
        );
        assert_eq!(c.jobs[0].args, br#"{"file":"/tmp/x"}"#);
        assert_eq!(c.jobs[0].catch_up, CatchUp::All);
        let e = parse("listen = \"127.0.0.1:7401\"\n[[jobs]]\nname = \"tick\"\ncall = \"echo\"\nevery = \"2s\"\n").unwrap_err().to_string();
        assert!(
            e.contains("cages/demo.toml:4:8") && e.contains("expected MODULE.METHOD"),
            "{e}"
        );
        let e = parse("listen = \"127.0.0.1:7401\"\n[[jobs]]\nname = \"tick\"\ncall = \"echo.x\"\nevery = \"2s\"\ncatch_up = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains("cages/demo.toml:6:"), "{e}");
    }

    #[test]
    fn a_declared_job_beyond_the_horizon_is_refused() {
        let e = parse("listen = \"127.0.0.1:7401\"\n[[jobs]]\nname = \"tick\"\ncall = \"echo.x\"\nevery = \"8000years\"\n").unwrap_err().to_string();
        assert!(
            e.contains("cages/demo.toml:5:")
                && e.contains(
                    "jobs.tick.every: 8000years is out of range (allowed: 100ms to 1year)"
                ),
            "{e}"
        );
    }

    #[test]
    fn isolation_workers_and_memory_limit_have_defaults_and_per_module_overrides() {
        let c = parse("listen = \"127.0.0.1:7401\"\nexecutor_threads = 4\n").unwrap();
        let expected = ModuleRunning {
            isolation: Isolation::Process,
            workers: 4,
            memory_limit: None,
        };
        assert_eq!(c.running_of("echo"), expected);
        let c = parse(
            "listen = \"127.0.0.1:7401\"\nworkers = 2\nmemory_limit = \"512MB\"\n\
             [module_settings.fast]\nisolation = \"in_process\"\n\
             [module_settings.big]\nmemory_limit = \"2GiB\"\nworkers = 6\n",
        )
        .unwrap();
        assert_eq!(
            c.running_of("echo"),
            ModuleRunning {
                isolation: Isolation::Process,
                workers: 2,
                memory_limit: Some(512_000_000),
            }
        );
        assert_eq!(c.running_of("fast").isolation, Isolation::InProcess);
        assert_eq!(c.running_of("fast").workers, 2);
        assert_eq!(
            c.running_of("big"),
            ModuleRunning {
                isolation: Isolation::Process,
                workers: 6,
                memory_limit: Some(2 << 30),
            }
        );
        for (src, says) in [
            (
                "isolation = \"thread\"",
                "cages/demo.toml:2:13: isolation: expected \"process\" or \"in_process\", found \"thread\"",
            ),
            (
                "workers = 0",
                "cages/demo.toml:2:11: workers: 0 is out of range (allowed: 1 to 1024)",
            ),
            (
                "memory_limit = \"lots\"",
                "cages/demo.toml:2:16: memory_limit: expected a byte size",
            ),
            (
                "memory_limit = \"1MB\"",
                "cages/demo.toml:2:16: memory_limit: must be at least 64.0 MiB",
            ),
            (
                "[module_settings.big]\nworkers = 5000",
                "cages/demo.toml:3:11: module_settings.big.workers: 5000 is out of range",
            ),
            (
                "[module_settings.big]\nisolation = \"none\"",
                "cages/demo.toml:3:13: module_settings.big.isolation: expected",
            ),
            (
                "[module_settings.big]\nthreads = 1",
                "cages/demo.toml:3:1: unknown field `threads`",
            ),
        ] {
            let e = parse(&format!("listen = \"127.0.0.1:7401\"\n{src}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(says), "{src}: {e}");
        }
    }

    #[test]
    fn missing_listen_is_reported() {
        let e = parse("modules = []\n").unwrap_err().to_string();
        assert!(e.contains("missing field `listen`"), "{e}");
    }
}
