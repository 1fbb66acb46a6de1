//! The discovery datagrams on the wire: a 4-byte magic, a version byte, then a JSON body.
//!
//! Pure encode and decode, nothing else: whatever arrives on the discovery port (another
//! program's datagrams, a newer version, a truncated or hostile packet) decodes to a
//! [`WireError`], never a panic. JSON keeps a datagram readable in a packet capture and lets a
//! later version add fields that this one ignores; a change that old readers must not
//! misread bumps [`VERSION`].

use crate::config::valid_name;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// First bytes of every discovery datagram.
pub const MAGIC: [u8; 4] = *b"CGDS";
/// Format version written and the only one read.
pub const VERSION: u8 = 1;
/// Largest datagram sent or read: fits one Ethernet frame, so it is never fragmented.
pub const MAX_DATAGRAM: usize = 1200;
/// Most addresses one answer may carry.
pub const MAX_ADDRESSES: usize = 16;
/// What a query asks for when it wants every cage of the cluster.
pub const EVERYONE: &str = "*";

/// "Who is cage `want`?", sent to the discovery group or broadcast address.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Only cages of this cluster answer.
    pub cluster: String,
    /// The cage wanted, or [`EVERYONE`].
    pub want: String,
    /// Echoed in answers, so answers to another (or an earlier) query are told apart.
    pub nonce: u64,
}

/// "I am cage `cage`, listening at `addresses`", sent back to the query's source.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The cluster of the query answered.
    pub cluster: String,
    /// The query's nonce.
    pub nonce: u64,
    /// The answering cage.
    pub cage: String,
    /// Where it listens; an unspecified IP (0.0.0.0) means "the address this answer came
    /// from".
    pub addresses: Vec<SocketAddr>,
    /// Whether it serves TLS (shown to operators; the asker's own config decides what it
    /// speaks, so a forged answer cannot turn TLS off).
    pub tls: bool,
    /// Its runtime version.
    pub version: String,
}

/// A decoded discovery datagram.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Datagram {
    /// A question.
    Query(Query),
    /// An answer to one.
    Answer(Answer),
}

/// Why a datagram was not read (or not written).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("{0} bytes is more than the {MAX_DATAGRAM} a discovery datagram may have")]
    TooLarge(usize),
    /// Does not start with [`MAGIC`]: another program's datagram.
    #[error("not a cages discovery datagram (no magic)")]
    Foreign,
    /// A version this cage does not read.
    #[error("discovery format version {0}, this cage reads version {VERSION}")]
    Version(u8),
    /// The body is not the JSON of a datagram.
    #[error("malformed discovery datagram: {0}")]
    Malformed(String),
    /// Well-formed, but a field is unusable.
    #[error("invalid discovery datagram: {0}")]
    Invalid(&'static str),
}

/// The bytes of `datagram`, or why it cannot be sent.
pub fn encode(datagram: &Datagram) -> Result<Vec<u8>, WireError> {
    check(datagram)?;
    let mut bytes = MAGIC.to_vec();
    bytes.push(VERSION);
    serde_json::to_writer(&mut bytes, datagram).map_err(|e| WireError::Malformed(e.to_string()))?;
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// The datagram in `bytes`, or why it is ignored.
pub fn decode(bytes: &[u8]) -> Result<Datagram, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let body = bytes.strip_prefix(&MAGIC).ok_or(WireError::Foreign)?;
    let (&version, body) = body
        .split_first()
        .ok_or(WireError::Malformed("ends after the magic".to_owned()))?;
    if version != VERSION {
        return Err(WireError::Version(version));
    }
    let datagram: Datagram =
        serde_json::from_slice(body).map_err(|e| WireError::Malformed(e.to_string()))?;
    check(&datagram)?;
    Ok(datagram)
}

/// Names must be names and an answer must say where to go; a receiver relies on both.
fn check(datagram: &Datagram) -> Result<(), WireError> {
    match datagram {
        Datagram::Query(q) => {
            if !valid_name(&q.cluster) {
                return Err(WireError::Invalid("cluster is not a name"));
            }
            if q.want != EVERYONE && !valid_name(&q.want) {
                return Err(WireError::Invalid(
                    "wanted cage is neither a name nor \"*\"",
                ));
            }
        }
        Datagram::Answer(a) => {
            if !valid_name(&a.cluster) {
                return Err(WireError::Invalid("cluster is not a name"));
            }
            if !valid_name(&a.cage) {
                return Err(WireError::Invalid("cage is not a name"));
            }
            if a.addresses.is_empty() || a.addresses.len() > MAX_ADDRESSES {
                return Err(WireError::Invalid("an answer carries 1 to 16 addresses"));
            }
            if a.addresses.iter().any(|s| s.port() == 0) {
                return Err(WireError::Invalid("an address has port 0"));
            }
            if a.version.len() > 64 {
                return Err(WireError::Invalid("version is longer than 64 bytes"));
            }
        }
    }
    Ok(())
}

