//! Driving one call in a worker from the cage's side: send the call, serve each callback the
//! worker forwards by calling the very host callbacks the in-process path gives a module, and
//! take the module's answer. The call's host context is all it needs, so the call's scope
//! (state writes, chain continuation, invocation, token) stays in the cage, unchanged.
//!
//! An executor thread drives a call with [`converse`], blocking; the event loop drives one
//! with [`converse_async`] when a worker is idle the moment the call comes (no thread between
//! the call and its worker), serving the callbacks on blocking threads, as they may wait.

use super::wire::{CallStart, Callback, Channel, ToCage, ToWorker};
use crate::blocking::Lane;
use crate::host::CallScope;
use crate::transport::frame::FrameError;
use cage_sdk::abi::{Bytes, HostContext, OwnedBytes};

/// Callbacks of calls driven from the event loop, served while their worker waits: at most
/// one per worker, so this bounds only what a cage with very many workers holds at once.
static CALLBACKS: Lane = Lane::new("module callbacks", 256);

/// Why a conversation with a worker broke off.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// The channel failed or closed: the worker died, or was killed.
    #[error("its channel broke: {0}")]
    Channel(#[from] FrameError),
    /// The worker said something out of turn.
    #[error("it said {0} in the middle of a call")]
    OutOfTurn(&'static str),
    /// The cage could not serve a callback (its thread failed); the worker is left waiting.
    #[error("the cage could not serve its callback: {0}")]
    Host(String),
}

/// The text a host context view holds.
///
/// # Safety
/// `b` is a live view of the host context.
unsafe fn text(b: Bytes) -> String {
    // SAFETY: guaranteed by the caller.
    String::from_utf8_lossy(unsafe { b.as_slice() }).into_owned()
}

/// What the worker needs to run `method` with `args` as `ctx` describes the call.
fn start_of(ctx: &HostContext, method: &str, args: &[u8]) -> CallStart {
    // SAFETY: the host context's views are live while it is.
    unsafe {
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
    }
}

/// Logs a worker's log line as the call's own.
fn log(ctx: &HostContext, level: u32, msg: &str) {
    // SAFETY: `ctx` is the running call's context; the view outlives the callback.
    unsafe { (ctx.log)(ctx.data, level, Bytes::from_slice(msg.as_bytes())) }
}

/// Runs `method` with `args` in the worker on `channel`, as `ctx` describes the call;
/// answers the ABI status and bytes the module gave.
pub fn converse(
    channel: &mut Channel,
    ctx: &HostContext,
    method: &str,
    args: &[u8],
) -> Result<(u32, Vec<u8>), Broken> {
    channel.send_blocking(&ToWorker::Call(start_of(ctx, method, args)))?;
    loop {
        match channel.receive_blocking::<ToCage>()? {
            ToCage::Done { status, bytes } => return Ok((status, bytes)),
            ToCage::Log { level, msg } => log(ctx, level, &msg),
            ToCage::Callback(callback) => {
                let (status, bytes) = serve(ctx, &callback);
                channel.send_blocking(&ToWorker::Answer { status, bytes })?;
            }
            ToCage::Ready { .. } => return Err(Broken::OutOfTurn("Ready")),
            ToCage::LoadFailed(_) => return Err(Broken::OutOfTurn("LoadFailed")),
        }
    }
}

/// [`converse`] from the event loop, in the call `scope`; answers the scope back (gone only
/// if serving a callback failed) with the module's status and bytes.
pub async fn converse_async(
    channel: &mut Channel,
    mut scope: Box<CallScope>,
    method: &str,
    args: &[u8],
) -> (Option<Box<CallScope>>, Result<(u32, Vec<u8>), Broken>) {
    let start = scope.with_context(|ctx| start_of(ctx, method, args));
    if let Err(e) = channel.send(&ToWorker::Call(start)).await {
        return (Some(scope), Err(e.into()));
    }
    loop {
        let said = match channel.receive::<ToCage>().await {
            Ok(said) => said,
            Err(e) => return (Some(scope), Err(e.into())),
        };
        match said {
            ToCage::Done { status, bytes } => return (Some(scope), Ok((status, bytes))),
            ToCage::Log { level, msg } => scope.with_context(|ctx| log(ctx, level, &msg)),
            ToCage::Callback(callback) => {
                let (back, (status, bytes)) = match serve_off_loop(scope, callback).await {
                    Ok(served) => served,
                    Err(e) => return (None, Err(Broken::Host(e))),
                };
                scope = back;
                if let Err(e) = channel.send(&ToWorker::Answer { status, bytes }).await {
                    return (Some(scope), Err(e.into()));
                }
            }
            ToCage::Ready { .. } => return (Some(scope), Err(Broken::OutOfTurn("Ready"))),
            ToCage::LoadFailed(_) => return (Some(scope), Err(Broken::OutOfTurn("LoadFailed"))),
        }
    }
}

/// Serves `callback` of the call `scope` on a blocking thread (it may wait: for a call, a
/// message, its children), and hands the scope back with the answer.
async fn serve_off_loop(
    scope: Box<CallScope>,
    callback: Callback,
) -> Result<(Box<CallScope>, (u32, Vec<u8>)), String> {
    let job = move || {
        let answer = scope.with_context(|ctx| serve(ctx, &callback));
        (scope, answer)
    };
    if CALLBACKS.free() > 0 {
        return CALLBACKS.run(job).await.map_err(|e| e.to_string());
    }
    // Every lane thread is taken (by callbacks waiting on other calls, perhaps this one's
    // children): a thread of its own, so no callback ever waits behind those it may unblock.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("cage-callback".to_owned())
        .spawn(move || {
            let _ = tx.send(job());
        })
        .map_err(|e| format!("cannot start a thread for it: {e}"))?;
    rx.await
        .map_err(|_| "its thread ended without an answer".to_owned())
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
