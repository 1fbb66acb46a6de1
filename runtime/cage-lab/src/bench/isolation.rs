//! `cage bench isolation`: what running modules in worker processes costs. Sync call latency
//! and throughput and e2e queued calls/s, measured on one lab of the benchmark's own cages
//! with `isolation = "in_process"` and on another with `isolation = "process"`, in one run.
//! Both labs run side by side and are measured in turns, [`ROUNDS`] rounds each, and every
//! figure is the median of its rounds: the disk's and the machine's drift between minutes
//! then falls on both modes alike instead of on whichever ran second.

use super::lab::Lab;
use super::report::{Figure, Goal, Report};
use super::{e2e, rpc, Place, E2E, RPC};
use std::path::Path;

/// Isolation modes, in the order they are measured in each round.
const MODES: [&str; 2] = ["in_process", "process"];

/// Rounds per mode.
pub const ROUNDS: usize = 3;

/// The median of `values` (of an odd count, the middle one; of an even one, the upper).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
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
    let mut places = Vec::new();
    for mode in MODES {
        eprintln!("bench isolation: starting a lab with modules {mode}");
        let lab = Lab::start_with(echo, tls, &format!("isolation = \"{mode}\"\n"))?;
        places.push(Place::of_lab(lab));
    }
    // Per mode, the figures of each round.
    let mut rounds: Vec<Vec<Vec<Figure>>> = vec![Vec::new(); MODES.len()];
    for round in 1..=ROUNDS {
        for ((mode, place), taken) in MODES.iter().zip(&places).zip(&mut rounds) {
            eprintln!("bench isolation: round {round} of {ROUNDS}, modules {mode}");
            if let Some(lab) = &place.lab {
                lab.present()?;
            }
            let mut own = Report {
                fdatasync_per_sec: report.fdatasync_per_sec,
                figures: Vec::new(),
            };
            rpc::run(
                place,
                "echo.shout",
                "\"ping\"",
                calls.unwrap_or(RPC.0).max(1),
                clients.unwrap_or(RPC.1).max(1),
                &mut own,
            )?;
            e2e::run(
                place,
                calls.unwrap_or(E2E.0).max(1),
                clients.unwrap_or(E2E.1).max(1),
                &mut own,
            )?;
            taken.push(own.figures);
        }
    }
    drop(places);
    let mut medians = Vec::new();
    for (mode, taken) in MODES.iter().zip(&rounds) {
        let first = taken.first().map(Vec::as_slice).unwrap_or_default();
        let of = |f: &Figure| {
            median(
                taken
                    .iter()
                    .filter_map(|r| r.iter().find(|g| g.name == f.name).map(|g| g.value))
                    .collect(),
            )
        };
        for f in first {
            report.add(
                "isolation",
                format!("{mode}: {} {}, median of {ROUNDS}", f.scenario, f.name),
                of(f),
                f.unit,
                None,
            );
        }
        let value = |starts: &str| {
            first
                .iter()
                .find(|f| f.name.starts_with(starts))
                .map(of)
                .ok_or_else(|| format!("the {mode} runs reported no figure {starts:?}"))
        };
        medians.push((value("latency p50, 1 caller")?, value("queued calls/s")?));
    }
    let ((inside_p50, inside_e2e), (apart_p50, apart_e2e)) = (medians[0], medians[1]);
    report.add(
        "isolation",
        format!("process mode adds to rpc latency p50, 1 caller (medians of {ROUNDS} rounds)"),
        apart_p50 - inside_p50,
        "µs",
        Some(Goal::AtMost(15.0)),
    );
    report.add(
        "isolation",
        format!("process mode costs of e2e queued calls/s (medians of {ROUNDS} rounds)"),
        (1.0 - apart_e2e / inside_e2e) * 100.0,
        "%",
        Some(Goal::AtMost(15.0)),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_whatever_the_order() {
        assert_eq!(median(vec![9.0, 1.0, 5.0]), 5.0);
        assert_eq!(median(vec![2.0, 8.0]), 8.0);
        assert!(median(Vec::new()).is_nan());
    }
}
