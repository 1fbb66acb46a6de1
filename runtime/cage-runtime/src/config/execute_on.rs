//! `config/config_execute_on.toml`: where other cages are, and the retry parameters of each queue.

use super::address::Address;
use super::error::ConfigError;
use super::ranges::{self, SpannedDuration};
use crate::names::{self, NameKind};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;
use toml::Spanned;

/// The queue whose settings apply to a queue with no table of its own.
pub const DEFAULT_QUEUE: &str = "retry";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExecuteOn {
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    cages: BTreeMap<String, Spanned<RawRoute>>,
    #[serde(default)]
    queues: BTreeMap<String, Spanned<RawQueue>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    enabled: Option<bool>,
}

/// A `[cages.NAME]` table; the discovery keys belong to `[cages.unknown]` only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    addresses: Option<Vec<Spanned<String>>>,
    connect_timeout: Option<SpannedDuration>,
    call_timeout: Option<SpannedDuration>,
    tls: Option<bool>,
    window: Option<Spanned<usize>>,
    discovery: Option<Spanned<String>>,
    discovery_address: Option<Spanned<String>>,
    discovery_interface: Option<Spanned<String>>,
    cache_for: Option<SpannedDuration>,
    query_timeout: Option<SpannedDuration>,
    cluster: Option<Spanned<String>>,
}

/// The name of the `[cages.*]` entry that applies to every cage not listed.
pub const UNKNOWN_CAGE: &str = "unknown";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    first_retry: Option<SpannedDuration>,
    growth: Option<Spanned<f64>>,
    max_delay: Option<SpannedDuration>,
    give_up_after: Option<SpannedDuration>,
    jitter: Option<Spanned<f64>>,
    concurrency: Option<Spanned<usize>>,
    rate_limit: Option<Spanned<String>>,
    burst: Option<Spanned<usize>>,
    group_concurrency: Option<Spanned<usize>>,
    group_rate_limit: Option<Spanned<String>>,
    group_burst: Option<Spanned<usize>>,
    fairness: Option<Spanned<String>>,
    keep_order: Option<bool>,
    time_limit: Option<SpannedDuration>,
    retention: Option<SpannedDuration>,
    max_crashes: Option<Spanned<usize>>,
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
    /// Speak mutual TLS: the cage must show a certificate for its name from the cluster CA.
    pub tls: bool,
    /// Most queued calls being handed to the cage at once; the rest wait in the local queue.
    pub window: usize,
}

impl CageRoute {
    /// Default connect timeout.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default delivery window: two full delivery requests.
    pub const WINDOW: usize = 256;

    /// A plain route to a single address with default timeouts.
    pub fn single(addr: SocketAddr, call_timeout: Duration) -> Self {
        CageRoute {
            addresses: vec![Address::Ip(addr)],
            connect_timeout: Self::CONNECT_TIMEOUT,
            call_timeout,
            tls: false,
            window: Self::WINDOW,
        }
    }

    /// This route, speaking TLS or not.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }
}

/// How a cage not listed in the file is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discovery {
    /// Not at all: an unlisted cage without a cage file in the site is unknown.
    Off,
    /// A UDP query to a multicast group, sent and joined on the interface with this address.
    Multicast {
        /// Group and port.
        group: SocketAddrV4,
        /// Address of the interface queries go out on and answers come in on (0.0.0.0: the
        /// system's choice).
        interface: Ipv4Addr,
    },
    /// A UDP query to a broadcast address.
    Broadcast {
        /// Broadcast address and port.
        address: SocketAddrV4,
    },
}

impl Discovery {
    /// The port cages answer queries on.
    pub fn port(&self) -> Option<u16> {
        match self {
            Discovery::Off => None,
            Discovery::Multicast { group, .. } => Some(group.port()),
            Discovery::Broadcast { address } => Some(address.port()),
        }
    }
}

/// `[cages.unknown]`: how cages that are not listed are found and reached.
#[derive(Debug, Clone, PartialEq)]
pub struct UnknownCages {
    /// How they are looked for.
    pub discovery: Discovery,
    /// Only cages answering for this cluster name count (several sites can share a network).
    pub cluster: String,
    /// How long a found address is used before it is asked for again (a failure to connect
    /// asks again at once).
    pub cache_for: Duration,
    /// How long a query waits for answers.
    pub query_timeout: Duration,
    /// Longest wait for a TCP connection to a found cage.
    pub connect_timeout: Duration,
    /// Default limit of a sync call to a found cage.
    pub call_timeout: Duration,
    /// Speak mutual TLS to found cages.
    pub tls: bool,
    /// Delivery window of each found cage.
    pub window: usize,
}

