//! The history table: what a target remembers of the calls it accepted, so a re-sent call or a
//! second call with the same idempotency key is recognised until its `retention` ends.
//!
//! - A call is known while it is pending (`c`) or dead (`x`), and once finished by the ledger
//!   (see [`super::ledger`]: 16 bytes a call, in a file of its own).
//! - A call with an idempotency key also has a history record (`h`, expiring by the expiry
//!   index `t`) naming its key entry (`k` → the id of the call that owns it), so a second call
//!   with that key can be told which call it duplicates.
//! - Databases from before the ledger hold `h` records for every call; they are still read
//!   until they expire.

use super::calls::due_value;
use super::journal::Batch;
use super::keys::{self, CALL, EXPIRY};
use super::ledger;
use super::store::{decode, encode};
use super::{QueueError, QueueStore};
use crate::model::call::CallRecord;
use serde::{Deserialize, Serialize};

/// What the target did with an offered call.
#[derive(Debug, Clone, PartialEq)]
pub enum Acceptance {
    /// Stored; it will run here.
    Accepted,
    /// This id was accepted before (a re-send after a lost acknowledgement).
    AlreadyAccepted,
    /// Another call with the same idempotency key was accepted; its id.
    DuplicateKey(String),
}

/// What the target remembers of an accepted call, to refuse it a second time.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(super) struct History {
    pub(super) accepted_ms: u64,
    pub(super) expires_ms: u64,
    pub(super) key: Option<Vec<u8>>,
}

impl QueueStore {
    /// Stores an offered call for execution here unless it, or its idempotency key, was
    /// accepted before; history is kept until `expires_ms`.
    pub fn accept(
        &self,
        record: &CallRecord,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<Acceptance, QueueError> {
        let id = &record.call.id;
        if self.known(id, record.call.key.is_some(), now_ms)? {
            return Ok(Acceptance::AlreadyAccepted);
        }
        let key = record
            .call
            .key
            .as_ref()
            .map(|k| keys::idempotency(&record.call.target, &record.call.queue, k));
        if let Some(k) = &key {
            if let Some(owner) = self.db().get(k).map_err(|e| self.err(e))? {
                return Ok(Acceptance::DuplicateKey(
                    String::from_utf8_lossy(&owner).into_owned(),
                ));
            }
        }
        let mut record = record.clone();
        record.seq = self.next_seq()?;
        let mut b = Batch::default();
        b.insert(keys::with_id(CALL, id), encode(&record));
        b.insert(Self::due_key(&record), due_value(&record));
        self.order_entry(&mut b, &record);
        if let Some(k) = key {
            b.insert(
                keys::with_id(keys::HISTORY, id),
                encode(&History {
                    accepted_ms: now_ms,
                    expires_ms,
                    key: Some(k.clone()),
                }),
            );
            b.insert(keys::expiry(expires_ms, id), &[][..]);
            b.insert(k, id.as_bytes());
        }
        self.apply_stored(b, record.seq)?;
        Ok(Acceptance::Accepted)
    }

    /// Whether call `id` was accepted here and is still remembered: pending, dead, in the
    /// ledger, or (for a call with an idempotency key, or any call in a database from before
    /// the ledger) in a history record.
    fn known(&self, id: &str, keyed: bool, now_ms: u64) -> Result<bool, QueueError> {
        let db = self.db();
        let has = |prefix| {
            db.contains_key(keys::with_id(prefix, id))
                .map_err(|e| self.err(e))
        };
        Ok(has(CALL)?
            || has(keys::DEAD)?
            || self
                .ledger()
                .contains(&ledger::digest(id), ledger::expiry(now_ms))?
            || ((keyed || self.legacy_history()) && has(keys::HISTORY)?))
    }

    /// Drops history entries that expired by `now_ms` (at most `limit`), so their ids and keys
    /// could be accepted again; entries of calls still pending here are looked at again
    /// `recheck_ms` later. One change for the whole batch (one journal entry, not one per
    /// entry). Returns how many were dropped.
    pub fn expire_history(
        &self,
        now_ms: u64,
        recheck_ms: u64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let end = keys::expiry(now_ms, "\u{10FFFF}");
        let mut b = Batch::default();
        let (mut seen, mut expired) = (0, 0);
        for item in self.db().range(vec![EXPIRY]..end).take(limit) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some((_, id)) = keys::parse_expiry(&k) else {
                continue;
            };
            seen += 1;
            b.remove(k.clone());
            if self
                .db()
                .contains_key(keys::with_id(CALL, &id))
                .map_err(|e| self.err(e))?
            {
                // Still pending: its history must outlive it.
                b.insert(
                    keys::expiry(now_ms.saturating_add(recheck_ms), &id),
                    &[][..],
                );
                continue;
            }
            let hkey = keys::with_id(keys::HISTORY, &id);
            if let Some(h) = self.db().get(&hkey).map_err(|e| self.err(e))? {
                let h: History = decode(&hkey, &h)?;
                if let Some(key) = h.key {
                    b.remove(key);
                }
            }
            b.remove(hkey);
            expired += 1;
        }
        if seen > 0 {
            self.apply(b)?;
        }
        if seen < limit {
            // The end of a sweep: a moment to give back the ledger's expired space.
            self.compact_ledger(now_ms)?;
        }
        Ok(expired)
    }

    /// Undoes the storing of pending call `id` whose acknowledgement failed: the record and, for
    /// an accepted call, its deduplication history and idempotency key, so that the same call
    /// offered again is taken as new rather than as "already accepted" (which would lose it).
    /// The removal is synced before this returns; an error means the call may still come back
    /// after a crash (its outcome is unknown).
    pub fn take_back(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let Some(record) = self.get(id)? else {
            return Ok(None);
        };
        let mut t = self.txn();
        t.forget(&record);
        let hkey = keys::with_id(keys::HISTORY, id);
        if let Some(h) = self.db().get(&hkey).map_err(|e| self.err(e))? {
            let h: History = decode(&hkey, &h)?;
            if let Some(key) = h.key {
                t.remove(key);
            }
            t.remove(keys::expiry(h.expires_ms, id));
            t.remove(hkey);
        }
        t.commit_durably()?;
        Ok(Some(record))
    }
}
