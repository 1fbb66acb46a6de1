//! Group commit: writers ask for durability and wait; one thread runs a flush for everyone
//! waiting, so many concurrent enqueues share one disk sync. Under load (the last flush was
//! shared) a flush first waits the cage's `commit_window` so more writers share it; a lone
//! writer is flushed at once.
//!
//! sled's `flush` writes with `sync_file_range`, which survives a process crash but does not
//! empty the device's write cache; with `fdatasync` on (the default) each flush is followed by an
//! `fdatasync` of sled's data file, which does, so an acknowledged call also survives power loss.

use super::QueueError;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    nudged: bool,
    stopping: bool,
    /// The commit thread waits on the condition variable: a writer must wake it. While it
    /// flushes it takes every waiter when done, so writers skip the wake-up (a system call).
    sleeping: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    flushes: AtomicU64,
    /// Calls stored with a sequence number up to this are on disk.
    durable_seq: AtomicU64,
}

/// The group-commit thread of one queue database.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GroupCommit {
    /// Starts committing `db` (stored in `dir`); with `fdatasync`, each flush also syncs the
    /// data file to the device. `issued` is the store's highest sequence number given out: what
    /// it was when a flush began is durable once the flush succeeds.
    pub fn start(
        db: sled::Db,
        dir: &Path,
        fdatasync: bool,
        issued: Arc<AtomicU64>,
        window: Duration,
    ) -> Result<Self, QueueError> {
        let data = if fdatasync {
            Some(File::open(dir.join("db")).map_err(|e| {
                QueueError::Flush(format!("open {}/db for fdatasync: {e}", dir.display()))
            })?)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            flushes: AtomicU64::new(0),
            durable_seq: AtomicU64::new(issued.load(Ordering::Acquire)),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cage-commit".into())
            .spawn(move || run(&worker, &db, data.as_ref(), &issued, window))
            .map_err(|e| QueueError::Flush(format!("cannot start the commit thread: {e}")))?;
        Ok(GroupCommit {
            shared,
            thread: Some(thread),
        })
    }

    /// Resolves once everything written before this call is durable.
    pub fn durable(&self) -> impl std::future::Future<Output = Result<(), QueueError>> {
        let (tx, rx) = oneshot::channel();
        let sleeping = {
            let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            s.waiters.push(tx);
            s.sleeping
        };
        if sleeping {
            self.shared.wake.notify_one();
        }
        async move {
            match rx.await {
                Ok(r) => r.map_err(QueueError::Flush),
                Err(_) => Err(QueueError::Flush("the commit thread stopped".into())),
            }
        }
    }

    /// Asks for a flush soon without waiting for it (for changes nobody is acknowledged on).
    pub fn nudge(&self) {
        let sleeping = {
            let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
            s.nudged = true;
            s.sleeping
        };
        if sleeping {
            self.shared.wake.notify_one();
        }
    }

    /// Calls stored with a sequence number up to this are durable; later ones may not be yet
    /// and must not run (a failed flush would leave them run but not acknowledged).
    pub fn durable_seq(&self) -> u64 {
        self.shared.durable_seq.load(Ordering::Acquire)
    }

    /// Flushes done so far.
    pub fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::Relaxed)
    }
}

/// Set by the test suites to make flushes fail while the named file exists (fault injection).
const FAULT_ENV: &str = "CAGE_FAULT_FLUSH_FILE";

fn injected_fault() -> Option<String> {
    let path = std::env::var_os(FAULT_ENV)?;
    std::path::Path::new(&path)
        .exists()
        .then(|| format!("injected fault ({} exists)", path.to_string_lossy()))
}

/// Under load (the previous flush was shared), waits `window` before the next flush so more
/// writers join it; a lone writer (the last flush had one) is flushed at once, so the window
/// costs latency only when there are others to share the flush with.
///
/// Why wait rather than flush back to back: sled's `flush` holds its global concurrency lock
/// (shared) while the log is written and synced, and every multi-key batch takes that lock
/// exclusively, so writes stall while a flush runs. Flushing back to back lets only a few
/// writes in between flushes; the window is when they get in.
fn gather<'a>(
    shared: &'a Shared,
    mut s: std::sync::MutexGuard<'a, State>,
    window: Duration,
    last_batch: usize,
) -> std::sync::MutexGuard<'a, State> {
    if window.is_zero() || last_batch <= 1 || s.stopping {
        return s;
    }
    let deadline = Instant::now() + window;
    s.sleeping = true;
    while !s.stopping {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        s = shared
            .wake
            .wait_timeout(s, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    s.sleeping = false;
    s
}

fn run(shared: &Shared, db: &sled::Db, data: Option<&File>, issued: &AtomicU64, window: Duration) {
    let mut last_batch = 0;
    loop {
        let batch = {
            let mut s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while s.waiters.is_empty() && !s.nudged && !s.stopping {
                s.sleeping = true;
                s = shared.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                s.sleeping = false;
            }
            if s.stopping && s.waiters.is_empty() && !s.nudged {
                return;
            }
            let mut s = gather(shared, s, window, last_batch);
            s.nudged = false;
            std::mem::take(&mut s.waiters)
        };
        last_batch = batch.len();
        // Writers that arrive while this flush runs wait for the next one: their writes may
        // have missed this flush, so acknowledging them now could lose them.
        let covered = issued.load(Ordering::Acquire);
        let result = match injected_fault() {
            Some(fault) => Err(fault),
            None => db
                .flush()
                .map(drop)
                .map_err(|e| format!("sled flush: {e}"))
                .and_then(|_| {
                    data.map_or(Ok(()), |f| {
                        f.sync_data().map_err(|e| format!("fdatasync: {e}"))
                    })
                }),
        };
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            shared.durable_seq.fetch_max(covered, Ordering::AcqRel);
        }
        if let Err(e) = &result {
            tracing::error!(
                "queue flush failed, {} waiting writer(s) get an error: {e}",
                batch.len()
            );
        }
        for w in batch {
            let _ = w.send(result.clone());
        }
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_writers_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let commit = GroupCommit::start(
            db.clone(),
            dir.path(),
            true,
            Arc::new(AtomicU64::new(0)),
            Duration::from_millis(1),
        )
        .unwrap();
        let mut waits = Vec::new();
        for i in 0..200u32 {
            db.insert(i.to_be_bytes(), &[1u8][..]).unwrap();
            waits.push(commit.durable());
        }
        for w in waits {
            w.await.unwrap();
        }
        assert!(commit.flushes() >= 1);
        assert!(
            commit.flushes() < 200,
            "writers waiting together share flushes: {}",
            commit.flushes()
        );
    }
}
