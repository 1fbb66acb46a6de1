//! Jobs of every cage with their schedule, next run and last run.

use super::{call_link, moment, page, utc, Frame};
use crate::model::clock;
use crate::model::job::{Job, Schedule};
use maud::{html, Markup};
use std::time::Duration;

/// The jobs page.
pub fn render(frame: &Frame, jobs: &[(String, Result<Vec<Job>, String>)]) -> Markup {
    page(
        frame,
        "Jobs",
        html! {
            table.sortable #jobs {
                thead { tr {
                    th { "cage" } th { "job" } th { "calls" } th { "queue" } th { "schedule" }
                    th { "next run" } th { "last run" }
                } }
                tbody {
                    @for (cage, list) in jobs {
                        @match list {
                            Err(e) => tr { td { (cage) } td.err colspan="6" { "did not answer: " (e) } },
                            Ok(list) => {
                                @for j in list {
                                    tr data-job=(j.id) {
                                        td { (cage) }
                                        td { code { (j.id) } @if j.declared { span.muted { " (cage file)" } } }
                                        td { (j.module) "." (j.method) }
                                        td { (j.queue) }
                                        td { @match &j.schedule {
                                            Schedule::Once { at_ms } => { "once at " (utc(*at_ms)) }
                                            Schedule::Every { interval_ms, .. } => { "every " (clock::span(Duration::from_millis(*interval_ms))) }
                                        } }
                                        td data-v=(j.next_run_ms.unwrap_or(u64::MAX)) { @match j.next_run_ms { Some(at) => (moment(at)), None => span.muted { "none" } } }
                                        td { @if let Some(l) = &j.last_run {
                                            (utc(l.scheduled_ms)) " " (call_link(frame, &j.cage, &l.call_id)) " "
                                            @match &l.outcome { Some(o) => span { (o) }, None => span.muted { "running or queued" } }
                                        } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
