//! Time as the cage keeps it: instants are milliseconds since the Unix epoch in a `u64`,
//! arithmetic on them saturates (never wraps, never panics), every instant renders as text
//! however far away it is, and an instant asked for beyond [`HORIZON`] is refused.
//!
//! Nothing here knows about queues or transport: it sits on the ground floor so every layer
//! (and a stored record from any earlier version) can use it. Decisions that depend on "now"
//! take a [`Clock`], so tests can drive time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds in the years [`HORIZON`] counts (365.25 days, as `humantime` counts them).
const YEAR_SECS: u64 = 31_557_600;

/// How far ahead anything may be scheduled: 100 years.
pub const HORIZON: Duration = Duration::from_secs(100 * YEAR_SECS);

/// [`HORIZON`] in words, for refusals and docs.
pub const HORIZON_WORDS: &str = "100 years";

/// An instant or span asked for lies beyond [`HORIZON`]; `what` is how the asker named it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BeyondHorizon {
    /// An instant too far ahead.
    #[error("{what} is {} from now, beyond the horizon of {HORIZON_WORDS}", span(*.ahead))]
    Instant {
        /// What was asked for (an option, a field).
        what: String,
        /// How far ahead of now it is.
        ahead: Duration,
    },
    /// A span (an interval, a delay) longer than the horizon.
    #[error("{what} {} is longer than the horizon of {HORIZON_WORDS}", span(*.length))]
    Span {
        /// What was asked for (an option, a field).
        what: String,
        /// Its length.
        length: Duration,
    },
}

/// Milliseconds since the epoch of `t`: 0 for any time before the epoch, `u64::MAX` for one
/// too far ahead to count.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, millis)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Where the time comes from: the system clock in a cage, a hand-driven one in tests, so a
/// decision that depends on "now" can be tested without waiting.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch, now.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }
}

/// A clock that moves only when told to (for tests of time-driven decisions).
#[derive(Debug, Default)]
pub struct ManualClock {
    now: std::sync::atomic::AtomicU64,
}

impl ManualClock {
    /// A clock standing at `ms`.
    pub fn at(ms: u64) -> Self {
        ManualClock {
            now: std::sync::atomic::AtomicU64::new(ms),
        }
    }

    /// Moves the clock to `ms`.
    pub fn set(&self, ms: u64) {
        self.now.store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Moves the clock forward by `d` (saturating).
    pub fn advance(&self, d: Duration) {
        let now = self.now_ms();
        self.set(after(now, d));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `d` in whole milliseconds, `u64::MAX` if it has more.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `d` in whole microseconds, `u64::MAX` if it has more.
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The instant `d` after `at_ms` (saturating at the end of time).
pub fn after(at_ms: u64, d: Duration) -> u64 {
    at_ms.saturating_add(millis(d))
}

/// `secs` seconds as a duration: zero for a negative or NaN count, [`Duration::MAX`] for one
/// too large (where [`Duration::from_secs_f64`] would panic).
pub fn from_secs_f64(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
}

/// `Ok` if span `d` (what the asker calls `what`) is no longer than [`HORIZON`].
pub fn span_within_horizon(what: &str, d: Duration) -> Result<Duration, BeyondHorizon> {
    if d <= HORIZON {
        Ok(d)
    } else {
        Err(BeyondHorizon::Span {
            what: what.to_owned(),
            length: d,
        })
    }
}

/// `Ok` if instant `at_ms` (what the asker calls `what`) is no further than [`HORIZON`] after
/// `now_ms`; any past instant is within it.
pub fn within_horizon(what: &str, at_ms: u64, now_ms: u64) -> Result<u64, BeyondHorizon> {
    let ahead = Duration::from_millis(at_ms.saturating_sub(now_ms));
    if ahead <= HORIZON {
        Ok(at_ms)
    } else {
        Err(BeyondHorizon::Instant {
            what: what.to_owned(),
            ahead,
        })
    }
}

/// A span in words ("1h 2m 3s"); total for every duration.
pub fn span(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// A span of `ms` milliseconds in words, to the second (to the millisecond below ten seconds).
pub fn span_ms(ms: u64) -> String {
    let d = if ms < 10_000 {
        Duration::from_millis(ms)
    } else {
        Duration::from_secs(ms / 1000)
    };
    span(d)
}

/// The instant `ms` after the epoch in UTC, to the second: `2026-12-01T10:00:00Z`. Total: a year
/// past 9999 is written with a sign and all its digits (ISO 8601's expanded form,
/// `+10026-01-01T00:00:00Z`), where RFC 3339 formatters fail.
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (year, month, day) = civil_date(secs / 86_400);
    let of_day = secs % 86_400;
    let (h, m, s) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    let sign = if year > 9999 { "+" } else { "" };
    format!("{sign}{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}Z")
}

/// Year, month (1-12) and day (1-31) of the Gregorian calendar `days` after 1970-01-01.
fn civil_date(days: u64) -> (u64, u64, u64) {
    // Counted from 0000-03-01 so each year ends with its leap day, in 400-year cycles of
    // 146 097 days (the calendar repeats exactly every 400 years).
    const CYCLE: u64 = 146_097;
    let from_march_0 = days + 719_468; // 0000-03-01 to 1970-01-01
    let cycle = from_march_0 / CYCLE;
    let day_of_cycle = from_march_0 % CYCLE;
    // Years of 365 days, less the leap days of whole 4-year, 100-year and 400-year spans.
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1460 + day_of_cycle / 36_524
        - day_of_cycle / (CYCLE - 1))
        / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    // Months from March have 31,30,31,30,31 days, twice and a bit: 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = cycle * 400 + year_of_cycle + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants_render() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc(253_402_300_799_999), "9999-12-31T23:59:59Z");
        assert_eq!(utc(253_402_300_800_000), "+10000-01-01T00:00:00Z");
        assert_eq!(utc(u64::MAX), "+584556019-04-03T14:25:51Z");
    }

    #[test]
    fn the_far_job_of_the_finding_is_refused_and_renders() {
        let now = 1_760_000_000_000;
        let d = humantime::parse_duration("8000years").unwrap();
        let at = after(now, d);
        let refused = within_horizon("--in 8000years", at, now).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "--in 8000years is 8000years from now, beyond the horizon of 100 years"
        );
        assert!(utc(at).starts_with("+10025-"), "{}", utc(at));
        assert_eq!(
            within_horizon("x", after(now, HORIZON), now),
            Ok(after(now, HORIZON))
        );
        assert_eq!(within_horizon("x", 0, now), Ok(0));
        assert_eq!(
            span_within_horizon("the interval", d)
                .unwrap_err()
                .to_string(),
            "the interval 8000years is longer than the horizon of 100 years"
        );
    }

