//! Group commit: writers ask for durability and wait; one thread syncs the journal for everyone
//! waiting, so many concurrent enqueues share one disk sync. Under load (the last sync was
//! shared) a sync first waits the cage's `commit_window` so more writers share it; a lone
//! writer is synced at once.
//!
//! Every change is in the journal file (the kernel's page cache) before it is applied, which
//! survives a process crash; with `fdatasync` on (the default) the journal is also synced to the
//! device before anyone is acknowledged, so an acknowledged call survives power loss too.
//!
//! A second thread checkpoints when the journal has grown past [`CHECKPOINT_BYTES`], the memory
//! tables past [`CHECKPOINT_MEMORY`] (the commit thread looks after each sync and asks), or the
//! journal has held changes for [`CHECKPOINT_EVERY`]: what the memory tables still hold is
//! written to sled, sled is flushed and the old segments dropped, so memory, the journal and the
//! replay on the next start stay short. It is a thread of its own so that syncs go on while it
//! works: a checkpoint makes the next segment (8 MiB of zeros, synced) and flushes sled, which
//! takes tens of milliseconds that every writer would otherwise wait.

use super::journal::Journal;
use super::{QueueError, QueueStore};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), String>>;

/// A journal segment this full is checkpointed at the next pause between syncs (before it
/// fills and a writer has to make the next segment itself).
pub const CHECKPOINT_BYTES: u64 = super::journal::SEGMENT_BYTES / 4 * 3;
/// A journal holding changes is checkpointed at least this often.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);
/// Memory tables holding this much are checkpointed at the next pause between syncs (the
/// journal's size usually asks first; this bounds a run of large keys and small values).
pub const CHECKPOINT_MEMORY: usize = 64 * 1024 * 1024;

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

/// The group-commit thread of one queue database, and its checkpointer.
pub struct GroupCommit {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    checkpoints: Arc<Checkpoints>,
    checkpointer: Option<std::thread::JoinHandle<()>>,
}

/// What the checkpointer waits on: a request from the commit thread, or the stop.
#[derive(Default)]
struct Checkpoints {
    state: Mutex<CheckpointState>,
    wake: Condvar,
}

#[derive(Default)]
struct CheckpointState {
    asked: bool,
    stopping: bool,
}

impl Checkpoints {
    fn ask(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).asked = true;
        self.wake.notify_one();
    }

    fn stop(&self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopping = true;
        self.wake.notify_one();
    }
}

impl GroupCommit {
    /// Starts committing `store`; with `fdatasync`, each round syncs the journal to the device
    /// (without, changes are durable against a process crash only). What the store's issued
    /// sequence number was when a sync began is durable once the sync succeeds.
    pub fn start(
        store: &QueueStore,
        fdatasync: bool,
        window: Duration,
    ) -> Result<Self, QueueError> {
        let issued = store.issued();
        let disk = Arc::new(Disk {
            tables: store.tables(),
            journal: store.journal(),
            fdatasync,
        });
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            flushes: AtomicU64::new(0),
            durable_seq: AtomicU64::new(issued.load(Ordering::Acquire)),
        });
        let checkpoints = Arc::new(Checkpoints::default());
        let (ask, on) = (checkpoints.clone(), disk.clone());
        let checkpointer = std::thread::Builder::new()
            .name("cage-checkpoint".into())
            .spawn(move || checkpoint_when_due(&ask, &on))
            .map_err(|e| QueueError::Flush(format!("cannot start the checkpoint thread: {e}")))?;
        let worker = shared.clone();
        let ask = checkpoints.clone();
        let thread = std::thread::Builder::new()
            .name("cage-commit".into())
            .spawn(move || run(&worker, &disk, &ask, &issued, window));
        let thread = match thread {
            Ok(thread) => thread,
            Err(e) => {
                checkpoints.stop();
                let _ = checkpointer.join();
                return Err(QueueError::Flush(format!(
                    "cannot start the commit thread: {e}"
                )));
            }
        };
        Ok(GroupCommit {
            shared,
            thread: Some(thread),
            checkpoints,
            checkpointer: Some(checkpointer),
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

/// Under load (the previous sync was shared), waits `window` before the next sync so more
/// writers join it; a lone writer (the last sync had one) is synced at once, so the window
/// costs latency only when there are others to share the sync with. Writers never wait for a
/// sync to apply their changes, so the window only trades latency for fewer device syncs
/// (worth it on disks where `fdatasync` is slow); it is off by default.
fn gather<'a>(
    shared: &'a Shared,
    mut s: std::sync::MutexGuard<'a, State>,
    window: Duration,
    last_batch: usize,
) -> std::sync::MutexGuard<'a, State> {
    if window.is_zero() || last_batch <= 1 || s.stopping {
        return s;
    }
    s.sleeping = true;
    let mut s = shared
        .wake
        .wait_timeout_while(s, window, |s| !s.stopping)
        .unwrap_or_else(|p| p.into_inner())
        .0;
    s.sleeping = false;
    s
}

