//! `config/config_execute_on.toml`: where other cages are, and the retry parameters of each queue.

use super::address::Address;
use super::cage_file::valid_name;
use super::error::ConfigError;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The queue whose settings apply to a queue with no table of its own.
pub const DEFAULT_QUEUE: &str = "retry";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExecuteOn {
    #[serde(default)]
    cages: BTreeMap<String, Spanned<RawRoute>>,
    #[serde(default)]
    queues: BTreeMap<String, Spanned<RawQueue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    addresses: Vec<Spanned<String>>,
    #[serde(default, with = "humantime_serde")]
    connect_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    call_timeout: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    #[serde(default, with = "humantime_serde")]
    first_retry: Option<Duration>,
    growth: Option<Spanned<f64>>,
    #[serde(default, with = "humantime_serde")]
    max_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    give_up_after: Option<Duration>,
    jitter: Option<Spanned<f64>>,
    concurrency: Option<Spanned<usize>>,
    keep_order: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    time_limit: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    retention: Option<Duration>,
}

/// How to reach one cage.
#[derive(Debug, Clone, PartialEq)]
pub struct CageRoute {
    /// Instance addresses, tried in order (names are looked up at each connect).
    pub addresses: Vec<Address>,
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Default limit for a sync call when the caller gives none.
    pub call_timeout: Duration,
}

impl CageRoute {
    /// Default connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

    /// A route to a single address with default timeouts.
    pub fn single(addr: SocketAddr, call_timeout: Duration) -> Self {
        CageRoute {
            addresses: vec![Address::Ip(addr)],
            connect_timeout: Self::CONNECT_TIMEOUT,
            call_timeout,
        }
    }
}

/// Retry parameters of one queue; the defaults give 80 attempts over three days.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// Delay before the first retry.
    pub first_retry: Duration,
    /// Each delay is this many times the previous one.
    pub growth: f64,
    /// Delays never exceed this.
    pub max_delay: Duration,
    /// No attempt starts later than this after the call was enqueued.
    pub give_up_after: Duration,
    /// Random spread applied to each delay, as a fraction of it (0 to 1).
    pub jitter: f64,
    /// Calls of the queue running at once.
    pub concurrency: usize,
    /// A call waits for the one enqueued before it.
    pub keep_order: bool,
    /// An attempt running longer counts as failed.
    pub time_limit: Duration,
    /// How long the history of accepted and executed calls is kept.
    pub retention: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            first_retry: Duration::from_secs(60),
            growth: 1.6,
            max_delay: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(3 * 24 * 3600),
            jitter: 0.0,
            concurrency: 16,
            keep_order: false,
            time_limit: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The parsed `config/config_execute_on.toml`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecuteOn {
    /// Known cages by name.
    pub cages: BTreeMap<String, CageRoute>,
    /// Queue policies by queue name; [`DEFAULT_QUEUE`] is always present.
    pub queues: BTreeMap<String, QueuePolicy>,
}

impl ExecuteOn {
    /// Parses and validates the file's `source`; `path` is used in errors.
    pub fn parse(path: &Path, source: &str) -> Result<Self, ConfigError> {
        let raw: RawExecuteOn =
            toml::from_str(source).map_err(|e| ConfigError::from_toml(path, source, &e))?;
        let at = |span: std::ops::Range<usize>, reason: String| {
            ConfigError::at(path, source, span.start, reason)
        };

        let mut cages = BTreeMap::new();
        for (name, route) in &raw.cages {
            if !valid_name(name) {
                return Err(at(
                    route.span(),
                    format!("cages.{name}: not a cage name (letters, digits, '-', '_')"),
                ));
            }
            let r = route.get_ref();
            if r.addresses.is_empty() {
                return Err(at(
                    route.span(),
                    format!("cages.{name}.addresses: needs at least one address"),
                ));
            }
            let mut addresses = Vec::new();
            for a in &r.addresses {
                let addr = Address::parse(a.get_ref()).ok_or_else(|| {
                    at(a.span(), format!("cages.{name}.addresses: expected IP:PORT or NAME:PORT such as \"127.0.0.1:7401\" or \"billing-0.billing:7401\", found {:?}", a.get_ref()))
                })?;
                addresses.push(addr);
            }
            cages.insert(
                name.clone(),
                CageRoute {
                    addresses,
                    connect_timeout: r.connect_timeout.unwrap_or(CageRoute::CONNECT_TIMEOUT),
                    call_timeout: r
                        .call_timeout
                        .unwrap_or(super::CageFileDefaults::CALL_TIMEOUT),
                },
            );
        }

        let base = QueuePolicy::default();
        let default_raw = raw.queues.get(DEFAULT_QUEUE);
        let default_policy = match default_raw {
            Some(q) => queue_policy(DEFAULT_QUEUE, q, &base, &at)?,
            None => base,
        };
        let mut queues = BTreeMap::new();
        for (name, q) in &raw.queues {
            if !valid_name(name) {
                return Err(at(
                    q.span(),
                    format!("queues.{name}: not a queue name (letters, digits, '-', '_')"),
                ));
            }
            queues.insert(name.clone(), queue_policy(name, q, &default_policy, &at)?);
        }
        queues.insert(DEFAULT_QUEUE.to_owned(), default_policy);
        Ok(ExecuteOn { cages, queues })
    }

