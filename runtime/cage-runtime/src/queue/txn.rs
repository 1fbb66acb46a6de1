//! [`Txn`]: several changes to the queue tree applied as one journal entry, so a crash leaves all
//! of them or none: a chain step's completion, its chain's new state and the next step's call
//! (or the report to the chain's owner) are one such change.

use super::journal::Batch;
use super::keys::{self, CALL, DEAD};
use super::store::encode;
use super::{QueueError, QueueStore};
use crate::model::call::{CallRecord, Stage};
use crate::model::chain::ChainRecord;

/// Changes collected for one atomic apply; nothing is written before [`Txn::commit`].
pub struct Txn<'a> {
    store: &'a QueueStore,
    batch: Batch,
    last_seq: u64,
}

impl QueueStore {
    /// An empty transaction on this store.
    pub fn txn(&self) -> Txn<'_> {
        Txn {
            store: self,
            batch: Batch::default(),
            last_seq: 0,
        }
    }
}

impl Txn<'_> {
    /// Stores a new pending call in its queue's order and schedules it.
    pub fn insert_call(&mut self, record: &CallRecord) -> Result<(), QueueError> {
        let mut record = record.clone();
        record.seq = self.store.next_seq()?;
        self.last_seq = record.seq;
        self.batch
            .insert(keys::with_id(CALL, &record.call.id), encode(&record));
        self.batch.insert(
            QueueStore::due_key(&record),
            super::calls::due_value(&record),
        );
        self.store.order_entry(&mut self.batch, &record);
        Ok(())
    }

    /// Removes a pending call that is done with on this cage, with its start mark and crash
    /// count (a revived call starts a fresh count). A call executed here is remembered in the
    /// ledger for its queue's retention, so that one offered again is not run twice.
    pub fn finish(&mut self, record: &CallRecord) {
        if record.stage == Stage::Execute {
            self.batch.remember(self.store.ledger_entry(record));
        }
        self.forget(record);
    }

    /// Removes a pending call as if it had never been stored (a take-back).
    pub(super) fn forget(&mut self, record: &CallRecord) {
        self.batch.remove(QueueStore::due_key(record));
        self.batch.remove(QueueStore::order_key(record));
        self.batch
            .remove(keys::with_id(keys::EXECUTED, &record.call.id));
        self.batch
            .remove(keys::with_id(keys::STARTED, &record.call.id));
        self.batch
            .remove(keys::with_id(keys::CRASHES, &record.call.id));
        self.batch.remove(keys::with_id(CALL, &record.call.id));
    }

    /// Moves pending `old` to dead letters as `dead`.
    pub fn bury(&mut self, old: &CallRecord, dead: &CallRecord) {
        self.finish(old);
        self.batch
            .insert(keys::with_id(DEAD, &dead.call.id), encode(dead));
    }

    /// Stores chain `chain` (new, or changed from `old`), keeping its indexes in step.
    pub fn put_chain(&mut self, chain: &ChainRecord, old: Option<&ChainRecord>) {
        self.batch
            .insert(keys::with_id(keys::CHAIN, &chain.id), encode(chain));
        if old.is_none() {
            if let Some(p) = &chain.parent {
                self.batch.insert(keys::child(p, &chain.id), &[][..]);
            }
        }
        if let (Some(at), None) = (chain.ended_ms, old.and_then(|o| o.ended_ms)) {
            self.batch.insert(keys::ended(at, &chain.id), &[][..]);
        }
    }

    /// Removes `key` (for changes the queue module makes itself).
    pub(super) fn remove(&mut self, key: Vec<u8>) {
        self.batch.remove(key);
    }

    /// Stores the members of group `id`.
    pub fn put_group(&mut self, id: &str, members: &[String]) {
        self.batch
            .insert(keys::with_id(keys::GROUP, id), encode(&members.to_vec()));
    }

    /// Applies every change at once.
    pub fn commit(self) -> Result<(), QueueError> {
        self.store.apply_stored(self.batch, self.last_seq)
    }

    /// Applies every change at once and syncs the journal (for a take-back; stores no call).
    pub(super) fn commit_durably(self) -> Result<(), QueueError> {
        debug_assert_eq!(
            self.last_seq, 0,
            "a durable commit publishes no stored call"
        );
        self.store.apply_durably(self.batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chains::parse_steps;
    use crate::model::chain::ChainState;

    fn chain(id: &str, parent: &str, ordinal: u32) -> ChainRecord {
        ChainRecord::new(
            id.into(),
            "a",
            Some(parent.into()),
            ordinal,
            None,
            parse_steps("m.f").unwrap(),
            b"{}".to_vec(),
            Some("retry".into()),
            1000,
            false,
        )
    }

    #[test]
    fn children_are_listed_in_start_order_and_finished_chains_expire() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let mut t = s.txn();
        // Ids sort c10 < c2; the ordinal keeps start order.
        t.put_chain(&chain("p.c10", "p", 10), None);
        t.put_chain(&chain("p.c2", "p", 2), None);
        t.put_chain(&chain("q.c0", "q", 0), None);
        t.commit().unwrap();
        let ids: Vec<String> = s.children("p").unwrap().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, vec!["p.c2", "p.c10"]);

        let old = s.chain("p.c2").unwrap().unwrap();
        let mut ended = old.clone();
        ended.state = ChainState::Done;
        ended.ended_ms = Some(5000);
        let mut t = s.txn();
        t.put_chain(&ended, Some(&old));
        t.commit().unwrap();
        assert_eq!(
            s.expire_chains(5000, 100).unwrap(),
            0,
            "not yet past retention"
        );
        assert_eq!(s.expire_chains(5001, 100).unwrap(), 1);
        assert!(s.chain("p.c2").unwrap().is_none());
        assert_eq!(s.children("p").unwrap().len(), 1);
        assert_eq!(s.chains(&|_| true, 10).unwrap().len(), 2);
    }
}
