//! The messages between a cage and one of its worker processes, and their framing: each a
//! postcard body behind a length prefix ([`crate::transport::frame`]), over a Unix socket pair.
//!
//! A conversation: the worker says [`ToCage::Ready`] (or [`ToCage::LoadFailed`]) once; then,
//! per call, the cage sends [`ToWorker::Call`], the worker forwards each `Ctx` callback as a
//! [`ToCage::Callback`] (answered by one [`ToWorker::Answer`]) or a one-way [`ToCage::Log`],
//! and ends with [`ToCage::Done`].

use crate::transport::frame::{self, FrameError};
use serde::{Deserialize, Serialize};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Largest frame either side accepts: arguments, results and state values of one call.
pub const MAX_FRAME: usize = 1 << 30;

/// What the cage tells a worker.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToWorker {
    /// Run one method; the identity the module's `Ctx` reports comes with it.
    Call(CallStart),
    /// The answer to the worker's last callback: an ABI status and its bytes.
    Answer {
        /// [`cage_sdk::abi::status`] code.
        status: u32,
        /// The callback's output.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// One call's start: what the module's host context holds besides the callbacks.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct CallStart {
    /// Cage running the call.
    pub cage: String,
    /// Module called.
    pub module: String,
    /// Method called.
    pub method: String,
    /// Id of the call.
    pub call_id: String,
    /// Attempt number.
    pub attempt: u32,
    /// Invocation id (`CAGE/N`).
    pub invocation_id: String,
    /// Base URL of the cage's HTTP API.
    pub api_url: String,
    /// Token for the HTTP API while the call runs.
    pub api_token: String,
    /// Directory of the Python client.
    pub client_path: String,
    /// JSON arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

/// What a worker tells its cage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToCage {
    /// The module loaded: its descriptor's name, version and methods.
    Ready {
        /// Module name.
        name: String,
        /// Module version.
        version: String,
        /// Method names.
        methods: Vec<String>,
    },
    /// The module did not load; the worker exits after saying why.
    LoadFailed(String),
    /// A log line of the running call.
    Log {
        /// Level, as the ABI numbers it.
        level: u32,
        /// The message.
        msg: String,
    },
    /// A `Ctx` callback of the running call, to be served by the cage.
    Callback(Callback),
    /// The call ended: an ABI status and the module's output.
    Done {
        /// [`cage_sdk::abi::status`] code.
        status: u32,
        /// Result JSON or error JSON.
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// A host callback with its arguments, one variant per callback of the ABI.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Callback {
    /// `call`: a sync call of another cage or this one.
    Call {
        /// Target cage.
        cage: String,
        /// `module.method`.
        target: String,
        /// JSON arguments.
        #[serde(with = "serde_bytes")]
        args: Vec<u8>,
        /// Longest wait.
        timeout_ms: u64,
    },
    /// `enqueue`: a JSON enqueue request.
    Enqueue(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `add_job`: a JSON job request.
    AddJob(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `send_message`.
    Send {
        /// Target invocation.
        target: String,
        /// Port.
        port: String,
        /// The message.
        #[serde(with = "serde_bytes")]
        message: Vec<u8>,
        /// Longest wait.
        timeout_ms: u64,
    },
    /// `receive_message`: ports separated by NUL bytes.
    Receive {
        /// Ports.
        #[serde(with = "serde_bytes")]
        ports: Vec<u8>,
        /// Longest wait (`u64::MAX`: forever).
        timeout_ms: u64,
    },
    /// `state_get`.
    StateGet(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `state_put`.
    StatePut {
        /// Key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Value (ignored when absent).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// 1: set, 0: delete.
        present: u32,
    },
    /// `chain`: a JSON chain request.
    Chain(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// Sends one message.
pub fn send<T: Serialize>(w: &mut impl Write, message: &T) -> Result<(), FrameError> {
    frame::write_blocking(w, &frame::encode(message)?)
}

/// Receives one message.
pub fn receive<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    frame::decode(&frame::read_blocking(r, MAX_FRAME)?)
}

/// Sends what `fd` takes of `bytes` now, without blocking.
fn send_now(fd: std::os::fd::RawFd, bytes: &[u8]) -> std::io::Result<usize> {
    // SAFETY: a send of a live buffer on an open socket; it never blocks.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A worker's channel driven from the cage's event loop for one call: it reads and writes
/// without blocking (the socket itself stays blocking for the executor threads, which drive
/// it at other times), and stops watching the channel when dropped.
pub struct AsyncLink<'a> {
    fd: AsyncFd<BorrowedFd<'a>>,
    /// Bytes read and not yet taken: a worker may send several messages at once (logs).
    read: Vec<u8>,
    taken: usize,
}

impl<'a> AsyncLink<'a> {
    /// Watches `channel` from the running event loop.
    pub fn new(channel: &'a UnixStream) -> std::io::Result<Self> {
        // SAFETY: the descriptor is borrowed from `channel`, which outlives the link, so it
        // stays open and the same for as long as the event loop watches it.
        let fd = unsafe {
            AsyncFd::register_with_interest(
                channel.as_fd(),
                Interest::READABLE | Interest::WRITABLE,
            )
        }
        .map_err(|e| e.into_parts().1)?;
        Ok(AsyncLink {
            fd,
            read: Vec::new(),
            taken: 0,
        })
    }

    /// Sends one message: written at once while the socket takes it (as a worker waiting for
    /// its call always does), waiting for room only when it is full.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let frame = frame::encode(message)?;
        let mut sent = 0;
        while sent < frame.len() {
            match send_now(self.fd.get_ref().as_raw_fd(), &frame[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let mut ready = self.fd.writable().await?;
                    ready.clear_ready();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message.
    pub async fn receive<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        loop {
            if let Some(body) = self.whole_frame()? {
                return frame::decode(&body);
            }
            self.fill().await?;
        }
    }

    /// The next whole frame's body among the bytes read, if they hold one.
    fn whole_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let unread = &self.read[self.taken..];
        let Some(header) = unread.get(..frame::HEADER_LEN) else {
            return Ok(None);
        };
        let len = frame::check_len(header.try_into().unwrap_or_default(), MAX_FRAME)?;
        let Some(body) = unread.get(frame::HEADER_LEN..frame::HEADER_LEN + len) else {
            return Ok(None);
        };
        let body = body.to_vec();
        self.taken += frame::HEADER_LEN + len;
        if self.taken == self.read.len() {
            self.read.clear();
            self.taken = 0;
        }
        Ok(Some(body))
    }

    /// Reads what has arrived, waiting until something has.
    async fn fill(&mut self) -> Result<(), FrameError> {
        const CHUNK: usize = 64 * 1024;
        loop {
            let mut ready = self.fd.readable().await?;
            let at = self.read.len();
            self.read.resize(at + CHUNK, 0);
            let room = &mut self.read[at..];
            // SAFETY: a receive into a live buffer on an open socket; it never blocks.
            let got = ready.try_io(|fd| {
                let n = unsafe {
                    libc::recv(
                        fd.get_ref().as_raw_fd(),
                        room.as_mut_ptr().cast(),
                        room.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match got {
                Ok(Ok(0)) => {
                    self.read.truncate(at);
                    return Err(if at == self.taken {
                        FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
                    } else {
                        FrameError::Truncated
                    });
                }
                Ok(Ok(n)) => {
                    self.read.truncate(at + n);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    self.read.truncate(at);
                    return Err(e.into());
                }
                Err(_would_block) => self.read.truncate(at),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_a_socket_pair_whole() {
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let call = ToWorker::Call(CallStart {
            method: "fine".into(),
            args: b"{\"x\":1}".to_vec(),
            ..CallStart::default()
        });
        send(&mut a, &call).unwrap();
        assert_eq!(receive::<ToWorker>(&mut b).unwrap(), call);
        let back = ToCage::Callback(Callback::StatePut {
            key: b"k".to_vec(),
            value: vec![0; 70_000],
            present: 1,
        });
        send(&mut b, &back).unwrap();
        assert_eq!(receive::<ToCage>(&mut a).unwrap(), back);
        drop(b);
        assert!(receive::<ToCage>(&mut a).is_err());
    }

    #[tokio::test]
    async fn the_event_loop_drives_a_blocking_channel_and_leaves_it_blocking() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let call = ToWorker::Call(CallStart {
            args: vec![7; 300_000],
            ..CallStart::default()
        });
        let worker = std::thread::spawn(move || {
            let got = receive::<ToWorker>(&mut b).unwrap();
            // Two messages at once: the link keeps the second for the next receive.
            let mut both = frame::encode(&ToCage::Log {
                level: 3,
                msg: "one".into(),
            })
            .unwrap();
            both.extend(
                frame::encode(&ToCage::Done {
                    status: 0,
                    bytes: vec![2; 100_000],
                })
                .unwrap(),
            );
            b.write_all(&both).unwrap();
            let again = receive::<ToWorker>(&mut b).unwrap();
            drop(b);
            (got, again)
        });
        {
            let mut link = AsyncLink::new(&a).unwrap();
            link.send(&call).await.unwrap();
            assert_eq!(
                link.receive::<ToCage>().await.unwrap(),
                ToCage::Log {
                    level: 3,
                    msg: "one".into()
                }
            );
            assert_eq!(
                link.receive::<ToCage>().await.unwrap(),
                ToCage::Done {
                    status: 0,
                    bytes: vec![2; 100_000]
                }
            );
        }
        // The same channel, driven by a blocking thread after the link is gone.
        let mut a2 = a.try_clone().unwrap();
        send(&mut a2, &call).unwrap();
        let (got, again) = worker.join().unwrap();
        assert_eq!((got, again), (call.clone(), call));
        let mut link = AsyncLink::new(&a).unwrap();
        assert!(link.receive::<ToCage>().await.is_err());
    }
}
