//! One queue of one cage: its counters and chart, and its pending calls, filtered on the
//! server (module, method, error text, age) and sortable in the browser.

use super::{action_button, age, call_link, enc, moment, page, Frame};
use crate::dashboard::chart;
use crate::metrics::MetricsSnapshot;
use crate::model::clock;
use crate::transport::protocol::CallView;
use maud::{html, Markup};
use serde::Deserialize;

/// Which pending calls to list.
#[derive(Deserialize, Default, Debug, Clone)]
pub struct QueueFilter {
    /// Only calls to this module.
    #[serde(default)]
    pub module: String,
    /// Only calls of this method.
    #[serde(default)]
    pub method: String,
    /// Only calls whose last error contains this text.
    #[serde(default)]
    pub error: String,
    /// Only calls enqueued at least this many seconds ago.
    #[serde(default)]
    pub min_age: String,
}

impl QueueFilter {
    /// Whether `view` passes.
    pub fn keeps(&self, view: &CallView, now_ms: u64) -> bool {
        let call = &view.record.call;
        let min_age_ms = self.min_age.trim().parse::<u64>().unwrap_or(0) * 1000;
        (self.module.is_empty() || call.module == self.module)
            && (self.method.is_empty() || call.method == self.method)
            && (self.error.is_empty()
                || view
                    .record
                    .last_error()
                    .is_some_and(|e| e.to_lowercase().contains(&self.error.to_lowercase())))
            && now_ms.saturating_sub(call.enqueued_at_ms) >= min_age_ms
    }
}

/// The queue page.
pub fn render(
    frame: &Frame,
    cage: &str,
    queue: &str,
    metrics: Option<&MetricsSnapshot>,
    calls: Result<Vec<CallView>, String>,
    filter: &QueueFilter,
    back: &str,
) -> Markup {
    let now = clock::now_ms();
    let q = metrics.and_then(|m| m.queue(queue));
    page(
        frame,
        &format!("Queue {queue} on cage {cage}"),
        html! {
            @if let Some(q) = q {
                p.counts #counters {
                    "Now: " b.pending { (q.pending) } " pending, " b { (q.dead_now) } " dead. Since the cage started: "
                    span #enqueued { (q.counters.enqueued) } " enqueued, "
                    span #accepted { (q.counters.accepted) } " accepted, "
                    span #attempts { (q.counters.attempts) } " attempts, "
                    span #succeeded { (q.counters.successes) } " succeeded, "
                    span #failed { (q.counters.failures) } " failed, "
                    span #died { (q.counters.dead) } " died."
                }
                (chart::attempts(&q.counters.series.iter().copied().collect::<Vec<_>>(), now / 60_000))
            }
            form.filters method="get" {
                label { "module " input name="module" value=(filter.module); } " "
                label { "method " input name="method" value=(filter.method); } " "
                label { "error contains " input name="error" value=(filter.error); } " "
                label { "older than (s) " input name="min_age" value=(filter.min_age); } " "
                button type="submit" { "Filter" }
                " " a href={(frame.base) "/queue/" (enc(cage)) "/" (enc(queue))} { "clear" }
            }
            @match calls {
                Err(e) => p.err { "cage " (cage) " did not answer: " (e) },
                Ok(calls) => {
                    @let shown: Vec<&CallView> = calls.iter().filter(|v| filter.keeps(v, now)).collect();
                    p.muted { (shown.len()) " of " (calls.len()) " pending call(s) shown. Click a column to sort." }
                    table.sortable #pending {
                        thead { tr {
                            th { "call" } th { "module.method" } th { "stage" } th { "attempts" }
                            th { "next attempt" } th { "last error" } th { "age" } th { "" }
                        } }
                        tbody {
                            @for v in shown {
                                @let r = &v.record;
                                tr data-call=(r.call.id) {
                                    td { (call_link(frame, cage, &r.call.id)) }
                                    td {
                                        (r.call.module) "." (r.call.method)
                                        @if let Some(group) = &r.call.group { br; span.muted { "group " (group) } }
                                    }
                                    td { (r.stage.as_str()) @if v.running { " " b { "running" } } }
                                    td data-v=(r.attempts.len()) {
                                        (r.attempts.len())
                                        @if let Some(c) = &v.crashes {
                                            " " span.err { "crashes: " (c.count) " of " (c.max) }
                                        }
                                    }
                                    td data-v=(r.next_at_ms) {
                                        (moment(r.next_at_ms))
                                        @if let Some(why) = &v.waiting { br; span.muted { (why) } }
                                    }
                                    td.err { (r.last_error().unwrap_or("")) }
                                    td data-v=(r.call.enqueued_at_ms) { (age(r.call.enqueued_at_ms)) }
                                    td {
                                        (action_button(frame, cage, &r.call.id, "retry-now", "Retry now", back)) " "
                                        (action_button(frame, cage, &r.call.id, "cancel", "Cancel", back))
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
