//! One worker process: starting it (the `cage` binary in its `worker` role, its end of the
//! channel on fd 3, its stderr read line by line into the cage's log), and reaping it.

use super::exit::Death;
use super::role::CHANNEL_FD;
use super::wire::{Channel, ToCage};
use crate::loader::library::Described;
use std::collections::VecDeque;
use std::io::BufRead;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Lines of a worker's stderr kept for the report of its death.
const LAST_WORDS: usize = 20;

/// How long a dead worker's last lines may take to arrive (a child process of the module may
/// hold its stderr open for longer; the report then goes without them).
const LAST_WORDS_WAIT: Duration = Duration::from_millis(500);

/// How long a worker whose channel broke may take to end before it is killed.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// How to start a module version's worker.
#[derive(Debug, Clone)]
pub struct Spawn {
    /// The `cage` binary.
    pub exe: PathBuf,
    /// The cage's name.
    pub cage: String,
    /// The module's name.
    pub module: String,
    /// The version's private copy.
    pub copy: PathBuf,
    /// Address space limit, in bytes.
    pub memory_limit: Option<u64>,
}

/// The last lines a worker wrote to stderr (backtrace frames left out), and whether its
/// stderr has closed.
#[derive(Default)]
struct Tail {
    lines: Mutex<(VecDeque<String>, bool)>,
    ended: Condvar,
}

/// Whether `line` is part of a backtrace (its frames, its header and its note), which says
/// nothing an operator reads in a one-line error.
fn backtrace_line(line: &str) -> bool {
    let t = line.trim_start();
    let frame = t
        .split_once(": ")
        .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    frame
        || t.starts_with("at ")
        || t.starts_with("stack backtrace:")
        || t.starts_with("note: Some details are omitted")
        || t.starts_with("note: run with `RUST_BACKTRACE=1`")
}

impl Tail {
    fn push(&self, line: String) {
        if backtrace_line(&line) {
            return;
        }
        let mut t = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        if t.0.len() == LAST_WORDS {
            t.0.pop_front();
        }
        t.0.push_back(line);
    }

    fn end(&self) {
        self.lines.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.ended.notify_all();
    }

    /// The last lines, once stderr closed or after a short wait.
    fn last(&self) -> Vec<String> {
        let t = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let (t, _) = self
            .ended
            .wait_timeout_while(t, LAST_WORDS_WAIT, |t| !t.1)
            .unwrap_or_else(|p| p.into_inner());
        t.0.iter().cloned().collect()
    }
}

/// A running worker process and the cage's end of its channel.
pub struct Worker {
    /// Its process id.
    pub pid: u32,
    /// The cage's end of the channel.
    pub channel: Channel,
    /// Set when the watchdog killed it at its call's deadline.
    pub killed: Arc<AtomicBool>,
    /// What its module said of itself once loaded.
    pub described: Described,
    child: Child,
    tail: Arc<Tail>,
}

/// How a worker failed to become ready.
#[derive(Debug)]
pub enum StartFailure {
    /// It could not be started at all.
    Spawn(std::io::Error),
    /// It started and said its module does not load.
    Load(String),
    /// It died (or was killed at the deadline) before saying Ready.
    Died(Death, Vec<String>),
    /// It answered something other than Ready.
    Confused(String),
}

impl std::fmt::Display for StartFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartFailure::Spawn(e) => write!(f, "cannot start a worker process: {e}"),
            StartFailure::Load(e) => write!(f, "its worker cannot load it: {e}"),
            StartFailure::Died(death, words) => {
                write!(f, "its worker died while loading it ({death})")?;
                last_words(f, words)
            }
            StartFailure::Confused(e) => write!(f, "its worker answered strangely: {e}"),
        }
    }
}

/// Appends a worker's last lines to a message.
pub fn last_words(f: &mut impl std::fmt::Write, words: &[String]) -> std::fmt::Result {
    let said: Vec<&str> = words
        .iter()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty())
        .collect();
    if said.is_empty() {
        return Ok(());
    }
    let from = said.len().saturating_sub(3);
    write!(f, "; its last words: {}", said[from..].join(" | "))
}

/// Reads a worker's stderr: each line goes to the cage's log and the tail.
fn read_stderr(stderr: std::process::ChildStderr, tail: Arc<Tail>, module: String, pid: u32) {
    let _ = std::thread::Builder::new()
        .name("cage-worker-stderr".to_owned())
        .spawn(move || {
            // Bytes, not text: a module may write anything, and one bad byte must not end
            // the reading (the worker would then block on a full pipe).
            for line in std::io::BufReader::new(stderr).split(b'\n') {
                let Ok(line) = line else { break };
                let line = String::from_utf8_lossy(&line).into_owned();
                tracing::info!(target: "module", module = %module, pid, "{line}");
                tail.push(line);
            }
            tail.end();
        });
}

