//! `cage bench rpc`: sync call latency percentiles and calls/s against a running cage.

use super::percentile_us;
use crate::cli::{exit, target};
use cage_runtime::config::{CageRoute, Site};
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{new_call_id, CallRequest};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct RpcReport {
    scenario: &'static str,
    cage: String,
    target: String,
    calls: usize,
    clients: usize,
    failures: usize,
    seconds: f64,
    calls_per_sec: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

pub fn rpc(
    site: &Site,
    cage: &str,
    target: &str,
    args: &str,
    calls: usize,
    clients: usize,
    json: bool,
) -> ExitCode {
    let (module, method) = match target::split(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let request = CallRequest {
        call_id: String::new(),
        module: module.to_owned(),
        method: method.to_owned(),
        args: args.as_bytes().to_vec(),
        timeout_ms: 10_000,
    };
    // Warm-up: connections, caches, and a check that the target answers at all.
    if let Err(e) = Client::connect(cage, &route)
        .map_err(|e| e.to_string())
        .and_then(|mut c| {
            (0..200).try_for_each(|_| {
                c.call(CallRequest {
                    call_id: new_call_id("bench"),
                    ..request.clone()
                })
                .map(drop)
                .map_err(|f| f.to_string())
            })
        })
    {
        return exit::fail(exit::OTHER, format!("warm-up failed: {e}"));
    }

    let progress = ProgressBar::new(calls as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} calls ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    progress.set_message(format!("rpc {cage} {target}"));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let per_client = calls.div_ceil(clients);
    let workers: Vec<_> = (0..clients)
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
        match w.join() {
            Ok(Ok((l, f))) => {
                latencies.extend(l);
                failures += f;
            }
            Ok(Err(e)) => return exit::fail(exit::OTHER, e),
            Err(_) => return exit::fail(exit::OTHER, "a bench client thread panicked"),
        }
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();
    latencies.sort_unstable();
    let report = RpcReport {
        scenario: "rpc",
        cage: cage.to_owned(),
        target: target.to_owned(),
        calls: latencies.len(),
        clients,
        failures,
        seconds: elapsed.as_secs_f64(),
        calls_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_us: percentile_us(&latencies, 0.50),
        p90_us: percentile_us(&latencies, 0.90),
        p99_us: percentile_us(&latencies, 0.99),
        p999_us: percentile_us(&latencies, 0.999),
        max_us: latencies
            .last()
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        let mut table = Table::new();
        table.load_preset(UTF8_BORDERS_ONLY).set_header([
            "SCENARIO", "CALLS", "CLIENTS", "FAILED", "CALLS/S", "P50", "P90", "P99", "P99.9",
            "MAX",
        ]);
        let us = |v: f64| format!("{v:.0} µs");
        table.add_row([
            format!("rpc {target}"),
            report.calls.to_string(),
            report.clients.to_string(),
            report.failures.to_string(),
            format!("{:.0}", report.calls_per_sec),
            us(report.p50_us),
            us(report.p90_us),
            us(report.p99_us),
            us(report.p999_us),
            us(report.max_us),
        ]);
        println!("{table}");
    }
    if failures > 0 {
        ExitCode::from(exit::OTHER)
    } else {
        ExitCode::SUCCESS
    }
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
