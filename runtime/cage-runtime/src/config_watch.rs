//! Re-reading `config/config_execute_on.toml` when it changes: a good edit is handed to the
//! scheduler (pending calls follow it from their next attempt), a bad one is logged with file,
//! line and reason while the settings in force stay.

use crate::config::{ExecuteOn, Site};
use crate::scheduler::PoliciesChanged;
use actix::Recipient;
use notify::Watcher;
use std::sync::mpsc;
use std::time::Duration;

/// Quiet time after a file event before the file is read (editors write in several steps).
const SETTLE: Duration = Duration::from_millis(100);
/// The file is also compared this often, in case an event was missed.
const POLL: Duration = Duration::from_secs(2);

/// Watches the site's `config/` directory on a thread of its own for the life of the process.
pub fn watch(site: Site, current: &ExecuteOn, recipient: Recipient<PoliciesChanged>) {
    let (tx, rx) = mpsc::channel::<()>();
    let dir = site.root().join("config");
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if event
                .paths
                .iter()
                .any(|p| p.ends_with("config_execute_on.toml"))
            {
                let _ = tx.send(());
            }
        }
    })
    .and_then(|mut w| {
        w.watch(&dir, notify::RecursiveMode::NonRecursive)
            .map(|_| w)
    });
    let watcher = match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "config file events unavailable ({e}); checking every {POLL:?}");
            None
        }
    };
    let mut in_force = current.clone();
    let mut last_text =
        std::fs::read_to_string(site.root().join(crate::config::EXECUTE_ON_FILE)).ok();
    let spawned = std::thread::Builder::new()
        .name("cage-config".into())
        .spawn(move || {
            let _keep_alive = watcher;
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(()) => {
                        std::thread::sleep(SETTLE);
                        while rx.try_recv().is_ok() {}
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(POLL),
                }
                let text =
                    std::fs::read_to_string(site.root().join(crate::config::EXECUTE_ON_FILE)).ok();
                if text == last_text {
                    continue;
                }
                last_text = text;
                match site.execute_on() {
                    Ok(new) if new == in_force => {}
                    Ok(new) => {
                        tracing::info!(
                            "{} changed: new settings in force",
                            crate::config::EXECUTE_ON_FILE
                        );
                        in_force = new.clone();
                        if recipient.try_send(PoliciesChanged(new)).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::error!("{e} — edit rejected, the settings in force stay"),
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot watch {}: {e}", crate::config::EXECUTE_ON_FILE);
    }
}
