//! Modules of every cage: the loaded version and file, loads and rejected files, the last
//! load error, worker processes (running, idle, crashed by reason, killed), and calls and
//! errors per method.

use super::{page, took, utc, Frame};
use crate::dashboard::gather::CageSummary;
use maud::{html, Markup};

/// The modules page.
pub fn render(frame: &Frame, cages: &[CageSummary]) -> Markup {
    page(
        frame,
        "Modules",
        html! {
            @for c in cages {
                h2 { "cage " (c.name) @if !c.up() { " " span.down { "(down)" } } }
                @for m in &c.modules {
                    @let methods: Vec<_> = c.metrics.iter().flat_map(|s| s.methods.iter()).filter(|x| x.module == m.name).collect();
                    @let loads = c.metrics.as_ref().and_then(|s| s.modules.iter().find(|x| x.module == m.name));
                    table.module data-module=(m.name) {
                        tr { th { "module" } td { b { (m.name) } } }
                        tr { th { "version" } td {
                            @match &m.version { Some(v) => (v), None => span.down { "not loaded" } }
                            @if m.draining_versions > 0 { span.muted { " (" (m.draining_versions) " older version(s) finishing calls)" } }
                        } }
                        tr { th { "file" } td { code { (m.file) } } }
                        tr { th { "sha256" } td { code { (m.sha256.as_deref().unwrap_or("-")) } } }
                        tr { th { "loaded at" } td { (m.loaded_at_ms.map(utc).unwrap_or_else(|| "-".into())) } }
                        tr { th { "loads / rejected files" } td { (m.loads) " / " (loads.map_or(m.rejected, |l| l.rejected)) } }
                        tr { th { "workers" } td {
                            @let w = &m.workers;
                            @if w.started == 0 && w.threads_written_off == 0 { span.muted { "none started" } }
                            @else {
                                (w.running) " running, " (w.idle) " idle; " (w.started) " started"
                                @if w.crashes() > 0 {
                                    "; " span.err { (w.crashes()) " crashed (" (w.crashed.iter().map(|(r, n)| format!("{n} {r}")).collect::<Vec<_>>().join(", ")) ")" }
                                }
                                @if w.killed > 0 { "; " span.err { (w.killed) " killed at a deadline" } }
                                @if w.threads_written_off > 0 { "; " span.err { (w.threads_written_off) " threads written off" } }
                            }
                        } }
                        tr { th { "last load error" } td {
                            @match &m.last_error {
                                Some(e) => { span.err { (e) } br; span.muted { (m.last_error_at_ms.map(utc).unwrap_or_default()) } }
                                None => span.muted { "none" },
                            }
                        } }
                        tr { th { "methods" } td {
                            table.sortable {
                                thead { tr { th { "method" } th { "calls" } th { "errors" } th { "mean" } th { "last error" } } }
                                tbody {
                                    @for name in &m.methods {
                                        @let counters = methods.iter().find(|x| &x.method == name).map(|x| &x.counters);
                                        tr data-method=(name) {
                                            td { (name) }
                                            td.calls { (counters.map_or(0, |c| c.calls)) }
                                            td.errors { (counters.map_or(0, |c| c.errors)) }
                                            td { @if let Some(c) = counters.filter(|c| c.calls > 0) { (took((c.seconds / c.calls as f64 * 1e6) as u64)) } }
                                            td.err { @if let Some((at, e)) = counters.and_then(|c| c.last_error.as_ref()) { (e) " " span.muted { "(" (utc(*at)) ")" } } }
                                        }
                                    }
                                }
                            }
                        } }
                    }
                }
            }
        },
    )
}
