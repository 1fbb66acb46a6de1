//! The asking side: one UDP query to the discovery group (or broadcast address), answers
//! collected until `query_timeout`, and a [`Finder`] that caches what it found.

use super::cache::{Binding, Cache};
use super::error::DiscoveryError;
use super::wire::{self, Answer, Datagram, Query, EVERYONE, MAX_DATAGRAM};
use crate::config::{Address, CageRoute, Discovery, UnknownCages};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Mutex;
use std::time::Instant;

/// Hops a multicast query may travel: 1 keeps it on the local network.
const MULTICAST_TTL: u32 = 1;

/// One cage as discovery heard it: every distinct address its instances answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    /// The cage.
    pub cage: String,
    /// Where its instances listen, as reachable from here.
    pub addresses: Vec<SocketAddr>,
    /// Whether the instances said they serve TLS (for display only).
    pub tls: bool,
    /// Runtime version of the first instance that answered.
    pub version: String,
}

/// Finds cages that are not listed, remembering each binding for `cache_for`.
#[derive(Debug, Default)]
pub struct Finder {
    cache: Mutex<Cache>,
}

impl Finder {
    /// A finder with nothing found yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The route to `cage` by discovery: the cached binding while it is fresh, else a query
    /// (blocks up to `query_timeout`). The route's TLS setting is `unknown.tls`, whatever the
    /// answers said.
    pub fn find(&self, unknown: &UnknownCages, cage: &str) -> Result<CageRoute, DiscoveryError> {
        let binding = self.cache().get(cage, Instant::now(), unknown.cache_for);
        if let Binding::Fresh(addresses) = binding {
            return Ok(route(unknown, addresses));
        }
        let heard = ask(unknown, cage)?
            .into_iter()
            .find(|h| h.cage == cage)
            .ok_or_else(|| no_answer(unknown))?;
        tracing::debug!(cage, addresses = ?heard.addresses, was = ?binding, "found by discovery");
        self.cache()
            .found(cage, heard.addresses.clone(), Instant::now());
        Ok(route(unknown, heard.addresses))
    }

    /// Whether `cage` was found by this finder at some point (even if it is to be asked
    /// for again now).
    pub fn seen(&self, cage: &str) -> bool {
        self.cache()
            .get(cage, Instant::now(), std::time::Duration::MAX)
            .seen()
    }

    /// Drops `cage`'s binding because connecting to it failed: the next lookup asks again.
    pub fn forget(&self, cage: &str) {
        if self.cache().forget(cage) {
            tracing::info!(cage, "cannot reach the cage where discovery found it; it is asked for again at the next attempt");
        }
    }

    /// Drops every binding (the discovery settings changed).
    pub fn clear(&self) {
        self.cache().clear();
    }

