//! Re-reading the site config and the cage's own file when they change.
//!
//! - `config/config_execute_on.toml`: a good edit replaces the cluster map of the cage's
//!   [`Peers`] (every later call, delivery or module's `ctx.call`, follows it) and is handed to
//!   the scheduler (pending calls follow its queue policies from their next attempt);
//! - `cages/NAME.toml`: its declared jobs are reconciled (a job removed from the file stops);
//!   other settings of the cage file take effect at the next start.
//!
//! A bad edit is logged with file, line and reason, and the settings in force stay.

use crate::config::{CageConfig, ExecuteOn, Site, EXECUTE_ON_FILE};
use crate::peers::Peers;
use crate::scheduler::{JobsDeclared, PoliciesChanged, Scheduler};
use actix::Addr;
use notify::Watcher;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

/// Quiet time after a file event before the files are read (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(100);
/// The files are compared this often where they cannot be watched (no events, or a directory
/// that does not exist yet).
const POLL: Duration = Duration::from_secs(2);
/// ... and this often where both directories are watched, in case an event was missed.
const WATCHED_POLL: Duration = Duration::from_secs(30);

/// One watched file: its path and the text last acted on.
struct Watched {
    path: PathBuf,
    last: Option<String>,
}

impl Watched {
    fn new(path: PathBuf) -> Self {
        let last = std::fs::read_to_string(&path).ok();
        Watched { path, last }
    }

    /// Whether the file's text changed since last asked.
    fn changed(&mut self) -> bool {
        let now = std::fs::read_to_string(&self.path).ok();
        if now == self.last {
            return false;
        }
        self.last = now;
        true
    }
}

/// Watches the site config and `cage`'s file on a thread of its own for the life of the process.
pub fn watch(
    site: Site,
    cage: &CageConfig,
    current: &ExecuteOn,
    peers: Arc<Peers>,
    scheduler: Addr<Scheduler>,
) {
    let (tx, rx) = mpsc::channel::<()>();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading a file is an event too (open, access, close): reading the files after each
        // event would wake the watcher again, ten times a second, for as long as it runs.
        if event.is_ok_and(|e| !matches!(e.kind, notify::EventKind::Access(_))) {
            let _ = tx.send(());
        }
    })
    .map(|mut w| {
        // A site without a config/ directory is fine (all defaults); the poll below notices
        // the file if it appears.
        let mut all_watched = true;
        for dir in ["config", "cages"] {
            let path = site.root().join(dir);
            all_watched &= path.is_dir();
            if path.is_dir() {
                if let Err(e) = w.watch(&path, notify::RecursiveMode::NonRecursive) {
                    tracing::warn!(dir = %path.display(), "cannot watch ({e}); checking every {POLL:?}");
                    all_watched = false;
                }
            }
        }
        (w, all_watched)
    });
    let (watcher, poll) = match watcher {
        Ok((w, all_watched)) => (Some(w), if all_watched { WATCHED_POLL } else { POLL }),
        Err(e) => {
            tracing::warn!("config file events unavailable ({e}); checking every {POLL:?}");
            (None, POLL)
        }
    };
    let mut execute_on = Watched::new(site.root().join(EXECUTE_ON_FILE));
    let mut cage_file = Watched::new(cage.path.clone());
    let (name, mut in_force, mut jobs_in_force) =
        (cage.name.clone(), current.clone(), cage.jobs.clone());
    let spawned = std::thread::Builder::new().name("cage-config".into()).spawn(move || {
        let _keep_alive = watcher;
        loop {
            match rx.recv_timeout(poll) {
                Ok(()) => {
                    std::thread::sleep(SETTLE);
                    while rx.try_recv().is_ok() {}
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(poll),
            }
            if execute_on.changed() {
                match site.execute_on() {
                    Ok(new) if new == in_force => {}
                    Ok(new) => {
                        tracing::info!("{EXECUTE_ON_FILE} changed: new settings in force");
                        in_force = new.clone();
                        peers.set_map(new.clone());
                        if scheduler.try_send(PoliciesChanged(new)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("{e} — edit rejected, the settings in force stay"),
                }
            }
            if cage_file.changed() {
                match site.cage(&name) {
                    Ok(new) if new.jobs == jobs_in_force => {
                        tracing::info!("{} changed; settings other than jobs take effect at the next start", new.path.display())
                    }
                    Ok(new) => {
                        jobs_in_force = new.jobs.clone();
                        if scheduler.try_send(JobsDeclared(new.jobs)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("{e} — edit rejected, the jobs in force stay"),
                }
            }
        }
    });
    if let Err(e) = spawned {
        tracing::error!("cannot watch the config files: {e}");
    }
}
