//! `cage bench enqueue`: durable enqueue rate (acknowledged = on disk) with one client and with
//! many, against the disk's raw `fdatasync` rate measured in the same run.

use super::load::{cancel_queue, enqueue_many};
use super::report::{Goal, Report};
use super::{percentile_us, Place};
use cage_runtime::transport::protocol::EnqueueRequest;
use std::time::Instant;

/// Enqueues each client keeps in flight in the pipelined run.
const PIPELINED: usize = 16;

/// Queue the benchmark's calls go to (cancelled afterwards).
const BENCH_QUEUE: &str = "bench";

/// Enqueues `calls` calls due a day later into the first cage, with 1 and with `clients`
/// clients, then cancels them.
pub fn run(place: &Place, calls: usize, clients: usize, report: &mut Report) -> Result<(), String> {
    let cage = place.first.as_str();
    let route = place.route(cage)?;
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
        group: None,
    };
    // One request at a time per client, then with PIPELINED requests in flight per client (as
    // an asynchronous producer sends them): the last shows what the queue takes when its
    // clients do not wait a round trip and a flush between calls.
    for (c, in_flight) in [(1, 1), (clients, 1), (clients, PIPELINED)] {
        let label = match in_flight {
            1 => format!("{c} client(s)"),
            n => format!("{c} client(s) × {n} pipelined"),
        };
        let started = Instant::now();
        let mut lat = enqueue_many(
            cage,
            &route,
            &request,
            calls,
            c,
            in_flight,
            &format!("enqueue, {label}"),
        )?;
        let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
        lat.sort_unstable();
        // One client waits for a flush per call, so the disk's sync rate bounds it; the target
        // is to lose at most a fifth of that to everything else.
        let goal = match c {
            1 => Some(Goal::AtLeast(report.fdatasync_per_sec * 0.8)),
            64 => Some(Goal::AtLeast(50_000.0)),
            _ => None,
        };
        report.add(
            "enqueue",
            format!("durable enqueues/s, {label}"),
            rate,
            "calls/s",
            goal,
        );
        report.add(
            "enqueue",
            format!("ack p50, {label}"),
            percentile_us(&lat, 0.5),
            "µs",
            None,
        );
        report.add(
            "enqueue",
            format!("ack p99, {label}"),
            percentile_us(&lat, 0.99),
            "µs",
            None,
        );
    }
    cancel_queue(cage, &route, BENCH_QUEUE)
}
