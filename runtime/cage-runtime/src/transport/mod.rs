//! Talking to a cage over TCP: length-prefixed frames carrying serde-encoded requests. The
//! listener that serves them sits above, beside the dispatcher (`crate::listener`).
//!
//! - [`frame`]: the wire form, a 4-byte big-endian length then a postcard body, with a size cap.
//! - [`protocol`]: what the frames carry (requests, responses, module listings).
//! - [`client`]: a blocking client, used by the CLI, by benchmarks and by module calls.
//! - [`credential`]: the site credential a plain TCP connection opens with (challenge-response).
//! - [`pool`]: idle client connections kept per cage and route, and reused.
//! - [`tls`]: mutual TLS against the cluster CA, and the identity this process shows.
//! - [`budget`]: bytes of frames in flight, per connection and per cage.
//! - [`waits`]: how many waiting requests a connection and the cage may hold.

pub mod budget;
pub mod client;
pub mod credential;
pub mod frame;
pub mod pool;
pub mod protocol;
pub mod tls;
pub mod waits;
