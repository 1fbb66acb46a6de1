//! Extra worker threads lent to calls that block waiting for other calls of this cage (their
//! child chains), so a cage whose every worker waits on children cannot deadlock.
//!
//! The host only asks for a spare; the executor, which owns the threads, says how one starts
//! (it installs a starter once its pool exists), so the host never imports the executor.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

type Starter = Box<dyn Fn(Arc<AtomicBool>) -> bool + Send + Sync>;

/// A handle to ask the executor for one more worker while a call waits on its children.
#[derive(Clone, Default)]
pub struct SpareWorkers(Arc<OnceLock<Starter>>, Arc<AtomicUsize>);

/// A lent worker thread; it stops taking calls once this is dropped.
pub struct SpareGuard(Arc<AtomicBool>, Arc<AtomicUsize>);

impl Drop for SpareGuard {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
        self.1.fetch_sub(1, Ordering::AcqRel);
    }
}

impl SpareWorkers {
    /// Sets how a spare starts: `start(alive)` runs a worker for as long as `alive` holds and
    /// says whether it started. Only the first installation counts.
    pub fn install(&self, start: impl Fn(Arc<AtomicBool>) -> bool + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(start));
    }

    /// Starts one more worker for as long as the guard lives (`None` before the pool exists).
    pub fn hold(&self) -> Option<SpareGuard> {
        let start = self.0.get()?;
        let alive = Arc::new(AtomicBool::new(true));
        if !start(alive.clone()) {
            return None;
        }
        self.1.fetch_add(1, Ordering::AcqRel);
        Some(SpareGuard(alive, self.1.clone()))
    }

    /// Spares lent now: so many calls wait on their children, and so many more worker
    /// processes a module's pool may start, as it has threads to drive them.
    pub fn held(&self) -> usize {
        self.1.load(Ordering::Acquire)
    }
}
