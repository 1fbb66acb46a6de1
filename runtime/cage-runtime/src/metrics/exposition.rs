//! Snapshots of one or more cages in the Prometheus text format (OpenMetrics flavour), every
//! sample labelled with its cage so a dashboard can serve a whole site from one endpoint.

use super::{
    MethodCounters, MetricsSnapshot, ModuleLoads, QueueMetrics, WorkerCounters, DURATION_BUCKETS,
};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// Reads one counter of a queue.
type QueueValue = fn(&QueueMetrics) -> u64;

/// The text exposition of `snapshots`.
pub fn encode(snapshots: Vec<MetricsSnapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshots(snapshots)));
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

#[derive(Debug)]
struct Snapshots(Vec<MetricsSnapshot>);

/// A family of counters or gauges: name, help, and one sample per label set.
fn family(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

impl Snapshots {
    /// One sample per item that `items` picks from each snapshot, labelled with its cage and
    /// the labels `labels` gives the item.
    fn samples<'a, T: 'a, I: Iterator<Item = &'a T>>(
        &'a self,
        items: impl Fn(&'a MetricsSnapshot) -> I,
        labels: impl Fn(&T) -> Labels,
        value: impl Fn(&T) -> u64,
    ) -> Vec<(Labels, u64)> {
        let mut out = Vec::new();
        for s in &self.0 {
            for item in items(s) {
                let mut l = vec![("cage", s.cage.clone())];
                l.extend(labels(item));
                out.push((l, value(item)));
            }
        }
        out
    }

    fn per_queue(&self, value: impl Fn(&QueueMetrics) -> u64) -> Vec<(Labels, u64)> {
        self.samples(
            |s| s.queues.iter(),
            |q| vec![("queue", q.queue.clone())],
            value,
        )
    }

    fn per_method(&self, value: impl Fn(&MethodCounters) -> u64) -> Vec<(Labels, u64)> {
        self.samples(
            |s| s.methods.iter(),
            |m| vec![("module", m.module.clone()), ("method", m.method.clone())],
            |m| value(&m.counters),
        )
    }

    fn per_module(&self, value: impl Fn(&ModuleLoads) -> u64) -> Vec<(Labels, u64)> {
        self.samples(
            |s| s.modules.iter(),
            |m| vec![("module", m.module.clone())],
            value,
        )
    }
}

impl Collector for Snapshots {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let e = &mut encoder;
        let uptime = self
            .0
            .iter()
            .map(|s| (vec![("cage", s.cage.clone())], s.uptime_secs))
            .collect();
        family(
            e,
            "cage_uptime_seconds",
            "Seconds since the cage started.",
            Gauge,
            uptime,
        )?;
        let queue_counters: [(&str, &str, QueueValue); 8] = [
            (
                "cage_calls_enqueued",
                "Calls taken by enqueue on this cage.",
                |q| q.counters.enqueued,
            ),
            (
                "cage_calls_accepted",
                "Calls accepted from other cages.",
                |q| q.counters.accepted,
            ),
            (
                "cage_calls_delivered",
                "Calls handed to their target cage and accepted there.",
                |q| q.counters.delivered,
            ),
            (
                "cage_delivery_failures",
                "Failed hand-overs of calls to their target cage.",
                |q| q.counters.delivery_failures,
            ),
            (
                "cage_attempts",
                "Execution attempts of queued calls that ended.",
                |q| q.counters.attempts,
            ),
            (
                "cage_attempt_successes",
                "Execution attempts that succeeded.",
                |q| q.counters.successes,
            ),
            (
                "cage_attempt_failures",
                "Execution attempts that failed.",
                |q| q.counters.failures,
            ),
            ("cage_calls_dead", "Calls moved to dead letters.", |q| {
                q.counters.dead
            }),
        ];
        for (name, help, value) in queue_counters {
            family(e, name, help, Counter, self.per_queue(value))?;
        }
        family(
            e,
            "cage_pending_calls",
            "Calls pending in the queue now.",
            Gauge,
            self.per_queue(|q| q.pending),
        )?;
        family(
            e,
            "cage_dead_calls",
            "Dead letters held now.",
            Gauge,
            self.per_queue(|q| q.dead_now),
        )?;
        family(
            e,
            "cage_calls_held_by_rate_limit",
            "Due calls of the queue waiting for its rate limit now.",
            Gauge,
            self.per_queue(|q| q.held_by_rate_limit),
        )?;
        family(
            e,
            "cage_calls_held_by_group",
            "Due calls of the queue waiting for their group's concurrency or rate limit now.",
            Gauge,
            self.per_queue(|q| q.held_by_group),
        )?;
        family(
            e,
            "cage_method_calls",
            "Runs of a module method that ended (sync and queued).",
            Counter,
            self.per_method(|m| m.calls),
        )?;
        family(
            e,
            "cage_method_errors",
            "Runs of a module method that returned an error.",
            Counter,
            self.per_method(|m| m.errors),
        )?;
        let mut histogram = e.encode_descriptor(
            "cage_attempt_duration_seconds",
            "How long runs of a module method took.",
            None,
            MetricType::Histogram,
        )?;
        for s in &self.0 {
            for m in &s.methods {
                let labels: Labels = vec![
                    ("cage", s.cage.clone()),
                    ("module", m.module.clone()),
                    ("method", m.method.clone()),
                ];
                // The encoder accumulates the per-bucket counts and writes `f64::MAX` as `+Inf`.
                let buckets: Vec<(f64, u64)> = DURATION_BUCKETS
                    .iter()
                    .copied()
                    .chain([f64::MAX])
                    .zip(
                        m.counters
                            .buckets
                            .iter()
                            .copied()
                            .chain(std::iter::repeat(0)),
                    )
                    .collect();
                histogram
                    .encode_family(&labels)?
                    .encode_histogram::<Labels>(
                        m.counters.seconds,
                        m.counters.calls,
                        &buckets,
                        None,
                    )?;
            }
        }
        family(
            e,
            "cage_module_loads",
            "Module versions loaded.",
            Counter,
            self.per_module(|m| m.loads),
        )?;
        family(
            e,
            "cage_module_rejected_loads",
            "Module files rejected.",
            Counter,
            self.per_module(|m| m.rejected),
        )?;
        self.workers(e)
    }
}

