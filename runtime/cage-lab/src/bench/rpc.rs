//! `cage bench rpc`: sync call latency percentiles with one caller, and calls/s with many.

use super::report::{Goal, Report};
use super::{percentile_us, Place};
use cage_runtime::config::CageRoute;
use cage_runtime::model::ids::new_call_id;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::CallRequest;
use indicatif::ProgressBar;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Calls `target` with `args` on the first cage: `calls` calls from one caller, then `calls`
/// from `clients` callers, each on its own connection.
pub fn run(
    place: &Place,
    target: &str,
    args: &str,
    calls: usize,
    clients: usize,
    report: &mut Report,
) -> Result<(), String> {
    let (module, method) = cage_runtime::names::split_target(target).map_err(|e| e.to_string())?;
    let cage = place.first.as_str();
    let route = place.route(cage)?;
    let request = CallRequest {
        call_id: String::new(),
        module: module.to_owned(),
        method: method.to_owned(),
        args: args.as_bytes().to_vec(),
        timeout_ms: 10_000,
    };
    // Warm-up: connections, caches, and a check that the target answers at all.
    let mut warm = Client::connect(cage, &route).map_err(|e| e.to_string())?;
    for _ in 0..200 {
        warm.call(CallRequest {
            call_id: new_call_id("bench"),
            ..request.clone()
        })
        .map_err(|f| format!("warm-up failed: {f}"))?;
    }
    for c in [1, clients] {
        let progress = Arc::new(super::load::bar(
            calls,
            &format!("rpc {target}, {c} caller(s)"),
        ));
        let started = Instant::now();
        let per_client = calls.div_ceil(c);
        let workers: Vec<_> = (0..c)
            .map(|i| {
                let (route, request, progress, cage) = (
                    route.clone(),
                    request.clone(),
                    progress.clone(),
                    cage.to_owned(),
                );
                let n = per_client.min(calls.saturating_sub(i * per_client));
                std::thread::spawn(move || client_loop(&cage, &route, request, n, &progress))
            })
            .collect();
        let mut latencies = Vec::with_capacity(calls);
        let mut failures = 0;
        for w in workers {
            let (l, f) = w
                .join()
                .map_err(|_| "a bench client thread panicked".to_owned())??;
            latencies.extend(l);
            failures += f;
        }
        let elapsed = started.elapsed();
        progress.finish_and_clear();
        if failures > 0 {
            return Err(format!(
                "{failures} of {calls} sync calls of {target} failed"
            ));
        }
        latencies.sort_unstable();
        let rate = latencies.len() as f64 / elapsed.as_secs_f64();
        let (p50, p99, p999) = (
            percentile_us(&latencies, 0.5),
            percentile_us(&latencies, 0.99),
            percentile_us(&latencies, 0.999),
        );
        if c == 1 {
            report.add(
                "rpc",
                "latency p50, 1 caller",
                p50,
                "µs",
                Some(Goal::AtMost(100.0)),
            );
            report.add(
                "rpc",
                "latency p99, 1 caller",
                p99,
                "µs",
                Some(Goal::AtMost(1000.0)),
            );
            report.add("rpc", "latency p99.9, 1 caller", p999, "µs", None);
            report.add("rpc", "calls/s, 1 caller", rate, "calls/s", None);
        } else {
            report.add(
                "rpc",
                format!("calls/s, {c} callers"),
                rate,
                "calls/s",
                None,
            );
            report.add("rpc", format!("latency p50, {c} callers"), p50, "µs", None);
            report.add("rpc", format!("latency p99, {c} callers"), p99, "µs", None);
            report.add(
                "rpc",
                format!("latency p99.9, {c} callers"),
                p999,
                "µs",
                None,
            );
        }
    }
    Ok(())
}

fn client_loop(
    cage: &str,
    route: &CageRoute,
    request: CallRequest,
    n: usize,
    progress: &ProgressBar,
) -> Result<(Vec<Duration>, usize), String> {
    let mut client = Client::connect(cage, route).map_err(|e| e.to_string())?;
    let mut latencies = Vec::with_capacity(n);
    let mut failures = 0;
    for i in 0..n {
        let call = CallRequest {
            call_id: new_call_id("bench"),
            ..request.clone()
        };
        let t = Instant::now();
        match client.call(call) {
            Ok(_) => latencies.push(t.elapsed()),
            Err(_) => failures += 1,
        }
        if i % 256 == 255 {
            progress.inc(256);
        }
    }
    Ok((latencies, failures))
}
