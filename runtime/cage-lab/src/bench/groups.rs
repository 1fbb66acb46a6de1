//! `cage bench groups`: what groups and fair dispatch cost. The same burn-down (a backlog
//! already queued when the executing cage starts, drained as fast as it can) is run four
//! times on the benchmark's own cages: calls without groups; spread over N groups (100 000
//! by default) under `fairness = "fifo"`; the same under `"round_robin"`; and round robin
//! with `group_concurrency = 1`. Each run reports its drain rate, so the rows read against
//! each other.

use super::burn_down::{run_as, Backlog};
use super::report::Report;
use super::Place;

/// Default number of groups.
pub const GROUPS: usize = 100_000;

/// Runs the four burn-downs of `calls` calls (from `clients` clients) over `groups` groups.
pub fn run(
    place: &mut Place,
    calls: usize,
    clients: usize,
    groups: usize,
    report: &mut Report,
) -> Result<(), String> {
    let spread = format!(" in {groups} groups");
    let runs: [(&str, usize, &str); 4] = [
        ("", 0, ""),
        (", fifo", groups, ""),
        (", round robin", groups, "fairness = \"round_robin\"\n"),
        (
            ", round robin, group_concurrency 1",
            groups,
            "fairness = \"round_robin\"\ngroup_concurrency = 1\n",
        ),
    ];
    for (how, groups, settings) in runs {
        place
            .lab
            .as_ref()
            .ok_or("groups changes the queue settings of the benchmark's own cages: run it without cage names")?
            .set_retry_queue(settings)?;
        let what = if groups == 0 {
            " without groups".to_owned()
        } else {
            format!("{spread}{how}")
        };
        eprintln!("groups: burn-down of {calls} calls{what}");
        let backlog = Backlog {
            scenario: "groups",
            what: &what,
            groups,
            drain_only: true,
        };
        run_as(place, calls, clients, &backlog, report)?;
    }
    place
        .lab
        .as_ref()
        .map_or(Ok(()), |lab| lab.set_retry_queue(""))
}
