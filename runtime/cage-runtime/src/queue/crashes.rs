//! The crash table: start marks (`a`), one per attempt running here whose start was made
//! durable before it ran, and crash counts (`f`), one per pending call that crashed a process.
//!
//! A start mark goes away in the write that records how its attempt ended; one still there when
//! the cage opens its queue means the cage process died while that attempt ran. A crash count
//! lives as long as its call is pending here (it goes with the call's end, burial or cancel), so
//! a revived call starts a fresh count. Both are small values of their own keyed by call id, so
//! call records keep their format.

use super::journal::Batch;
use super::keys::{self, CRASHES, STARTED};
use super::store::{decode, encode};
use super::{QueueError, QueueStore};
use crate::model::call::CallRecord;
use serde::{Deserialize, Serialize};

/// That attempt `attempt` of a call started here at `started_ms` and has not ended yet.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartMark {
    /// The attempt's number (as [`CallRecord::next_attempt`] gave it).
    pub attempt: u32,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
}

/// How often a pending call crashed the process running it, and how.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashCount {
    /// Attempts during which the cage process itself died (modules run in it).
    pub cage: u32,
    /// Attempts that crashed the worker process running them.
    pub worker: u32,
    /// The signal of the latest worker crash, when it was named (`SIGSEGV`).
    pub signal: Option<String>,
}

impl CrashCount {
    /// Crashes of either kind.
    pub fn total(&self) -> u32 {
        self.cage + self.worker
    }
}

impl QueueStore {
    /// Records that the given attempts start now (call id, mark), all in one write: the caller
    /// waits for one group commit and then runs them all.
    pub fn mark_started(&self, marks: &[(&str, StartMark)]) -> Result<(), QueueError> {
        let mut b = Batch::default();
        for (id, mark) in marks {
            b.insert(keys::with_id(STARTED, id), encode(mark));
        }
        self.apply(b)
    }

    /// Every start mark left (call id, mark): at open, attempts the cage died during.
    pub fn start_marks(&self) -> Result<Vec<(String, StartMark)>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix([STARTED]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let id = String::from_utf8_lossy(&k[1..]).into_owned();
            out.push((id, decode(&k, &v)?));
        }
        Ok(out)
    }

    /// Removes the start marks of calls `ids` in one write: of calls no longer here (found at
    /// open), or of attempts a deliberate stop leaves unfinished (no crash of theirs).
    pub fn drop_start_marks(&self, ids: &[&str]) -> Result<(), QueueError> {
        let mut b = Batch::default();
        for id in ids {
            b.remove(keys::with_id(STARTED, id));
        }
        self.apply(b)
    }

    /// The crash count of pending call `id`, if it ever crashed.
    pub fn crashes(&self, id: &str) -> Result<Option<CrashCount>, QueueError> {
        let key = keys::with_id(CRASHES, id);
        match self.db().get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Records that an attempt of pending `old` failed and the call waits for its next one as
    /// `new`, in one write: the new record, its place in the schedule, its start mark gone, and
    /// its crash count when the attempt crashed.
    pub fn attempt_failed(
        &self,
        old: &CallRecord,
        new: &CallRecord,
        crashes: Option<&CrashCount>,
    ) -> Result<(), QueueError> {
        let mut b = Batch::default();
        b.remove(Self::due_key(old));
        b.insert(keys::with_id(keys::CALL, &new.call.id), encode(new));
        b.insert(Self::due_key(new), super::calls::due_value(new));
        b.remove(keys::with_id(STARTED, &new.call.id));
        if let Some(c) = crashes {
            b.insert(keys::with_id(CRASHES, &new.call.id), encode(c));
        }
        self.apply(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::call::{QueuedCall, Stage};

    fn record(id: &str) -> CallRecord {
        let call = QueuedCall {
            id: id.into(),
            source: "a".into(),
            target: "a".into(),
            module: "crash".into(),
            method: "segfault".into(),
            args: b"null".to_vec(),
            queue: "poison".into(),
            priority: 0,
            key: None,
            enqueued_at_ms: 1000,
            not_before_ms: 0,
            chain: None,
            group: None,
        };
        CallRecord::new(call, Stage::Execute, 1000)
    }

    fn mark(attempt: u32) -> StartMark {
        StartMark {
            attempt,
            started_ms: 1000 + u64::from(attempt),
        }
    }

    #[test]
    fn marks_of_attempts_started_together_are_one_write_and_outlive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = QueueStore::open(dir.path()).unwrap();
            s.insert(&record("a-1")).unwrap();
            s.insert(&record("a-2")).unwrap();
            s.mark_started(&[("a-1", mark(1)), ("a-2", mark(3))])
                .unwrap();
        }
        let s = crate::queue::store::tests::reopen(dir.path());
        assert_eq!(
            s.start_marks().unwrap(),
            vec![("a-1".to_owned(), mark(1)), ("a-2".to_owned(), mark(3))]
        );
    }

    #[test]
    fn the_end_of_an_attempt_takes_its_mark_and_a_retry_keeps_the_count() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let r = record("a-1");
        s.insert(&r).unwrap();
        let r = s.get("a-1").unwrap().unwrap();
        s.mark_started(&[("a-1", mark(1))]).unwrap();
        let mut retried = r.clone();
        retried.next_at_ms = 5000;
        let count = CrashCount {
            cage: 1,
            worker: 0,
            signal: None,
        };
        s.attempt_failed(&r, &retried, Some(&count)).unwrap();
        assert!(s.start_marks().unwrap().is_empty());
        assert_eq!(s.crashes("a-1").unwrap(), Some(count.clone()));
        assert_eq!(s.due(5000, 10).unwrap().len(), 1);

        // A failure that was no crash leaves the count as it was.
        s.mark_started(&[("a-1", mark(2))]).unwrap();
        s.attempt_failed(&retried, &retried, None).unwrap();
        assert!(s.start_marks().unwrap().is_empty());
        assert_eq!(s.crashes("a-1").unwrap(), Some(count));
    }

    #[test]
    fn a_call_that_leaves_the_queue_takes_its_mark_and_count_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        for id in ["done", "dead", "cancelled"] {
            s.insert(&record(id)).unwrap();
            let r = s.get(id).unwrap().unwrap();
            s.mark_started(&[(id, mark(1))]).unwrap();
            let count = CrashCount {
                cage: 0,
                worker: 2,
                signal: Some("SIGSEGV".into()),
            };
            s.attempt_failed(&r, &r, Some(&count)).unwrap();
            s.mark_started(&[(id, mark(2))]).unwrap();
        }
        s.finish(&s.get("done").unwrap().unwrap()).unwrap();
        let dead = s.get("dead").unwrap().unwrap();
        s.bury(&dead, &dead).unwrap();
        s.cancel("cancelled").unwrap();
        assert!(s.start_marks().unwrap().is_empty());
        for id in ["done", "dead", "cancelled"] {
            assert_eq!(s.crashes(id).unwrap(), None, "{id}");
        }
        // Revived, the dead call starts a fresh count.
        s.revive("dead", 9000).unwrap().unwrap();
        assert_eq!(s.crashes("dead").unwrap(), None);
    }

    #[test]
    fn marks_of_calls_gone_or_stopped_deliberately_can_be_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        s.mark_started(&[("gone", mark(1)), ("stopped", mark(2))])
            .unwrap();
        s.drop_start_marks(&["gone", "stopped"]).unwrap();
        assert!(s.start_marks().unwrap().is_empty());
    }
}