impl UnknownCages {
    /// Default multicast group and port of discovery queries.
    pub const GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 74, 1), 7400);
    /// Default broadcast address of discovery queries.
    pub const BROADCAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::BROADCAST, 7400);
    /// Default time a found address is kept.
    pub const CACHE_FOR: Duration = Duration::from_secs(300);
    /// Default wait for answers.
    pub const QUERY_TIMEOUT: Duration = Duration::from_millis(500);
    /// Default cluster name.
    pub const CLUSTER: &'static str = "cages";

    /// The defaults, speaking TLS or not.
    pub fn defaults(tls: bool) -> Self {
        UnknownCages {
            discovery: Discovery::Multicast {
                group: Self::GROUP,
                interface: Ipv4Addr::UNSPECIFIED,
            },
            cluster: Self::CLUSTER.to_owned(),
            cache_for: Self::CACHE_FOR,
            query_timeout: Self::QUERY_TIMEOUT,
            connect_timeout: CageRoute::CONNECT_TIMEOUT,
            call_timeout: super::CageFileDefaults::CALL_TIMEOUT,
            tls,
            window: CageRoute::WINDOW,
        }
    }

    /// The route to a found cage at `addresses`.
    pub fn route(&self, addresses: Vec<Address>) -> CageRoute {
        CageRoute {
            addresses,
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            tls: self.tls,
            window: self.window,
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
    /// Most attempts of the queue started on this cage per period (`None`: no limit).
    pub rate_limit: Option<super::Rate>,
    /// Attempts a rate-limited queue may start at once after a quiet spell.
    pub burst: usize,
    /// Calls of one group of the queue running at once (`None`: no cap beyond the queue's).
    pub group_concurrency: Option<usize>,
    /// Most attempts of one group of the queue started on this cage per period.
    pub group_rate_limit: Option<super::Rate>,
    /// Attempts of one rate-limited group that may start at once after a quiet spell.
    pub group_burst: usize,
    /// In what order due calls of different groups start.
    pub fairness: Fairness,
    /// A call waits for the one of its group (or, without a group, of its queue) enqueued
    /// before it.
    pub keep_order: bool,
    /// An attempt running longer counts as failed.
    pub time_limit: Duration,
    /// How long the history of accepted and executed calls is kept.
    pub retention: Duration,
    /// Attempts of one call that may crash the process running them before the call is
    /// moved to dead letters (a poison call must not bring its cage down for ever).
    pub max_crashes: usize,
}

/// In what order a queue starts due calls of different groups (`fairness`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fairness {
    /// By due time, then priority, whatever their group (`"fifo"`).
    #[default]
    Fifo,
    /// One group after another in turn, by due time then priority within each group
    /// (`"round_robin"`): a large backlog of one group does not delay the others.
    RoundRobin,
}

impl Fairness {
    /// The accepted spellings, for errors.
    pub const FORM: &'static str = "\"fifo\" or \"round_robin\"";

    /// Reads a spelling of the file.
    pub fn parse(text: &str) -> Option<Fairness> {
        match text {
            "fifo" => Some(Fairness::Fifo),
            "round_robin" => Some(Fairness::RoundRobin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Fairness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fairness::Fifo => "fifo",
            Fairness::RoundRobin => "round_robin",
        })
    }
}

impl QueuePolicy {
    /// Default `max_crashes`.
    pub const MAX_CRASHES: usize = 3;

    /// When this queue's attempts run.
    pub fn backoff(&self) -> crate::retry_policy::Backoff {
        crate::retry_policy::Backoff {
            first_retry: self.first_retry,
            growth: self.growth,
            max_delay: self.max_delay,
            give_up_after: self.give_up_after,
            jitter: self.jitter,
        }
    }
}