    /// Records a binding as if `cage` had just answered at `addresses` (tests).
    #[cfg(test)]
    pub(crate) fn remember(&self, cage: &str, addresses: Vec<SocketAddr>) {
        self.cache().found(cage, addresses, Instant::now());
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every cage of the cluster that answers a query for everyone, sorted by name.
pub fn find_all(unknown: &UnknownCages) -> Result<Vec<Heard>, DiscoveryError> {
    let mut heard = ask(unknown, EVERYONE)?;
    heard.sort_by(|a, b| a.cage.cmp(&b.cage));
    Ok(heard)
}

fn route(unknown: &UnknownCages, addresses: Vec<SocketAddr>) -> CageRoute {
    unknown.route(addresses.into_iter().map(Address::Ip).collect())
}

fn target(discovery: &Discovery) -> Option<SocketAddrV4> {
    match *discovery {
        Discovery::Off => None,
        Discovery::Multicast { group, .. } => Some(group),
        Discovery::Broadcast { address } => Some(address),
    }
}

fn no_answer(unknown: &UnknownCages) -> DiscoveryError {
    match target(&unknown.discovery) {
        None => DiscoveryError::Off,
        Some(target) => DiscoveryError::NoAnswer {
            target,
            timeout: unknown.query_timeout,
            cluster: unknown.cluster.clone(),
        },
    }
}

/// Sends one query for `want` and gathers the answers until `query_timeout`, merged by cage
/// (every instance of a cage may answer).
fn ask(unknown: &UnknownCages, want: &str) -> Result<Vec<Heard>, DiscoveryError> {
    let target = target(&unknown.discovery).ok_or(DiscoveryError::Off)?;
    let failed = |step: &'static str| {
        move |source: std::io::Error| DiscoveryError::Query {
            target,
            step,
            source,
        }
    };
    let socket = query_socket(&unknown.discovery).map_err(failed("setting up the socket"))?;
    let query = Query {
        cluster: unknown.cluster.clone(),
        want: want.to_owned(),
        nonce: rand::random(),
    };
    let bytes =
        wire::encode(&Datagram::Query(query.clone())).map_err(|e| DiscoveryError::Query {
            target,
            step: "encoding the query",
            source: std::io::Error::new(ErrorKind::InvalidInput, e),
        })?;
    socket
        .send_to(&bytes, target)
        .map_err(failed("sending the query"))?;

    let deadline = Instant::now() + unknown.query_timeout;
    let mut heard: Vec<Heard> = Vec::new();
    // One byte more than a datagram may have, so an oversized one is seen as such.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        socket
            .set_read_timeout(Some(left))
            .map_err(failed("waiting for answers"))?;
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // An ICMP error from an earlier send; answers may still come.
            Err(e) => {
                tracing::debug!(%target, "discovery: receive failed, still listening: {e}");
                continue;
            }
        };
        match wire::decode(&buf[..n]) {
            Ok(Datagram::Answer(a)) if answers(&query, &a) => merge(&mut heard, &a, from),
            Ok(other) => {
                tracing::debug!(%from, "discovery: ignoring a datagram that does not answer our query: {other:?}")
            }
            Err(e) => tracing::debug!(%from, "discovery: ignoring a datagram: {e}"),
        }
    }
    Ok(heard)
}

/// Whether `answer` answers `query` (and not another asker's, or an earlier one of ours).
fn answers(query: &Query, answer: &Answer) -> bool {
    answer.nonce == query.nonce
        && answer.cluster == query.cluster
        && (query.want == EVERYONE || answer.cage == query.want)
}

/// Adds what `answer` (from `from`) says to `heard`, one entry per cage, each address once.
fn merge(heard: &mut Vec<Heard>, answer: &Answer, from: SocketAddr) {
    let addresses = wire::reachable_addresses(answer, from);
    match heard.iter_mut().find(|h| h.cage == answer.cage) {
        Some(h) => {
            for a in addresses {
                if !h.addresses.contains(&a) {
                    h.addresses.push(a);
                }
            }
            h.tls |= answer.tls;
        }
        None => heard.push(Heard {
            cage: answer.cage.clone(),
            addresses,
            tls: answer.tls,
            version: answer.version.clone(),
        }),
    }
}

