//! Dead letters of every cage, each with why it died and buttons to revive or cancel it.

use super::{action_button, call_link, page, utc, Frame};
use crate::transport::protocol::CallView;
use maud::{html, Markup};

/// The dead letters page.
pub fn render(
    frame: &Frame,
    dead: &[(String, Result<Vec<CallView>, String>)],
    back: &str,
) -> Markup {
    let total: usize = dead
        .iter()
        .map(|(_, d)| d.as_ref().map_or(0, Vec::len))
        .sum();
    page(
        frame,
        "Dead letters",
        html! {
            p.muted { (total) " dead letter(s). Revive makes a call pending again, due now, with a fresh give-up window." }
            table.sortable #dead {
                thead { tr {
                    th { "cage" } th { "call" } th { "module.method" } th { "queue" } th { "attempts" }
                    th { "why it died" } th { "last attempt" } th { "" }
                } }
                tbody {
                    @for (cage, calls) in dead {
                        @match calls {
                            Err(e) => tr { td { (cage) } td.err colspan="7" { "did not answer: " (e) } },
                            Ok(calls) => {
                                @for v in calls {
                                    @let r = &v.record;
                                    tr data-call=(r.call.id) {
                                        td { (cage) }
                                        td { (call_link(frame, cage, &r.call.id)) }
                                        td { (r.call.module) "." (r.call.method) }
                                        td { (r.call.queue) }
                                        td { (r.attempts.len()) }
                                        td.err { (r.dead_reason.as_deref().unwrap_or("")) }
                                        td { (r.attempts.last().map(|a| utc(a.started_ms)).unwrap_or_default()) }
                                        td {
                                            (action_button(frame, cage, &r.call.id, "revive", "Revive", back)) " "
                                            (action_button(frame, cage, &r.call.id, "cancel", "Cancel", back))
                                        }
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
