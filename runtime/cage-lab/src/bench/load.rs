//! Shared by the queue benchmarks: enqueueing many calls from concurrent clients, and the
//! disk's raw `fdatasync` rate to read durability costs against.

use cage_runtime::config::CageRoute;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{
    EnqueueRequest, Filter, QueueQuery, QueueStats, Request, Response,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Enqueues `calls` copies of `request` through cage `via` from `clients` concurrent clients,
/// each on its own connection with `in_flight` enqueues pipelined at a time (1: one request,
/// one answer); returns each enqueue's acknowledgement latency (for a pipelined batch, the
/// batch's).
pub fn enqueue_many(
    via: &str,
    route: &CageRoute,
    request: &EnqueueRequest,
    calls: usize,
    clients: usize,
    in_flight: usize,
    label: &str,
) -> Result<Vec<Duration>, String> {
    let request = request.clone();
    enqueue_many_with(
        via,
        route,
        Arc::new(move || request.clone()),
        calls,
        clients,
        in_flight,
        label,
    )
}

/// [`enqueue_many`], each request made by `make` just before it is sent (e.g. a delay that
/// depends on the time of sending).
pub fn enqueue_many_with(
    via: &str,
    route: &CageRoute,
    make: Arc<dyn Fn() -> EnqueueRequest + Send + Sync>,
    calls: usize,
    clients: usize,
    in_flight: usize,
    label: &str,
) -> Result<Vec<Duration>, String> {
    let in_flight = in_flight.max(1);
    let progress = Arc::new(bar(calls, label));
    let per_client = calls.div_ceil(clients);
    let workers: Vec<_> = (0..clients)
        .map(|i| {
            let (via, route, make, progress) = (
                via.to_owned(),
                route.clone(),
                make.clone(),
                progress.clone(),
            );
            let n = per_client.min(calls.saturating_sub(i * per_client));
            std::thread::spawn(move || -> Result<Vec<Duration>, String> {
                let mut client = Client::connect(&via, &route).map_err(|e| e.to_string())?;
                let mut latencies = Vec::with_capacity(n);
                let mut sent = 0;
                while sent < n {
                    let batch = in_flight.min(n - sent);
                    let t = Instant::now();
                    if batch == 1 {
                        client
                            .enqueue(make(), Duration::from_secs(60))
                            .map_err(|e| e.to_string())?;
                    } else {
                        let answers = client
                            .pipeline(
                                (0..batch).map(|_| Request::Enqueue(make())).collect(),
                                Duration::from_secs(60),
                            )
                            .map_err(|e| e.to_string())?;
                        if let Some(bad) = answers
                            .iter()
                            .find(|a| !matches!(a, Response::Enqueued { .. }))
                        {
                            return Err(format!("enqueue refused: {bad:?}"));
                        }
                    }
                    let took = t.elapsed();
                    latencies.extend(std::iter::repeat_n(took, batch));
                    sent += batch;
                    progress.inc(batch as u64);
                }
                Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::with_capacity(calls);
    for w in workers {
        all.extend(
            w.join()
                .map_err(|_| "a bench client panicked".to_owned())??,
        );
    }
    progress.finish_and_clear();
    Ok(all)
}

/// A progress bar (on stderr) for `total` steps of work named `label`.
pub fn bar(total: usize, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label.to_owned());
    bar
}

/// `fdatasync` calls per second on a small file in `dir`, each after a 4 KiB write: the
/// disk's limit for durable acknowledgements that do not share a flush.
pub fn fdatasync_rate(dir: &Path, rounds: usize) -> Result<f64, String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let path = dir.join(".fdatasync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    for _ in 0..rounds {
        f.write_all(&block).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
    }
    let rate = rounds as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// The queue counters of cage `cage`.
pub fn stats(cage: &str, route: &CageRoute) -> Result<QueueStats, String> {
    Client::connect(cage, route)
        .and_then(|mut c| c.stats(false, Duration::from_secs(10)))
        .map_err(|e| e.to_string())
}

/// Waits (at most 10 minutes, showing progress as `label`) until cage `cage` has executed
/// `calls` more calls than `before` says; answers its counters then.
pub fn wait_executed(
    cage: &str,
    route: &CageRoute,
    before: &QueueStats,
    calls: usize,
    label: &str,
) -> Result<QueueStats, String> {
    let started = Instant::now();
    let progress = bar(calls, label);
    loop {
        let now = stats(cage, route)?;
        let done = now.executed.saturating_sub(before.executed);
        progress.set_position(done.min(calls as u64));
        if done >= calls as u64 {
            progress.finish_and_clear();
            return Ok(now);
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!(
                "{done} of {calls} calls executed on {cage} after 10 minutes; see cage pending {cage}"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A call of `echo.METHOD` with `args` for cage `to` on `queue`, due at once.
pub fn echo_call(to: &str, method: &str, args: &[u8], queue: &str) -> EnqueueRequest {
    EnqueueRequest {
        target: to.to_owned(),
        module: "echo".into(),
        method: method.to_owned(),
        args: args.to_vec(),
        queue: queue.to_owned(),
        priority: 0,
        key: None,
        delay_ms: 0,
        group: None,
    }
}

/// Cancels every pending call of `queue` on cage `cage` (the calls a benchmark left due later).
pub fn cancel_queue(cage: &str, route: &CageRoute, queue: &str) -> Result<(), String> {
    Client::connect(cage, route)
        .and_then(|mut c| {
            c.steer(
                QueueQuery::CancelAll(Filter {
                    queue: Some(queue.to_owned()),
                    module: None,
                    limit: 0,
                    ..Filter::default()
                }),
                Duration::from_secs(600),
            )
        })
        .map(drop)
        .map_err(|e| format!("the benchmark's calls could not be cancelled ({e}); run: cage cancel --all --queue {queue} --cage {cage}"))
}