impl Snapshots {
    /// The worker process families: gauges of running and idle workers per module, counters
    /// of workers started, crashed (by reason) and killed at their call's deadline.
    fn workers(&self, e: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use MetricType::{Counter, Gauge};
        let per_module = |value: fn(&WorkerCounters) -> u64| -> Vec<(Labels, u64)> {
            self.0
                .iter()
                .flat_map(|s| {
                    s.workers.iter().map(move |(module, w)| {
                        (
                            vec![("cage", s.cage.clone()), ("module", module.clone())],
                            value(w),
                        )
                    })
                })
                .collect()
        };
        family(
            e,
            "cage_workers_running",
            "Worker processes of a module running a call now.",
            Gauge,
            per_module(|w| w.running),
        )?;
        family(
            e,
            "cage_workers_idle",
            "Worker processes of a module waiting for a call now.",
            Gauge,
            per_module(|w| w.idle),
        )?;
        family(
            e,
            "cage_workers_started",
            "Worker processes of a module started.",
            Counter,
            per_module(|w| w.started),
        )?;
        family(
            e,
            "cage_workers_killed",
            "Worker processes killed because their call passed its deadline.",
            Counter,
            per_module(|w| w.killed),
        )?;
        family(
            e,
            "cage_threads_written_off",
            "Executor threads left to a call that passed its deadline in process, and replaced.",
            Counter,
            per_module(|w| w.threads_written_off),
        )?;
        let mut crashes = Vec::new();
        for s in &self.0 {
            for (module, w) in &s.workers {
                for (reason, n) in &w.crashed {
                    let labels = vec![
                        ("cage", s.cage.clone()),
                        ("module", module.clone()),
                        ("reason", reason.clone()),
                    ];
                    crashes.push((labels, *n));
                }
            }
        }
        family(
            e,
            "cage_worker_crashes",
            "Worker processes that died in a call, by reason (SIGSEGV, stack_overflow, out_of_memory, exit_3…).",
            Counter,
            crashes,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, ModuleLoads, QueueEvent, QueueMetrics, WorkerEvent};
    use std::time::Duration;

    #[test]
    fn samples_carry_cage_and_queue_or_method() {
        let m = Metrics::default();
        m.queue_event("retry", QueueEvent::Enqueued, 0);
        m.queue_event("retry", QueueEvent::Failed, 0);
        m.method_run("echo", "boom", Duration::from_millis(2), Some("no"), 0);
        let snapshot = MetricsSnapshot {
            cage: "demo".into(),
            uptime_secs: 5,
            queues: vec![QueueMetrics {
                queue: "retry".into(),
                counters: m.queues()["retry"].clone(),
                pending: 1,
                dead_now: 0,
                held_by_rate_limit: 7,
                held_by_group: 3,
            }],
            methods: m.methods(),
            modules: vec![ModuleLoads {
                module: "echo".into(),
                loads: 1,
                rejected: 2,
            }],
            workers: {
                m.worker_event("crash", WorkerEvent::Started, "");
                m.worker_event("crash", WorkerEvent::Crashed, "SIGSEGV");
                m.worker_event("crash", WorkerEvent::Started, "");
                m.worker_event("crash", WorkerEvent::Killed, "");
                m.worker_event("crash", WorkerEvent::Started, "");
                m.worker_event("crash", WorkerEvent::Finished, "");
                m.workers()
            },
        };
        let text = encode(vec![snapshot]);
        for line in [
            "cage_calls_enqueued_total{cage=\"demo\",queue=\"retry\"} 1",
            "cage_attempt_failures_total{cage=\"demo\",queue=\"retry\"} 1",
            "cage_pending_calls{cage=\"demo\",queue=\"retry\"} 1",
            "cage_calls_held_by_rate_limit{cage=\"demo\",queue=\"retry\"} 7",
            "cage_calls_held_by_group{cage=\"demo\",queue=\"retry\"} 3",
            "cage_attempt_duration_seconds_count{cage=\"demo\",module=\"echo\",method=\"boom\"} 1",
            "cage_attempt_duration_seconds_bucket{le=\"+Inf\",cage=\"demo\",module=\"echo\",method=\"boom\"} 1",
            "cage_module_rejected_loads_total{cage=\"demo\",module=\"echo\"} 2",
            "cage_worker_crashes_total{cage=\"demo\",module=\"crash\",reason=\"SIGSEGV\"} 1",
            "cage_workers_killed_total{cage=\"demo\",module=\"crash\"} 1",
            "cage_workers_started_total{cage=\"demo\",module=\"crash\"} 3",
            "cage_workers_idle{cage=\"demo\",module=\"crash\"} 1",
            "cage_workers_running{cage=\"demo\",module=\"crash\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
