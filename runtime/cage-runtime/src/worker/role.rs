//! The worker's side: the `cage worker` role. It loads one module version, says Ready, then
//! runs one call at a time, each with a host context whose callbacks are forwarded to the
//! cage over the channel on fd 3, so the module sees the same `Ctx` as in the cage itself.

use super::wire::{self, CallStart, Callback, ToCage, ToWorker};
use crate::loader::LoadedModule;
use cage_sdk::abi::{self, Bytes, HostContext, OwnedBytes};
use std::ffi::c_void;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The file descriptor the cage hands the worker its end of the channel on.
pub const CHANNEL_FD: i32 = 3;

/// Exit code of a worker whose module did not load.
pub const EXIT_LOAD_FAILED: i32 = 2;

/// Exit code of a worker that lost its cage (the channel broke, or the cage process ended).
pub const EXIT_CAGE_GONE: i32 = 70;

/// What a worker is started with.
#[derive(Debug, Clone)]
pub struct WorkerArgs {
    /// The module version's private copy.
    pub module_file: PathBuf,
    /// The module's name.
    pub module: String,
    /// The cage it works for (for its messages).
    pub cage: String,
}

/// The channel a running call's callbacks use.
struct Link(Mutex<UnixStream>);

impl Link {
    /// Sends `message`; a broken channel means the cage is gone, and so is the point of going on.
    fn tell(&self, message: &ToCage) {
        let mut channel = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if wire::send(&mut *channel, message).is_err() {
            std::process::exit(EXIT_CAGE_GONE);
        }
    }

    /// Sends a callback and waits for its answer, written into the module's slot `out`.
    ///
    /// # Safety
    /// `out` must be writable; the module frees it with this process's `free`.
    unsafe fn ask(&self, callback: Callback, out: *mut OwnedBytes) -> u32 {
        let mut channel = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let answer = wire::send(&mut *channel, &ToCage::Callback(callback))
            .and_then(|()| wire::receive::<ToWorker>(&mut *channel));
        let Ok(ToWorker::Answer { status, bytes }) = answer else {
            std::process::exit(EXIT_CAGE_GONE);
        };
        // SAFETY: guaranteed by the caller.
        unsafe { out.write(OwnedBytes::from_vec(bytes)) };
        status
    }
}

/// # Safety
/// `data` is the running call's [`Link`].
unsafe fn link<'a>(data: *const c_void) -> &'a Link {
    // SAFETY: the worker set `data` to the link of the call running this callback.
    unsafe { &*(data as *const Link) }
}

/// # Safety
/// `b` is a live view, as the ABI guarantees for a callback's arguments.
unsafe fn owned(b: Bytes) -> Vec<u8> {
    // SAFETY: guaranteed by the caller.
    unsafe { b.as_slice() }.to_vec()
}

/// # Safety
/// `b` is a live view.
unsafe fn text(b: Bytes) -> String {
    // SAFETY: guaranteed by the caller.
    String::from_utf8_lossy(unsafe { b.as_slice() }).into_owned()
}

unsafe extern "C" fn forward_log(data: *const c_void, level: u32, msg: Bytes) {
    // SAFETY: the ABI's contract for `log`.
    let (link, msg) = unsafe { (link(data), text(msg)) };
    link.tell(&ToCage::Log { level, msg });
}

unsafe extern "C" fn forward_call(
    data: *const c_void,
    cage: Bytes,
    target: Bytes,
    args: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `call`: live views, a writable slot.
    unsafe {
        let callback = Callback::Call {
            cage: text(cage),
            target: text(target),
            args: owned(args),
            timeout_ms,
        };
        link(data).ask(callback, out)
    }
}

unsafe extern "C" fn forward_enqueue(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `enqueue`.
    unsafe { link(data).ask(Callback::Enqueue(owned(request)), out) }
}

unsafe extern "C" fn forward_add_job(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `add_job`.
    unsafe { link(data).ask(Callback::AddJob(owned(request)), out) }
}

unsafe extern "C" fn forward_send(
    data: *const c_void,
    target: Bytes,
    port: Bytes,
    message: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `send_message`.
    unsafe {
        let callback = Callback::Send {
            target: text(target),
            port: text(port),
            message: owned(message),
            timeout_ms,
        };
        link(data).ask(callback, out)
    }
}

unsafe extern "C" fn forward_receive(
    data: *const c_void,
    ports: Bytes,
    timeout_ms: u64,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `receive_message`.
    unsafe {
        let callback = Callback::Receive {
            ports: owned(ports),
            timeout_ms,
        };
        link(data).ask(callback, out)
    }
}

unsafe extern "C" fn forward_state_get(
    data: *const c_void,
    key: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `state_get`.
    unsafe { link(data).ask(Callback::StateGet(owned(key)), out) }
}

unsafe extern "C" fn forward_state_put(
    data: *const c_void,
    key: Bytes,
    value: Bytes,
    present: u32,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `state_put`.
    unsafe {
        let callback = Callback::StatePut {
            key: owned(key),
            value: owned(value),
            present,
        };
        link(data).ask(callback, out)
    }
}

