//! The range every count and duration setting must fall in, and the located error when one
//! does not: a value outside it is refused when the file is read (exit 3 at start; logged and
//! ignored, the settings in force kept, when the file is edited under a running cage).
//!
//! Each bound keeps a setting where the cage still works: no zero intervals (a busy loop, or a
//! panic in a timer), no zero time limits (every attempt fails at once), no thread counts or
//! caches that exhaust the host before the cage listens.

use super::error::ConfigError;
use std::ops::Range;
use std::time::Duration;
use toml::Spanned;

/// A duration as a file gives it (`"30s"`), with where it was written.
pub(super) type SpannedDuration = Spanned<humantime_serde::Serde<Duration>>;

/// An inclusive range a setting must fall in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds<T> {
    /// Smallest value allowed.
    pub min: T,
    /// Largest value allowed.
    pub max: T,
}

const fn counts(min: usize, max: usize) -> Bounds<usize> {
    Bounds { min, max }
}

const fn span(min: Duration, max: Duration) -> Bounds<Duration> {
    Bounds { min, max }
}

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// A year as durations are written (`"1y"`: 365.25 days), so messages read "1year".
const YEAR: Duration = Duration::from_secs(31_557_600);

const fn times(d: Duration, n: u32) -> Duration {
    Duration::from_secs(d.as_secs() * n as u64)
}

// Cage file (`cages/NAME.toml`).
/// `executor_threads`: each is an OS thread with its own stack.
pub const EXECUTOR_THREADS: Bounds<usize> = counts(1, 1024);
/// `call_timeout` (in a cage file and in `[cages.NAME]`).
pub const CALL_TIMEOUT: Bounds<Duration> = span(Duration::from_millis(10), DAY);
/// `reload_debounce`.
pub const RELOAD_DEBOUNCE: Bounds<Duration> = span(Duration::ZERO, MIN);
/// `rescan_interval`: a zero period would rescan in a busy loop.
pub const RESCAN_INTERVAL: Bounds<Duration> = span(Duration::from_millis(100), HOUR);
/// `max_frame_bytes`: at least room for a small listing, at most 1 GiB.
pub const MAX_FRAME_BYTES: Bounds<usize> = counts(4096, 1 << 30);
/// `max_connections`.
pub const MAX_CONNECTIONS: Bounds<usize> = counts(1, 65_536);
/// `idle_timeout`: zero would close every connection before its first request.
pub const IDLE_TIMEOUT: Bounds<Duration> = span(SEC, DAY);
/// `shutdown_grace`.
pub const SHUTDOWN_GRACE: Bounds<Duration> = span(Duration::ZERO, HOUR);
/// `commit_window`: every acknowledgement may wait this long.
pub const COMMIT_WINDOW: Bounds<Duration> = span(Duration::ZERO, SEC);
/// `port_wait`.
pub const PORT_WAIT: Bounds<Duration> = span(Duration::ZERO, HOUR);
/// `http_max_body`.
pub const HTTP_MAX_BODY: Bounds<usize> = counts(1024, 256 << 20);
/// `queue_cache_mb`: sled computes the cache in bytes, and a larger one than the host has
/// is not a cache.
pub const QUEUE_CACHE_MB: Bounds<usize> = counts(1, 65_536);
/// `max_wait`: a zero wait would time out every chain wait at once.
pub const MAX_WAIT: Bounds<Duration> = span(Duration::from_millis(100), DAY);
/// `max_waits_per_connection`.
pub const MAX_WAITS_PER_CONNECTION: Bounds<usize> = counts(1, 65_536);
/// `max_waits`.
pub const MAX_WAITS: Bounds<usize> = counts(1, 1 << 20);
/// `max_connection_bytes` (used as at least one frame of `max_frame_bytes`).
pub const MAX_CONNECTION_BYTES: Bounds<usize> = counts(4096, 16 << 30);
/// `max_inflight_bytes` (used as at least one frame of `max_frame_bytes`).
pub const MAX_INFLIGHT_BYTES: Bounds<usize> = counts(4096, 64 << 30);
/// `workers` (cage-wide and in `[module_settings.NAME]`): each is a process.
pub const WORKERS: Bounds<usize> = counts(1, 1024);
/// `memory_limit`, in bytes: below 64 MiB a worker cannot map the `cage` binary and a module;
/// above 1 TiB it limits nothing a host has.
pub const MEMORY_LIMIT: Bounds<u64> = Bounds {
    min: 64 << 20,
    max: 1 << 40,
};
/// `every` of a `[[jobs]]` entry.
pub const JOB_EVERY: Bounds<Duration> = span(Duration::from_millis(100), YEAR);

