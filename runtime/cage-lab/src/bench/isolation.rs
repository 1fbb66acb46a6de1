//! `cage bench isolation`: what running modules in worker processes costs. Sync call latency
//! and throughput and e2e queued calls/s, measured on one lab of the benchmark's own cages
//! with `isolation = "in_process"` and on another with `isolation = "process"`, in one run.

use super::lab::Lab;
use super::report::{Goal, Report};
use super::{e2e, rpc, Place, E2E, RPC};
use std::path::Path;

/// Isolation modes, in the order they are measured.
const MODES: [&str; 2] = ["in_process", "process"];

/// Figures of one mode that the comparison reads.
struct Measured {
    p50_us: f64,
    e2e_per_sec: f64,
}

/// Measures both modes with `calls` calls per figure and adds their figures and the cost of
/// process isolation to `report`.
pub fn run(
    echo: &Path,
    tls: bool,
    calls: Option<usize>,
    clients: Option<usize>,
    report: &mut Report,
) -> Result<(), String> {
    let mut measured = Vec::new();
    for mode in MODES {
        eprintln!("bench isolation: modules {mode}");
        let lab = Lab::start_with(echo, tls, &format!("isolation = \"{mode}\"\n"))?;
        let place = Place::of_lab(lab);
        let mut own = Report {
            fdatasync_per_sec: report.fdatasync_per_sec,
            figures: Vec::new(),
        };
        rpc::run(
            &place,
            "echo.shout",
            "\"ping\"",
            calls.unwrap_or(RPC.0).max(1),
            clients.unwrap_or(RPC.1).max(1),
            &mut own,
        )?;
        e2e::run(
            &place,
            calls.unwrap_or(E2E.0).max(1),
            clients.unwrap_or(E2E.1).max(1),
            &mut own,
        )?;
        drop(place);
        let value = |starts: &str| {
            own.figures
                .iter()
                .find(|f| f.name.starts_with(starts))
                .map(|f| f.value)
                .ok_or_else(|| format!("the {mode} run reported no figure {starts:?}"))
        };
        measured.push(Measured {
            p50_us: value("latency p50, 1 caller")?,
            e2e_per_sec: value("queued calls/s")?,
        });
        for f in own.figures {
            report.add(
                "isolation",
                format!("{mode}: {} {}", f.scenario, f.name),
                f.value,
                f.unit,
                None,
            );
        }
    }
    let (inside, apart) = (&measured[0], &measured[1]);
    report.add(
        "isolation",
        "process mode adds to rpc latency p50, 1 caller",
        apart.p50_us - inside.p50_us,
        "µs",
        Some(Goal::AtMost(15.0)),
    );
    report.add(
        "isolation",
        "process mode costs of e2e queued calls/s",
        (1.0 - apart.e2e_per_sec / inside.e2e_per_sec) * 100.0,
        "%",
        Some(Goal::AtMost(15.0)),
    );
    Ok(())
}
