//! The scheduler's history sweeps: deduplication entries and finished chains past their
//! retention are dropped, a bounded batch at a time, and batch after batch while a backlog
//! lasts (a cage taking more calls a second than one batch a minute would hold history for
//! ever). What is dropped is [`super::decide::sweep`].

use super::decide::{self, SWEEP_AGAIN_AFTER, SWEEP_BATCH};
use super::Scheduler;
use actix::prelude::*;
use std::time::Duration;

/// How often expired deduplication history is looked for.
pub(super) const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Scheduler {
    /// The regular sweep, unless a backlog's sweeps are under way already.
    pub(super) fn sweep_history(&mut self, ctx: &mut Context<Self>) {
        if !self.sweep_follows {
            self.sweep_batch(ctx);
        }
    }

    /// Drops one batch of expired history and of chains past retention; another follows soon
    /// if either batch was full.
    fn sweep_batch(&mut self, ctx: &mut Context<Self>) {
        let retention = self.policies.queue(crate::config::DEFAULT_QUEUE).retention;
        let sweep = decide::sweep(retention, &*self.clock);
        let history =
            match self
                .store
                .expire_history(sweep.history_before_ms, sweep.recheck_ms, SWEEP_BATCH)
            {
                Ok(0) => 0,
                Ok(n) => {
                    tracing::debug!(cage = %self.cage, "dropped {n} expired deduplication entries");
                    self.commit.nudge();
                    n
                }
                Err(e) => {
                    tracing::error!(cage = %self.cage, "cannot expire history: {e}");
                    0
                }
            };
        let chains = match self
            .store
            .expire_chains(sweep.chains_ended_before_ms, SWEEP_BATCH)
        {
            Ok(0) => 0,
            Ok(n) => {
                tracing::debug!(cage = %self.cage, "dropped {n} finished chains past retention");
                n
            }
            Err(e) => {
                tracing::error!(cage = %self.cage, "cannot expire chains: {e}");
                0
            }
        };
        self.sweep_follows = decide::sweep_again(history, chains);
        if self.sweep_follows {
            ctx.run_later(SWEEP_AGAIN_AFTER, |this, ctx| this.sweep_batch(ctx));
        }
    }
}
