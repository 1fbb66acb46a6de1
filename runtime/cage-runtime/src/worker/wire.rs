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

/// Threads of this process spinning in [`spin_for_data`] now.
static SPINNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits up to `spin` on the CPU for a byte to read on `channel`, without sleeping: a worker
/// that answers within it spares its cage a wake-up from sleep, which costs more than a short
/// call (tens of µs on a virtual machine). Returns at once when data is there or `spin` is up,
/// and does not spin at all while another thread does: with many calls at once the CPU is
/// better left to the workers.
pub fn spin_for_data(channel: &std::os::unix::net::UnixStream, spin: std::time::Duration) {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;
    if SPINNING.fetch_add(1, Ordering::AcqRel) > 0 {
        SPINNING.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            SPINNING.fetch_sub(1, Ordering::AcqRel);
        }
    }
    let _done = Done;
    let fd = channel.as_raw_fd();
    let started = std::time::Instant::now();
    let mut byte = 0u8;
    loop {
        // SAFETY: a one-byte peek into a live local buffer on an open socket; it reads
        // nothing off the stream and never blocks.
        let got = unsafe {
            libc::recv(
                fd,
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        // Data (or end of stream, or an error) is for the blocking read to take.
        if got >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
            return;
        }
        if started.elapsed() >= spin {
            return;
        }
        std::hint::spin_loop();
    }
}

/// Receives one message.
pub fn receive<T: serde::de::DeserializeOwned>(r: &mut impl Read) -> Result<T, FrameError> {
    frame::decode(&frame::read_blocking(r, MAX_FRAME)?)
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
}
