//! [`QueueStore`]: the operations on a cage's queue tree. Every change that touches several
//! keys is one [`Batch`], appended to the [`Journal`] before it is applied, so a crash leaves
//! either the old state or the new one. Nothing here waits for the disk: durability is
//! [`super::GroupCommit`]'s job, asked for by the caller.

use super::journal::{Batch, Journal};
use super::keys::{self, CALL, DEAD, DUE, EXPIRY};
use super::QueueError;
use crate::model::call::CallRecord;
use crate::model::job::Job;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Cache sled may use unless told otherwise; bounded so a million pending calls do not mean a
/// million in memory (64 MiB put a cage holding a million pending calls at 340 MB RSS, 32 MiB
/// at 270 MB).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A call whose next attempt is due, as the due index lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct DueCall {
    /// The call id.
    pub id: String,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: i32,
    /// When it became due (ms since the epoch).
    pub due_ms: u64,
    /// The cage it is to be handed to, for a call still to be delivered (indexes written
    /// before this was recorded say `None` for every call).
    pub target: Option<String>,
}

/// The due index's value for `record`: its queue, and for a call to deliver, its target, so
/// the scheduler can hold back calls for a busy cage without reading their records.
pub(super) fn due_value(record: &CallRecord) -> Vec<u8> {
    let mut v = record.call.queue.as_bytes().to_vec();
    if record.stage == crate::model::call::Stage::Deliver {
        v.push(0);
        v.extend_from_slice(record.call.target.as_bytes());
    }
    v
}

/// Reads a due index value: the queue, and the target if one is recorded.
fn parse_due_value(v: &[u8]) -> (String, Option<String>) {
    let text = String::from_utf8_lossy(v);
    match text.split_once('\0') {
        Some((queue, target)) => (queue.to_owned(), Some(target.to_owned())),
        None => (text.into_owned(), None),
    }
}

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
struct History {
    accepted_ms: u64,
    expires_ms: u64,
    key: Option<Vec<u8>>,
}

/// A cage's queue, in one sled tree.
pub struct QueueStore {
    path: PathBuf,
    db: sled::Db,
    journal: Arc<Journal>,
    issued: Arc<AtomicU64>,
}

/// Format of stored values, written as their first byte so a later format can read (or
/// refuse, by name) what an earlier one wrote. Format 2 added the chain link of a call; every
/// other value is laid out as in format 1.
const FORMAT: u8 = 2;
/// The first format, still read.
const FORMAT_1: u8 = 1;

fn corrupt(key: &[u8]) -> impl FnOnce(postcard::Error) -> QueueError + '_ {
    move |source| QueueError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

/// Decodes a call record of either format.
pub(super) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<CallRecord, QueueError> {
    match bytes.split_first() {
        Some((&FORMAT_1, body)) => postcard::from_bytes::<super::legacy::CallRecord>(body)
            .map(Into::into)
            .map_err(corrupt(key)),
        _ => decode(key, bytes),
    }
}

/// Decodes a value other than a call record (whose layout is the same in both formats).
pub(super) fn decode<T: for<'a> Deserialize<'a>>(
    key: &[u8],
    bytes: &[u8],
) -> Result<T, QueueError> {
    let printable = || String::from_utf8_lossy(key).into_owned();
    match bytes.split_first() {
        Some((&(FORMAT | FORMAT_1), body)) => postcard::from_bytes(body).map_err(corrupt(key)),
        Some((&other, _)) => Err(QueueError::Format {
            key: printable(),
            found: other,
            expected: FORMAT,
        }),
        None => Err(QueueError::Format {
            key: printable(),
            found: 0,
            expected: FORMAT,
        }),
    }
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    postcard::to_extend(value, vec![FORMAT]).unwrap_or_default()
}

