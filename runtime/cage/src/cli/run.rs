//! `cage run NAME [--listen ADDR] [--http-listen ADDR] [--data-dir DIR]`: serve a cage (or
//! one more instance of it) until SIGINT or SIGTERM.

use super::exit;
use cage_runtime::cage::{PreparedCage, StartError};
use cage_runtime::config::{InstanceOverrides, Site};
use std::process::ExitCode;

pub fn run(site: &Site, name: &str, overrides: &InstanceOverrides) -> ExitCode {
    if let Err(code) = super::target::cage(name) {
        return code;
    }
    let prepared = match PreparedCage::prepare_instance(site, name, overrides) {
        Ok(p) => p,
        Err(e @ StartError::Config(_)) => return exit::fail(exit::CONFIG, e),
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    let system = actix_rt::System::new();
    let result = system.block_on(async move {
        let cage = prepared.start()?;
        wait_for_stop().await;
        tracing::info!(cage = name, "stopping: no new calls are taken");
        match cage.shutdown().await {
            0 => tracing::info!(cage = name, "stopped"),
            n => tracing::warn!(
                cage = name,
                "stopped with {n} call(s) still running (shutdown_grace ran out)"
            ),
        }
        Ok::<_, StartError>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::OTHER, e),
    }
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
