//! `cage bench e2e`: queued calls from one cage to another, first enqueue to last completion.

use super::load::enqueue_many;
use crate::cli::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::EnqueueRequest;
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Serialize)]
struct Report {
    source: String,
    target: String,
    calls: usize,
    clients: usize,
    enqueue_secs: f64,
    total_secs: f64,
    calls_per_sec: f64,
}

pub fn e2e(
    site: &Site,
    source: &str,
    to: &str,
    call: &str,
    calls: usize,
    clients: usize,
    json: bool,
) -> ExitCode {
    let (module, method) = match target::split(call) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let (source_route, target_route) = match (target::route(site, source), target::route(site, to))
    {
        (Ok(a), Ok(b)) => (a, b),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let executed = |route| {
        Client::connect(to, route)
            .and_then(|mut c| c.stats(false, Duration::from_secs(10)))
            .map(|s| s.executed)
    };
    let before = match executed(&target_route) {
        Ok(n) => n,
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    let request = EnqueueRequest {
        target: to.to_owned(),
        module: module.to_owned(),
        method: method.to_owned(),
        args: b"null".to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        delay_ms: 0,
    };
    let started = Instant::now();
    if let Err(e) = enqueue_many(
        source,
        &source_route,
        &request,
        calls,
        clients,
        &format!("e2e {source} → {to}"),
    ) {
        return exit::fail(exit::OTHER, format!("enqueue failed: {e}"));
    }
    let enqueued = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        match executed(&target_route) {
            Ok(n) if n >= before + calls as u64 => break,
            Ok(_) => {}
            Err(e) => return exit::fail(exit::OTHER, e),
        }
        if Instant::now() > deadline {
            return exit::fail(
                exit::OTHER,
                "calls still not executed after 10 minutes; see cage pending",
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let total = started.elapsed();
    let report = Report {
        source: source.to_owned(),
        target: to.to_owned(),
        calls,
        clients,
        enqueue_secs: enqueued.as_secs_f64(),
        total_secs: total.as_secs_f64(),
        calls_per_sec: calls as f64 / total.as_secs_f64(),
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "SCENARIO",
        "CALLS",
        "CLIENTS",
        "ENQUEUED IN",
        "ALL DONE IN",
        "CALLS/S",
    ]);
    table.add_row([
        format!("e2e {source} → {to} {call}"),
        calls.to_string(),
        clients.to_string(),
        format!("{:.2} s", report.enqueue_secs),
        format!("{:.2} s", report.total_secs),
        format!("{:.0}", report.calls_per_sec),
    ]);
    println!("{table}");
    ExitCode::SUCCESS
}
