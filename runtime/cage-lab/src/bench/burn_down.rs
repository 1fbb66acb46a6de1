//! `cage bench burn-down`: a backlog already queued when the cage that executes it starts;
//! how fast the cage works it off (calls/s from the start of its process to the last call
//! done) and how soon the first call runs.
//!
//! How the calls come to be already queued: they are enqueued into the target cage itself
//! (the second cage, for itself), all due at one moment a little after the filling ends; the
//! cage is stopped gracefully before that moment and started again after it. When it starts,
//! every call is due and already in its own queue, so what is timed is that cage alone:
//! opening its queue, finding the due calls and executing them. Holding the calls on the
//! first cage while the second is down was the other way, but then the first cage's delivery
//! retries (their backoff decides when the target hears of the calls again) would be timed
//! rather than the target's drain. The moment is set from the enqueue rate of a short
//! calibration run (calls due a day later, cancelled before the filling), with half as much
//! again as margin; a call that ran before the cage stopped fails the run instead of skewing
//! it.

use super::load::{cancel_queue, echo_call, enqueue_many, enqueue_many_with, wait_executed};
use super::report::{Goal, Report};
use super::stamps::{now_us, StampFile};
use super::Place;
use cage_runtime::model::clock::now_ms;
use cage_runtime::transport::protocol::{EnqueueRequest, QueueStats};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Queue of the calibration calls (cancelled after).
const CALIBRATION_QUEUE: &str = "bench";

/// Queue of the backlog (its concurrency is high enough not to be the limit measured).
const BACKLOG_QUEUE: &str = "retry";

/// Fills the second of the benchmark's own cages with `calls` calls (from `clients`
/// clients), all due once it is down, restarts it and times the drain.
pub fn run(
    place: &mut Place,
    calls: usize,
    clients: usize,
    report: &mut Report,
) -> Result<(), String> {
    run_as(place, calls, clients, &Backlog::PLAIN, report)
}

/// What a burn-down's backlog is, and the name its figures are reported under.
pub struct Backlog<'a> {
    /// The scenario the figures belong to.
    pub scenario: &'static str,
    /// How the rows describe this backlog ("" for the plain one).
    pub what: &'a str,
    /// The calls are spread over this many groups, in turn (0: no groups).
    pub groups: usize,
    /// Only the drain rate is reported.
    pub drain_only: bool,
}

impl Backlog<'_> {
    /// Calls without groups, every figure reported.
    pub const PLAIN: Backlog<'static> = Backlog {
        scenario: "burn-down",
        what: "",
        groups: 0,
        drain_only: false,
    };
}

/// [`run`] with the backlog `backlog` says.
pub fn run_as(
    place: &mut Place,
    calls: usize,
    clients: usize,
    backlog_of: &Backlog<'_>,
    report: &mut Report,
) -> Result<(), String> {
    let cage = place.second.clone();
    let route = place.route(&cage)?;
    let lab = place.lab.as_mut().ok_or(
        "burn-down stops and starts the cage that executes the calls: run it without cage names, on the benchmark's own cages",
    )?;
    let stamps = StampFile::new(&std::env::temp_dir(), "burn-down")?;
    let backlog = echo_call(&cage, "stamp", &stamps.args(&cage), BACKLOG_QUEUE);

    let sample = (calls / 50).clamp(100, 5_000);
    let calibration = EnqueueRequest {
        queue: CALIBRATION_QUEUE.into(),
        delay_ms: 24 * 3600 * 1000,
        group: None,
        ..backlog.clone()
    };
    let timed = Instant::now();
    enqueue_many(
        &cage,
        &route,
        &calibration,
        sample,
        clients,
        1,
        &format!("burn-down: timing enqueues into {cage}"),
    )?;
    let rate = sample as f64 / timed.elapsed().as_secs_f64();
    cancel_queue(&cage, &route, CALIBRATION_QUEUE)?;

    let planned = Duration::from_secs_f64(1.5 * calls as f64 / rate) + Duration::from_secs(1);
    let due_ms = now_ms() + planned.as_millis() as u64;
    let filled = Instant::now();
    let (groups, next) = (backlog_of.groups, AtomicUsize::new(0));
    enqueue_many_with(
        &cage,
        &route,
        Arc::new(move || EnqueueRequest {
            delay_ms: due_ms.saturating_sub(now_ms()).max(1),
            group: (groups > 0)
                .then(|| format!("customer-{}", next.fetch_add(1, Ordering::Relaxed) % groups)),
            ..backlog.clone()
        }),
        calls,
        clients,
        1,
        &format!("burn-down: queueing {calls} calls in {cage}"),
    )?;
    let fill_rate = calls as f64 / filled.elapsed().as_secs_f64();
    eprintln!("burn-down: stopping {cage} with {calls} calls queued");
    lab.stop(&cage);
    let early = stamps.read()?.len();
    if early > 0 {
        return Err(format!(
            "{early} of the {calls} calls ran before {cage} stopped: filling took longer than the {:.1} s planned from {rate:.0} enqueues/s; try again, or with fewer --calls",
            planned.as_secs_f64()
        ));
    }
    // Every call is due once the moment has passed (a few ms more for the cage's timer).
    std::thread::sleep(Duration::from_millis(
        (due_ms + 20).saturating_sub(now_ms()),
    ));

    let start_us = now_us();
    let start = Instant::now();
    let answering = lab.run(&cage)?;
    wait_executed(
        &cage,
        &route,
        &QueueStats::default(),
        calls,
        &format!("burn-down on {cage}"),
    )?;
    let drain = start.elapsed();
    let first_us = stamps
        .read()?
        .iter()
        .map(|(_, us)| *us)
        .min()
        .ok_or_else(|| {
            format!("{cage} executed the calls without a stamp (is echo.stamp in its echo build?)")
        })?;

    report.add(
        backlog_of.scenario,
        format!(
            "{calls} queued calls{} drained, cage start to last done",
            backlog_of.what
        ),
        calls as f64 / drain.as_secs_f64(),
        "calls/s",
        None,
    );
    if backlog_of.drain_only {
        return Ok(());
    }
    report.add(
        "burn-down",
        format!("cage start to first queued call executed, {calls} queued"),
        first_us.saturating_sub(start_us) as f64 / 1e6,
        "s",
        Some(Goal::AtMost(5.0)),
    );
    report.add(
        "burn-down",
        format!("cage start to answering, {calls} queued"),
        answering.as_secs_f64(),
        "s",
        None,
    );
    report.add(
        "burn-down",
        format!("{calls} calls queued into {cage} by {clients} clients at"),
        fill_rate,
        "calls/s",
        None,
    );
    Ok(())
}
