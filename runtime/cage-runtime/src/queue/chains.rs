//! The chains table: chain records (`g`), the children a call started (`p`), groups under a
//! `max_parallel` (`u`) and the end-time index that expires finished chains (`z`).

use super::journal::Batch;
use super::keys;
use super::store::decode;
use super::{QueueError, QueueStore};
use crate::model::chain::ChainRecord;

impl QueueStore {
    /// The chain record `id`, if this cage holds it.
    pub fn chain(&self, id: &str) -> Result<Option<ChainRecord>, QueueError> {
        let key = keys::with_id(keys::CHAIN, id);
        match self.db().get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The chains call `parent` started, in the order it started them.
    pub fn children(&self, parent: &str) -> Result<Vec<ChainRecord>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix(keys::child_prefix(parent)) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let id = String::from_utf8_lossy(&k[keys::child_prefix(parent).len()..]).into_owned();
            if let Some(c) = self.chain(&id)? {
                out.push(c);
            }
        }
        out.sort_by_key(|c| c.ordinal);
        Ok(out)
    }

    /// Every chain record that `keep` selects, at most `limit`, unreadable ones left out.
    pub fn chains(
        &self,
        keep: &dyn Fn(&ChainRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<ChainRecord>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix([keys::CHAIN]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            match decode::<ChainRecord>(&k, &v) {
                Ok(c) if keep(&c) => {
                    out.push(c);
                    if out.len() >= limit {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::error!("{e}; this chain is left out"),
            }
        }
        Ok(out)
    }

    /// Ids of the chains of group `id`, in start order.
    pub fn group(&self, id: &str) -> Result<Vec<String>, QueueError> {
        let key = keys::with_id(keys::GROUP, id);
        match self.db().get(&key).map_err(|e| self.err(e))? {
            Some(v) => decode(&key, &v),
            None => Ok(Vec::new()),
        }
    }

    /// Removes chain `chain` and its index entries (a start that was not made durable), and
    /// syncs the journal: a take-back is on disk before the refusal is answered (this sync also
    /// covers the removal of the chain's step call, written before).
    pub fn remove_chain(&self, chain: &ChainRecord) -> Result<(), QueueError> {
        let mut b = Batch::default();
        if let Some(p) = &chain.parent {
            b.remove(keys::child(p, &chain.id));
        }
        if let Some(g) = &chain.group {
            b.remove(keys::with_id(keys::GROUP, &g.id));
        }
        b.remove(keys::with_id(keys::CHAIN, &chain.id));
        self.apply_durably(b)
    }

    /// Removes chains that ended before `before_ms` (at most `limit`); returns how many.
    pub fn expire_chains(&self, before_ms: u64, limit: usize) -> Result<usize, QueueError> {
        let end = keys::ended(before_ms, "");
        let mut removed = 0;
        for item in self.db().range(vec![keys::ENDED]..end).take(limit) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let id = String::from_utf8_lossy(&k[9..]).into_owned();
            let mut b = Batch::default();
            b.remove(k);
            if let Some(c) = self.chain(&id)? {
                if let Some(p) = &c.parent {
                    b.remove(keys::child(p, &id));
                }
                if let Some(g) = &c.group {
                    b.remove(keys::with_id(keys::GROUP, &g.id));
                }
            }
            b.remove(keys::with_id(keys::CHAIN, &id));
            self.apply(b)?;
            removed += 1;
        }
        Ok(removed)
    }
}
