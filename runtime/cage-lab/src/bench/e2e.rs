//! `cage bench e2e`: queued no-op calls from one cage to another, first enqueue to last
//! completion.

use super::load::{echo_call, enqueue_many, stats, wait_executed};
use super::report::{Goal, Report};
use super::Place;
use std::time::Instant;

/// Enqueues `calls` calls of `echo.version` on the first cage for the second, and waits until
/// the second executed them all.
pub fn run(place: &Place, calls: usize, clients: usize, report: &mut Report) -> Result<(), String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let (source_route, target_route) = (place.route(source)?, place.route(to)?);
    let before = stats(to, &target_route)?;
    let request = echo_call(to, "version", b"null", "retry");
    let started = Instant::now();
    enqueue_many(
        source,
        &source_route,
        &request,
        calls,
        clients,
        1,
        &format!("e2e {source} → {to}"),
    )?;
    let enqueued = started.elapsed();
    wait_executed(
        to,
        &target_route,
        &before,
        calls,
        &format!("executing on {to}"),
    )?;
    let total = started.elapsed();
    report.add(
        "e2e",
        format!("queued calls/s {source} → {to}, first enqueue to last done"),
        calls as f64 / total.as_secs_f64(),
        "calls/s",
        Some(Goal::AtLeast(20_000.0)),
    );
    report.add(
        "e2e",
        format!("enqueue of {calls} calls by {clients} clients took"),
        enqueued.as_secs_f64(),
        "s",
        None,
    );
    Ok(())
}
