//! `cage bench reload`: how long from dropping a new build into modules/ until the cage serves
//! it, and until the first call on it has been answered.

use super::percentile_us;
use crate::cli::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::loader::file_watch::module_file;
use cage_runtime::loader::library::sha256_hex;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{new_call_id, CallRequest};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::ProgressBar;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// A swap not seen within this long counts as failed.
const SWAP_LIMIT: Duration = Duration::from_secs(30);

#[derive(Serialize)]
struct ReloadReport {
    scenario: &'static str,
    cage: String,
    module: String,
    rounds: usize,
    swap_p50_ms: f64,
    swap_max_ms: f64,
    first_call_p50_ms: f64,
    first_call_max_ms: f64,
}

pub fn reload(
    site: &Site,
    cage: &str,
    module: &str,
    files: &[PathBuf],
    call: &str,
    rounds: usize,
    json: bool,
) -> ExitCode {
    let (call_module, call_method) = match target::split(call) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut builds = Vec::new();
    for f in files {
        match std::fs::read(f) {
            Ok(bytes) => builds.push((sha256_hex(&bytes), bytes)),
            Err(e) => return exit::fail(exit::OTHER, format!("cannot read {}: {e}", f.display())),
        }
    }
    if builds.len() < 2 || builds.windows(2).any(|w| w[0].0 == w[1].0) {
        return exit::fail(
            exit::OTHER,
            "give at least two different builds with --file, in the order to drop them",
        );
    }
    let mut client = match Client::connect(cage, &route) {
        Ok(c) => c,
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    let dest = module_file(&site.modules_dir(), module);
    let tmp = dest.with_extension("so.bench-tmp");
    let progress = ProgressBar::new(rounds as u64);
    let (mut swaps, mut firsts) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (hash, bytes) = &builds[(round + 1) % builds.len()];
        // Drop the build the way deploy tools do: write aside, then rename over the old file.
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &dest)) {
            return exit::fail(
                exit::OTHER,
                format!("cannot drop the build into {}: {e}", dest.display()),
            );
        }
        let dropped = Instant::now();
        loop {
            let served = client
                .modules(Duration::from_secs(5))
                .ok()
                .and_then(|list| {
                    list.into_iter()
                        .find(|m| m.name == module)
                        .and_then(|m| m.sha256)
                });
            if served.as_deref() == Some(hash.as_str()) {
                break;
            }
            if dropped.elapsed() > SWAP_LIMIT {
                return exit::fail(exit::OTHER, format!("round {round}: cage {cage} did not serve the new {module} within {SWAP_LIMIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        swaps.push(dropped.elapsed());
        let answered = client.call(CallRequest {
            call_id: new_call_id("bench"),
            module: call_module.to_owned(),
            method: call_method.to_owned(),
            args: b"null".to_vec(),
            timeout_ms: 10_000,
        });
        if let Err(f) = answered {
            return exit::fail(
                exit::OTHER,
                format!("round {round}: first call on the new build failed: {f}"),
            );
        }
        firsts.push(dropped.elapsed());
        progress.inc(1);
    }
    progress.finish_and_clear();
    swaps.sort_unstable();
    firsts.sort_unstable();
    let ms = |v: &[Duration], p: f64| percentile_us(v, p) / 1000.0;
    let report = ReloadReport {
        scenario: "reload",
        cage: cage.to_owned(),
        module: module.to_owned(),
        rounds,
        swap_p50_ms: ms(&swaps, 0.5),
        swap_max_ms: ms(&swaps, 1.0),
        first_call_p50_ms: ms(&firsts, 0.5),
        first_call_max_ms: ms(&firsts, 1.0),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "SCENARIO",
            "ROUNDS",
            "SWAP P50",
            "SWAP MAX",
            "FIRST CALL P50",
            "FIRST CALL MAX",
        ]);
        let f = |v: f64| format!("{v:.1} ms");
        table.add_row([
            format!("reload {module}"),
            rounds.to_string(),
            f(report.swap_p50_ms),
            f(report.swap_max_ms),
            f(report.first_call_p50_ms),
            f(report.first_call_max_ms),
        ]);
        println!("{table}");
    }
    ExitCode::SUCCESS
}