// `config/config_execute_on.toml`, `[cages.NAME]`.
/// `connect_timeout`.
pub const CONNECT_TIMEOUT: Bounds<Duration> = span(Duration::from_millis(10), times(MIN, 5));
/// `window`.
pub const WINDOW: Bounds<usize> = counts(1, 65_536);
/// `cache_for` of `[cages.unknown]`.
pub const CACHE_FOR: Bounds<Duration> = span(SEC, times(DAY, 7));
/// `query_timeout` of `[cages.unknown]`.
pub const QUERY_TIMEOUT: Bounds<Duration> = span(Duration::from_millis(10), MIN);

// `config/config_execute_on.toml`, `[queues.NAME]`.
/// `first_retry`: its floor is the shortest delay the scheduler keeps between attempts.
pub const FIRST_RETRY: Bounds<Duration> = span(crate::retry_policy::MIN_RETRY, DAY);
/// `max_delay` (also at least `first_retry`).
pub const MAX_DELAY: Bounds<Duration> = span(crate::retry_policy::MIN_RETRY, times(DAY, 30));
/// `give_up_after` (0: one attempt, no retry).
pub const GIVE_UP_AFTER: Bounds<Duration> = span(Duration::ZERO, YEAR);
/// `time_limit`: it also covers the wait for a free executor thread.
pub const TIME_LIMIT: Bounds<Duration> = span(Duration::from_millis(100), DAY);
/// `retention`: calls delivered again within it are recognised as duplicates.
pub const RETENTION: Bounds<Duration> = span(MIN, YEAR);
/// `concurrency`.
pub const CONCURRENCY: Bounds<usize> = counts(1, 10_000);
/// `burst`: starts a rate-limited queue may make at once after a quiet spell.
pub const BURST: Bounds<usize> = counts(1, 100_000);
/// `max_crashes`: at least one crash is allowed (the first is how a poison call is known).
pub const MAX_CRASHES: Bounds<usize> = counts(1, 1000);

/// How a value of a setting is written in a message.
trait Shown: Copy + PartialOrd {
    fn shown(self) -> String;
}

impl Shown for usize {
    fn shown(self) -> String {
        self.to_string()
    }
}

impl Shown for Duration {
    fn shown(self) -> String {
        humantime::format_duration(self).to_string()
    }
}

impl<T: Copy + PartialOrd> Bounds<T> {
    /// Whether `v` is in range.
    pub fn holds(&self, v: T) -> bool {
        self.min <= v && v <= self.max
    }
}

/// The range as a message shows it.
fn words<T: Shown>(b: &Bounds<T>) -> String {
    format!("{} to {}", b.min.shown(), b.max.shown())
}

/// The error of `key`'s value `value`, out of `bounds`, at `span`.
fn out_of_range<T: Shown>(
    key: &str,
    value: T,
    bounds: Bounds<T>,
    span: Range<usize>,
    at: &impl Fn(Range<usize>, String) -> ConfigError,
) -> ConfigError {
    at(
        span,
        format!(
            "{key}: {} is out of range (allowed: {})",
            value.shown(),
            words(&bounds)
        ),
    )
}

/// The count `key` (else `default`), checked against `bounds`.
pub(super) fn count(
    v: &Option<Spanned<usize>>,
    key: &str,
    bounds: Bounds<usize>,
    default: usize,
    at: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<usize, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if bounds.holds(*s.get_ref()) => Ok(*s.get_ref()),
        Some(s) => Err(out_of_range(key, *s.get_ref(), bounds, s.span(), at)),
    }
}

