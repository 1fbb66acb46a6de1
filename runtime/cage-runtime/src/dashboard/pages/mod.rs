//! The dashboard's pages, rendered on the server as HTML (maud escapes every value), one file
//! per page; this file holds the frame every page shares and the small formatting helpers.

pub mod cages;
pub mod call;
pub mod dead;
pub mod jobs;
pub mod modules;
pub mod queue;

use crate::model::clock;
use maud::{html, Markup, PreEscaped, DOCTYPE};

/// What every page needs to link and to build forms.
pub struct Frame<'a> {
    /// Path prefix of the dashboard ("" for `cage dashboard`, "/ui" on a cage).
    pub base: &'a str,
    /// CSRF value for forms.
    pub csrf: &'a str,
    /// A one-line notice to show (the outcome of the last action), if any.
    pub notice: Option<&'a str>,
}

const STYLE: &str = r#"
body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}
header{background:#1d232a;color:#fff;padding:.6em 1.2em;display:flex;gap:1.4em;align-items:baseline}
header a{color:#cfe3ff;text-decoration:none} header b{color:#fff}
main{padding:1em 1.4em} h1{font-size:1.3em;margin:.2em 0 .6em} h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;background:#fff;margin-bottom:1em;min-width:40%}
th,td{border:1px solid #dde1e6;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f4;cursor:default} table.sortable th{cursor:pointer}
.up{color:#0a7d32;font-weight:600} .down{color:#b3261e;font-weight:600}
.err{color:#b3261e;white-space:pre-wrap;max-width:40em;word-break:break-word}
.muted{color:#68717d} code{font-size:.92em}
form.inline{display:inline;margin:0} button{cursor:pointer}
.notice{background:#e7f3ff;border:1px solid #9cc5f0;padding:.4em .8em;margin-bottom:1em}
.chart .chart-bg{fill:#fff;stroke:#dde1e6} .chart .ok{fill:#7aa7d9} .chart .bad{fill:#d9534f}
.chart .axis{font-size:10px;fill:#68717d} figure{margin:0 0 1em}
pre{background:#fff;border:1px solid #dde1e6;padding:.6em;max-width:60em;overflow:auto}
.filters input{width:9em}
"#;

/// Countdowns (`data-at` in ms since the epoch) tick every second; headers of sortable
/// tables sort their rows (by `data-v` when a cell has one).
const SCRIPT: &str = r#"
function tick(){var now=Date.now();document.querySelectorAll('[data-at]').forEach(function(e){
var d=Math.round((+e.dataset.at-now)/1000);e.textContent=d>0?'in '+span(d):(d==0?'now':span(-d)+' ago');});}
function span(s){if(s<60)return s+'s';if(s<3600)return Math.floor(s/60)+'m '+(s%60)+'s';
if(s<86400)return Math.floor(s/3600)+'h '+Math.floor(s%3600/60)+'m';return Math.floor(s/86400)+'d '+Math.floor(s%86400/3600)+'h';}
document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
var body=th.closest('table').tBodies[0],rows=Array.from(body.rows),up=th.dataset.dir!='up';th.dataset.dir=up?'up':'down';
function v(r){var c=r.cells[i];var x=c.dataset.v!==undefined?c.dataset.v:c.textContent;var n=parseFloat(x);return isNaN(n)?x:n;}
rows.sort(function(a,b){var x=v(a),y=v(b);return (x<y?-1:x>y?1:0)*(up?1:-1);});rows.forEach(function(r){body.appendChild(r);});});});
tick();setInterval(tick,1000);
"#;

/// A whole page: header with the navigation, the notice, `body`.
pub fn page(frame: &Frame, title: &str, body: Markup) -> Markup {
    let b = frame.base;
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (title) " · cages" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                header {
                    b { "cages" }
                    a href={(b) "/"} { "Cages" }
                    a href={(b) "/modules"} { "Modules" }
                    a href={(b) "/dead"} { "Dead letters" }
                    a href={(b) "/jobs"} { "Jobs" }
                    a href={(b) "/metrics"} { "Metrics" }
                }
                main {
                    @if let Some(n) = frame.notice { div.notice role="status" { (n) } }
                    h1 { (title) }
                    (body)
                }
                script { (PreEscaped(SCRIPT)) }
            }
        }
    }
}

/// A POST button for `action` on call `id` of `cage`, coming back to `back` afterwards.
pub fn action_button(
    frame: &Frame,
    cage: &str,
    id: &str,
    action: &str,
    label: &str,
    back: &str,
) -> Markup {
    html! {
        form.inline method="post" action={(frame.base) "/action"} {
            input type="hidden" name="csrf" value=(frame.csrf);
            input type="hidden" name="cage" value=(cage);
            input type="hidden" name="id" value=(id);
            input type="hidden" name="action" value=(action);
            input type="hidden" name="back" value=(back);
            button type="submit" data-action=(action) data-call=(id) { (label) }
        }
    }
}

/// A time (ms since the epoch) as a live "in 5s" / "3m ago", with the UTC time as a tooltip.
pub fn moment(ms: u64) -> Markup {
    html! { span data-at=(ms) title=(utc(ms)) { (utc(ms)) } }
}

/// A time (ms since the epoch) as UTC, to the second; any stored time renders.
pub fn utc(ms: u64) -> String {
    clock::utc(ms)
}

/// How long ago `ms` was, roughly ("3m 12s").
pub fn age(ms: u64) -> String {
    let secs = clock::now_ms().saturating_sub(ms) / 1000;
    clock::span(std::time::Duration::from_secs(secs))
}

/// A duration in microseconds, readably.
pub fn took(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.1} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

/// The link to a call's page.
pub fn call_link(frame: &Frame, cage: &str, id: &str) -> Markup {
    html! { a href={(frame.base) "/call/" (enc(cage)) "/" (enc(id))} { code { (id) } } }
}

/// `s` fit for one path segment or query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}
