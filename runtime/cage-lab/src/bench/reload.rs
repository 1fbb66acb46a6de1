//! `cage bench reload`: how long from dropping a new build into modules/ until the cage serves
//! it, and until the first call on it has been answered.

use super::report::{Goal, Report};
use super::{percentile_us, Place};
use cage_runtime::loader::file_watch::module_file;
use cage_runtime::loader::library::sha256_hex;
use cage_runtime::model::ids::new_call_id;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::CallRequest;
use indicatif::ProgressBar;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A swap not seen within this long counts as failed.
const SWAP_LIMIT: Duration = Duration::from_secs(30);

/// Drops the builds of `module` in turn into the first cage's site, `rounds` times, timing
/// each until the cage serves it and until `call` has been answered on it. Without `files`,
/// on the benchmark's own cages: the echo build and a copy of it with bytes appended (a
/// different file that loads the same code).
pub fn run(
    place: &Place,
    module: &str,
    files: &[PathBuf],
    call: &str,
    rounds: usize,
    report: &mut Report,
) -> Result<(), String> {
    let (call_module, call_method) =
        cage_runtime::names::split_target(call).map_err(|e| e.to_string())?;
    let cage = place.first.as_str();
    let route = place.route(cage)?;
    let mut builds = Vec::new();
    match (files.is_empty(), &place.lab) {
        (true, Some(lab)) => {
            let bytes = std::fs::read(lab.echo())
                .map_err(|e| format!("cannot read {}: {e}", lab.echo().display()))?;
            let mut other = bytes.clone();
            other.extend_from_slice(b"\0cage bench reload: the same code in another file\0");
            builds.push((sha256_hex(&bytes), bytes));
            builds.push((sha256_hex(&other), other));
        }
        _ => {
            for f in files {
                let bytes =
                    std::fs::read(f).map_err(|e| format!("cannot read {}: {e}", f.display()))?;
                builds.push((sha256_hex(&bytes), bytes));
            }
        }
    }
    if builds.len() < 2 || builds.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err(
            "give at least two different builds with --file, in the order to drop them".into(),
        );
    }
    let mut client = Client::connect(cage, &route).map_err(|e| e.to_string())?;
    let dest = module_file(&place.site.modules_dir(), module);
    let tmp = dest.with_extension("so.bench-tmp");
    let progress = ProgressBar::new(rounds as u64);
    let (mut swaps, mut firsts) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let (hash, bytes) = &builds[(round + 1) % builds.len()];
        // Drop the build the way deploy tools do: write aside, then rename over the old file.
        if let Err(e) = std::fs::write(&tmp, bytes).and_then(|_| std::fs::rename(&tmp, &dest)) {
            return Err(format!(
                "cannot drop the build into {}: {e}",
                dest.display()
            ));
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
                return Err(format!("round {round}: cage {cage} did not serve the new {module} within {SWAP_LIMIT:?}"));
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
            return Err(format!(
                "round {round}: first call on the new build failed: {f}"
            ));
        }
        firsts.push(dropped.elapsed());
        progress.inc(1);
    }
    progress.finish_and_clear();
    swaps.sort_unstable();
    firsts.sort_unstable();
    let ms = |v: &[Duration], p: f64| percentile_us(v, p) / 1000.0;
    report.add(
        "reload",
        format!("drop to {module} served, p50 of {rounds}"),
        ms(&swaps, 0.5),
        "ms",
        None,
    );
    report.add(
        "reload",
        format!("drop to first call answered by it, p50 of {rounds}"),
        ms(&firsts, 0.5),
        "ms",
        Some(Goal::AtMost(1000.0)),
    );
    report.add(
        "reload",
        format!("drop to first call answered by it, max of {rounds}"),
        ms(&firsts, 1.0),
        "ms",
        Some(Goal::AtMost(1000.0)),
    );
    Ok(())
}