/// The duration `key` (else `default`), checked against `bounds`.
pub(super) fn duration(
    v: &Option<SpannedDuration>,
    key: &str,
    bounds: Bounds<Duration>,
    default: Duration,
    at: &impl Fn(Range<usize>, String) -> ConfigError,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) if bounds.holds(**s.get_ref()) => Ok(**s.get_ref()),
        Some(s) => Err(out_of_range(key, **s.get_ref(), bounds, s.span(), at)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn at(span: Range<usize>, reason: String) -> ConfigError {
        ConfigError::at(Path::new("f.toml"), "k = 1\n", span.start, reason)
    }

    #[test]
    fn defaults_of_the_cage_file_are_in_range() {
        use super::super::CageFileDefaults as D;
        assert!(EXECUTOR_THREADS.holds(D::EXECUTOR_THREADS));
        assert!(CALL_TIMEOUT.holds(D::CALL_TIMEOUT));
        assert!(RELOAD_DEBOUNCE.holds(D::RELOAD_DEBOUNCE));
        assert!(RESCAN_INTERVAL.holds(D::RESCAN_INTERVAL));
        assert!(MAX_FRAME_BYTES.holds(D::MAX_FRAME_BYTES));
        assert!(MAX_CONNECTIONS.holds(D::MAX_CONNECTIONS));
        assert!(IDLE_TIMEOUT.holds(D::IDLE_TIMEOUT));
        assert!(SHUTDOWN_GRACE.holds(D::SHUTDOWN_GRACE));
        assert!(COMMIT_WINDOW.holds(D::COMMIT_WINDOW));
        assert!(PORT_WAIT.holds(D::PORT_WAIT));
        assert!(MAX_WAIT.holds(D::MAX_WAIT));
        assert!(MAX_WAITS_PER_CONNECTION.holds(D::MAX_WAITS_PER_CONNECTION));
        assert!(MAX_WAITS.holds(D::MAX_WAITS));
        assert!(MAX_CONNECTION_BYTES.holds(D::MAX_CONNECTION_BYTES));
        assert!(MAX_INFLIGHT_BYTES.holds(D::MAX_INFLIGHT_BYTES));
        assert!(HTTP_MAX_BODY.holds(D::HTTP_MAX_BODY));
        assert!(QUEUE_CACHE_MB.holds(D::QUEUE_CACHE_MB));
    }

    #[test]
    fn defaults_of_routes_and_queues_are_in_range() {
        use super::super::{CageRoute, QueuePolicy, UnknownCages};
        assert!(CONNECT_TIMEOUT.holds(CageRoute::CONNECT_TIMEOUT));
        assert!(WINDOW.holds(CageRoute::WINDOW));
        assert!(CACHE_FOR.holds(UnknownCages::CACHE_FOR));
        assert!(QUERY_TIMEOUT.holds(UnknownCages::QUERY_TIMEOUT));
        let q = QueuePolicy::default();
        assert!(FIRST_RETRY.holds(q.first_retry));
        assert!(MAX_DELAY.holds(q.max_delay));
        assert!(GIVE_UP_AFTER.holds(q.give_up_after));
        assert!(TIME_LIMIT.holds(q.time_limit));
        assert!(RETENTION.holds(q.retention));
        assert!(CONCURRENCY.holds(q.concurrency));
        assert!(MAX_CRASHES.holds(q.max_crashes));
    }

    #[test]
    fn a_value_out_of_range_names_key_value_and_range() {
        let v = Some(Spanned::new(4..5, 100_000_000usize));
        let e = count(&v, "executor_threads", EXECUTOR_THREADS, 8, &at)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "f.toml:1:5: executor_threads: 100000000 is out of range (allowed: 1 to 1024)"
        );
        assert_eq!(count(&None, "x", EXECUTOR_THREADS, 8, &at).unwrap(), 8);
        let ok = Some(Spanned::new(0..1, 1024usize));
        assert_eq!(count(&ok, "x", EXECUTOR_THREADS, 8, &at).unwrap(), 1024);

        let zero = Some(Spanned::new(
            4..8,
            humantime_serde::Serde::from(Duration::ZERO),
        ));
        let e = duration(&zero, "idle_timeout", IDLE_TIMEOUT, SEC, &at)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "f.toml:1:5: idle_timeout: 0s is out of range (allowed: 1s to 1day)"
        );
    }
}
