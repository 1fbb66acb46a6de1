//! The small chart of a queue's attempts and failures per minute, as inline SVG (no script, no
//! library: the page works offline).

use crate::metrics::{MinuteCount, SERIES_MINUTES};
use maud::{html, Markup};

const BAR: usize = 3;
const HEIGHT: u64 = 80;

/// Bars of attempts (failures in red over them) for the last [`SERIES_MINUTES`] minutes up to
/// `now_minute` (minutes since the epoch).
pub fn attempts(series: &[MinuteCount], now_minute: u64) -> Markup {
    let first = now_minute.saturating_sub(SERIES_MINUTES as u64 - 1);
    let shown: Vec<&MinuteCount> = series.iter().filter(|m| m.minute >= first).collect();
    let peak = shown.iter().map(|m| m.attempts).max().unwrap_or(0).max(1);
    let scale = |n: u64| (n * HEIGHT).div_ceil(peak);
    let width = SERIES_MINUTES * BAR;
    let total: u64 = shown.iter().map(|m| m.attempts).sum();
    let failed: u64 = shown.iter().map(|m| m.failures).sum();
    html! {
        figure.chart {
            svg width=(width) height=(HEIGHT + 14) viewBox={"0 0 " (width) " " (HEIGHT + 14)}
                role="img" aria-label={"attempts per minute over the last " (SERIES_MINUTES / 60) " hours"} {
                rect x="0" y="0" width=(width) height=(HEIGHT) class="chart-bg" {}
                @for m in &shown {
                    @let x = (m.minute - first) as usize * BAR;
                    rect x=(x) y=(HEIGHT - scale(m.attempts)) width=(BAR - 1) height=(scale(m.attempts)) class="ok" {
                        title { (m.attempts) " attempts, " (m.failures) " failed" }
                    }
                    @if m.failures > 0 {
                        rect x=(x) y=(HEIGHT - scale(m.failures)) width=(BAR - 1) height=(scale(m.failures)) class="bad" {}
                    }
                }
                @for h in 0..=(SERIES_MINUTES / 60) {
                    @let x = (h * 60 * BAR).min(width - 1);
                    text x=(x) y=(HEIGHT + 12) class="axis" text-anchor=(if h == 0 { "start" } else if h == SERIES_MINUTES / 60 { "end" } else { "middle" }) {
                        @if h == SERIES_MINUTES / 60 { "now" } @else { "-" (SERIES_MINUTES / 60 - h) "h" }
                    }
                }
            }
            figcaption { (total) " attempts, " (failed) " failed in the last " (SERIES_MINUTES / 60) " hours (peak " (peak) "/min)" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_drawn_over_attempts_and_old_minutes_left_out() {
        let series = [
            MinuteCount {
                minute: 1,
                attempts: 9,
                failures: 9,
            },
            MinuteCount {
                minute: 1000,
                attempts: 4,
                failures: 1,
            },
        ];
        let svg = attempts(&series, 1000).into_string();
        assert_eq!(svg.matches("class=\"bad\"").count(), 1);
        assert!(svg.contains("4 attempts, 1 failed</title>"), "{svg}");
        assert!(svg.contains("4 attempts, 1 failed in the last 3 hours"));
    }
}
