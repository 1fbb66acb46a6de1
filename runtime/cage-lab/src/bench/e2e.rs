//! `cage bench e2e`: queued no-op calls from one cage to another, first enqueue to last
//! completion.

use super::load::{echo_call, enqueue_many, stats, wait_executed};
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::protocol::QueueStats;
use std::time::{Duration, Instant};

/// What a run of queued calls from the first cage to the second measured.
pub(super) struct Queued {
    /// The target's counters before the run.
    pub before: QueueStats,
    /// The target's counters once every call ran.
    pub after: QueueStats,
    /// From the first enqueue to the last acknowledged one.
    pub enqueued: Duration,
    /// From the first enqueue until the target ran them all.
    pub total: Duration,
}

/// Enqueues `calls` calls of `echo.METHOD` with `args` on `queue` on the first cage for the
/// second, from `clients` clients, and waits until the second ran them all; `scenario` and
/// `waiting` label the progress shown.
#[allow(clippy::too_many_arguments)]
pub(super) fn queue_and_wait(
    place: &Place,
    method: &str,
    args: &[u8],
    queue: &str,
    calls: usize,
    clients: usize,
    scenario: &str,
    waiting: &str,
) -> Result<Queued, String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let (source_route, target_route) = (place.route(source)?, place.route(to)?);
    let before = stats(to, &target_route)?;
    let request = echo_call(to, method, args, queue);
    let started = Instant::now();
    enqueue_many(
        source,
        &source_route,
        &request,
        calls,
        clients,
        1,
        &format!("{scenario} {source} → {to}"),
    )?;
    let enqueued = started.elapsed();
    let after = wait_executed(
        to,
        &target_route,
        &before,
        calls,
        &format!("{waiting} on {to}"),
    )?;
    Ok(Queued {
        before,
        after,
        enqueued,
        total: started.elapsed(),
    })
}

/// Enqueues `calls` calls of `echo.version` on the first cage for the second, and waits until
/// the second executed them all.
pub fn run(place: &Place, calls: usize, clients: usize, report: &mut Report) -> Result<(), String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let Queued {
        enqueued, total, ..
    } = queue_and_wait(
        place,
        "version",
        b"null",
        "retry",
        calls,
        clients,
        "e2e",
        "executing",
    )?;
    report.add(
        "e2e",
        format!("queued calls/s {source} → {to}, first enqueue to last done"),
        calls as f64 / total.as_secs_f64(),
        "calls/s",
        Some(Goal::AtLeast(25_000.0)),
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