    #[test]
    fn times_out_of_range_saturate() {
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(1)), 0);
        assert_eq!(millis(Duration::MAX), u64::MAX);
        assert_eq!(after(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
        assert_eq!(from_secs_f64(1e300), Duration::MAX);
        assert_eq!(from_secs_f64(f64::INFINITY), Duration::MAX);
        assert_eq!(from_secs_f64(f64::NAN), Duration::ZERO);
        assert_eq!(from_secs_f64(-3.0), Duration::ZERO);
        assert_eq!(from_secs_f64(1.5), Duration::from_millis(1500));
    }

    /// A `SystemTime` `ms` milliseconds from the epoch (either way), or `None` if the platform
    /// cannot hold it.
    fn system_time(ms: i64) -> Option<SystemTime> {
        let d = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            UNIX_EPOCH.checked_add(d)
        } else {
            UNIX_EPOCH.checked_sub(d)
        }
    }

    proptest! {
        #[test]
        fn every_instant_renders_as_a_date(ms in any::<u64>()) {
            let text = utc(ms);
            let (date, time) = text.split_once('T').unwrap();
            prop_assert!(time.ends_with('Z') && time.len() == 9, "{}", text);
            let parts: Vec<u64> = date.trim_start_matches('+').split('-')
                .map(|p| p.parse().unwrap()).collect();
            prop_assert!((1..=12).contains(&parts[1]) && (1..=31).contains(&parts[2]), "{}", text);
            prop_assert_eq!(parts[0] > 9999, text.starts_with('+'));
        }

        #[test]
        fn rendering_agrees_with_rfc3339_where_that_is_defined(ms in 0u64..253_402_300_800_000) {
            let reference = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms));
            prop_assert_eq!(utc(ms), reference.to_string());
        }

        #[test]
        fn consecutive_days_render_in_order(days in 0u64..213_503_982_334) {
            // Parse back a day and the next one: dates are strictly increasing and contiguous.
            let a = civil_date(days);
            let b = civil_date(days + 1);
            prop_assert!(b > a);
            prop_assert!(b.2 == a.2 + 1 || (b.2 == 1 && (b.1 == a.1 + 1 || (b.1 == 1 && b.0 == a.0 + 1))));
        }

        #[test]
        fn system_times_either_way_saturate(ms in any::<i64>()) {
            if let Some(t) = system_time(ms) {
                let got = unix_ms(t);
                prop_assert_eq!(got, u64::try_from(ms).unwrap_or(0));
                let _ = utc(got);
            }
        }

        #[test]
        fn far_system_times_saturate(secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            if let Some(t) = UNIX_EPOCH.checked_add(d) {
                let got = unix_ms(t);
                prop_assert_eq!(got, millis(d));
                prop_assert!(got == u64::MAX || u128::from(got) == d.as_millis());
                let _ = utc(got);
            }
            if let Some(t) = UNIX_EPOCH.checked_sub(d) {
                prop_assert_eq!(unix_ms(t), 0);
            }
        }

        #[test]
        fn arithmetic_saturates_and_horizon_is_exact(at in any::<u64>(), now in any::<u64>(), secs in any::<u64>(), nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            let later = after(at, d);
            prop_assert!(later >= at);
            prop_assert_eq!(later == u64::MAX, u128::from(at) + d.as_millis() >= u128::from(u64::MAX));
            let ahead = at.saturating_sub(now);
            prop_assert_eq!(within_horizon("t", at, now).is_ok(), u128::from(ahead) <= HORIZON.as_millis());
            prop_assert_eq!(span_within_horizon("d", d).is_ok(), d <= HORIZON);
            let _ = span(d);
            let _ = span_ms(at);
            if let Err(e) = within_horizon("t", at, now) {
                prop_assert!(e.to_string().contains("the horizon of 100 years"));
            }
        }

        #[test]
        fn float_seconds_never_panic(secs in any::<f64>()) {
            let d = from_secs_f64(secs);
            if secs.is_finite() && secs > 0.0 && secs < 1e15 {
                prop_assert!((d.as_secs_f64() - secs).abs() <= secs * 1e-9 + 1e-9);
            }
        }
    }
}