fn query_socket(discovery: &Discovery) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    match discovery {
        Discovery::Multicast { interface, .. } => {
            socket.set_multicast_if_v4(interface)?;
            // Cages on this very host answer too.
            socket.set_multicast_loop_v4(true)?;
            socket.set_multicast_ttl_v4(MULTICAST_TTL)?;
        }
        Discovery::Broadcast { .. } => socket.set_broadcast(true)?,
        Discovery::Off => {}
    }
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)).into())?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(cage: &str, nonce: u64, addresses: &[&str]) -> Answer {
        Answer {
            cluster: "cages".into(),
            nonce,
            cage: cage.into(),
            addresses: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            tls: false,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn only_answers_to_this_query_count() {
        let q = Query {
            cluster: "cages".into(),
            want: "c".into(),
            nonce: 5,
        };
        assert!(answers(&q, &answer("c", 5, &["127.0.0.1:1"])));
        assert!(
            !answers(&q, &answer("c", 6, &["127.0.0.1:1"])),
            "other nonce"
        );
        assert!(
            !answers(&q, &answer("d", 5, &["127.0.0.1:1"])),
            "other cage"
        );
        let mut other_cluster = answer("c", 5, &["127.0.0.1:1"]);
        other_cluster.cluster = "else".into();
        assert!(!answers(&q, &other_cluster));
        let everyone = Query {
            want: EVERYONE.into(),
            ..q
        };
        assert!(answers(&everyone, &answer("d", 5, &["127.0.0.1:1"])));
    }

    #[test]
    fn instances_merge_into_one_cage_with_every_distinct_address() {
        let from: SocketAddr = "10.0.0.7:7400".parse().unwrap();
        let mut heard = Vec::new();
        merge(&mut heard, &answer("c", 1, &["127.0.0.3:1"]), from);
        merge(
            &mut heard,
            &answer("c", 1, &["127.0.0.3:2", "127.0.0.3:1"]),
            from,
        );
        merge(&mut heard, &answer("d", 1, &["0.0.0.0:9"]), from);
        merge(&mut heard, &answer("c", 1, &["127.0.0.3:2"]), from);
        assert_eq!(heard.len(), 2);
        assert_eq!(
            heard[0].addresses,
            vec![
                "127.0.0.3:1".parse::<SocketAddr>().unwrap(),
                "127.0.0.3:2".parse().unwrap()
            ]
        );
        assert_eq!(
            heard[1].addresses,
            vec!["10.0.0.7:9".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn a_found_route_speaks_tls_by_the_askers_config_not_the_answer() {
        let mut unknown = UnknownCages::defaults(true);
        let r = route(&unknown, vec!["127.0.0.3:1".parse().unwrap()]);
        assert!(r.tls);
        unknown.tls = false;
        assert!(!route(&unknown, vec!["127.0.0.3:1".parse().unwrap()]).tls);
    }

    #[test]
    fn a_running_responder_is_found_and_a_stopped_one_is_not() {
        use crate::discovery::{Identity, Responder};
        let port = UdpSocket::bind("0.0.0.0:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut unknown = UnknownCages::defaults(false);
        unknown.cluster = format!("unit-{}", std::process::id());
        unknown.query_timeout = std::time::Duration::from_millis(200);
        // On loopback, multicast needs both ends on interface 127.0.0.1.
        unknown.discovery = Discovery::Multicast {
            group: SocketAddrV4::new(Ipv4Addr::new(239, 255, 74, 1), port),
            interface: Ipv4Addr::LOCALHOST,
        };
        let me = |cage: &str, port: u16| Identity {
            cage: cage.into(),
            listen: SocketAddr::from(([127, 0, 0, 3], port)),
            tls: true,
            version: "9.9.9".into(),
        };
        let one = Responder::start(me("c", 1001), &unknown).unwrap().unwrap();
        let two = Responder::start(me("c", 1002), &unknown).unwrap().unwrap();
        let other = Responder::start(me("d", 1003), &unknown).unwrap().unwrap();

        let finder = Finder::new();
        let mut found = finder.find(&unknown, "c").unwrap().addresses;
        found.sort_by_key(|a| a.to_string());
        let at = |p: u16| Address::Ip(SocketAddr::from(([127, 0, 0, 3], p)));
        assert_eq!(
            found,
            vec![at(1001), at(1002)],
            "both instances, nothing else"
        );
        let all = find_all(&unknown).unwrap();
        assert_eq!(
            all.iter()
                .map(|h| (h.cage.as_str(), h.tls, h.version.as_str()))
                .collect::<Vec<_>>(),
            vec![("c", true, "9.9.9"), ("d", true, "9.9.9")]
        );

        for r in [one, two, other] {
            r.stop();
        }
        finder.forget("c");
        let err = finder.find(&unknown, "c").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "no answer to discovery on 239.255.74.1:{port} within 200ms"
            )),
            "{err}"
        );
    }

    #[test]
    fn with_discovery_off_nothing_is_sent_and_the_error_says_so() {
        let mut unknown = UnknownCages::defaults(false);
        unknown.discovery = Discovery::Off;
        let finder = Finder::new();
        assert!(matches!(
            finder.find(&unknown, "c"),
            Err(DiscoveryError::Off)
        ));
        assert!(!finder.seen("c"));
    }

    #[test]
    fn a_fresh_binding_is_used_without_asking() {
        // Discovery pointed at a port nobody answers on: a lookup that asked would fail.
        let mut unknown = UnknownCages::defaults(false);
        unknown.discovery = Discovery::Off;
        let finder = Finder::new();
        let addr: SocketAddr = "127.0.0.3:4".parse().unwrap();
        finder.cache().found("c", vec![addr], Instant::now());
        assert_eq!(
            finder.find(&unknown, "c").unwrap().addresses,
            vec![Address::Ip(addr)]
        );
        finder.forget("c");
        assert!(finder.seen("c"));
        assert!(
            finder.find(&unknown, "c").is_err(),
            "a forgotten binding is asked for again"
        );
    }
}
