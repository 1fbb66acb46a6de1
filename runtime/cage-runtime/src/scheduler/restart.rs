//! The scheduler at its start: attempts the cage process died during. Each attempt here left a
//! durable start mark before it ran ([`super::decide::marks_start`]) that the write recording
//! its end removes; a mark still there at open means the cage died while that attempt ran, so
//! the attempt is recorded as a crash of its call, which is then retried like any failed
//! attempt, or dead once it reached its queue's `max_crashes`.

use super::decide::Crash;
use super::Scheduler;
use crate::model::call::{Attempt, Stage};
use crate::queue::{QueueError, StartMark};
use cage_sdk::{CallError, ErrorKind};

impl Scheduler {
    /// Records every attempt the cage process died during as a crash of its call.
    pub(super) fn record_crashes_of_the_last_run(&mut self) {
        let marks = match self.store.start_marks() {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(cage = %self.cage, "cannot read the start marks of attempts that ran when the cage stopped: {e}");
                return;
            }
        };
        for (id, mark) in marks {
            if let Err(e) = self.cage_died_during(&id, mark) {
                tracing::error!(cage = %self.cage, call_id = %id, "cannot record that the cage died during attempt {} of this call: {e}", mark.attempt);
            }
        }
        self.commit.nudge();
    }

    fn cage_died_during(&mut self, id: &str, mark: StartMark) -> Result<(), QueueError> {
        let record = match self.store.get(id)? {
            Some(r) if r.stage == Stage::Execute && r.next_attempt() == mark.attempt => r,
            // The call left, or the attempt's end is recorded: nothing ran unrecorded.
            _ => return self.store.drop_start_marks(&[id]),
        };
        if self.store.executed(id)?.is_some() {
            // The attempt committed its effects and outcome; the cage died before recording its
            // end. No crash of this call: its next attempt answers the committed outcome.
            return self.store.drop_start_marks(&[id]);
        }
        let call = &record.call;
        let span = tracing::info_span!("call", call_id = %call.id, cage = %self.cage, module = %call.module, method = %call.method, attempt = mark.attempt);
        let _entered = span.enter();
        let attempt = Attempt {
            number: mark.attempt,
            started_ms: mark.started_ms,
            // How long it ran before the cage died is not known.
            duration_us: 0,
            error: None,
            module_version: None,
        };
        let died = CallError::with_kind(ErrorKind::Crashed, "the cage process died");
        let outcome = self.attempt_failed(&record, attempt, died, Some(Crash::Cage))?;
        self.job_run_ended(id, outcome);
        Ok(())
    }
}
