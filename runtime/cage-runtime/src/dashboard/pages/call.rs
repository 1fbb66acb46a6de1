//! One queued call: its arguments, every attempt (when, how long, which module version, what
//! error), the chain it is a step of and the chains it started.

use super::{action_button, call_link, moment, page, took, utc, Frame};
use crate::dashboard::gather::CallDetail;
use crate::model::call::Stage;
use crate::model::chain::{ChainRecord, ChainState};
use maud::{html, Markup};

fn pretty(bytes: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(bytes)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(bytes).into_owned())
}

fn state(chain: &ChainRecord) -> String {
    match &chain.state {
        ChainState::Held => "held".into(),
        ChainState::Running => format!("running step {}/{}", chain.step + 1, chain.steps.len()),
        ChainState::Done => "done".into(),
        ChainState::Failed(f) => format!("failed: {f}"),
        ChainState::Cancelled(why) => format!("cancelled: {why}"),
    }
}

/// The call page (`None`: the cage holds no such call, pending or dead).
pub fn render(
    frame: &Frame,
    cage: &str,
    id: &str,
    detail: Result<Option<CallDetail>, String>,
    back: &str,
) -> Markup {
    page(
        frame,
        &format!("Call {id}"),
        html! {
            @match detail {
                Err(e) => p.err { "cage " (cage) " did not answer: " (e) },
                Ok(None) => p #gone { "Cage " (cage) " holds no call " code { (id) } " now: it finished (succeeded calls leave the queue), was cancelled, or was handed to its target cage." },
                Ok(Some(d)) => {
                    @let r = &d.view.record;
                    @let c = &r.call;
                    table #call {
                        tr { th { "state" } td {
                            @if let Some(why) = &r.dead_reason { span.down { "dead" } " — " span.err { (why) } }
                            @else if d.view.running { b { "running" } }
                            @else { "pending, next attempt " (moment(r.next_at_ms)) }
                        } }
                        tr { th { "cage holding it" } td { (cage) " (" (r.stage.as_str()) (if r.stage == Stage::Deliver { ": to be handed to its target" } else { "" }) ")" } }
                        tr { th { "calls" } td { (c.target) ":" (c.module) "." (c.method) } }
                        tr { th { "queue" } td { (c.queue) " (priority " (c.priority) ")" } }
                        tr { th { "from" } td { (c.source) ", enqueued " (utc(c.enqueued_at_ms)) } }
                        @if let Some(k) = &c.key { tr { th { "idempotency key" } td { code { (k) } } } }
                        tr { th { "arguments" } td { pre #args { (pretty(&c.args)) } } }
                        tr { th { "actions" } td {
                            @if r.dead_reason.is_some() {
                                (action_button(frame, cage, &c.id, "revive", "Revive", back)) " "
                            } @else {
                                (action_button(frame, cage, &c.id, "retry-now", "Retry now", back)) " "
                            }
                            (action_button(frame, cage, &c.id, "cancel", "Cancel", back))
                        } }
                    }
                    h2 { "Attempts" }
                    table #attempts {
                        thead { tr { th { "#" } th { "started" } th { "took" } th { "module version" } th { "outcome" } } }
                        tbody {
                            @for a in &r.attempts {
                                tr {
                                    td { (a.number) }
                                    td { (utc(a.started_ms)) }
                                    td { (took(a.duration_us)) }
                                    td { (a.module_version.as_deref().unwrap_or("-")) }
                                    @match &a.error { Some(e) => td.err { (e) }, None => td.up { "succeeded" } }
                                }
                            }
                        }
                    }
                    @if let (Some(link), chain) = (&c.chain, &d.chain) {
                        h2 { "Step of a chain" }
                        p {
                            "Step " (link.step + 1) " of chain " code { (link.chain) } " (held by cage " (link.owner) ")"
                            @if let Some(ch) = chain {
                                ": " (state(ch))
                                @if let Some(parent) = &ch.parent { ", started by call " (call_link(frame, &ch.owner, parent)) }
                            }
                        }
                    }
                    h2 { "Chains it started" }
                    @if d.children.is_empty() { p.muted { "none" } } @else {
                        table #children {
                            thead { tr { th { "chain" } th { "owner" } th { "steps" } th { "state" } th { "step calls so far" } } }
                            tbody {
                                @for ch in &d.children {
                                    tr { td { code { (ch.id) } } td { (ch.owner) } td { (ch.steps.iter().map(|s| s.label()).collect::<Vec<_>>().join(" | ")) } td { (state(ch)) } td { @for run in &ch.path { (call_link(frame, &run.cage, &run.call_id)) " " } } }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}
