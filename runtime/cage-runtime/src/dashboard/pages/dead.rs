//! Dead letters of every cage, each with why it died and buttons to revive or cancel it; a
//! filter (cage, queue, module, method, error text) narrows the list, and the calls it selects
//! can be revived together after a confirmation that counts them (a redrive after a fix).

use super::{action_button, call_link, enc, page, utc, Frame};
use crate::dashboard::gather::Redriven;
use crate::transport::protocol::{CallView, Filter};
use maud::{html, Markup};
use serde::Deserialize;

/// Which dead letters to list (and revive together).
#[derive(Deserialize, Default, Debug, Clone)]
pub struct DeadFilter {
    /// Only this cage.
    #[serde(default)]
    pub cage: String,
    /// Only calls of this queue.
    #[serde(default)]
    pub queue: String,
    /// Only calls to this module.
    #[serde(default)]
    pub module: String,
    /// Only calls to this method.
    #[serde(default)]
    pub method: String,
    /// Only calls whose last error (or why they died) holds this text.
    #[serde(default)]
    pub error: String,
}

impl DeadFilter {
    /// The fields that are set, by name.
    fn fields(&self) -> Vec<(&'static str, &str)> {
        [
            ("cage", self.cage.as_str()),
            ("queue", &self.queue),
            ("module", &self.module),
            ("method", &self.method),
            ("error", &self.error),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.trim()))
        .filter(|(_, v)| !v.is_empty())
        .collect()
    }

    /// The cage it is about, if one.
    pub fn cage(&self) -> Option<&str> {
        Some(self.cage.trim()).filter(|c| !c.is_empty())
    }

    /// The filter cages apply.
    pub fn filter(&self) -> Filter {
        let set = |v: &str| Some(v.trim().to_owned()).filter(|v| !v.is_empty());
        Filter {
            queue: set(&self.queue),
            module: set(&self.module),
            method: set(&self.method),
            error: set(&self.error),
            ..Filter::default()
        }
    }

    /// As a URL query (`queue=mail&error=smtp`).
    pub fn query(&self) -> String {
        self.fields()
            .iter()
            .map(|(k, v)| format!("{k}={}", enc(v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    /// In words, for the history of the calls it revives (`queue=mail error=smtp`).
    pub fn words(&self) -> String {
        match self.fields() {
            f if f.is_empty() => "every dead letter".to_owned(),
            f => f
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    }

    /// The filter's form, each field with its value.
    fn form(&self, frame: &Frame) -> Markup {
        html! {
            form.filter method="get" action={(frame.base) "/dead"} {
                @for (name, value) in [("cage", &self.cage), ("queue", &self.queue), ("module", &self.module), ("method", &self.method), ("error", &self.error)] {
                    label { (name) " " input type="text" name=(name) value=(value); } " "
                }
                button type="submit" { "Filter" }
            }
        }
    }
}

/// The dead letters page.
pub fn render(
    frame: &Frame,
    dead: &[(String, Result<Vec<CallView>, String>)],
    filter: &DeadFilter,
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
            (filter.form(frame))
            p.muted { (total) " dead letter(s) listed (at most 1000 a cage). Revive makes a call pending again, due now, with a fresh give-up window." }
            @if total > 0 {
                p { a.button #revive-all href={(frame.base) "/revive?" (filter.query())} { "Revive all that match…" } }
            }
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

/// The confirmation of a revive of every dead letter `filter` selects: how many each cage
/// holds (counted by a dry run), the first of them, and the form that revives them.
pub fn confirm(
    frame: &Frame,
    counted: &[(String, Result<Redriven, String>)],
    filter: &DeadFilter,
) -> Markup {
    let total: usize = counted
        .iter()
        .map(|(_, c)| c.as_ref().map_or(0, |(n, _)| *n))
        .sum();
    let unread: Vec<(&String, &String)> = counted
        .iter()
        .filter_map(|(cage, c)| c.as_ref().err().map(|e| (cage, e)))
        .collect();
    page(
        frame,
        "Revive dead letters",
        html! {
            p #count { "Revive " b { (total) } " dead letter(s) matching " (filter.words()) "?" }
            @for (cage, e) in &unread {
                p.err { "cage " (cage) " did not answer, its calls are not counted: " (e) }
            }
            table #first {
                thead { tr { th { "cage" } th { "call" } th { "module.method" } th { "queue" } th { "why it died" } } }
                tbody {
                    @for (cage, c) in counted {
                        @if let Ok((_, first)) = c {
                            @for v in first {
                                @let r = &v.record;
                                tr {
                                    td { (cage) }
                                    td { (call_link(frame, cage, &r.call.id)) }
                                    td { (r.call.module) "." (r.call.method) }
                                    td { (r.call.queue) }
                                    td.err { (r.dead_reason.as_deref().unwrap_or("")) }
                                }
                            }
                        }
                    }
                }
            }
            @if total > 0 {
                form method="post" action={(frame.base) "/revive"} {
                    input type="hidden" name="csrf" value=(frame.csrf);
                    @for (name, value) in filter.fields() {
                        input type="hidden" name=(name) value=(value);
                    }
                    label { "spread their due times over " input type="text" name="spread" value="0s"; } " "
                    button type="submit" #confirm-revive { "Revive " (total) " call(s)" }
                }
            }
            p { a href={(frame.base) "/dead?" (filter.query())} { "Back to the dead letters" } }
        },
    )
}
