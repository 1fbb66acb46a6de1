//! `cage bench idle`: what a cage costs doing nothing. After one call (so the worker
//! processes a serving cage keeps are there) and a few seconds to settle, the CPU time of
//! each cage process and its worker processes is read from `/proc/PID/task/*/schedstat`
//! before and after a quiet window, with no request sent to the cages in between.

use super::footprint::{cpu_ns, with_descendants};
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::CallRequest;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Seconds the cages settle before the window when the command line gives none.
pub const SETTLE: Duration = Duration::from_secs(3);

/// The quiet window when the command line gives no `--seconds`.
pub const WINDOW: Duration = Duration::from_secs(10);

/// CPU nanoseconds so far of each process of `family`.
fn cpu_of(family: &[u32]) -> HashMap<u32, u64> {
    family
        .iter()
        .filter_map(|&p| Some((p, cpu_ns(p)?)))
        .collect()
}

/// Lets the first and second cage settle for `settle`, then reports what share of one core
/// each (with its worker processes) used over `window`.
pub fn run(
    place: &Place,
    settle: Duration,
    window: Duration,
    report: &mut Report,
) -> Result<(), String> {
    let mut cages = vec![place.first.clone()];
    if place.second != place.first {
        cages.push(place.second.clone());
    }
    let mut pids = Vec::new();
    for cage in &cages {
        let mut client = Client::connect(cage, &place.route(cage)?).map_err(|e| e.to_string())?;
        // A cage that serves no echo still idles: the call only brings up its workers.
        let _ = client.call(CallRequest {
            call_id: String::new(),
            module: "echo".into(),
            method: "version".into(),
            args: b"null".to_vec(),
            timeout_ms: 10_000,
        });
        let pid = client
            .ping(Duration::from_secs(10))
            .map_err(|e| e.to_string())?
            .pid;
        if cpu_ns(pid).is_none() {
            return Err(format!(
                "cage {cage} (pid {pid}) is not a process on this machine, or its /proc/{pid}/task/*/schedstat cannot be read"
            ));
        }
        pids.push(pid);
    }
    eprintln!(
        "idle: letting {} settle for {} s, then {} s without a request",
        cages.join(" and "),
        settle.as_secs_f64(),
        window.as_secs_f64()
    );
    std::thread::sleep(settle);
    let before: Vec<HashMap<u32, u64>> =
        pids.iter().map(|&p| cpu_of(&with_descendants(p))).collect();
    let started = Instant::now();
    std::thread::sleep(window);
    // Processes that started within the window spent all their time in it.
    let after: Vec<HashMap<u32, u64>> =
        pids.iter().map(|&p| cpu_of(&with_descendants(p))).collect();
    let elapsed = started.elapsed();
    for ((cage, was), now) in cages.iter().zip(&before).zip(&after) {
        let spent: u64 = now
            .iter()
            .map(|(p, ns)| ns.saturating_sub(was.get(p).copied().unwrap_or(0)))
            .sum();
        report.add(
            "idle",
            format!(
                "cage {cage} CPU while idle, with its {} worker process(es), over {} s",
                now.len().saturating_sub(1),
                elapsed.as_secs_f64().round()
            ),
            spent as f64 * 100.0 / elapsed.as_nanos() as f64,
            "% of a core",
            Some(Goal::AtMost(0.1)),
        );
    }
    Ok(())
}
