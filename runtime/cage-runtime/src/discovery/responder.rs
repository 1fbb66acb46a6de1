//! The answering side: a running cage listens on the discovery port and answers queries for
//! its own name (or for everyone) in its cluster, unicast to the asker.
//!
//! Every cage of a host binds the same port (SO_REUSEADDR and SO_REUSEPORT): a multicast or
//! broadcast datagram is delivered to each of them, so each answers for itself. The socket is
//! served by one thread of its own, which sleeps until a datagram comes; stopping shuts the
//! socket's receiving side, which wakes it.

use super::error::DiscoveryError;
use super::wire::{self, Answer, Datagram, Query, EVERYONE, MAX_DATAGRAM};
use crate::config::{Discovery, UnknownCages};
use socket2::{Domain, Protocol, Socket, Type};
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the answering thread waits for a datagram before it looks whether it should
/// stop all the same (stopping wakes it at once; this is in case a kernel does not).
const POLL: Duration = Duration::from_secs(5);

/// How long the answering thread pauses after its socket failed.
const AFTER_FAILURE: Duration = Duration::from_millis(250);

/// What a cage says about itself in answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The cage's name.
    pub cage: String,
    /// The address it listens on (an unspecified IP: every interface).
    pub listen: SocketAddr,
    /// Whether it serves TLS.
    pub tls: bool,
    /// Its runtime version.
    pub version: String,
}

/// A running responder; stops (and joins its thread) when stopped or dropped.
#[derive(Debug)]
pub struct Responder {
    stop: Arc<AtomicBool>,
    socket: Arc<UdpSocket>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    /// Starts answering for `me` as `unknown` says (`Ok(None)` when discovery is off).
    pub fn start(me: Identity, unknown: &UnknownCages) -> Result<Option<Self>, DiscoveryError> {
        let Some((socket, address)) = answer_socket(&unknown.discovery)? else {
            return Ok(None);
        };
        let listen_failed = |step: &str, source| DiscoveryError::Listen {
            address,
            step: step.to_owned(),
            source,
        };
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| listen_failed("setting its read timeout", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let cluster = unknown.cluster.clone();
        let stopping = stop.clone();
        let socket = Arc::new(socket);
        let served = socket.clone();
        let thread = std::thread::Builder::new()
            .name("discovery".into())
            .spawn(move || serve(&served, &me, &cluster, &stopping))
            .map_err(|e| listen_failed("starting its thread", e))?;
        tracing::debug!(%address, "answering discovery queries");
        Ok(Some(Responder {
            stop,
            socket,
            thread: Some(thread),
        }))
    }

    /// Stops answering and waits for the thread to end.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the thread's receive (Linux does so even for an unconnected socket, though
        // it answers ENOTCONN); failing that, the thread sees the flag within POLL.
        let _ = socket2::SockRef::from(&*self.socket).shutdown(std::net::Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.halt();
    }
}

/// The answer `me` gives to `query`, if any: only for its own cluster and name (or everyone),
/// and a cage listening on loopback answers only an asker `on_this_host` (one elsewhere
/// could not reach it).
pub fn answer_for(
    me: &Identity,
    cluster: &str,
    query: &Query,
    on_this_host: bool,
) -> Option<Answer> {
    let wanted = query.want == me.cage || query.want == EVERYONE;
    let reachable = !me.listen.ip().is_loopback() || on_this_host;
    (query.cluster == cluster && wanted && reachable).then(|| Answer {
        cluster: cluster.to_owned(),
        nonce: query.nonce,
        cage: me.cage.clone(),
        addresses: vec![me.listen],
        tls: me.tls,
        version: me.version.clone(),
    })
}

fn serve(socket: &UdpSocket, me: &Identity, cluster: &str, stop: &AtomicBool) {
    // One byte more than a datagram may have, so an oversized one is seen as such.
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(e) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                tracing::debug!(cage = %me.cage, "discovery: receive failed: {e}");
                std::thread::sleep(AFTER_FAILURE);
                continue;
            }
        };
        let query = match wire::decode(&buf[..n]) {
            Ok(Datagram::Query(q)) => q,
            Ok(Datagram::Answer(_)) => continue,
            Err(e) => {
                tracing::debug!(cage = %me.cage, %from, "discovery: ignoring a datagram: {e}");
                continue;
            }
        };
        let Some(answer) = answer_for(me, cluster, &query, on_this_host(from)) else {
            continue;
        };
        match wire::encode(&Datagram::Answer(answer)) {
            Ok(bytes) => {
                if let Err(e) = socket.send_to(&bytes, from) {
                    tracing::debug!(cage = %me.cage, %from, "discovery: cannot answer: {e}");
                } else {
                    tracing::debug!(cage = %me.cage, %from, want = %query.want, "discovery: answered");
                }
            }
            Err(e) => {
                tracing::warn!(cage = %me.cage, "discovery: cannot encode this cage's answer: {e}")
            }
        }
    }
}

