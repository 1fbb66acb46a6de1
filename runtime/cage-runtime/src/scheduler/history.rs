//! The scheduler's history sweeps: deduplication entries and finished chains past their
//! retention are dropped, a bounded batch at a time. What is dropped is [`super::decide::sweep`].

use super::{decide, Scheduler};
use std::time::Duration;

/// How often expired deduplication history is dropped.
pub(super) const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Scheduler {
    /// Drops one batch of expired history and of chains past retention.
    pub(super) fn sweep_history(&mut self) {
        let retention = self.policies.queue(crate::config::DEFAULT_QUEUE).retention;
        let sweep = decide::sweep(retention, &*self.clock);
        match self
            .store
            .expire_history(sweep.history_before_ms, sweep.recheck_ms, 10_000)
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(cage = %self.cage, "dropped {n} expired deduplication entries");
                self.commit.nudge();
            }
            Err(e) => tracing::error!(cage = %self.cage, "cannot expire history: {e}"),
        }
        match self
            .store
            .expire_chains(sweep.chains_ended_before_ms, 10_000)
        {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(cage = %self.cage, "dropped {n} finished chains past retention")
            }
            Err(e) => tracing::error!(cage = %self.cage, "cannot expire chains: {e}"),
        }
    }
}
