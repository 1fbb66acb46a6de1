//! The front page: every cage of the cluster map, each instance up or down, and what each
//! cage's queues hold.

use super::{enc, page, Frame};
use crate::dashboard::gather::CageSummary;
use maud::{html, Markup};
use std::time::Duration;

/// The cages page.
pub fn render(frame: &Frame, cages: &[CageSummary]) -> Markup {
    let up = cages.iter().filter(|c| c.up()).count();
    page(
        frame,
        "Cages",
        html! {
            p.muted { (up) " of " (cages.len()) " cages answering." }
            table #cages {
                thead { tr {
                    th { "cage" } th { "instance" } th { "state" } th { "version" } th { "uptime" }
                    th { "modules" } th { "queues: pending / dead" } th { "counted since start" }
                } }
                tbody {
                    @for c in cages {
                        @for (i, inst) in c.instances.iter().enumerate() {
                            tr data-cage=(c.name) {
                                @if i == 0 {
                                    td rowspan=(c.instances.len()) { b { (c.name) } }
                                }
                                td { code { (inst.addr) } }
                                @match &inst.info {
                                    Ok(info) => {
                                        td.up { "up" }
                                        td { (info.version) }
                                        td { (humantime::format_duration(Duration::from_secs(info.uptime_secs))) }
                                    }
                                    Err(e) => {
                                        td.down { "down" }
                                        td.err colspan="2" { (e) }
                                    }
                                }
                                @if i == 0 {
                                    td rowspan=(c.instances.len()) {
                                        @for m in &c.modules {
                                            div {
                                                (m.name) " "
                                                @match &m.version {
                                                    Some(v) => span.muted { (v) },
                                                    None => span.down { "not loaded" },
                                                }
                                            }
                                        }
                                    }
                                    td rowspan=(c.instances.len()) {
                                        @if let Some(m) = &c.metrics {
                                            @for q in &m.queues {
                                                div {
                                                    a href={(frame.base) "/queue/" (enc(&c.name)) "/" (enc(&q.queue))} { (q.queue) }
                                                    ": " span.pending { (q.pending) } " / "
                                                    @if q.dead_now > 0 { a.down href={(frame.base) "/dead"} { (q.dead_now) } } @else { "0" }
                                                }
                                            }
                                        }
                                    }
                                    td rowspan=(c.instances.len()) {
                                        @if let Some(m) = &c.metrics {
                                            @let (a, ok, failed, dead) = m.queues.iter().fold((0, 0, 0, 0), |t, q| (t.0 + q.counters.attempts, t.1 + q.counters.successes, t.2 + q.counters.failures, t.3 + q.counters.dead));
                                            span.counts { (a) " attempts, " (ok) " succeeded, " (failed) " failed, " (dead) " died" }
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