/// Whether `from` is an address of this host: loopback, or one this host can bind (a query
/// sent out of an interface carries that interface's address).
fn on_this_host(from: SocketAddr) -> bool {
    from.ip().is_loopback() || UdpSocket::bind(SocketAddr::new(from.ip(), 0)).is_ok()
}

/// The socket queries arrive on, and the address it serves; `None` when discovery is off.
fn answer_socket(
    discovery: &Discovery,
) -> Result<Option<(UdpSocket, SocketAddrV4)>, DiscoveryError> {
    let address = match *discovery {
        Discovery::Off => return Ok(None),
        Discovery::Multicast { group, .. } => group,
        Discovery::Broadcast { address } => address,
    };
    let failed = |step: String| {
        move |source| DiscoveryError::Listen {
            address,
            step,
            source,
        }
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(failed("creating a UDP socket".into()))?;
    socket
        .set_reuse_address(true)
        .map_err(failed("setting SO_REUSEADDR".into()))?;
    socket
        .set_reuse_port(true)
        .map_err(failed("setting SO_REUSEPORT".into()))?;
    let bind = SocketAddr::from((Ipv4Addr::UNSPECIFIED, address.port()));
    socket
        .bind(&bind.into())
        .map_err(failed(format!("binding {bind}")))?;
    match *discovery {
        Discovery::Multicast { group, interface } => {
            socket
                .join_multicast_v4(group.ip(), &interface)
                .map_err(failed(format!(
                    "joining {} on interface {interface}",
                    group.ip()
                )))?;
            // Only the group joined here, not every group some other program on this host
            // joined on the same port.
            #[cfg(target_os = "linux")]
            let _ = socket.set_multicast_all_v4(false);
        }
        Discovery::Broadcast { .. } => socket
            .set_broadcast(true)
            .map_err(failed("setting SO_BROADCAST".into()))?,
        Discovery::Off => {}
    }
    Ok(Some((socket.into(), address)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(listen: &str) -> Identity {
        Identity {
            cage: "c".into(),
            listen: listen.parse().unwrap(),
            tls: true,
            version: "0.1.0".into(),
        }
    }

    fn query(cluster: &str, want: &str) -> Query {
        Query {
            cluster: cluster.into(),
            want: want.into(),
            nonce: 42,
        }
    }

    #[test]
    fn a_cage_answers_for_its_name_and_for_everyone_in_its_cluster() {
        let local = true;
        let me = me("127.0.0.3:7401");
        let a = answer_for(&me, "cages", &query("cages", "c"), local).unwrap();
        assert_eq!(
            (a.nonce, a.cage.as_str(), a.addresses.clone(), a.tls),
            (42, "c", vec![me.listen], true)
        );
        assert!(answer_for(&me, "cages", &query("cages", EVERYONE), local).is_some());
        assert!(answer_for(&me, "cages", &query("cages", "d"), local).is_none());
        assert!(answer_for(&me, "cages", &query("other", "c"), local).is_none());
    }

    #[test]
    fn a_loopback_cage_answers_only_askers_on_this_host() {
        let remote = false;
        assert!(answer_for(&me("127.0.0.1:7401"), "k", &query("k", "c"), remote).is_none());
        let a = answer_for(&me("0.0.0.0:7401"), "k", &query("k", "c"), remote).unwrap();
        assert_eq!(
            a.addresses,
            vec!["0.0.0.0:7401".parse::<SocketAddr>().unwrap()]
        );
        assert!(answer_for(&me("10.0.0.2:7401"), "k", &query("k", "c"), remote).is_some());
        assert!(answer_for(&me("127.0.0.1:7401"), "k", &query("k", "c"), true).is_some());
    }

    #[test]
    fn this_hosts_own_addresses_are_on_this_host() {
        assert!(on_this_host("127.0.0.1:5000".parse().unwrap()));
        // TEST-NET-3: never assigned to a host.
        assert!(!on_this_host("203.0.113.77:5000".parse().unwrap()));
    }

    #[test]
    fn discovery_off_starts_nothing() {
        let mut unknown = UnknownCages::defaults(false);
        unknown.discovery = Discovery::Off;
        assert!(Responder::start(me("127.0.0.1:1"), &unknown)
            .unwrap()
            .is_none());
    }
}
