//! The watchdog: one list of running calls' deadlines. A worker still busy at its call's
//! deadline is killed (SIGKILL), so a hung call frees its slot at once; a call running in
//! process gets what its executor asked for instead (its thread is written off and replaced).
//! One thread serves every call (it also runs the pool's periodic sweep), rather than a timer
//! per call.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What happens to a call still running at its deadline.
enum Expiry {
    /// Its worker process is killed, `killed` set first.
    Kill { pid: u32, killed: Arc<AtomicBool> },
    /// This runs (on the watchdog's thread).
    Run(Box<dyn FnOnce() + Send>),
}

/// Where a watch is kept: its deadline, then a number that tells equal deadlines apart.
pub type WatchKey = (Instant, u64);

/// The armed watches, soonest first. A call that ends removes its own, so the map holds only
/// calls running now, however many calls a second the cage runs.
#[derive(Default)]
struct Watched {
    armed: BTreeMap<WatchKey, Expiry>,
    next: u64,
    /// When the watchdog wakes next on its own (none: it is not asleep).
    wakes_at: Option<Instant>,
}

/// Deadlines of the calls running in workers.
#[derive(Default)]
pub struct Watchdog {
    watched: Mutex<Watched>,
    changed: Condvar,
}

/// A watched call; dropping it (the call ended) disarms the kill.
pub struct Armed<'a> {
    dog: &'a Watchdog,
    key: WatchKey,
}

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.dog.disarm(self.key);
    }
}

impl Watchdog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Watched> {
        self.watched.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn arm(&self, deadline: Instant, expiry: Expiry) -> WatchKey {
        let mut w = self.lock();
        let key = (deadline, w.next);
        w.next += 1;
        w.armed.insert(key, expiry);
        // The watchdog sleeps until the soonest deadline or its tick; only a deadline before
        // then needs waking it (waking it for every call would cost a thread switch per call).
        let sooner = w.wakes_at.is_some_and(|at| deadline < at);
        drop(w);
        if sooner {
            self.changed.notify_one();
        }
        key
    }

    /// Takes back what [`Watchdog::on_deadline`] armed, if it has not happened yet.
    pub fn disarm(&self, key: WatchKey) {
        self.lock().armed.remove(&key);
    }

    /// Kills process `pid` at `deadline` (setting `killed` first) unless the guard is dropped.
    pub fn watch(&self, pid: u32, deadline: Instant, killed: Arc<AtomicBool>) -> Armed<'_> {
        let key = self.arm(deadline, Expiry::Kill { pid, killed });
        Armed { dog: self, key }
    }

    /// Runs `expire` at `deadline` unless disarmed first; answers the key to disarm it with.
    pub fn on_deadline(
        &self,
        deadline: Instant,
        expire: impl FnOnce() + Send + 'static,
    ) -> WatchKey {
        self.arm(deadline, Expiry::Run(Box::new(expire)))
    }

    /// Kills every worker past its deadline, then waits until the next deadline, a sooner
    /// watch, or `tick`, whichever is first.
    pub fn patrol(&self, tick: Duration) {
        let mut w = self.lock();
        let now = Instant::now();
        let mut runs = Vec::new();
        while let Some(entry) = w.armed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                // Killed under the lock: a call that ended has disarmed (under the same lock)
                // before its worker is reaped, so a pid reused since is never hit.
                Expiry::Kill { pid, killed } => {
                    killed.store(true, Ordering::Release);
                    tracing::warn!(pid, "worker killed: its call passed its deadline");
                    // SAFETY: signalling a child process this cage started and has not reaped.
                    unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                }
                Expiry::Run(run) => runs.push(run),
            }
        }
        if !runs.is_empty() {
            drop(w);
            for run in runs {
                run();
            }
            return;
        }
        let wait = w
            .armed
            .keys()
            .next()
            .map(|(at, _)| at.saturating_duration_since(now))
            .unwrap_or(tick)
            .min(tick);
        w.wakes_at = Some(now + wait);
        let (mut w, _) = self
            .changed
            .wait_timeout(w, wait)
            .unwrap_or_else(|p| p.into_inner());
        w.wakes_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disarmed_watch_kills_nothing_and_a_due_one_kills_its_process() {
        let dog = Watchdog::default();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let spared = Arc::new(AtomicBool::new(false));
        drop(dog.watch(sleeper.id(), Instant::now(), spared.clone()));
        dog.patrol(Duration::from_millis(1));
        assert!(!spared.load(Ordering::Acquire));
        assert!(sleeper.try_wait().unwrap().is_none());
        let killed = Arc::new(AtomicBool::new(false));
        let _armed = dog.watch(sleeper.id(), Instant::now(), killed.clone());
        dog.patrol(Duration::from_millis(1));
        assert!(killed.load(Ordering::Acquire));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(sleeper.wait().unwrap().signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_due_expiry_runs_once_and_a_disarmed_one_never() {
        let dog = Watchdog::default();
        let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = |ran: &Arc<std::sync::atomic::AtomicUsize>| {
            let ran = ran.clone();
            move || {
                ran.fetch_add(1, Ordering::AcqRel);
            }
        };
        let spared = dog.on_deadline(Instant::now(), count(&ran));
        dog.disarm(spared);
        dog.on_deadline(Instant::now(), count(&ran));
        dog.patrol(Duration::from_millis(1));
        dog.patrol(Duration::from_millis(1));
        assert_eq!(ran.load(Ordering::Acquire), 1);
    }
}
