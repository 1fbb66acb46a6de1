//! `cage bench enqueue`: durable enqueue rate (acknowledged = on disk), against the disk's raw
//! `fdatasync` rate measured in the same run.

use super::load::{enqueue_many, fdatasync_rate};
use super::percentile_us;
use crate::cli::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{EnqueueRequest, Filter, QueueQuery};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Queue the benchmark's calls go to (cancelled afterwards).
const BENCH_QUEUE: &str = "bench";

#[derive(Serialize)]
struct Row {
    clients: usize,
    calls: usize,
    calls_per_sec: f64,
    ack_p50_us: f64,
    ack_p99_us: f64,
    fdatasync_per_sec: f64,
    ratio_to_fdatasync: f64,
}

pub fn enqueue(site: &Site, cage: &str, calls: usize, clients: &[usize], json: bool) -> ExitCode {
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let data_dir = match site.cage(cage) {
        Ok(c) => c.data_dir,
        Err(e) => return exit::fail(exit::CONFIG, e),
    };
    // Calls due a day from now, to the cage itself: only the durable enqueue is measured.
    let request = EnqueueRequest {
        target: cage.to_owned(),
        module: "bench".into(),
        method: "noop".into(),
        args: b"null".to_vec(),
        queue: BENCH_QUEUE.into(),
        priority: 0,
        key: None,
        delay_ms: 24 * 3600 * 1000,
    };
    let mut rows = Vec::new();
    for &c in clients {
        let sync_rate = match fdatasync_rate(&data_dir, 200) {
            Ok(r) => r,
            Err(e) => {
                return exit::fail(
                    exit::OTHER,
                    format!("cannot measure fdatasync in {}: {e}", data_dir.display()),
                )
            }
        };
        let started = Instant::now();
        let mut lat = match enqueue_many(
            cage,
            &route,
            &request,
            calls,
            c,
            &format!("enqueue, {c} client(s)"),
        ) {
            Ok(l) => l,
            Err(e) => return exit::fail(exit::OTHER, format!("enqueue failed: {e}")),
        };
        let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
        lat.sort_unstable();
        rows.push(Row {
            clients: c,
            calls: lat.len(),
            calls_per_sec: rate,
            ack_p50_us: percentile_us(&lat, 0.5),
            ack_p99_us: percentile_us(&lat, 0.99),
            fdatasync_per_sec: sync_rate,
            ratio_to_fdatasync: rate / sync_rate,
        });
    }
    let cleanup = Client::connect(cage, &route).and_then(|mut c| {
        c.steer(
            QueueQuery::CancelAll(Filter {
                queue: Some(BENCH_QUEUE.into()),
                module: None,
                limit: 0,
            }),
            Duration::from_secs(600),
        )
    });
    if let Err(e) = cleanup {
        eprintln!("warning: the benchmark's calls could not be cancelled ({e}); run: cage cancel --all --queue {BENCH_QUEUE}");
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "SCENARIO",
        "CLIENTS",
        "CALLS",
        "CALLS/S",
        "ACK P50",
        "ACK P99",
        "FDATASYNC/S",
        "RATIO",
    ]);
    for r in &rows {
        table.add_row([
            "durable enqueue".to_owned(),
            r.clients.to_string(),
            r.calls.to_string(),
            format!("{:.0}", r.calls_per_sec),
            format!("{:.0} µs", r.ack_p50_us),
            format!("{:.0} µs", r.ack_p99_us),
            format!("{:.0}", r.fdatasync_per_sec),
            format!("{:.2}×", r.ratio_to_fdatasync),
        ]);
    }
    println!("{table}");
    ExitCode::SUCCESS
}
