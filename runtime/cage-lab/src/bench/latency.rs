//! `cage bench latency`: how long a queued call waits under a steady load. Calls from the
//! first cage to the second are offered at a fixed rate in an open loop (each is sent at its
//! scheduled time, whether or not earlier ones were acknowledged), and each is timed from the
//! moment its enqueue was sent to the moment it started executing on the target
//! (`echo.stamp`, see `stamps`).

use super::load::{bar, echo_call, stats, wait_executed};
use super::report::{Goal, Report};
use super::stamps::{now_us, StampFile};
use super::{percentile_us, Place};
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::EnqueueRequest;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Offered calls per second when the command line gives no `--rate`.
pub const RATE: f64 = 5_000.0;

/// Seconds of load when the command line gives no `--calls`.
pub const SECONDS: f64 = 10.0;

/// Clients sending the load: enough that a slow acknowledgement (a group commit under load)
/// does not hold the next call back; each sends every `clients`-th call of the schedule.
pub const CLIENTS: usize = 32;

/// A sent enqueue: its call's place in the schedule, when it was sent (wall clock, µs) and
/// how late on its schedule.
struct Sent {
    index: usize,
    at_us: u64,
    late: Duration,
}

/// Offers `calls` calls of `echo.stamp` from the first cage to the second at `rate` per
/// second from `clients` clients, waits until all ran, and reports the enqueue → execution
/// start percentiles and the rate actually offered.
pub fn run(
    place: &Place,
    rate: f64,
    calls: usize,
    clients: usize,
    report: &mut Report,
) -> Result<(), String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let (source_route, target_route) = (place.route(source)?, place.route(to)?);
    if !(rate.is_finite() && rate > 0.0) {
        return Err(format!(
            "--rate {rate}: give a positive number of calls per second"
        ));
    }
    let stamps = Arc::new(StampFile::new(&std::env::temp_dir(), "latency")?);
    let before = stats(to, &target_route)?;
    let label = format!("latency {source} → {to}, {rate} calls/s offered");
    let progress = Arc::new(bar(calls, &label));
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Every client connects before the schedule starts, so the first calls wait for no
    // handshake.
    let step = clients.min(calls);
    let connected = (0..step)
        .map(|_| Client::connect(source, &source_route).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = connected
        .into_iter()
        .enumerate()
        .map(|(k, mut client)| {
            let (stamps, progress, template) = (
                stamps.clone(),
                progress.clone(),
                echo_call(to, "stamp", b"", "retry"),
            );
            std::thread::spawn(move || -> Result<Vec<Sent>, String> {
                let mut sent = Vec::with_capacity(calls / step + 1);
                for index in (k..calls).step_by(step) {
                    let due = start + interval.mul_f64(index as f64);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let request = EnqueueRequest {
                        args: stamps.args(&index.to_string()),
                        ..template.clone()
                    };
                    let (at_us, late) = (now_us(), Instant::now().saturating_duration_since(due));
                    client
                        .enqueue(request, Duration::from_secs(60))
                        .map_err(|e| format!("enqueue {index} of the latency run: {e}"))?;
                    sent.push(Sent { index, at_us, late });
                    progress.inc(1);
                }
                Ok(sent)
            })
        })
        .collect();
    let mut sends: Vec<Sent> = Vec::with_capacity(calls);
    for w in workers {
        sends.extend(
            w.join()
                .map_err(|_| "a latency client panicked".to_owned())??,
        );
    }
    progress.finish_and_clear();
    wait_executed(
        to,
        &target_route,
        &before,
        calls,
        &format!("executing on {to}"),
    )?;
    let started: HashMap<usize, u64> = stamps
        .read()?
        .into_iter()
        .rev() // the first stamp of a tag wins should a call run twice
        .filter_map(|(tag, us)| Some((tag.parse().ok()?, us)))
        .collect();
    let mut waits = Vec::with_capacity(calls);
    for s in &sends {
        let began = started.get(&s.index).ok_or_else(|| {
            format!(
                "call {} of the latency run executed on {to} without a stamp (is echo.stamp in its echo build?)",
                s.index
            )
        })?;
        waits.push(Duration::from_micros(began.saturating_sub(s.at_us)));
    }
    waits.sort_unstable();
    let first = sends.iter().map(|s| s.at_us).min().unwrap_or(0);
    let last = sends.iter().map(|s| s.at_us).max().unwrap_or(0);
    let offered = calls.saturating_sub(1) as f64 / ((last - first) as f64 / 1e6).max(1e-6);
    let behind = sends
        .iter()
        .filter(|s| s.late > Duration::from_millis(1))
        .count();
    let at = format!("{rate} calls/s offered {source} → {to}");
    report.add(
        "latency",
        format!("offered rate achieved, {calls} calls {source} → {to}"),
        offered,
        "calls/s",
        Some(Goal::AtLeast(rate * 0.95)),
    );
    report.add(
        "latency",
        format!("sends over 1 ms behind schedule, {clients} clients"),
        behind as f64 * 100.0 / calls as f64,
        "%",
        None,
    );
    for (name, p, goal) in [
        ("p50", 0.5, Some(2_000.0)),
        ("p99", 0.99, Some(10_000.0)),
        ("p99.9", 0.999, None),
        ("max", 1.0, None),
    ] {
        report.add(
            "latency",
            format!("enqueue → execution start {name}, {at}"),
            percentile_us(&waits, p),
            "µs",
            goal.map(Goal::AtMost),
        );
    }
    Ok(())
}
