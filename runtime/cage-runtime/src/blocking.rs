//! Bounded lanes onto the runtime's blocking threads for work that requests cause. The
//! runtime's blocking pool is shared with module loading, shutdown and everything else the
//! cage does off its event loop; if requests could fill it, a client could stall all of that.
//! Each lane lets at most a fixed number of its jobs hold a thread; further jobs wait (as
//! futures, costing no thread) for one of its own to finish.

use tokio::sync::Semaphore;

/// Reads of the cage's store answering a request: chain listings, queue counts for metrics.
pub static STORE_READS: Lane = Lane::new("store reads", 8);

/// Finding other cages a request names (perhaps by a discovery query): short, and kept apart
/// from calls out so that long calls never hold up an enqueue's lookup.
pub static LOOKUPS: Lane = Lane::new("cage lookups", 16);

/// Blocking calls to other cages made for a direct chain step: the step's sync call (as long
/// as its time limit), a cancel.
pub static CALLS_OUT: Lane = Lane::new("calls to other cages", 64);

/// A bounded share of the blocking pool.
pub struct Lane {
    name: &'static str,
    threads: Semaphore,
}

/// The blocking job panicked.
#[derive(Debug, thiserror::Error)]
#[error("a blocking job of lane {lane} failed: {reason}")]
pub struct LaneError {
    lane: &'static str,
    reason: String,
}

impl Lane {
    /// A lane of at most `threads` jobs at once.
    pub const fn new(name: &'static str, threads: usize) -> Self {
        Lane {
            name,
            threads: Semaphore::const_new(threads),
        }
    }

    /// Jobs that could start now.
    pub fn free(&self) -> usize {
        self.threads.available_permits()
    }

    /// Runs `job` on a blocking thread once the lane has room. The job keeps its place until
    /// it returns, even if the caller stops waiting for it (a thread cannot be taken back).
    pub async fn run<R: Send + 'static>(
        &'static self,
        job: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, LaneError> {
        let permit = self.threads.acquire().await.map_err(|e| LaneError {
            lane: self.name,
            reason: e.to_string(),
        })?;
        // The permit travels with the job, so it is held exactly as long as the thread is.
        permit.forget();
        let lane = self;
        let done = tokio::task::spawn_blocking(move || {
            struct Release(&'static Lane);
            impl Drop for Release {
                fn drop(&mut self) {
                    self.0.threads.add_permits(1);
                }
            }
            let _release = Release(lane);
            job()
        });
        done.await.map_err(|e| LaneError {
            lane: self.name,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    static TWO: Lane = Lane::new("test", 2);

    #[tokio::test(flavor = "current_thread")]
    async fn at_most_its_threads_run_at_once_and_every_job_runs() {
        let (running, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (running, most) = (running.clone(), most.clone());
                tokio::spawn(TWO.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }))
            })
            .collect();
        let mut done = Vec::new();
        for j in jobs {
            done.push(j.await.unwrap().unwrap());
        }
        assert_eq!(done, (0..6).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(TWO.free(), 2);
        let e = TWO.run(|| panic!("boom")).await.unwrap_err();
        assert!(e.to_string().contains("lane test"), "{e}");
        assert_eq!(TWO.free(), 2, "a panicking job gives its place back");
    }
}