impl Worker {
    /// Starts a worker as `spawn` says and waits for it to say Ready, until `deadline`.
    pub fn start(spawn: &Spawn, deadline: Instant) -> Result<Worker, StartFailure> {
        let (ours, theirs) = UnixStream::pair().map_err(StartFailure::Spawn)?;
        let fd = theirs.as_raw_fd();
        let mut command = Command::new(&spawn.exe);
        command
            .arg("worker")
            .arg("--module-file")
            .arg(&spawn.copy)
            .arg("--module")
            .arg(&spawn.module)
            .arg("--cage")
            .arg(&spawn.cage);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let memory_limit = spawn.memory_limit;
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // The limit holds from exec on: set later, in the worker, it would come after
                // the allocator reserved its arenas (a gigabyte of address space at start)
                // and leave no room for the module.
                if let Some(bytes) = memory_limit {
                    let limit = libc::rlimit {
                        rlim_cur: bytes as libc::rlim_t,
                        rlim_max: bytes as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The channel goes to a known descriptor, open across exec (dup2 clears
                // close-on-exec; when it is already there, clear it by hand).
                let done = if fd == CHANNEL_FD {
                    libc::fcntl(fd, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, CHANNEL_FD)
                };
                if done < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = command.spawn().map_err(StartFailure::Spawn)?;
        drop(theirs);
        let pid = child.id();
        let tail = Arc::new(Tail::default());
        if let Some(stderr) = child.stderr.take() {
            read_stderr(stderr, tail.clone(), spawn.module.clone(), pid);
        }
        let mut worker = Worker {
            pid,
            channel: Channel::new(ours),
            killed: Arc::new(AtomicBool::new(false)),
            described: Described::default(),
            child,
            tail,
        };
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = worker.channel.stream().set_read_timeout(Some(wait));
        let said = worker.channel.receive_blocking::<ToCage>();
        let _ = worker.channel.stream().set_read_timeout(None);
        match said {
            Ok(ToCage::Ready {
                name,
                version,
                methods,
            }) => {
                worker.described = Described {
                    name,
                    version,
                    methods,
                };
                Ok(worker)
            }
            Ok(ToCage::LoadFailed(e)) => {
                worker.reap();
                Err(StartFailure::Load(e))
            }
            Ok(other) => {
                worker.kill();
                worker.reap();
                Err(StartFailure::Confused(format!("{other:?}")))
            }
            Err(_) => {
                // Not ready by the deadline, or dead: either way it is gone now.
                worker.kill();
                let (death, words) = worker.reap();
                Err(StartFailure::Died(death, words))
            }
        }
    }

    /// Whether the process has ended while idle (killed from outside, say by the OOM killer):
    /// such a worker is reaped, not handed a call it would fail.
    pub fn ended(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the process at once.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Waits for the process to end (killing it if it lingers) and tells how it died.
    pub fn reap(mut self) -> (Death, Vec<String>) {
        let status = self.wait_for_end();
        let words = self.tail.last();
        (Death::of(status, &words), words)
    }

    fn wait_for_end(&mut self) -> ExitStatus {
        let until = Instant::now() + EXIT_WAIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
                _ => {
                    self.kill();
                    if let Ok(status) = self.child.wait() {
                        return status;
                    }
                    return ExitStatus::default();
                }
            }
        }
    }

    /// Closes the channel, which tells the worker to exit; the process is then reaped by
    /// [`Exiting::reaped`] without anyone waiting for it.
    pub fn close(self) -> Exiting {
        Exiting(self.child)
    }

    /// Whether it was killed by the watchdog.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }
}

/// Longest a module may take to load in a probing worker.
const PROBE_WAIT: Duration = Duration::from_secs(30);

/// Loads the version `spawn` names in a worker of its own, which then exits: what the module
/// says of itself, or why it does not load (a crash in its initialisers kills only the
/// worker). The cage proves a module this way without ever mapping it.
pub fn probe(spawn: &Spawn) -> Result<Described, String> {
    let worker = Worker::start(spawn, Instant::now() + PROBE_WAIT).map_err(|e| e.to_string())?;
    let described = worker.described.clone();
    let pid = worker.pid;
    // Closing the channel ends the worker; reaping it here leaves no zombie behind.
    let Worker { channel, child, .. } = worker;
    drop(channel);
    let mut exiting = Exiting(child);
    let until = Instant::now() + EXIT_WAIT;
    while !exiting.reaped() {
        if Instant::now() >= until {
            tracing::warn!(module = %spawn.module, pid, "probing worker lingers; killed");
            let _ = exiting.0.kill();
            let _ = exiting.0.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(described)
}

/// A worker told to exit, to be reaped once it has.
pub struct Exiting(Child);

impl Exiting {
    /// Whether it has ended (and is reaped).
    pub fn reaped(&mut self) -> bool {
        !matches!(self.0.try_wait(), Ok(None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backtraces_are_left_out_of_last_words() {
        let tail = Tail::default();
        for line in [
            "memory allocation of 16777216 bytes failed",
            "stack backtrace:",
            "   0: std::backtrace_rs::backtrace::libunwind::trace",
            "             at /rustc/abc/library/std/src/../../backtrace/src/backtrace/libunwind.rs:117:9",
            "  36: <unknown>",
            "note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.",
        ] {
            tail.push(line.to_owned());
        }
        tail.end();
        assert_eq!(
            tail.last(),
            vec!["memory allocation of 16777216 bytes failed"]
        );
    }
}
