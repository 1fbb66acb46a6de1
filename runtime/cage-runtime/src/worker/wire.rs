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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread::ThreadId;
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
fn send_now(fd: RawFd, bytes: &[u8]) -> std::io::Result<usize> {
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

/// A descriptor the event loop watches; the [`Channel`] holding it keeps it open for as
/// long as the watch lives.
struct Watched(RawFd);

impl AsRawFd for Watched {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl AsFd for Watched {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the channel's socket owns the descriptor and outlives its watch.
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}

/// The cage's end of a worker's channel, driven either by a blocking thread or from the
/// cage's event loop, a call at a time: the socket stays blocking, reads are buffered (a
/// worker may send several messages at once), and the event loop that first drove it keeps
/// watching it, so a call driven from there costs no registration.
pub struct Channel {
    /// The event loop's watch, with the thread it was made on; dropped before `stream`.
    watched: Option<(ThreadId, AsyncFd<Watched>)>,
    stream: UnixStream,
    inbox: Inbox,
}

/// Bytes read from a channel and not yet taken.
#[derive(Default)]
struct Inbox {
    read: Vec<u8>,
    taken: usize,
}

/// How much one read asks the socket for.
const CHUNK: usize = 64 * 1024;

impl Inbox {
    /// The next whole message among the bytes read, if they hold one.
    fn whole_message<T: serde::de::DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let unread = &self.read[self.taken..];
        let Some(header) = unread.get(..frame::HEADER_LEN) else {
            return Ok(None);
        };
        let len = frame::check_len(header.try_into().unwrap_or_default(), MAX_FRAME)?;
        let Some(body) = unread.get(frame::HEADER_LEN..frame::HEADER_LEN + len) else {
            return Ok(None);
        };
        let message = frame::decode(body)?;
        self.taken += frame::HEADER_LEN + len;
        if self.taken == self.read.len() {
            self.read.clear();
            self.taken = 0;
        }
        Ok(Some(message))
    }

    /// Appends what `read` puts into fresh room at the buffer's end; the end of the stream
    /// is an error (mid-frame or not).
    fn read_with(
        &mut self,
        read: impl FnOnce(&mut [std::mem::MaybeUninit<u8>]) -> std::io::Result<usize>,
    ) -> Result<(), FrameError> {
        if self.taken > 0 {
            self.read.drain(..self.taken);
            self.taken = 0;
        }
        self.read.reserve(CHUNK);
        let at = self.read.len();
        let n = read(&mut self.read.spare_capacity_mut()[..CHUNK])?;
        if n == 0 {
            return Err(if at == 0 {
                FrameError::Io(std::io::ErrorKind::UnexpectedEof.into())
            } else {
                FrameError::Truncated
            });
        }
        // SAFETY: the receive initialised the first `n` bytes of the spare capacity.
        unsafe { self.read.set_len(at + n) };
        Ok(())
    }
}

impl Channel {
    /// The cage's end of a fresh socket pair.
    pub fn new(stream: UnixStream) -> Self {
        Channel {
            watched: None,
            stream,
            inbox: Inbox::default(),
        }
    }

    /// The socket, for its timeouts.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends one message, blocking while the socket is full.
    pub fn send_blocking<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        frame::write_blocking(&mut self.stream, &frame::encode(message)?)
    }

    /// Receives one message, blocking until it is whole (the socket's read timeout applies).
    pub fn receive_blocking<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        loop {
            if let Some(message) = self.inbox.whole_message()? {
                return Ok(message);
            }
            let fd = self.stream.as_raw_fd();
            loop {
                match self.inbox.read_with(|room| recv(fd, room, 0)) {
                    Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    other => break other?,
                }
            }
        }
    }

    /// Sends one message from the event loop: written at once while the socket takes it (as
    /// a worker waiting for its call always does), waiting for room only when it is full.
    pub async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let frame = frame::encode(message)?;
        let mut sent = 0;
        while sent < frame.len() {
            match send_now(self.stream.as_raw_fd(), &frame[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let watched = watch(&mut self.watched, &self.stream)?;
                    let mut ready = watched.writable().await?;
                    ready.clear_ready();
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Receives one message from the event loop.
    pub async fn receive<T: serde::de::DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        loop {
            if let Some(message) = self.inbox.whole_message()? {
                return Ok(message);
            }
            self.fill().await?;
        }
    }

    /// Reads what has arrived, waiting on the event loop until something has (the watch
    /// reports what arrived while nobody waited: when it is made, and as it arrives).
    async fn fill(&mut self) -> Result<(), FrameError> {
        let watched = watch(&mut self.watched, &self.stream)?;
        let inbox = &mut self.inbox;
        let fd = self.stream.as_raw_fd();
        loop {
            let mut ready = watched.readable().await?;
            match inbox.read_with(|room| recv(fd, room, libc::MSG_DONTWAIT)) {
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                }
                other => return other,
            }
        }
    }
}

