//! `cage bench pending`: fill a cage with calls due later, then report its disk and memory and
//! (on the benchmark's own cages) how soon after a restart the first due call runs.

use super::footprint::{dir_bytes, rss_bytes};
use super::load::enqueue_many_with;
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::EnqueueRequest;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Fills the first cage with `calls` calls due in a week (spread over `groups` groups in turn,
/// if any), measures, and on the benchmark's own cages restarts it with one call overdue and
/// times that call's execution.
pub fn run(
    place: &mut Place,
    calls: usize,
    clients: usize,
    groups: usize,
    report: &mut Report,
) -> Result<(), String> {
    let pending = if groups > 0 {
        format!("{calls} pending in {groups} groups")
    } else {
        format!("{calls} pending")
    };
    let cage = place.first.clone();
    let route = place.route(&cage)?;
    let data_dir = place.data_dir(&cage)?;
    let request = EnqueueRequest {
        target: cage.clone(),
        module: "bench".into(),
        method: "noop".into(),
        args: b"{\"order\": 12345, \"customer\": \"c-0001\"}".to_vec(),
        queue: "bench".into(),
        priority: 0,
        key: None,
        delay_ms: 7 * 24 * 3600 * 1000,
        group: None,
    };
    let started = Instant::now();
    let (next, each) = (AtomicUsize::new(0), request.clone());
    enqueue_many_with(
        &cage,
        &route,
        Arc::new(move || EnqueueRequest {
            group: (groups > 0)
                .then(|| format!("customer-{}", next.fetch_add(1, Ordering::Relaxed) % groups)),
            ..each.clone()
        }),
        calls,
        clients,
        1,
        &format!("filling {cage} with {pending} calls"),
    )?;
    let enqueue_secs = started.elapsed().as_secs_f64();
    let pid = Client::connect(&cage, &route)
        .and_then(|mut c| c.ping(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?
        .pid;
    let mb = |b: u64| b as f64 / 1e6;
    report.add(
        "pending",
        format!("{pending} calls enqueued at"),
        calls as f64 / enqueue_secs,
        "calls/s",
        None,
    );
    report.add(
        "pending",
        format!("queue on disk with {pending}"),
        mb(dir_bytes(&data_dir.join("queue"))),
        "MB",
        Some(Goal::AtMost(600.0)),
    );
    if let Some(rss) = rss_bytes(pid) {
        report.add(
            "pending",
            format!("cage RSS with {pending}"),
            mb(rss),
            "MB",
            Some(Goal::AtMost(300.0)),
        );
    }
    let Some(lab) = place.lab.as_mut() else {
        eprintln!("the calls are due in 7 days in queue `bench`; remove them with: cage cancel --all --queue bench --cage {cage}");
        eprintln!("(the restart figure needs the benchmark's own cages: run without a cage name)");
        return Ok(());
    };
    // One call due 2 s from now; the cage stops before it is due and starts after, so it
    // is the first call due when the cage is back.
    let marker = EnqueueRequest {
        module: "echo".into(),
        method: "version".into(),
        args: b"null".to_vec(),
        queue: "retry".into(),
        delay_ms: 2_000,
        group: None,
        ..request
    };
    Client::connect(&cage, &route)
        .and_then(|mut c| c.enqueue(marker, Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let due = Instant::now() + Duration::from_millis(2_000);
    eprintln!("restarting {cage} with {pending}");
    lab.stop(&cage);
    std::thread::sleep(due.saturating_duration_since(Instant::now()));
    let restart = Instant::now();
    lab.run(&cage)?;
    loop {
        let executed = Client::connect(&cage, &route)
            .and_then(|mut c| c.stats(false, Duration::from_secs(10)))
            .map(|s| s.executed)
            .unwrap_or(0);
        if executed >= 1 {
            break;
        }
        if restart.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "the overdue call did not run within 5 minutes of restarting {cage}"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    report.add(
        "pending",
        format!("restart to first due call executed, {pending}"),
        restart.elapsed().as_secs_f64(),
        "s",
        Some(Goal::AtMost(5.0)),
    );
    let pid = Client::connect(&cage, &route)
        .and_then(|mut c| c.ping(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?
        .pid;
    if let Some(rss) = rss_bytes(pid) {
        report.add(
            "pending",
            format!("cage RSS after restart, {pending}"),
            mb(rss),
            "MB",
            Some(Goal::AtMost(300.0)),
        );
    }
    Ok(())
}