    /// The policy of `queue`, falling back to the default queue's.
    pub fn queue(&self, queue: &str) -> &QueuePolicy {
        self.queues
            .get(queue)
            .unwrap_or(&self.queues[DEFAULT_QUEUE])
    }
}

fn queue_policy(
    name: &str,
    q: &Spanned<RawQueue>,
    base: &QueuePolicy,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<QueuePolicy, ConfigError> {
    let r = q.get_ref();
    let growth = match &r.growth {
        Some(g) if !(1.0..=100.0).contains(g.get_ref()) => {
            return Err(at(
                g.span(),
                format!(
                    "queues.{name}.growth: expected a factor from 1 to 100, found {}",
                    g.get_ref()
                ),
            ))
        }
        Some(g) => *g.get_ref(),
        None => base.growth,
    };
    let jitter = match &r.jitter {
        Some(j) if !(0.0..=1.0).contains(j.get_ref()) => {
            return Err(at(
                j.span(),
                format!(
                    "queues.{name}.jitter: expected a fraction from 0 to 1, found {}",
                    j.get_ref()
                ),
            ))
        }
        Some(j) => *j.get_ref(),
        None => base.jitter,
    };
    let concurrency = match &r.concurrency {
        Some(c) if *c.get_ref() == 0 => {
            return Err(at(
                c.span(),
                format!("queues.{name}.concurrency: must be at least 1"),
            ))
        }
        Some(c) => *c.get_ref(),
        None => base.concurrency,
    };
    let policy = QueuePolicy {
        first_retry: r.first_retry.unwrap_or(base.first_retry),
        growth,
        max_delay: r.max_delay.unwrap_or(base.max_delay),
        give_up_after: r.give_up_after.unwrap_or(base.give_up_after),
        jitter,
        concurrency,
        keep_order: r.keep_order.unwrap_or(base.keep_order),
        time_limit: r.time_limit.unwrap_or(base.time_limit),
        retention: r.retention.unwrap_or(base.retention),
    };
    if policy.max_delay < policy.first_retry {
        return Err(at(
            q.span(),
            format!(
                "queues.{name}: max_delay ({}) is shorter than first_retry ({})",
                humantime::format_duration(policy.max_delay),
                humantime::format_duration(policy.first_retry)
            ),
        ));
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<ExecuteOn, ConfigError> {
        ExecuteOn::parse(Path::new("config/config_execute_on.toml"), src)
    }

    #[test]
    fn empty_file_gives_default_retry_queue() {
        let e = parse("").unwrap();
        assert_eq!(e.queue("anything"), &QueuePolicy::default());
    }

    #[test]
    fn queues_inherit_from_retry() {
        let e =
            parse("[queues.retry]\nfirst_retry = \"5s\"\n[queues.fast]\ngrowth = 3.0\n").unwrap();
        assert_eq!(e.queue("fast").first_retry, Duration::from_secs(5));
        assert_eq!(e.queue("fast").growth, 3.0);
        assert_eq!(e.queue("retry").growth, 1.6);
    }

    #[test]
    fn routes_parse_and_errors_are_located() {
        let e = parse(
            "[cages.billing]\naddresses = [\"127.0.0.1:7402\"]\nconnect_timeout = \"500ms\"\n",
        )
        .unwrap();
        assert_eq!(
            e.cages["billing"].connect_timeout,
            Duration::from_millis(500)
        );

        let err = parse("[cages.billing]\naddresses = [\"nowhere\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config/config_execute_on.toml:2:14:"),
            "{err}"
        );

        let err = parse("[queues.retry]\ngrowth = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config/config_execute_on.toml:2:10:") && err.contains("growth"),
            "{err}"
        );

        let err = parse("[queues.retry]\ngive_up_after = \"3 dayz\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config/config_execute_on.toml:2:"), "{err}");
    }
}