impl Default for QueuePolicy {
    fn default() -> Self {
        let backoff = crate::retry_policy::Backoff::default();
        QueuePolicy {
            first_retry: backoff.first_retry,
            growth: backoff.growth,
            max_delay: backoff.max_delay,
            give_up_after: backoff.give_up_after,
            jitter: backoff.jitter,
            concurrency: 16,
            rate_limit: None,
            burst: 1,
            group_concurrency: None,
            group_rate_limit: None,
            group_burst: 1,
            fairness: Fairness::Fifo,
            keep_order: false,
            time_limit: Duration::from_secs(300),
            retention: Duration::from_secs(7 * 24 * 3600),
            max_crashes: Self::MAX_CRASHES,
        }
    }
}

/// The parsed `config/config_execute_on.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteOn {
    /// `[tls] enabled`: the default of every channel's `tls`.
    pub tls: bool,
    /// Known cages by name (`unknown` is not among them).
    pub cages: BTreeMap<String, CageRoute>,
    /// How cages not listed are found.
    pub unknown: UnknownCages,
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

        let tls = raw.tls.as_ref().and_then(|t| t.enabled).unwrap_or(false);
        let mut cages = BTreeMap::new();
        let mut unknown = UnknownCages::defaults(tls);
        for (name, route) in &raw.cages {
            names::check(NameKind::Cage, name)
                .map_err(|e| at(route.span(), format!("cages.{name}: {e}")))?;
            let r = route.get_ref();
            if name == UNKNOWN_CAGE {
                unknown = unknown_cages(r, tls, &route.span(), &at)?;
                continue;
            }
            for (key, set) in [
                ("discovery", r.discovery.is_some()),
                ("discovery_address", r.discovery_address.is_some()),
                ("discovery_interface", r.discovery_interface.is_some()),
                ("cache_for", r.cache_for.is_some()),
                ("query_timeout", r.query_timeout.is_some()),
                ("cluster", r.cluster.is_some()),
            ] {
                if set {
                    return Err(at(
                        route.span(),
                        format!("cages.{name}.{key}: only [cages.{UNKNOWN_CAGE}] takes discovery settings; a listed cage is reached at its addresses"),
                    ));
                }
            }
            let listed = r.addresses.as_deref().unwrap_or_default();
            if listed.is_empty() {
                return Err(at(
                    route.span(),
                    format!("cages.{name}.addresses: needs at least one address"),
                ));
            }
            let mut addresses = Vec::new();
            for a in listed {
                let addr = Address::parse(a.get_ref()).ok_or_else(|| {
                    at(a.span(), format!("cages.{name}.addresses: expected IP:PORT or NAME:PORT such as \"127.0.0.1:7401\" or \"billing-0.billing:7401\", found {:?}", a.get_ref()))
                })?;
                addresses.push(addr);
            }
            cages.insert(
                name.clone(),
                CageRoute {
                    addresses,
                    connect_timeout: ranges::duration(
                        &r.connect_timeout,
                        &format!("cages.{name}.connect_timeout"),
                        ranges::CONNECT_TIMEOUT,
                        CageRoute::CONNECT_TIMEOUT,
                        &at,
                    )?,
                    call_timeout: ranges::duration(
                        &r.call_timeout,
                        &format!("cages.{name}.call_timeout"),
                        ranges::CALL_TIMEOUT,
                        super::CageFileDefaults::CALL_TIMEOUT,
                        &at,
                    )?,
                    tls: r.tls.unwrap_or(tls),
                    window: window(name, r, CageRoute::WINDOW, &at)?,
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
            names::check(NameKind::Queue, name)
                .map_err(|e| at(q.span(), format!("queues.{name}: {e}")))?;
            queues.insert(name.clone(), queue_policy(name, q, &default_policy, &at)?);
        }
        queues.insert(DEFAULT_QUEUE.to_owned(), default_policy);
        Ok(ExecuteOn {
            tls,
            cages,
            unknown,
            queues,
        })
    }

    /// The policy of `queue`, falling back to the default queue's.
    pub fn queue(&self, queue: &str) -> &QueuePolicy {
        self.queues
            .get(queue)
            .unwrap_or(&self.queues[DEFAULT_QUEUE])
    }
}

impl Default for ExecuteOn {
    fn default() -> Self {
        ExecuteOn {
            tls: false,
            cages: BTreeMap::new(),
            unknown: UnknownCages::defaults(false),
            queues: BTreeMap::from([(DEFAULT_QUEUE.to_owned(), QueuePolicy::default())]),
        }
    }
}

