//! [`Address`]: where one instance of a cage listens, as the cluster map names it: an IP address
//! and port, or a DNS name and port that is resolved again at every connect (so an instance that
//! moved, such as a restarted pod behind a stable name, is found at its new address).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// An instance's address in the cluster map.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A fixed IP address and port.
    Ip(SocketAddr),
    /// A DNS name and port, looked up at each connect.
    Name {
        /// The host name.
        host: String,
        /// The port.
        port: u16,
    },
}

impl Address {
    /// Reads `IP:PORT`, `[IPv6]:PORT` or `NAME:PORT`; `None` if it is none of them.
    pub fn parse(text: &str) -> Option<Address> {
        if let Ok(ip) = text.parse::<SocketAddr>() {
            return Some(Address::Ip(ip));
        }
        let (host, port) = text.rsplit_once(':')?;
        let port: u16 = port.parse().ok()?;
        valid_host(host).then(|| Address::Name {
            host: host.to_ascii_lowercase(),
            port,
        })
    }

    /// The socket addresses it stands for now (a name is looked up each time).
    pub fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        match self {
            Address::Ip(ip) => Ok(vec![*ip]),
            Address::Name { host, port } => {
                let found: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs()?.collect();
                if found.is_empty() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{host} has no address"),
                    ));
                }
                Ok(found)
            }
        }
    }
}

impl From<SocketAddr> for Address {
    fn from(ip: SocketAddr) -> Self {
        Address::Ip(ip)
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => write!(f, "{ip}"),
            Address::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// A DNS host name: dot-separated labels of letters, digits and '-' (not at either end of a
/// label), each at most 63 characters, 253 in all.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ips_and_names_parse_and_print_back() {
        for text in [
            "127.0.0.1:7401",
            "[::1]:7401",
            "billing-0.billing.svc:7401",
            "localhost:1",
        ] {
            assert_eq!(Address::parse(text).unwrap().to_string(), text);
        }
        assert!(
            matches!(Address::parse("LocalHost:9"), Some(Address::Name { ref host, port: 9 }) if host == "localhost")
        );
        for bad in [
            "nowhere",
            "host:",
            "host:99999",
            ":80",
            "-bad.host:1",
            "a..b:1",
            "sp ace:1",
            "a_b:1",
        ] {
            assert_eq!(Address::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_name_is_looked_up_and_an_ip_is_not() {
        let ip: SocketAddr = "127.0.0.1:7401".parse().unwrap();
        assert_eq!(Address::Ip(ip).resolve().unwrap(), vec![ip]);
        let local = Address::parse("localhost:7401").unwrap().resolve().unwrap();
        assert!(
            local
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7401),
            "{local:?}"
        );
        assert!(Address::parse("no-such-host.invalid:1")
            .unwrap()
            .resolve()
            .is_err());
    }
}