/// What the commit thread syncs and checkpoints.
struct Disk {
    tables: Arc<super::tables::Tables>,
    journal: Arc<Journal>,
    fdatasync: bool,
}

impl Disk {
    fn sync(&self) -> Result<(), String> {
        if let Some(fault) = injected_fault() {
            return Err(fault);
        }
        if self.fdatasync {
            self.journal.sync().map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Whether the journal or the memory tables have grown enough to checkpoint.
    fn full(&self) -> bool {
        self.journal.len() >= CHECKPOINT_BYTES || self.tables.memory_bytes() >= CHECKPOINT_MEMORY
    }

    /// Checkpoints; a failed checkpoint loses nothing (the journal keeps every change) and is
    /// tried again later.
    fn checkpoint(&self) {
        if let Err(e) = self.journal.checkpoint(&self.tables) {
            tracing::error!("queue checkpoint failed (the journal keeps every change): {e}");
        }
    }
}

/// The checkpointer: checkpoints when asked (the journal or memory grew), and when the journal
/// has held changes for [`CHECKPOINT_EVERY`]; otherwise sleeps.
fn checkpoint_when_due(checkpoints: &Checkpoints, disk: &Disk) {
    let mut last = Instant::now();
    loop {
        let asked = {
            let s = checkpoints.state.lock().unwrap_or_else(|p| p.into_inner());
            let left = CHECKPOINT_EVERY.saturating_sub(last.elapsed());
            let mut s = checkpoints
                .wake
                .wait_timeout_while(s, left, |s| !s.asked && !s.stopping)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if s.stopping {
                return;
            }
            std::mem::take(&mut s.asked)
        };
        // Asked while still full (a request made during the last checkpoint may be stale), or
        // the journal's age is up (an empty one has nothing to checkpoint).
        let due = if asked {
            disk.full()
        } else {
            !disk.journal.is_empty()
        };
        if due {
            disk.checkpoint();
            last = Instant::now();
        } else if !asked {
            last = Instant::now();
        }
    }
}

fn run(
    shared: &Shared,
    disk: &Disk,
    checkpoints: &Checkpoints,
    issued: &AtomicU64,
    window: Duration,
) {
    let mut last_batch = 0;
    loop {
        if disk.full() {
            checkpoints.ask();
        }
        let batch = {
            let mut s = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            while s.waiters.is_empty() && !s.nudged && !s.stopping {
                s.sleeping = true;
                let (guard, timeout) = shared
                    .wake
                    .wait_timeout(s, CHECKPOINT_EVERY)
                    .unwrap_or_else(|p| p.into_inner());
                s = guard;
                s.sleeping = false;
                if timeout.timed_out() {
                    break;
                }
            }
            if s.stopping && s.waiters.is_empty() && !s.nudged {
                return;
            }
            if s.waiters.is_empty() && !s.nudged {
                continue;
            }
            let mut s = gather(shared, s, window, last_batch);
            s.nudged = false;
            std::mem::take(&mut s.waiters)
        };
        last_batch = batch.len();
        // Writers that arrive while this flush runs wait for the next one: their writes may
        // have missed this flush, so acknowledging them now could lose them.
        let covered = issued.load(Ordering::Acquire);
        let result = disk.sync();
        shared.flushes.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            shared.durable_seq.fetch_max(covered, Ordering::AcqRel);
        }
        if let Err(e) = &result {
            tracing::error!(
                "queue sync failed, {} waiting writer(s) get an error: {e}",
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
        self.checkpoints.stop();
        if let Some(t) = self.checkpointer.take() {
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
        let store = QueueStore::open(dir.path()).unwrap();
        let commit = GroupCommit::start(&store, true, Duration::from_millis(1)).unwrap();
        let mut waits = Vec::new();
        for i in 0..200u32 {
            let mut b = super::super::journal::Batch::default();
            b.insert(i.to_be_bytes(), [1u8]);
            store.apply(b).unwrap();
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

    /// The checkpointer: once the journal holds a segment's worth, it is checkpointed while
    /// writers go on being acknowledged; what the memory tables held is then in sled.
    #[tokio::test(flavor = "current_thread")]
    async fn a_full_journal_is_checkpointed_while_writers_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = QueueStore::open(dir.path()).unwrap();
        let commit = GroupCommit::start(&store, false, Duration::ZERO).unwrap();
        let write = |i: u32| {
            let mut b = super::super::journal::Batch::default();
            b.insert(i.to_be_bytes(), vec![7u8; 4096]);
            store.apply(b).unwrap();
        };
        let mut i = 0;
        while store.journal().len() < CHECKPOINT_BYTES {
            write(i);
            commit.durable().await.unwrap();
            i += 1;
        }
        let started = Instant::now();
        // The checkpoint switches segments first, then writes the frozen tables to sled.
        while !store.db().sled().contains_key(0u32.to_be_bytes()).unwrap() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "no checkpoint after {i} writes"
            );
            write(i);
            commit.durable().await.unwrap();
            i += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(store.journal().len() < CHECKPOINT_BYTES);
        assert!(store.memory_bytes() < CHECKPOINT_MEMORY);
    }
}