/// Where an answer says its cage listens, as seen from the asker: an unspecified IP becomes
/// the IP the answer came `from` (the cage listens on every interface, and that one reached
/// us). Duplicates are dropped, the order kept.
pub fn reachable_addresses(answer: &Answer, from: SocketAddr) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(answer.addresses.len());
    for a in &answer.addresses {
        let a = if a.ip().is_unspecified() {
            SocketAddr::new(from.ip(), a.port())
        } else {
            *a
        };
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn answer() -> Answer {
        Answer {
            cluster: "cages".into(),
            nonce: 7,
            cage: "billing".into(),
            addresses: vec!["127.0.0.3:7401".parse().unwrap()],
            tls: false,
            version: "0.1.0".into(),
        }
    }

    #[test]
    fn queries_and_answers_round_trip() {
        for d in [
            Datagram::Query(Query {
                cluster: "cages".into(),
                want: EVERYONE.into(),
                nonce: u64::MAX,
            }),
            Datagram::Query(Query {
                cluster: "test-1".into(),
                want: "billing".into(),
                nonce: 0,
            }),
            Datagram::Answer(answer()),
        ] {
            let bytes = encode(&d).unwrap();
            assert!(bytes.starts_with(b"CGDS\x01{"), "{bytes:?}");
            assert_eq!(decode(&bytes).unwrap(), d);
        }
    }

    #[test]
    fn foreign_other_versions_and_oversized_datagrams_are_refused() {
        let good = encode(&Datagram::Answer(answer())).unwrap();
        assert_eq!(decode(b"M-SEARCH * HTTP/1.1\r\n"), Err(WireError::Foreign));
        assert_eq!(decode(b""), Err(WireError::Foreign));
        assert!(matches!(decode(b"CGDS"), Err(WireError::Malformed(_))));
        let mut v2 = good.clone();
        v2[4] = 2;
        assert_eq!(decode(&v2), Err(WireError::Version(2)));
        assert!(matches!(
            decode(&good[..good.len() - 1]),
            Err(WireError::Malformed(_))
        ));
        let mut big = good.clone();
        big.resize(MAX_DATAGRAM + 1, b' ');
        assert_eq!(decode(&big), Err(WireError::TooLarge(MAX_DATAGRAM + 1)));
        // Trailing spaces are still valid JSON, within the limit.
        big.truncate(MAX_DATAGRAM);
        assert!(decode(&big).is_ok());
    }

    #[test]
    fn unusable_fields_are_refused_both_ways() {
        let bad = |f: fn(&mut Answer)| {
            let mut a = answer();
            f(&mut a);
            Datagram::Answer(a)
        };
        for d in [
            bad(|a| a.cage = "no/such".into()),
            bad(|a| a.cage = EVERYONE.into()),
            bad(|a| a.cluster = String::new()),
            bad(|a| a.addresses.clear()),
            bad(|a| a.addresses = vec!["127.0.0.1:1".parse().unwrap(); 17]),
            bad(|a| a.addresses = vec!["127.0.0.1:0".parse().unwrap()]),
            bad(|a| a.version = "x".repeat(65)),
            Datagram::Query(Query {
                cluster: "cages".into(),
                want: "a b".into(),
                nonce: 1,
            }),
        ] {
            assert!(matches!(encode(&d), Err(WireError::Invalid(_))), "{d:?}");
            // A sender that skips the checks is refused by the receiver all the same.
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend(serde_json::to_vec(&d).unwrap());
            assert!(
                matches!(decode(&bytes), Err(WireError::Invalid(_))),
                "{d:?}"
            );
        }
    }

    #[test]
    fn newer_fields_are_ignored() {
        let body = br#"{"kind":"query","cluster":"cages","want":"*","nonce":3,"since":"v2"}"#;
        let mut bytes = MAGIC.to_vec();
        bytes.push(VERSION);
        bytes.extend_from_slice(body);
        assert!(matches!(decode(&bytes), Ok(Datagram::Query(q)) if q.nonce == 3));
    }

    #[test]
    fn an_unspecified_address_is_the_one_the_answer_came_from() {
        let mut a = answer();
        a.addresses = vec![
            "0.0.0.0:7401".parse().unwrap(),
            "10.0.0.5:7401".parse().unwrap(),
            "10.0.0.5:7401".parse().unwrap(),
        ];
        let from: SocketAddr = "10.0.0.5:40000".parse().unwrap();
        assert_eq!(
            reachable_addresses(&a, from),
            vec!["10.0.0.5:7401".parse::<SocketAddr>().unwrap()]
        );
        a.addresses = vec!["127.0.0.3:9".parse().unwrap()];
        assert_eq!(
            reachable_addresses(&a, from),
            vec!["127.0.0.3:9".parse::<SocketAddr>().unwrap()]
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_bytes_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_body_after_the_magic_decodes_or_fails(body in "(?s).{0,300}") {
            let mut bytes = MAGIC.to_vec();
            bytes.push(VERSION);
            bytes.extend_from_slice(body.as_bytes());
            if let Ok(d) = decode(&bytes) {
                prop_assert!(check(&d).is_ok());
            }
        }

        #[test]
        fn answers_round_trip(cage in "[a-z0-9_-]{1,64}", nonce in any::<u64>(), tls in any::<bool>(),
                              ports in proptest::collection::vec(1u16.., 1..=16)) {
            let a = Answer {
                cluster: "c".into(),
                nonce,
                cage,
                addresses: ports.iter().map(|p| SocketAddr::from(([127, 0, 0, 1], *p))).collect(),
                tls,
                version: "0.1.0".into(),
            };
            let d = Datagram::Answer(a);
            let bytes = encode(&d).unwrap();
            prop_assert!(bytes.len() <= MAX_DATAGRAM);
            prop_assert_eq!(decode(&bytes).unwrap(), d);
        }
    }
}
