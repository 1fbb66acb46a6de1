//! The jobs table: stored jobs (`j`), and firing a run: the run's call and the job's next
//! run written in one batch.

use super::calls::due_value;
use super::journal::Batch;
use super::keys::{self, CALL};
use super::store::{decode, encode};
use super::{QueueError, QueueStore};
use crate::model::call::CallRecord;
use crate::model::job::Job;

impl QueueStore {
    /// Stores (or replaces) a job.
    pub fn put_job(&self, job: &Job) -> Result<(), QueueError> {
        let mut b = Batch::default();
        b.insert(keys::with_id(keys::JOB, &job.id), encode(job));
        self.apply(b)
    }

    /// Removes a job; whether it existed.
    pub fn remove_job(&self, id: &str) -> Result<bool, QueueError> {
        let key = keys::with_id(keys::JOB, id);
        if !self.db().contains_key(&key).map_err(|e| self.err(e))? {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.remove(key);
        self.apply(b)?;
        Ok(true)
    }

    /// Every stored job (unreadable ones are logged and left out).
    pub fn jobs(&self) -> Result<Vec<Job>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix([keys::JOB]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match decode(&k, &v) {
                Ok(job) => out.push(job),
                Err(e) => tracing::error!("{e}; this job is not run"),
            }
        }
        Ok(out)
    }

    /// Queues the runs `records` of a job and stores the job as `job` (its next run moved on),
    /// in one batch: a crash leaves either no run queued and the old next run, or both done.
    pub fn fire(&self, job: &Job, records: &[CallRecord]) -> Result<(), QueueError> {
        let mut b = Batch::default();
        let mut last_seq = 0;
        for record in records {
            if self
                .db()
                .contains_key(keys::with_id(CALL, &record.call.id))
                .map_err(|e| self.err(e))?
            {
                continue; // this very run is already queued (run-now twice in one millisecond)
            }
            let mut record = record.clone();
            record.seq = self.next_seq()?;
            last_seq = record.seq;
            b.insert(keys::with_id(CALL, &record.call.id), encode(&record));
            b.insert(Self::due_key(&record), due_value(&record));
            self.order_entry(&mut b, &record);
        }
        b.insert(keys::with_id(keys::JOB, &job.id), encode(job));
        self.apply_stored(b, last_seq)
    }
}
