//! `cage bench pending`: fill a cage with calls due later, then report its disk and memory.

use super::load::enqueue_many;
use crate::cli::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::EnqueueRequest;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    cage: String,
    added: usize,
    pending: u64,
    enqueue_secs: f64,
    disk_bytes: u64,
    rss_bytes: Option<u64>,
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

pub fn pending(site: &Site, cage: &str, calls: usize, clients: usize, json: bool) -> ExitCode {
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let data_dir = match site.cage(cage) {
        Ok(c) => c.data_dir,
        Err(e) => return exit::fail(exit::CONFIG, e),
    };
    let request = EnqueueRequest {
        target: cage.to_owned(),
        module: "bench".into(),
        method: "noop".into(),
        args: b"{\"order\": 12345, \"customer\": \"c-0001\"}".to_vec(),
        queue: "bench".into(),
        priority: 0,
        key: None,
        delay_ms: 7 * 24 * 3600 * 1000,
    };
    let started = Instant::now();
    if let Err(e) = enqueue_many(
        cage,
        &route,
        &request,
        calls,
        clients,
        &format!("filling {cage}"),
    ) {
        return exit::fail(exit::OTHER, format!("enqueue failed: {e}"));
    }
    let enqueue_secs = started.elapsed().as_secs_f64();
    let probe = Client::connect(cage, &route).and_then(|mut c| {
        let pid = c.ping(Duration::from_secs(10))?.pid;
        let stats = c.stats(true, Duration::from_secs(600))?;
        Ok((pid, stats))
    });
    let (pid, stats) = match probe {
        Ok(p) => p,
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    let report = Report {
        cage: cage.to_owned(),
        added: calls,
        pending: stats.pending.unwrap_or(0),
        enqueue_secs,
        disk_bytes: dir_bytes(&data_dir.join("queue")),
        rss_bytes: rss_bytes(pid),
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
            "ADDED",
            "PENDING NOW",
            "ENQUEUED IN",
            "QUEUE ON DISK",
            "CAGE RSS",
        ]);
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
        table.add_row([
            format!("pending {cage}"),
            report.added.to_string(),
            report.pending.to_string(),
            format!("{:.1} s", report.enqueue_secs),
            mib(report.disk_bytes),
            report
                .rss_bytes
                .map(mib)
                .unwrap_or_else(|| "? (not this host)".into()),
        ]);
        println!("{table}");
        println!("the calls are due in 7 days in queue `bench`; remove them with: cage cancel --all --queue bench --cage {cage}");
    }
    ExitCode::SUCCESS
}
