//! The module state table: each module's keys and values (`s`), and the executed marks (`e`)
//! that a queued call's state writes are committed with, so it never runs twice.

use super::journal::Batch;
use super::keys;
use super::{QueueError, QueueStore};

impl QueueStore {
    /// The value of `key` in `module`'s state.
    pub fn state_get(&self, module: &str, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .db()
            .get(keys::state(module, key))
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// Applies `module`'s state `writes` (`None` deletes) in one batch; with `executed` (a call
    /// id and the call's encoded outcome), also marks that call as executed in the same batch,
    /// so it is never run again and its outcome can be answered instead.
    pub fn commit_state(
        &self,
        module: &str,
        writes: &std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        executed: Option<(&str, &[u8])>,
    ) -> Result<(), QueueError> {
        let mut b = Batch::default();
        for (key, value) in writes {
            match value {
                Some(v) => b.insert(keys::state(module, key), v.as_slice()),
                None => b.remove(keys::state(module, key)),
            }
        }
        if let Some((id, outcome)) = executed {
            b.insert(keys::with_id(keys::EXECUTED, id), outcome);
        }
        self.apply(b)
    }

    /// The outcome call `id` committed with its effects, if it did (see
    /// [`QueueStore::commit_state`]).
    pub fn executed(&self, id: &str) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .db()
            .get(keys::with_id(keys::EXECUTED, id))
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }
}
