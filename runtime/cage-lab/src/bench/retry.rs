//! `cage bench retry`: calls that fail twice and succeed on their third attempt, with retries
//! a few milliseconds apart: how long until all are done, and that none is lost.

use super::e2e::{queue_and_wait, Queued};
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{Filter, QueueQuery};
use std::time::Duration;

/// Enqueues `calls` calls of `echo.flaky` (failing the first two attempts) on the first cage
/// for the second, on `queue`, and waits until every one succeeded.
pub fn run(
    place: &Place,
    queue: &str,
    calls: usize,
    clients: usize,
    report: &mut Report,
) -> Result<(), String> {
    let to = place.second.as_str();
    let Queued {
        before,
        after,
        total,
        ..
    } = queue_and_wait(
        place,
        "flaky",
        b"2",
        queue,
        calls,
        clients,
        "retry",
        "third attempts",
    )?;
    let target_route = place.route(to)?;
    let dead = Client::connect(to, &target_route)
        .and_then(|mut c| {
            c.calls(
                QueueQuery::Dead(Filter {
                    queue: Some(queue.to_owned()),
                    module: Some("echo".into()),
                    limit: 0,
                    ..Filter::default()
                }),
                Duration::from_secs(60),
            )
        })
        .map_err(|e| e.to_string())?
        .iter()
        .filter(|v| v.record.call.method == "flaky")
        .count();
    let done = after.executed - before.executed;
    let failed = after.failed_attempts - before.failed_attempts;
    report.add(
        "retry",
        format!("{calls} calls failing twice, all done in"),
        total.as_secs_f64(),
        "s",
        None,
    );
    report.add(
        "retry",
        "calls/s through three attempts each",
        calls as f64 / total.as_secs_f64(),
        "calls/s",
        None,
    );
    report.add(
        "retry",
        "failed attempts per call",
        failed as f64 / done.max(1) as f64,
        "attempts",
        Some(Goal::AtMost(2.0)),
    );
    report.add(
        "retry",
        "calls lost or dead",
        (calls as u64).saturating_sub(done) as f64 + dead as f64,
        "calls",
        Some(Goal::AtMost(0.0)),
    );
    Ok(())
}
