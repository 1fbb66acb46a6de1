//! The scheduler under new settings: the site config changed, so queue policies are replaced
//! (cage locations are the peers handle's), and calls waiting for a retry move to the
//! schedule the new policies imply.

use super::{decide, Scheduler};
use crate::config::ExecuteOn;
use crate::queue::QueueError;
use actix::prelude::*;
use rand::Rng;

/// New queue policies (the site config changed; the cage locations are in force already, in
/// the cage's [`crate::peers::Peers`]).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PoliciesChanged(pub ExecuteOn);

impl Scheduler {
    /// Moves pending calls that already failed to the schedule the current policies imply.
    fn reschedule_all(&mut self) -> Result<usize, QueueError> {
        let waiting = self
            .store
            .pending(&|r| !r.attempts.is_empty(), usize::MAX)?;
        let mut moved = 0;
        for record in waiting {
            if self.running.contains_key(&record.call.id) {
                continue;
            }
            let policy = self.policies.queue(&record.call.queue);
            let jitter = self.rng.gen_range(-1.0..=1.0);
            let Some(at) = decide::rescheduled_at(policy, &record, jitter, &*self.clock) else {
                continue;
            };
            let mut updated = record.clone();
            updated.next_at_ms = at;
            if updated.next_at_ms != record.next_at_ms {
                self.store.update(&record, &updated)?;
                moved += 1;
            }
        }
        self.commit.nudge();
        Ok(moved)
    }
}

impl Handler<PoliciesChanged> for Scheduler {
    type Result = ();

    fn handle(&mut self, PoliciesChanged(policies): PoliciesChanged, _: &mut Context<Self>) {
        self.policies = policies;
        if let Err(e) = self.store.set_rules(rules(&self.policies)) {
            tracing::error!(cage = %self.cage, "new queue settings: the order index could not be built: {e}");
        }
        match self.reschedule_all() {
            Ok(n) => {
                tracing::info!(cage = %self.cage, "new queue settings in force; {n} pending call(s) rescheduled")
            }
            Err(e) => {
                tracing::error!(cage = %self.cage, "new queue settings in force, but rescheduling failed: {e}")
            }
        }
    }
}

/// What the store follows of `policies`.
pub fn rules(policies: &crate::config::ExecuteOn) -> crate::queue::rules::Rules {
    let rule = |p: &crate::config::QueuePolicy| crate::queue::rules::QueueRule {
        retention: p.retention,
        keep_order: p.keep_order,
    };
    crate::queue::rules::Rules {
        default: rule(policies.queue(crate::config::DEFAULT_QUEUE)),
        queues: policies
            .queues
            .iter()
            .map(|(name, p)| (name.clone(), rule(p)))
            .collect(),
    }
}
