//! `cage bench e2e`: queued no-op calls from one cage to another, first enqueue to last
//! completion.

use super::load::enqueue_many;
use super::report::{Goal, Report};
use super::Place;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::EnqueueRequest;
use std::time::{Duration, Instant};

/// Enqueues `calls` calls of `echo.version` on the first cage for the second, and waits until
/// the second executed them all.
pub fn run(place: &Place, calls: usize, clients: usize, report: &mut Report) -> Result<(), String> {
    let (source, to) = (place.first.as_str(), place.second.as_str());
    let (source_route, target_route) = (place.route(source)?, place.route(to)?);
    let executed = || {
        Client::connect(to, &target_route)
            .and_then(|mut c| c.stats(false, Duration::from_secs(10)))
            .map(|s| s.executed)
            .map_err(|e| e.to_string())
    };
    let before = executed()?;
    let request = EnqueueRequest {
        target: to.to_owned(),
        module: "echo".into(),
        method: "version".into(),
        args: b"null".to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        delay_ms: 0,
    };
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
    let progress = super::load::bar(calls, &format!("executing on {to}"));
    loop {
        let done = executed()?.saturating_sub(before);
        progress.set_position(done.min(calls as u64));
        if done >= calls as u64 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "{done} of {calls} calls executed after 10 minutes; see cage pending"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    progress.finish_and_clear();
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