impl QueueStore {
    /// Opens (or creates) the queue database in `dir` with the default cache.
    pub fn open(dir: &Path) -> Result<Self, QueueError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the queue database in `dir`, letting sled cache `cache_bytes`;
    /// refuses a directory whose files held data that sled could not read back as this cage's
    /// database.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Self, QueueError> {
        let had_data = std::fs::metadata(dir.join("db")).is_ok_and(|m| m.len() > 0);
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // The journal makes changes durable; sled is flushed only at checkpoints.
            .flush_every_ms(None)
            .open()
            .map_err(|source| QueueError::Storage {
                path: dir.display().to_string(),
                source,
            })?;
        // Everything stored before this open is on disk: start the issued sequence there, so
        // the durable watermark (see `GroupCommit`) covers it from the first moment.
        let storage = |source| QueueError::Storage {
            path: dir.display().to_string(),
            source,
        };
        let issued = db.generate_id().map_err(storage)?;
        // sled starts from whatever it can read of a damaged file, possibly nothing: without the
        // marker, "empty" and "lost" would look the same. A database from before the marker
        // (records but no marker) gets one.
        if db.get(keys::MARKER).map_err(storage)?.is_none() {
            if had_data && db.first().map_err(storage)?.is_none() {
                return Err(QueueError::Unrecognised {
                    path: dir.display().to_string(),
                });
            }
            db.insert(keys::MARKER, &[FORMAT][..]).map_err(storage)?;
            db.flush().map_err(storage)?;
        }
        let (journal, replayed) = Journal::open(dir, &db)?;
        if replayed.entries > 0 {
            tracing::info!(
                "queue database {}: {} change(s) replayed from the journal",
                dir.display(),
                replayed.entries
            );
        }
        if replayed.voided > 0 {
            tracing::info!(
                "queue database {}: {} change(s) that failed and were taken back left out of \
                 the replay",
                dir.display(),
                replayed.voided
            );
        }
        Ok(QueueStore {
            path: dir.to_owned(),
            db,
            journal: Arc::new(journal),
            issued: Arc::new(AtomicU64::new(issued)),
        })
    }

    /// The sled database; only the queue module writes it, and only through the journal.
    pub(super) fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The journal, for group commit.
    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Makes every change so far durable in sled itself and empties the journal (at shutdown,
    /// and from group commit as the journal grows).
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        self.journal.checkpoint(&self.db)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn err(&self, source: sled::Error) -> QueueError {
        QueueError::Storage {
            path: self.path.display().to_string(),
            source,
        }
    }

    pub(super) fn apply(&self, batch: Batch) -> Result<(), QueueError> {
        self.journal.apply(&self.db, &batch, || {})
    }

    /// Applies `batch` and syncs the journal before returning (for take-backs, which must be
    /// on disk before a refusal is answered).
    pub(super) fn apply_durably(&self, batch: Batch) -> Result<(), QueueError> {
        self.journal.apply_durably(&self.db, &batch)
    }

    /// Why this queue takes no more writes, if it stopped (see [`Journal::apply`]).
    pub fn stopped(&self) -> Option<&str> {
        self.journal.stopped()
    }

    pub(super) fn due_key(r: &CallRecord) -> Vec<u8> {
        keys::due(r.next_at_ms, r.call.priority, &r.call.id)
    }

    pub(super) fn next_seq(&self) -> Result<u64, QueueError> {
        self.db.generate_id().map_err(|e| self.err(e))
    }

    /// Applies a batch that stored calls up to sequence `seq`, then publishes `seq` as issued:
    /// only after the batch is applied may a flush that starts later count it as covered.
    pub(super) fn apply_stored(&self, batch: Batch, seq: u64) -> Result<(), QueueError> {
        self.journal.apply(&self.db, &batch, || {
            self.issued.fetch_max(seq, Ordering::AcqRel);
        })
    }

    /// The highest sequence number given to a stored call so far, shared with group commit.
    pub fn issued(&self) -> Arc<AtomicU64> {
        self.issued.clone()
    }

    pub(super) fn order_key(r: &CallRecord) -> Vec<u8> {
        keys::order(&r.call.queue, r.seq)
    }

    /// Stores a new pending call, gives it its place in its queue's order, and schedules it.
    pub fn insert(&self, record: &CallRecord) -> Result<(), QueueError> {
        let mut t = self.txn();
        t.insert_call(record)?;
        t.commit()
    }

    /// Id of the first pending call of `queue` in stored order: the only one a queue with
    /// `keep_order` may run.
    pub fn head_of(&self, queue: &str) -> Result<Option<String>, QueueError> {
        match self.db.scan_prefix(keys::order_prefix(queue)).next() {
            Some(item) => Ok(Some(
                String::from_utf8_lossy(&item.map_err(|e| self.err(e))?.1).into_owned(),
            )),
            None => Ok(None),
        }
    }

    /// Stores an offered call for execution here unless it, or its idempotency key, was
    /// accepted before; history is kept until `expires_ms`.
    pub fn accept(
        &self,
        record: &CallRecord,
        now_ms: u64,
        expires_ms: u64,
    ) -> Result<Acceptance, QueueError> {
        let id = &record.call.id;
        if self
            .db
            .contains_key(keys::with_id(keys::HISTORY, id))
            .map_err(|e| self.err(e))?
        {
            return Ok(Acceptance::AlreadyAccepted);
        }
        let key = record
            .call
            .key
            .as_ref()
            .map(|k| keys::idempotency(&record.call.target, &record.call.queue, k));
        if let Some(k) = &key {
            if let Some(owner) = self.db.get(k).map_err(|e| self.err(e))? {
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
        b.insert(Self::order_key(&record), id.as_bytes());
        b.insert(
            keys::with_id(keys::HISTORY, id),
            encode(&History {
                accepted_ms: now_ms,
                expires_ms,
                key: key.clone(),
            }),
        );
        b.insert(keys::expiry(expires_ms, id), &[][..]);
        if let Some(k) = key {
            b.insert(k, id.as_bytes());
        }
        self.apply_stored(b, record.seq)?;
        Ok(Acceptance::Accepted)
    }

    /// The pending record of `id`.
    pub fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let key = keys::with_id(CALL, id);
        match self.db.get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_record(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The dead record of `id`.
    pub fn get_dead(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let key = keys::with_id(DEAD, id);
        match self.db.get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_record(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// Replaces pending record `old` by `new` (same id), moving its place in the schedule.
    pub fn update(&self, old: &CallRecord, new: &CallRecord) -> Result<(), QueueError> {
        let mut b = Batch::default();
        b.remove(Self::due_key(old));
        b.insert(keys::with_id(CALL, &new.call.id), encode(new));
        b.insert(Self::due_key(new), due_value(new));
        self.apply(b)
    }

    /// Removes a pending call that is done with on this cage (executed, or accepted by its target).
    pub fn finish(&self, record: &CallRecord) -> Result<(), QueueError> {
        let mut t = self.txn();
        t.finish(record);
        t.commit()
    }

    /// Moves pending `old` to dead letters as `dead` (which carries the reason).
    pub fn bury(&self, old: &CallRecord, dead: &CallRecord) -> Result<(), QueueError> {
        let mut t = self.txn();
        t.bury(old, dead);
        t.commit()
    }

    /// Moves dead call `id` back to pending, due at `now_ms` with a fresh give-up window.
    pub fn revive(&self, id: &str, now_ms: u64) -> Result<Option<CallRecord>, QueueError> {
        let Some(mut record) = self.get_dead(id)? else {
            return Ok(None);
        };
        record.dead_reason = None;
        record.next_at_ms = now_ms;
        record.window_start_ms = now_ms;
        let mut b = Batch::default();
        b.remove(keys::with_id(DEAD, id));
        b.insert(keys::with_id(CALL, id), encode(&record));
        b.insert(Self::due_key(&record), due_value(&record));
        // Back in its old place: in an ordered queue it again goes before later calls.
        b.insert(Self::order_key(&record), id.as_bytes());
        self.apply(b)?;
        Ok(Some(record))
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
        t.finish(&record);
        let hkey = keys::with_id(keys::HISTORY, id);
        if let Some(h) = self.db.get(&hkey).map_err(|e| self.err(e))? {
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

    /// Removes call `id`, pending or dead; returns what it was.
    pub fn cancel(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        if let Some(record) = self.get(id)? {
            self.finish(&record)?;
            return Ok(Some(record));
        }
        if let Some(record) = self.get_dead(id)? {
            let mut b = Batch::default();
            b.remove(keys::with_id(DEAD, id));
            self.apply(b)?;
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Up to `limit` calls due at or before `now_ms`, earliest first (higher priority first at
    /// equal times); none from a stopped queue (see [`QueueStore::due_where`]).
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<DueCall>, QueueError> {
        if self.stopped().is_some() {
            return Ok(Vec::new());
        }
        let end = keys::due(now_ms, i32::MIN, "\u{10FFFF}");
        let mut out = Vec::new();
        for item in self.db.range(vec![DUE]..end).take(limit) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some((due_ms, priority, id)) = keys::parse_due(&k) {
                let (queue, target) = parse_due_value(&v);
                out.push(DueCall {
                    id,
                    queue,
                    priority,
                    due_ms,
                    target,
                });
            }
        }
        Ok(out)
    }

    /// Up to `want` calls due at or before `now_ms` for which `skip` is false, in due order,
    /// looking at no more than `max_scan` index entries.
    ///
    /// A stopped queue lists none: its records may hold part of a change that was taken back,
    /// and no outcome could be recorded, so a call started now could run again and again.
    pub fn due_where(
        &self,
        now_ms: u64,
        want: usize,
        max_scan: usize,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<DueCall>, QueueError> {
        if self.stopped().is_some() {
            return Ok(Vec::new());
        }
        let end = keys::due(now_ms, i32::MIN, "\u{10FFFF}");
        let mut out = Vec::new();
        for item in self.db.range(vec![DUE]..end).take(max_scan) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some((due_ms, priority, id)) = keys::parse_due(&k) {
                if !skip(&id) {
                    let (queue, target) = parse_due_value(&v);
                    out.push(DueCall {
                        id,
                        queue,
                        priority,
                        due_ms,
                        target,
                    });
                    if out.len() >= want {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The value of `key` in `module`'s state.
    pub fn state_get(&self, module: &str, key: &[u8]) -> Result<Option<Vec<u8>>, QueueError> {
        Ok(self
            .db
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
            .db
            .get(keys::with_id(keys::EXECUTED, id))
            .map_err(|e| self.err(e))?
            .map(|v| v.to_vec()))
    }

    /// Stores (or replaces) a job.
    pub fn put_job(&self, job: &Job) -> Result<(), QueueError> {
        let mut b = Batch::default();
        b.insert(keys::with_id(keys::JOB, &job.id), encode(job));
        self.apply(b)
    }

    /// Removes a job; whether it existed.
    pub fn remove_job(&self, id: &str) -> Result<bool, QueueError> {
        let key = keys::with_id(keys::JOB, id);
        if !self.db.contains_key(&key).map_err(|e| self.err(e))? {
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
        for item in self.db.scan_prefix([keys::JOB]) {
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
                .db
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
            b.insert(Self::order_key(&record), record.call.id.as_bytes());
        }
        b.insert(keys::with_id(keys::JOB, &job.id), encode(job));
        self.apply_stored(b, last_seq)
    }

    /// Moves the unreadable record of due call `due` out of the schedule into quarantine
    /// (`q` + id, bytes kept as they were), so it neither blocks the queue nor is lost.
    pub fn quarantine(&self, due: &DueCall) -> Result<(), QueueError> {
        let call_key = keys::with_id(CALL, &due.id);
        let mut b = Batch::default();
        if let Some(bytes) = self.db.get(&call_key).map_err(|e| self.err(e))? {
            b.insert(keys::with_id(keys::QUARANTINE, &due.id), bytes);
        }
        b.remove(call_key);
        b.remove(keys::due(due.due_ms, due.priority, &due.id));
        self.apply(b)
    }

    /// When the earliest scheduled call is due, if any is.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        match self.db.scan_prefix([DUE]).next() {
            Some(item) => {
                Ok(keys::parse_due(&item.map_err(|e| self.err(e))?.0).map(|(at, _, _)| at))
            }
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        prefix: u8,
        keep: &dyn Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([prefix]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            // One unreadable record must not hide every other call from the operator.
            let record: CallRecord = match decode_record(&k, &v) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("{e}; skipped in this listing (quarantined when it falls due)");
                    continue;
                }
            };
            if keep(&record) {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Pending calls that `keep` selects, at most `limit`.
    pub fn pending(
        &self,
        keep: &dyn Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        self.scan(CALL, keep, limit)
    }

    /// Dead calls that `keep` selects, at most `limit`.
    pub fn dead(
        &self,
        keep: &dyn Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        self.scan(DEAD, keep, limit)
    }

    /// Number of (pending, dead) calls.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.db.scan_prefix([CALL]).count(),
            self.db.scan_prefix([DEAD]).count(),
        )
    }

    /// Pending and dead calls per queue: the pending from the order index (keys only), the
    /// dead by reading their records.
    pub fn counts_by_queue(&self) -> Result<BTreeMap<String, (u64, u64)>, QueueError> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for item in self.db.scan_prefix([keys::ORDER]) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            // `o` + queue + 0 + seq (8 bytes).
            let Some(queue) = k.get(1..k.len().saturating_sub(9)) else {
                continue;
            };
            let queue = String::from_utf8_lossy(queue);
            match out.get_mut(queue.as_ref()) {
                Some(c) => c.0 += 1,
                None => {
                    out.insert(queue.into_owned(), (1, 0));
                }
            }
        }
        for record in self.dead(&|_| true, usize::MAX)? {
            out.entry(record.call.queue).or_default().1 += 1;
        }
        Ok(out)
    }

    /// Drops history entries that expired by `now_ms` (at most `limit`), so their ids and keys
    /// could be accepted again; entries of calls still pending here are looked at again
    /// `recheck_ms` later. Returns how many were dropped.
    pub fn expire_history(
        &self,
        now_ms: u64,
        recheck_ms: u64,
        limit: usize,
    ) -> Result<usize, QueueError> {
        let end = keys::expiry(now_ms, "\u{10FFFF}");
        let mut expired = 0;
        for item in self.db.range(vec![EXPIRY]..end).take(limit) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            let Some((_, id)) = keys::parse_expiry(&k) else {
                continue;
            };
            let mut b = Batch::default();
            b.remove(k.clone());
            if self
                .db
                .contains_key(keys::with_id(CALL, &id))
                .map_err(|e| self.err(e))?
            {
                // Still pending: its history must outlive it.
                b.insert(
                    keys::expiry(now_ms.saturating_add(recheck_ms), &id),
                    &[][..],
                );
                self.apply(b)?;
                continue;
            }
            let hkey = keys::with_id(keys::HISTORY, &id);
            if let Some(h) = self.db.get(&hkey).map_err(|e| self.err(e))? {
                let h: History = decode(&hkey, &h)?;
                if let Some(key) = h.key {
                    b.remove(key);
                }
            }
            b.remove(hkey);
            self.apply(b)?;
            expired += 1;
        }
        Ok(expired)
    }
}

impl Drop for QueueStore {
    fn drop(&mut self) {
        // sled flushes itself when its last handle goes, and after some failures (a large
        // value's file it could not create) that flush waits forever, so the process would
        // never exit. A stopped queue needs no flush: no checkpoint ran since it stopped, so
        // the journal holds every change, and the replay at the next start repairs sled. One
        // handle kept forever means sled's flush-on-drop never runs.
        if self.stopped().is_some() {
            std::mem::forget(self.db.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::call::{Attempt, QueuedCall, Stage};

    fn call(id: &str, priority: i32, key: Option<&str>) -> QueuedCall {
        QueuedCall {
            id: id.into(),
            source: "a".into(),
            target: "b".into(),
            module: "m".into(),
            method: "f".into(),
            args: b"null".to_vec(),
            queue: "retry".into(),
            priority,
            key: key.map(Into::into),
            enqueued_at_ms: 1000,
            not_before_ms: 0,
            chain: None,
        }
    }

    #[test]
    fn due_lists_only_what_is_due_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let mut late = CallRecord::new(call("late", 0, None), Stage::Execute, 5000);
        s.insert(&CallRecord::new(call("low", 0, None), Stage::Execute, 1000))
            .unwrap();
        s.insert(&CallRecord::new(
            call("high", 9, None),
            Stage::Execute,
            1000,
        ))
        .unwrap();
        s.insert(&late).unwrap();
        let ids: Vec<String> = s.due(2000, 10).unwrap().into_iter().map(|d| d.id).collect();
        assert_eq!(ids, vec!["high", "low"]);
        assert_eq!(s.next_due_ms().unwrap(), Some(1000));

        let old = late.clone();
        late.next_at_ms = 1500;
        s.update(&old, &late).unwrap();
        assert_eq!(s.due(2000, 10).unwrap().len(), 3);
        assert_eq!(s.counts(), (3, 0));
    }

    #[test]
    fn accept_deduplicates_by_id_and_key_until_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let r = CallRecord::new(call("c1", 0, Some("order-7")), Stage::Execute, 1000);
        assert_eq!(s.accept(&r, 1000, 9000).unwrap(), Acceptance::Accepted);
        assert_eq!(
            s.accept(&r, 1100, 9000).unwrap(),
            Acceptance::AlreadyAccepted
        );
        let other = CallRecord::new(call("c2", 0, Some("order-7")), Stage::Execute, 1000);
        assert_eq!(
            s.accept(&other, 1200, 9000).unwrap(),
            Acceptance::DuplicateKey("c1".into())
        );

        // Pending calls keep their history past expiry; finished ones lose it.
        assert_eq!(s.expire_history(10_000, 50_000, 100).unwrap(), 0);
        s.finish(&r).unwrap();
        s.accept(
            &CallRecord::new(call("c3", 0, None), Stage::Execute, 1000),
            1000,
            9000,
        )
        .unwrap();
        s.finish(&s.get("c3").unwrap().unwrap()).unwrap();
        // c3 expires now; c1 was pushed back to 60 000 while it was pending.
        assert_eq!(s.expire_history(10_000, 50_000, 100).unwrap(), 1);
        assert_eq!(
            s.accept(&other, 11_000, 20_000).unwrap(),
            Acceptance::DuplicateKey("c1".into())
        );
        assert_eq!(s.expire_history(60_000, 50_000, 100).unwrap(), 1);
        assert_eq!(
            s.accept(&other, 61_000, 90_000).unwrap(),
            Acceptance::Accepted
        );
    }

    #[test]
    fn a_call_taken_back_can_be_accepted_again() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let r = CallRecord::new(call("c1", 0, Some("k")), Stage::Execute, 1000);
        assert_eq!(s.accept(&r, 1000, 9000).unwrap(), Acceptance::Accepted);
        assert!(s.take_back("c1").unwrap().is_some());
        assert_eq!(s.counts(), (0, 0));
        assert_eq!(s.accept(&r, 1100, 9000).unwrap(), Acceptance::Accepted);
        assert!(s.take_back("missing").unwrap().is_none());
    }

    #[test]
    fn head_of_follows_stored_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        assert_eq!(s.head_of("retry").unwrap(), None);
        s.insert(&CallRecord::new(
            call("first", 0, None),
            Stage::Execute,
            9000,
        ))
        .unwrap();
        s.insert(&CallRecord::new(
            call("second", 9, None),
            Stage::Execute,
            1000,
        ))
        .unwrap();
        assert_eq!(s.head_of("retry").unwrap().as_deref(), Some("first"));
        s.finish(&s.get("first").unwrap().unwrap()).unwrap();
        assert_eq!(s.head_of("retry").unwrap().as_deref(), Some("second"));
    }

    #[test]
    fn bury_revive_and_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let r = CallRecord::new(call("c1", 0, None), Stage::Execute, 1000);
        s.insert(&r).unwrap();
        let mut dead = r.clone();
        dead.dead_reason = Some("gave up".into());
        s.bury(&r, &dead).unwrap();
        assert_eq!(s.counts(), (0, 1));
        assert!(s.due(u64::MAX - 1, 10).unwrap().is_empty());

        let revived = s.revive("c1", 7000).unwrap().unwrap();
        assert_eq!(
            (
                revived.next_at_ms,
                revived.window_start_ms,
                revived.dead_reason
            ),
            (7000, 7000, None)
        );
        assert_eq!(s.due(7000, 10).unwrap().len(), 1);
        assert!(s.cancel("c1").unwrap().is_some());
        assert_eq!(s.counts(), (0, 0));
        assert!(s.cancel("c1").unwrap().is_none());
    }

    #[test]
    fn an_unreadable_record_is_skipped_and_can_be_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        s.insert(&CallRecord::new(
            call("good", 0, None),
            Stage::Execute,
            1000,
        ))
        .unwrap();
        s.insert(&CallRecord::new(call("bad", 0, None), Stage::Execute, 1000))
            .unwrap();
        s.db()
            .insert(keys::with_id(CALL, "bad"), &[9u8, 1, 2][..])
            .unwrap();
        assert!(matches!(
            s.get("bad"),
            Err(QueueError::Format { found: 9, .. })
        ));
        let listed: Vec<String> = s
            .pending(&|_| true, 10)
            .unwrap()
            .into_iter()
            .map(|r| r.call.id)
            .collect();
        assert_eq!(listed, vec!["good"]);

        let bad = s
            .due(2000, 10)
            .unwrap()
            .into_iter()
            .find(|d| d.id == "bad")
            .unwrap();
        s.quarantine(&bad).unwrap();
        assert_eq!(s.due(2000, 10).unwrap().len(), 1);
        assert!(s
            .db()
            .contains_key(keys::with_id(keys::QUARANTINE, "bad"))
            .unwrap());
    }

    #[test]
    fn a_record_of_format_1_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        // Format 1's layout: the call without its chain link, then the record's fields.
        let call = (
            "old",
            "a",
            "b",
            "m",
            "f",
            b"null".to_vec(),
            "retry",
            4i32,
            None::<String>,
            1000u64,
            0u64,
        );
        let record = (
            call,
            Stage::Execute,
            Vec::<Attempt>::new(),
            2000u64,
            1000u64,
            None::<String>,
            7u64,
        );
        let bytes = postcard::to_extend(&record, vec![FORMAT_1]).unwrap();
        s.db().insert(keys::with_id(CALL, "old"), bytes).unwrap();
        let r = s.get("old").unwrap().unwrap();
        assert_eq!((r.call.priority, r.call.chain, r.seq), (4, None, 7));
        assert_eq!(s.pending(&|_| true, 10).unwrap().len(), 1);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = QueueStore::open(dir.path()).unwrap();
            s.insert(&CallRecord::new(
                call("keep", 3, None),
                Stage::Deliver,
                1000,
            ))
            .unwrap();
            s.db().flush().unwrap();
        }
        let s = QueueStore::open(dir.path()).unwrap();
        let r = s.get("keep").unwrap().unwrap();
        assert_eq!((r.stage, r.call.priority), (Stage::Deliver, 3));
        assert_eq!(s.due(1000, 10).unwrap()[0].id, "keep");
    }
}