/// The event loop's watch of `stream`, made on its first use on this thread.
fn watch<'a>(
    watched: &'a mut Option<(ThreadId, AsyncFd<Watched>)>,
    stream: &UnixStream,
) -> std::io::Result<&'a AsyncFd<Watched>> {
    let here = std::thread::current().id();
    if watched.as_ref().is_some_and(|(on, _)| *on != here) {
        // Made by another event loop: that one stops watching before this one starts.
        *watched = None;
    }
    let (_, fd) = match watched {
        Some(made) => made,
        None => {
            // SAFETY: the descriptor stays open and the same while watched: the watch is
            // dropped before the socket that owns it (field order of `Channel`).
            let fd = unsafe {
                AsyncFd::register_with_interest(
                    Watched(stream.as_raw_fd()),
                    Interest::READABLE | Interest::WRITABLE,
                )
            }
            .map_err(|e| e.into_parts().1)?;
            watched.insert((here, fd))
        }
    };
    Ok(fd)
}

/// Receives into `room` from the socket `fd`.
fn recv(fd: RawFd, room: &mut [std::mem::MaybeUninit<u8>], flags: i32) -> std::io::Result<usize> {
    // SAFETY: a receive into live, writable memory on an open socket.
    let n = unsafe { libc::recv(fd, room.as_mut_ptr().cast(), room.len(), flags) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
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
    async fn a_channel_serves_the_event_loop_and_blocking_threads_in_turn() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let call = ToWorker::Call(CallStart {
            args: vec![7; 300_000],
            ..CallStart::default()
        });
        let done = |n| ToCage::Done {
            status: 0,
            bytes: vec![2; n],
        };
        let worker = std::thread::spawn(move || {
            let got = receive::<ToWorker>(&mut b).unwrap();
            // Two messages at once: the channel keeps the second for the next receive.
            let mut both = frame::encode(&ToCage::Log {
                level: 3,
                msg: "one".into(),
            })
            .unwrap();
            both.extend(frame::encode(&done(100_000)).unwrap());
            b.write_all(&both).unwrap();
            let again = receive::<ToWorker>(&mut b).unwrap();
            send(&mut b, &done(5)).unwrap();
            drop(b);
            (got, again)
        });
        let mut channel = Channel::new(a);
        channel.send(&call).await.unwrap();
        let log = ToCage::Log {
            level: 3,
            msg: "one".into(),
        };
        assert_eq!(channel.receive::<ToCage>().await.unwrap(), log);
        assert_eq!(channel.receive::<ToCage>().await.unwrap(), done(100_000));
        // The same channel driven by a blocking thread while the event loop still watches it.
        let again = call.clone();
        let mut channel = tokio::task::spawn_blocking(move || {
            channel.send_blocking(&again).unwrap();
            assert_eq!(channel.receive_blocking::<ToCage>().unwrap(), done(5));
            channel
        })
        .await
        .unwrap();
        let (got, again) = worker.join().unwrap();
        assert_eq!((got, again), (call.clone(), call));
        // Back on the event loop: the worker is gone, and the channel says so.
        assert!(channel.receive::<ToCage>().await.is_err());
    }
}
