//! The lab's fault proxy: a TCP proxy in front of a cage that forwards, delays, drops, truncates
//! or cuts what passes, as told while it runs, and can cut every open connection at once. The
//! chaos suite breaks cage-to-cage and client connections with it in the middle of requests;
//! the end-to-end network tests put it between two cages.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the chunks of bytes it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward them.
    None,
    /// Forward them 20–150 ms late.
    Delay,
    /// Discard one, wait a little, and close the connection (a peer that vanished).
    Drop,
    /// Forward only the first half of one, then close (a frame cut mid-way).
    Truncate,
    /// Close the connection instead of forwarding.
    Cut,
}

/// Every fault, in the order the proxy counts them.
pub const FAULTS: [Fault; 5] = [
    Fault::None,
    Fault::Delay,
    Fault::Drop,
    Fault::Truncate,
    Fault::Cut,
];

fn index(fault: Fault) -> usize {
    match fault {
        Fault::None => 0,
        Fault::Delay => 1,
        Fault::Drop => 2,
        Fault::Truncate => 3,
        Fault::Cut => 4,
    }
}

/// What the proxy's threads share.
#[derive(Default)]
struct Shared {
    fault: AtomicU8,
    applied: [AtomicUsize; 5],
    open: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
    seed: AtomicU64,
}

/// A running proxy from a local port to one upstream address.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`, without
    /// faults until [`Proxy::set`] says otherwise.
    pub fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            seed: AtomicU64::new(0x5eed),
            ..Shared::default()
        });
        let threads = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if threads.stop.load(Ordering::Acquire) {
                    break;
                }
                let Ok(client) = client else { continue };
                // The cage may be down (killed): the client sees its connection closed.
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                if let (Ok(c), Ok(s)) = (client.try_clone(), server.try_clone()) {
                    threads
                        .open
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend([c, s]);
                }
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                        continue;
                    };
                    let shared = threads.clone();
                    let seed = threads.seed.fetch_add(0x9e37_79b9, Ordering::Relaxed);
                    std::thread::spawn(move || pump(from, to, &shared, seed));
                }
            }
        });
        Ok(Proxy { addr, shared })
    }

    /// Applies `fault` from now on, to one chunk in three (so some traffic still passes).
    pub fn set(&self, fault: Fault) {
        self.shared
            .fault
            .store(index(fault) as u8, Ordering::Relaxed);
    }

    /// How many chunks `fault` was applied to so far (`Fault::None`: forwarded as they were).
    pub fn applied(&self, fault: Fault) -> usize {
        self.shared.applied[index(fault)].load(Ordering::Relaxed)
    }

    /// Cuts every connection open through the proxy now; returns how many pairs it cut.
    pub fn cut(&self) -> usize {
        let mut open = self.shared.open.lock().unwrap_or_else(|p| p.into_inner());
        for s in open.iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        let n = open.len() / 2;
        open.clear();
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` until either side closes, applying the proxy's fault of the moment to
/// one chunk in three.
fn pump(mut from: TcpStream, mut to: TcpStream, shared: &Shared, seed: u64) {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let close = |a: &TcpStream, b: &TcpStream| {
        let _ = a.shutdown(Shutdown::Both);
        let _ = b.shutdown(Shutdown::Both);
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut kind = FAULTS[usize::from(shared.fault.load(Ordering::Relaxed)).min(4)];
        if kind != Fault::None && next() % 3 != 0 {
            kind = Fault::None;
        }
        shared.applied[index(kind)].fetch_add(1, Ordering::Relaxed);
        let forwarded = match kind {
            Fault::None => to.write_all(&buf[..n]),
            Fault::Delay => {
                std::thread::sleep(Duration::from_millis(20 + next() % 130));
                to.write_all(&buf[..n])
            }
            Fault::Drop => {
                std::thread::sleep(Duration::from_millis(50 + next() % 150));
                return close(&from, &to);
            }
            Fault::Truncate => {
                let _ = to.write_all(&buf[..n / 2]);
                return close(&from, &to);
            }
            Fault::Cut => return close(&from, &to),
        };
        if forwarded.is_err() {
            return close(&from, &to);
        }
    }
    // The sender finished: pass the end on, and let the other direction drain.
    let _ = to.shutdown(Shutdown::Write);
}
