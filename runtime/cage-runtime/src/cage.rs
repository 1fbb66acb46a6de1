//! Wiring of one running cage: read its configuration, start the registry, executor and
//! listener actors, serve until told to stop.

use crate::chains::ChainWatch;
use crate::config::Isolation;
use crate::config::{CageConfig, ConfigError, ExecuteOn, InstanceOverrides, Site};
use crate::delivery::Delivery;
use crate::discovery::Responder;
use crate::dispatch::{Dispatcher, Load};
use crate::executor::{CallExecutor, ExecutorSettings};
use crate::host::{HostEnv, OwnCage, SpareWorkers, StateLocks};
use crate::listener::{Door, Limits, Listener, StopListening};
use crate::loader::library::Probe;
use crate::messaging::Mailboxes;
use crate::metrics::Metrics;
use crate::peers::Peers;
use crate::queue::{GroupCommit, QueueError, QueueStore};
use crate::registry::{ModuleRegistry, WatchSettings};
use crate::scheduler::{JobsDeclared, Pause, Scheduler, Stop};
use crate::transport::credential::{CredentialError, SiteSecret};
use crate::transport::tls::Identity;
use crate::worker::process::Spawn;
use actix::{Actor, Addr};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a cage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configuration file is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The listen address could not be bound.
    #[error("cage {cage}: cannot listen on {addr} (listen in {}): {source}", file.display())]
    Listen {
        /// The cage.
        cage: String,
        /// The address.
        addr: SocketAddr,
        /// The cage file naming it.
        file: PathBuf,
        /// The bind error.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("cage {cage}: cannot create data directory {}: {source}", path.display())]
    DataDir {
        /// The cage.
        cage: String,
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The durable queue could not be opened.
    #[error("cage {cage}: cannot open its queue: {source}{}", open_hint(source))]
    Queue {
        /// The cage.
        cage: String,
        /// The error.
        source: crate::queue::QueueError,
    },
    /// The cage serves TLS but its keys are not usable.
    #[error("cage {cage}: cannot serve TLS (tls = true in {}): {source}", file.display())]
    Tls {
        /// The cage.
        cage: String,
        /// Its cage file.
        file: PathBuf,
        /// What is wrong with the keys.
        source: crate::transport::tls::TlsError,
    },
    /// The cage serves plain TCP but the site credential cannot be read or made.
    #[error("cage {cage}: cannot open its door to callers: {source}")]
    Credential {
        /// The cage.
        cage: String,
        /// What is wrong with the credential file.
        source: CredentialError,
    },
    /// Executor threads could not be started.
    #[error("cage {cage}: cannot start executor threads: {source}")]
    Executor {
        /// The cage.
        cage: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What to suggest when a queue does not open: sled's own errors are mostly a held lock.
fn open_hint(e: &crate::queue::QueueError) -> &'static str {
    match e {
        crate::queue::QueueError::Storage { .. } => " (is another process running this cage?)",
        _ => "",
    }
}

/// A cage whose configuration is read and whose socket is bound, ready to serve.
pub struct PreparedCage {
    config: CageConfig,
    env: Arc<HostEnv>,
    /// The cluster map read at start (the live one is in `env.peers`).
    execute_on: ExecuteOn,
    socket: std::net::TcpListener,
    http: std::net::TcpListener,
    store: Arc<QueueStore>,
    commit: Arc<GroupCommit>,
    door: Door,
}

impl PreparedCage {
    /// Reads and checks cage `name` of `site` and binds its listen address.
    pub fn prepare(site: &Site, name: &str) -> Result<Self, StartError> {
        Self::prepare_instance(site, name, &InstanceOverrides::default())
    }

    /// Like [`PreparedCage::prepare`], for an instance whose addresses or data directory
    /// differ from the cage file's.
    pub fn prepare_instance(
        site: &Site,
        name: &str,
        overrides: &InstanceOverrides,
    ) -> Result<Self, StartError> {
        let config = overrides.apply(site.cage(name)?, site.root())?;
        let execute_on = site.execute_on()?;
        // Keys are checked before anything is bound or opened: a cage that cannot prove who it
        // is does not start.
        // Over plain TCP, the site credential is every caller's key (made on first use).
        let door = match config.tls {
            false => Door::Secret(SiteSecret::of_keys_dir(&site.keys_dir()).map_err(|source| {
                StartError::Credential {
                    cage: name.to_owned(),
                    source,
                }
            })?),
            true => Door::Tls(
                Identity::new(name, &site.keys_dir())
                    .server_config()
                    .map_err(|source| StartError::Tls {
                        cage: name.to_owned(),
                        file: config.path.clone(),
                        source,
                    })?,
            ),
        };
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            cage: name.to_owned(),
            path: config.data_dir.clone(),
            source,
        })?;
        let socket =
            std::net::TcpListener::bind(config.listen).map_err(|source| StartError::Listen {
                cage: name.to_owned(),
                addr: config.listen,
                file: config.path.clone(),
                source,
            })?;
        let http = std::net::TcpListener::bind(config.http_listen).map_err(|source| {
            StartError::Listen {
                cage: name.to_owned(),
                addr: config.http_listen,
                file: config.path.clone(),
                source,
            }
        })?;
        let api_addr = http.local_addr().map_err(|source| StartError::Listen {
            cage: name.to_owned(),
            addr: config.http_listen,
            file: config.path.clone(),
            source,
        })?;
        let queue_dir = config.data_dir.join("queue");
        let queue_error = |source| StartError::Queue {
            cage: name.to_owned(),
            source,
        };
        let cache = config.queue_cache_mb as u64 * 1024 * 1024;
        let store = Arc::new(open_queue(name, &queue_dir, cache).map_err(queue_error)?);
        // Before anything is stored or started: which queues keep order decides what is indexed.
        store
            .set_rules(crate::scheduler::store_rules(&execute_on))
            .map_err(queue_error)?;
        let commit = Arc::new(
            GroupCommit::start(&store, config.fdatasync, config.commit_window)
                .map_err(queue_error)?,
        );
        let env = Arc::new(HostEnv {
            cage: name.to_owned(),
            site: site.clone(),
            peers: Arc::new(Peers::new(site.clone(), execute_on.clone())),
            own: OwnCage::default(),
            listen: config.listen,
            tls: config.tls,
            mailboxes: Arc::new(Mailboxes::new(name)),
            port_wait: config.port_wait,
            api_url: format!("http://{api_addr}"),
            client_path: site.root().join("clients/python").display().to_string(),
            store: store.clone(),
            state_locks: StateLocks::default(),
            chains: Arc::new(ChainWatch::default()),
            spare: SpareWorkers::default(),
            metrics: Arc::new(Metrics::default()),
        });
        Ok(PreparedCage {
            config,
            env,
            execute_on,
            socket,
            http,
            store,
            commit,
            door,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Starts the actors on the current actix system; returns once they are running.
    pub fn start(self) -> Result<CageHandle, StartError> {
        let c = &self.config;
        let started = Instant::now();
        let worker_exe = std::env::current_exe().map_err(|source| StartError::Executor {
            cage: c.name.clone(),
            source,
        })?;
        let probe: Probe = {
            let (exe, config) = (worker_exe.clone(), c.clone());
            Arc::new(move |module: &str, copy: &std::path::Path| {
                let running = config.running_of(module);
                (running.isolation == Isolation::Process).then(|| {
                    crate::worker::process::probe(&Spawn {
                        exe: exe.clone(),
                        cage: config.name.clone(),
                        module: module.to_owned(),
                        copy: copy.to_owned(),
                        memory_limit: running.memory_limit,
                    })
                })
            })
        };
        let registry = ModuleRegistry::new(
            &c.name,
            &c.modules,
            &self.env.site.modules_dir(),
            &c.data_dir.join("loaded-modules"),
            WatchSettings {
                debounce: c.reload_debounce,
                rescan: c.rescan_interval,
                max_module_bytes: c.max_module_bytes,
                probe: Some(probe),
                in_use: Some({
                    let store = self.store.clone();
                    Arc::new(move |module: &str| {
                        store.pending_methods(module).unwrap_or_else(|e| {
                            tracing::error!(
                                module,
                                "cannot count the pending calls per method: {e}"
                            );
                            Default::default()
                        })
                    })
                }),
                strict_methods: c.strict_methods,
            },
        )
        .start();
        let settings = ExecutorSettings {
            threads: c.executor_threads,
            running: c.running,
            modules: c.module_settings.clone(),
            worker_exe,
        };
        let executor = CallExecutor::new(settings, self.env.clone())
            .map_err(|source| StartError::Executor {
                cage: c.name.clone(),
                source,
            })?
            .start();
        let delivery = Arc::new(Delivery::new(self.env.peers.clone()));
        let scheduler = Scheduler::new(
            &c.name,
            self.store.clone(),
            self.commit.clone(),
            self.execute_on.clone(),
            registry.clone(),
            executor.clone(),
            delivery.clone(),
            self.env.chains.clone(),
            self.env.metrics.clone(),
        )
        .with_isolation({
            let config = c.clone();
            Arc::new(move |module: &str| config.running_of(module).isolation)
        })
        .start();
        scheduler.do_send(JobsDeclared(c.jobs.clone()));
        crate::config_watch::watch(
            self.env.site.clone(),
            c,
            &self.execute_on,
            self.env.peers.clone(),
            scheduler.clone(),
        );
        let load = Arc::new(Load::default());
        let dispatcher = Dispatcher {
            cage: c.name.clone(),
            registry,
            executor,
            scheduler: scheduler.clone(),
            mailboxes: self.env.mailboxes.clone(),
            port_wait: c.port_wait,
            max_wait: c.max_wait,
            // A frame larger than the budget could never be read: it is at least one frame.
            in_flight_bytes: crate::transport::budget::Budget::new(
                c.max_inflight_bytes.max(c.max_frame_bytes),
            ),
            waits: crate::transport::waits::CageWaits::new(c.max_waits),
            default_timeout: c.call_timeout,
            started,
            load: load.clone(),
            store: self.store.clone(),
            chains: self.env.chains.clone(),
            metrics: self.env.metrics.clone(),
            queues: self.execute_on.queues.keys().cloned().collect(),
            peers: self.env.peers.clone(),
        };
        // A module's requests to this cage's own queue are answered by the dispatcher in
        // process, on this arbiter, as a client's over the listener would be.
        let arbiter = actix_rt::Arbiter::current();
        let own = dispatcher.clone();
        self.env.own.install(move |request, reply| {
            let own = own.clone();
            arbiter.spawn_fn(move || {
                actix_rt::spawn(async move { reply(own.handle(request).await) });
            });
        });
        self.socket
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen {
                cage: c.name.clone(),
                addr: c.listen,
                file: c.path.clone(),
                source,
            })?;
        let socket = tokio::net::TcpListener::from_std(self.socket).map_err(|source| {
            StartError::Listen {
                cage: c.name.clone(),
                addr: c.listen,
                file: c.path.clone(),
                source,
            }
        })?;
        let limits = Limits {
            max_frame_bytes: c.max_frame_bytes,
            max_connections: c.max_connections,
            idle_timeout: c.idle_timeout,
            max_connection_bytes: c.max_connection_bytes,
            max_waits_per_connection: c.max_waits_per_connection,
        };
        let responder = discovery_responder(c, socket.local_addr().ok(), &self.execute_on);
        let listener = Listener::new(socket, dispatcher, limits, self.door).start();
        crate::api::start(self.http, self.env.clone(), c.http_max_body).map_err(|source| {
            StartError::Listen {
                cage: c.name.clone(),
                addr: c.http_listen,
                file: c.path.clone(),
                source,
            }
        })?;
        tracing::info!(cage = %c.name, "HTTP API on {}", self.env.api_url);
        tracing::info!(cage = %c.name, "listening on {}{}, serving {} with {} executor threads", c.listen, if c.tls { " (mutual TLS)" } else { " (site credential)" }, if c.modules.is_empty() { "no modules".to_owned() } else { c.modules.join(", ") }, c.executor_threads);
        Ok(CageHandle {
            name: c.name.clone(),
            listener,
            scheduler,
            store: self.store.clone(),
            load,
            grace: c.shutdown_grace,
            responder,
        })
    }
}

/// Answers discovery queries for cage `c` listening at `bound`, if the site has discovery
/// on. A socket that cannot be set up is a warning: the cage serves on, reachable by those
/// that list it.
fn discovery_responder(
    c: &CageConfig,
    bound: Option<SocketAddr>,
    execute_on: &crate::config::ExecuteOn,
) -> Option<Responder> {
    let me = crate::discovery::Identity {
        cage: c.name.clone(),
        listen: bound.unwrap_or(c.listen),
        tls: c.tls,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    Responder::start(me, &execute_on.unknown).unwrap_or_else(|e| {
        tracing::warn!(cage = %c.name, "{e}; cages that do not list this one will not find it");
        None
    })
}

/// A started cage, to stop gracefully.
pub struct CageHandle {
    name: String,
    listener: Addr<Listener>,
    scheduler: Addr<Scheduler>,
    store: Arc<QueueStore>,
    load: Arc<Load>,
    grace: Duration,
    responder: Option<Responder>,
}

impl CageHandle {
    /// Stops taking calls and waits up to the cage's `shutdown_grace` for calls under way;
    /// returns how many were still running when it gave up.
    pub async fn shutdown(mut self) -> usize {
        self.load.drain();
        if let Some(r) = self.responder.take() {
            // Joining waits for the answering thread's next wake-up: not on this runtime.
            let _ = actix_rt::task::spawn_blocking(move || r.stop()).await;
        }
        let _ = self.listener.send(StopListening).await;
        let _ = self.scheduler.send(Pause).await;
        let deadline = Instant::now() + self.grace;
        if self.load.in_flight() > 0 {
            tracing::info!(cage = %self.name, "waiting up to {} for {} call(s) under way", humantime::format_duration(self.grace), self.load.in_flight());
        }
        while self.load.in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.scheduler.send(Stop).await;
        // Outcomes recorded since the last group commit: make them durable in sled itself, so
        // the next start has no journal to replay.
        if let Err(e) = self.store.checkpoint() {
            tracing::error!(cage = %self.name, "final queue checkpoint failed (the journal keeps every change): {e}");
        }
        self.load.in_flight()
    }
}

/// How long a starting cage waits for its queue while another process holds it.
const QUEUE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Opens the cage's queue, waiting (up to [`QUEUE_LOCK_WAIT`]) while another process holds its
/// lock: an operator's command reading the queue of the stopped cage holds it for a moment.
fn open_queue(cage: &str, dir: &std::path::Path, cache: u64) -> Result<QueueStore, QueueError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        match QueueStore::open_with_cache(dir, cache) {
            Err(e) if e.is_locked() && started.elapsed() < QUEUE_LOCK_WAIT => {
                if !std::mem::replace(&mut said, true) {
                    tracing::warn!(cage, "queue {} is held by another process (an operator's command on the stopped cage, or another process of this cage); waiting up to {}", dir.display(), humantime::format_duration(QUEUE_LOCK_WAIT));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}