unsafe extern "C" fn forward_chain(
    data: *const c_void,
    request: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    // SAFETY: the ABI's contract for `chain`.
    unsafe { link(data).ask(Callback::Chain(owned(request)), out) }
}

/// Runs one call of `module` as `start` describes, its callbacks going over `link`.
fn run_call(module: &LoadedModule, link: &Link, start: &CallStart) -> ToCage {
    let b = |s: &String| Bytes::from_slice(s.as_bytes());
    let ctx = HostContext {
        abi_version: abi::ABI_VERSION,
        size: std::mem::size_of::<HostContext>() as u32,
        data: link as *const Link as *const c_void,
        cage: b(&start.cage),
        module: b(&start.module),
        method: b(&start.method),
        call_id: b(&start.call_id),
        log: forward_log,
        call: forward_call,
        free: cage_sdk::export::free_bytes,
        attempt: start.attempt,
        enqueue: forward_enqueue,
        add_job: forward_add_job,
        invocation_id: b(&start.invocation_id),
        send_message: forward_send,
        receive_message: forward_receive,
        api_url: b(&start.api_url),
        api_token: b(&start.api_token),
        client_path: b(&start.client_path),
        state_get: forward_state_get,
        state_put: forward_state_put,
        chain: forward_chain,
    };
    let (status, bytes) = module.call_raw(&ctx, &start.method, &start.args);
    ToCage::Done { status, bytes }
}

/// Ends this process if its cage ends: a worker busy in a module never reads the closed
/// channel, and an orphan would hold its memory and CPU for nothing. The watching thread
/// sleeps on a pidfd of the cage (woken only when it ends); a kernel without pidfds (before
/// Linux 5.3) has it look every half second instead.
fn follow_the_cage() {
    // SAFETY: getppid cannot fail.
    let parent = unsafe { libc::getppid() };
    // SAFETY: as above.
    let orphaned = move || unsafe { libc::getppid() } != parent;
    let _ = std::thread::Builder::new()
        .name("cage-worker-parent".to_owned())
        .spawn(move || {
            // The cage may have ended before its pidfd was opened (on another process that
            // took its number): only the parent check tells.
            let woken = pidfd_of(parent).is_some_and(|pidfd| orphaned() || readable(pidfd));
            while !woken && !orphaned() {
                std::thread::sleep(Duration::from_millis(500));
            }
            // SAFETY: ending the process at once, as its cage did.
            unsafe { libc::_exit(EXIT_CAGE_GONE) };
        });
}

/// A pidfd of process `pid`, if the kernel has them.
fn pidfd_of(pid: libc::pid_t) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags, and answers a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor just opened, owned by nothing else.
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Blocks until `fd` is readable (a pidfd: its process ended); false if it cannot wait.
fn readable(fd: std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd;
    let mut watched = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one live pollfd; no timeout.
        match unsafe { libc::poll(&mut watched, 1, -1) } {
            n if n > 0 => return true,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            _ => return false,
        }
    }
}

/// Serves as a worker until the cage closes the channel; returns the process's exit code.
pub fn serve(args: &WorkerArgs) -> i32 {
    // The module's println must not reach the channel or a terminal: stdout goes to stderr,
    // which the cage reads and logs.
    // SAFETY: duplicating standard descriptors of this process.
    unsafe { libc::dup2(2, 1) };
    // SAFETY: the cage hands the channel over on this descriptor, and nothing else owns it.
    let mut channel = unsafe { UnixStream::from_raw_fd(CHANNEL_FD) };
    follow_the_cage();
    let module = match LoadedModule::open_in_place(&args.module, &args.module_file) {
        Ok(m) => m,
        Err(e) => {
            let _ = wire::send(&mut channel, &ToCage::LoadFailed(e.to_string()));
            return EXIT_LOAD_FAILED;
        }
    };
    let ready = ToCage::Ready {
        name: module.name.clone(),
        version: module.version.clone(),
        methods: module.methods.clone(),
    };
    if wire::send(&mut channel, &ready).is_err() {
        return EXIT_CAGE_GONE;
    }
    let Ok(reader) = channel.try_clone() else {
        return EXIT_CAGE_GONE;
    };
    let link = Link(Mutex::new(channel));
    // Between calls the cage sends nothing but the next call, so a buffer never reads ahead
    // into the answers a call's callbacks take from the other handle.
    let mut reader = std::io::BufReader::new(reader);
    loop {
        match wire::receive::<ToWorker>(&mut reader) {
            Ok(ToWorker::Call(start)) => {
                let done = run_call(&module, &link, &start);
                link.tell(&done);
            }
            // An answer with no callback asked, or a broken frame: the cage is confused or
            // gone; either way this worker is done.
            Ok(ToWorker::Answer { .. }) | Err(_) => return 0,
        }
    }
}
