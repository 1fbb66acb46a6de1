//! Driving one call in a worker from the cage's side: send the call, serve each callback the
//! worker forwards by calling the very host callbacks the in-process path gives a module, and
//! take the module's answer. The cage's [`HostContext`] is all it needs, so the call's scope
//! (state writes, chain continuation, invocation, token) stays in the cage, unchanged.

use super::wire::{self, CallStart, Callback, ToCage, ToWorker};
use crate::transport::frame::FrameError;
use cage_sdk::abi::{Bytes, HostContext, OwnedBytes};
use std::os::unix::net::UnixStream;

/// How long the cage's thread waits on the CPU for a worker's next word before it sleeps:
/// about a quick method's round trip, so a quick call costs no wake-up of this thread.
const ANSWER_SPIN: std::time::Duration = std::time::Duration::from_micros(50);

/// Why a conversation with a worker broke off.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The channel failed or closed: the worker died, or was killed.
    #[error("its channel broke: {0}")]
    Channel(#[from] FrameError),
    /// The worker said something out of turn.
    #[error("it said {0} in the middle of a call")]
    OutOfTurn(&'static str),
}

/// The text a host context view holds.
///
/// # Safety
/// `b` is a live view of the host context.
unsafe fn text(b: Bytes) -> String {
    // SAFETY: guaranteed by the caller.
    String::from_utf8_lossy(unsafe { b.as_slice() }).into_owned()
}

/// Runs `method` with `args` in the worker on `channel`, as `ctx` describes the call; answers
/// the ABI status and bytes the module gave.
pub fn converse(
    channel: &mut UnixStream,
    ctx: &HostContext,
    method: &str,
    args: &[u8],
) -> Result<(u32, Vec<u8>), Broken> {
    // SAFETY: the host context's views are live for the whole call.
    let start = unsafe {
        CallStart {
            cage: text(ctx.cage),
            module: text(ctx.module),
            method: method.to_owned(),
            call_id: text(ctx.call_id),
            attempt: ctx.attempt,
            invocation_id: text(ctx.invocation_id),
            api_url: text(ctx.api_url),
            api_token: text(ctx.api_token),
            client_path: text(ctx.client_path),
            args: args.to_vec(),
        }
    };
    wire::send(channel, &ToWorker::Call(start))?;
    loop {
        wire::spin_for_data(channel, ANSWER_SPIN);
        match wire::receive::<ToCage>(channel)? {
            ToCage::Done { status, bytes } => return Ok((status, bytes)),
            ToCage::Log { level, msg } => {
                // SAFETY: `ctx` is the running call's context; the view outlives the callback.
                unsafe { (ctx.log)(ctx.data, level, Bytes::from_slice(msg.as_bytes())) }
            }
            ToCage::Callback(callback) => {
                let (status, bytes) = serve(ctx, &callback);
                wire::send(channel, &ToWorker::Answer { status, bytes })?;
            }
            ToCage::Ready { .. } => return Err(Broken::OutOfTurn("Ready")),
            ToCage::LoadFailed(_) => return Err(Broken::OutOfTurn("LoadFailed")),
        }
    }
}

/// Serves one forwarded callback through the host's own function for it.
fn serve(ctx: &HostContext, callback: &Callback) -> (u32, Vec<u8>) {
    let b = Bytes::from_slice;
    let s = |t: &String| Bytes::from_slice(t.as_bytes());
    let mut out = OwnedBytes::empty();
    // SAFETY: `ctx` is the running call's context, its callbacks take live views and a
    // writable slot, which they fill with a buffer freed below with `ctx.free`.
    let status = unsafe {
        match callback {
            Callback::Call {
                cage,
                target,
                args,
                timeout_ms,
            } => (ctx.call)(ctx.data, s(cage), s(target), b(args), *timeout_ms, &mut out),
            Callback::Enqueue(request) => (ctx.enqueue)(ctx.data, b(request), &mut out),
            Callback::AddJob(request) => (ctx.add_job)(ctx.data, b(request), &mut out),
            Callback::Send {
                target,
                port,
                message,
                timeout_ms,
            } => (ctx.send_message)(
                ctx.data,
                s(target),
                s(port),
                b(message),
                *timeout_ms,
                &mut out,
            ),
            Callback::Receive { ports, timeout_ms } => {
                (ctx.receive_message)(ctx.data, b(ports), *timeout_ms, &mut out)
            }
            Callback::StateGet(key) => (ctx.state_get)(ctx.data, b(key), &mut out),
            Callback::StatePut {
                key,
                value,
                present,
            } => (ctx.state_put)(ctx.data, b(key), b(value), *present, &mut out),
            Callback::Chain(request) => (ctx.chain)(ctx.data, b(request), &mut out),
        }
    };
    // SAFETY: the host filled `out`; copy it, then hand it back to the host's allocator once.
    let bytes = unsafe { out.as_slice() }.to_vec();
    // SAFETY: as above.
    unsafe { (ctx.free)(out) };
    (status, bytes)
}