fn unknown_cages(
    r: &RawRoute,
    tls: bool,
    span: &std::ops::Range<usize>,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<UnknownCages, ConfigError> {
    let mut u = UnknownCages::defaults(r.tls.unwrap_or(tls));
    if let Some(listed) = &r.addresses {
        return Err(at(
            listed.first().map(|a| a.span()).unwrap_or(span.clone()),
            format!("cages.{UNKNOWN_CAGE}.addresses: the entry for unlisted cages has no addresses; list a cage under its own name, or let discovery find it"),
        ));
    }
    let address = match &r.discovery_address {
        None => None,
        Some(a) => Some(a.get_ref().parse::<SocketAddrV4>().map_err(|_| {
            at(a.span(), format!("cages.{UNKNOWN_CAGE}.discovery_address: expected an IPv4 address and port such as \"239.255.74.1:7400\", found {:?}", a.get_ref()))
        })?),
    };
    let interface = match &r.discovery_interface {
        None => Ipv4Addr::UNSPECIFIED,
        Some(i) => i.get_ref().parse::<Ipv4Addr>().map_err(|_| {
            at(i.span(), format!("cages.{UNKNOWN_CAGE}.discovery_interface: expected the IPv4 address of an interface such as \"127.0.0.1\", found {:?}", i.get_ref()))
        })?,
    };
    let mode = r.discovery.as_ref();
    u.discovery = match mode.map(|m| m.get_ref().as_str()).unwrap_or("multicast") {
        "off" => Discovery::Off,
        "multicast" => {
            let group = address.unwrap_or(UnknownCages::GROUP);
            if !group.ip().is_multicast() {
                let a = r
                    .discovery_address
                    .as_ref()
                    .expect("a non-default group was given");
                return Err(at(a.span(), format!("cages.{UNKNOWN_CAGE}.discovery_address: {group} is not a multicast group (224.0.0.0/4); for a broadcast address set discovery = \"broadcast\"")));
            }
            Discovery::Multicast { group, interface }
        }
        "broadcast" => Discovery::Broadcast {
            address: address.unwrap_or(UnknownCages::BROADCAST),
        },
        other => {
            let m = mode.expect("a mode was given");
            return Err(at(m.span(), format!("cages.{UNKNOWN_CAGE}.discovery: expected \"multicast\", \"broadcast\" or \"off\", found {other:?}")));
        }
    };
    if let Some(c) = &r.cluster {
        names::check(NameKind::Cluster, c.get_ref())
            .map_err(|e| at(c.span(), format!("cages.{UNKNOWN_CAGE}.cluster: {e}")))?;
        u.cluster = c.get_ref().clone();
    }
    let key = |k: &str| format!("cages.{UNKNOWN_CAGE}.{k}");
    u.cache_for = ranges::duration(
        &r.cache_for,
        &key("cache_for"),
        ranges::CACHE_FOR,
        u.cache_for,
        at,
    )?;
    u.query_timeout = ranges::duration(
        &r.query_timeout,
        &key("query_timeout"),
        ranges::QUERY_TIMEOUT,
        u.query_timeout,
        at,
    )?;
    u.connect_timeout = ranges::duration(
        &r.connect_timeout,
        &key("connect_timeout"),
        ranges::CONNECT_TIMEOUT,
        u.connect_timeout,
        at,
    )?;
    u.call_timeout = ranges::duration(
        &r.call_timeout,
        &key("call_timeout"),
        ranges::CALL_TIMEOUT,
        u.call_timeout,
        at,
    )?;
    u.window = window(UNKNOWN_CAGE, r, u.window, at)?;
    Ok(u)
}

/// `window` of `[cages.NAME]`: most calls handed over at once.
fn window(
    name: &str,
    r: &RawRoute,
    default: usize,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<usize, ConfigError> {
    ranges::count(
        &r.window,
        &format!("cages.{name}.window"),
        ranges::WINDOW,
        default,
        at,
    )
}

/// A rate the file gives at `text` for `key`, or the error naming the expected form.
fn rate(
    text: &Spanned<String>,
    key: &str,
    at: &impl Fn(std::ops::Range<usize>, String) -> ConfigError,
) -> Result<super::Rate, ConfigError> {
    super::Rate::parse(text.get_ref()).ok_or_else(|| {
        at(
            text.span(),
            format!(
                "{key}: expected {}, found {:?}",
                super::RATE_FORM,
                text.get_ref()
            ),
        )
    })
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
    let key = |k: &str| format!("queues.{name}.{k}");
    let policy = QueuePolicy {
        first_retry: ranges::duration(
            &r.first_retry,
            &key("first_retry"),
            ranges::FIRST_RETRY,
            base.first_retry,
            at,
        )?,
        growth,
        max_delay: ranges::duration(
            &r.max_delay,
            &key("max_delay"),
            ranges::MAX_DELAY,
            base.max_delay,
            at,
        )?,
        give_up_after: ranges::duration(
            &r.give_up_after,
            &key("give_up_after"),
            ranges::GIVE_UP_AFTER,
            base.give_up_after,
            at,
        )?,
        jitter,
        concurrency: ranges::count(
            &r.concurrency,
            &key("concurrency"),
            ranges::CONCURRENCY,
            base.concurrency,
            at,
        )?,
        rate_limit: match &r.rate_limit {
            None => base.rate_limit,
            Some(text) => Some(rate(text, &key("rate_limit"), at)?),
        },
        burst: ranges::count(&r.burst, &key("burst"), ranges::BURST, base.burst, at)?,
        group_concurrency: match &r.group_concurrency {
            None => base.group_concurrency,
            Some(_) => Some(ranges::count(
                &r.group_concurrency,
                &key("group_concurrency"),
                ranges::CONCURRENCY,
                1,
                at,
            )?),
        },
        group_rate_limit: match &r.group_rate_limit {
            None => base.group_rate_limit,
            Some(text) => Some(rate(text, &key("group_rate_limit"), at)?),
        },
        group_burst: ranges::count(
            &r.group_burst,
            &key("group_burst"),
            ranges::BURST,
            base.group_burst,
            at,
        )?,
        fairness: match &r.fairness {
            None => base.fairness,
            Some(text) => Fairness::parse(text.get_ref()).ok_or_else(|| {
                at(
                    text.span(),
                    format!(
                        "{}: expected {}, found {:?}",
                        key("fairness"),
                        Fairness::FORM,
                        text.get_ref()
                    ),
                )
            })?,
        },
        keep_order: r.keep_order.unwrap_or(base.keep_order),
        time_limit: ranges::duration(
            &r.time_limit,
            &key("time_limit"),
            ranges::TIME_LIMIT,
            base.time_limit,
            at,
        )?,
        retention: ranges::duration(
            &r.retention,
            &key("retention"),
            ranges::RETENTION,
            base.retention,
            at,
        )?,
        max_crashes: ranges::count(
            &r.max_crashes,
            &key("max_crashes"),
            ranges::MAX_CRASHES,
            base.max_crashes,
            at,
        )?,
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
    if let Some(why) = crate::retry_policy::refusal(&policy.backoff()) {
        return Err(at(q.span(), format!("queues.{name}: {why}")));
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
        assert_eq!(e.queue("fast").max_crashes, QueuePolicy::MAX_CRASHES);
        let e =
            parse("[queues.retry]\nmax_crashes = 5\n[queues.poison]\nmax_crashes = 1\n").unwrap();
        assert_eq!(
            (e.queue("other").max_crashes, e.queue("poison").max_crashes),
            (5, 1)
        );
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

        let err = parse("[cages.billing]\naddresses = [\"127.0.0.1:1\"]\ncache_for = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("only [cages.unknown]"), "{err}");

        let err = parse("[queues.retry]\ngive_up_after = \"3 dayz\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config/config_execute_on.toml:2:"), "{err}");
    }

    #[test]
    fn a_rate_limit_and_its_burst_are_read_per_queue() {
        let c = parse("[queues.api]\nrate_limit = \"50/s\"\nburst = 5\n[queues.mail]\nrate_limit = \"300/m\"\n").unwrap();
        let api = c.queue("api");
        assert_eq!(api.rate_limit.unwrap().to_string(), "50/s");
        assert_eq!(api.burst, 5);
        assert_eq!(c.queue("mail").rate_limit.unwrap().to_string(), "300/m");
        assert_eq!(c.queue("mail").burst, 1);
        assert_eq!(c.queue("other").rate_limit, None);
    }

    #[test]
    fn group_limits_and_fairness_are_read_per_queue() {
        let c = parse(
            "[queues.tenants]\ngroup_concurrency = 2\ngroup_rate_limit = \"5/s\"\ngroup_burst = 3\nfairness = \"round_robin\"\n",
        )
        .unwrap();
        let q = c.queue("tenants");
        assert_eq!(q.group_concurrency, Some(2));
        assert_eq!(q.group_rate_limit.unwrap().to_string(), "5/s");
        assert_eq!(q.group_burst, 3);
        assert_eq!(q.fairness, Fairness::RoundRobin);
        let other = c.queue("other");
        assert_eq!(
            (
                other.group_concurrency,
                other.group_rate_limit,
                other.group_burst,
                other.fairness
            ),
            (None, None, 1, Fairness::Fifo)
        );
    }

    #[test]
    fn harmful_queue_and_route_values_are_refused_where_they_stand() {
        for (src, says) in [
            (
                "[queues.retry]\nfirst_retry = \"0s\"\n",
                "config/config_execute_on.toml:2:15: queues.retry.first_retry: 0s is out of range (allowed: 10ms to 1day)",
            ),
            (
                "[queues.retry]\ntime_limit = \"0s\"\n",
                "config/config_execute_on.toml:2:14: queues.retry.time_limit: 0s is out of range (allowed: 100ms to 1day)",
            ),
            (
                "[queues.fast]\nconcurrency = 100000\n",
                "config/config_execute_on.toml:2:15: queues.fast.concurrency: 100000 is out of range (allowed: 1 to 10000)",
            ),
            (
                "[queues.fast]\nrate_limit = \"fast\"\n",
                "config/config_execute_on.toml:2:14: queues.fast.rate_limit: expected a rate such as \"50/s\", \"300/m\" or \"1000/h\" (a whole number above zero, per second, minute or hour), found \"fast\"",
            ),
            (
                "[queues.fast]\nrate_limit = \"0/s\"\n",
                "config/config_execute_on.toml:2:14: queues.fast.rate_limit: expected a rate such as",
            ),
            (
                "[queues.fast]\nrate_limit = \"5/s\"\nburst = 0\n",
                "config/config_execute_on.toml:3:9: queues.fast.burst: 0 is out of range (allowed: 1 to 100000)",
            ),
            (
                "[queues.fast]\ngroup_concurrency = 0\n",
                "config/config_execute_on.toml:2:21: queues.fast.group_concurrency: 0 is out of range (allowed: 1 to 10000)",
            ),
            (
                "[queues.fast]\ngroup_rate_limit = \"fast\"\n",
                "config/config_execute_on.toml:2:20: queues.fast.group_rate_limit: expected a rate such as",
            ),
            (
                "[queues.fast]\nfairness = \"fair\"\n",
                "config/config_execute_on.toml:2:12: queues.fast.fairness: expected \"fifo\" or \"round_robin\", found \"fair\"",
            ),
            (
                "[queues.fast]\nmax_crashes = 0\n",
                "config/config_execute_on.toml:2:15: queues.fast.max_crashes: 0 is out of range (allowed: 1 to 1000)",
            ),
            (
                "[queues.fast]\nretention = \"0s\"\n",
                "config/config_execute_on.toml:2:13: queues.fast.retention: 0s is out of range",
            ),
            (
                "[queues.fast]\ngive_up_after = \"100years\"\n",
                "config/config_execute_on.toml:2:17: queues.fast.give_up_after: 100years is out of range (allowed: 0s to 1year)",
            ),
            (
                "[cages.b]\naddresses = [\"127.0.0.1:1\"]\nconnect_timeout = \"0s\"\n",
                "config/config_execute_on.toml:3:19: cages.b.connect_timeout: 0s is out of range",
            ),
            (
                "[cages.b]\naddresses = [\"127.0.0.1:1\"]\nwindow = 0\n",
                "config/config_execute_on.toml:3:10: cages.b.window: 0 is out of range (allowed: 1 to 65536)",
            ),
            (
                "[cages.unknown]\nquery_timeout = \"0s\"\n",
                "config/config_execute_on.toml:2:17: cages.unknown.query_timeout: 0s is out of range",
            ),
        ] {
            let err = parse(src).unwrap_err().to_string();
            assert!(err.starts_with(says), "{src}: {err}");
        }
    }

    #[test]
    fn a_queue_of_more_attempts_than_the_cap_is_refused() {
        // 100 ms apart for three days: hundreds of thousands of attempts.
        let err = parse("[queues.fast]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config/config_execute_on.toml:1:1: queues.fast: this schedule makes more than 1000 attempts")
                && err.contains("of give_up_after 3days"),
            "{err}"
        );
        // The same delays for a minute are fine; so are the shipped defaults.
        let e = parse("[queues.fast]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"1m\"\n").unwrap();
        assert_eq!(
            crate::retry_policy::refusal(&e.queue("fast").backoff()),
            None
        );
        assert!(parse("[queues.retry]\nfirst_retry = \"1m\"\n").is_ok());
    }

    #[test]
    fn bad_names_are_config_errors() {
        for (src, says) in [
            (
                "[queues.\"../x\"]\n",
                "queues.../x: \"../x\" is not a queue name",
            ),
            (
                "[cages.\"a/b\"]\naddresses = [\"127.0.0.1:1\"]\n",
                "cages.a/b: \"a/b\" is not a cage name",
            ),
            (
                "[cages.unknown]\ncluster = \"x\\u0000\"\n",
                "cages.unknown.cluster: \"x\\0\" is not a cluster name: it holds a NUL byte",
            ),
        ] {
            let err = parse(src).unwrap_err().to_string();
            assert!(
                err.starts_with("config/config_execute_on.toml:") && err.contains(says),
                "{src}: {err}"
            );
        }
    }

    #[test]
    fn tls_defaults_to_the_site_setting_and_each_entry_may_differ() {
        let e = parse(
            "[tls]\nenabled = true\n[cages.a]\naddresses = [\"127.0.0.1:1\"]\n[cages.b]\naddresses = [\"127.0.0.1:2\"]\ntls = false\n",
        )
        .unwrap();
        assert!(e.tls && e.cages["a"].tls && !e.cages["b"].tls && e.unknown.tls);
        assert_eq!(e.cages["a"].window, CageRoute::WINDOW);
        let e = parse("[cages.a]\naddresses = [\"127.0.0.1:1\"]\nwindow = 8\n").unwrap();
        assert_eq!(e.cages["a"].window, 8);
        let err = parse("[cages.a]\naddresses = [\"127.0.0.1:1\"]\nwindow = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config/config_execute_on.toml:3:") && err.contains("window"),
            "{err}"
        );
        assert!(!parse("").unwrap().unknown.tls);
    }

    #[test]
    fn unknown_cages_take_discovery_settings() {
        let e = parse("").unwrap();
        assert_eq!(
            e.unknown.discovery,
            Discovery::Multicast {
                group: UnknownCages::GROUP,
                interface: Ipv4Addr::UNSPECIFIED
            }
        );
        assert!(!e.cages.contains_key(UNKNOWN_CAGE));
        let e = parse(
            "[cages.unknown]\ndiscovery_address = \"239.1.2.3:17400\"\ndiscovery_interface = \"127.0.0.1\"\ncache_for = \"10s\"\ncluster = \"test-1\"\ntls = true\n",
        )
        .unwrap();
        assert_eq!(e.unknown.discovery.port(), Some(17400));
        assert_eq!(e.unknown.cache_for, Duration::from_secs(10));
        assert_eq!(e.unknown.cluster, "test-1");
        assert!(e.unknown.tls);
        let e = parse("[cages.unknown]\ndiscovery = \"broadcast\"\n").unwrap();
        assert_eq!(
            e.unknown.discovery,
            Discovery::Broadcast {
                address: UnknownCages::BROADCAST
            }
        );
        assert_eq!(
            parse("[cages.unknown]\ndiscovery = \"off\"\n")
                .unwrap()
                .unknown
                .discovery,
            Discovery::Off
        );
        for (src, says) in [
            (
                "[cages.unknown]\ndiscovery = \"shout\"\n",
                "discovery: expected",
            ),
            (
                "[cages.unknown]\ndiscovery_address = \"10.0.0.1:7400\"\n",
                "not a multicast group",
            ),
            (
                "[cages.unknown]\naddresses = [\"127.0.0.1:1\"]\n",
                "has no addresses",
            ),
            (
                "[cages.unknown]\ndiscovery_interface = \"lo\"\n",
                "discovery_interface",
            ),
        ] {
            let err = parse(src).unwrap_err().to_string();
            assert!(
                err.starts_with("config/config_execute_on.toml:2:") && err.contains(says),
                "{src}: {err}"
            );
        }
    }
}
