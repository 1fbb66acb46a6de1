//! The calls table: pending calls (`c`), their due index (`d`, kept in memory only and rebuilt
//! from the records at open: see [`super::tables`]) and stored order per queue
//! (`o`, for queues that keep order: see [`super::rules`]), dead letters (`x`) and quarantined records (`q`). Listings for operators read here.

use super::journal::Batch;
use super::keys::{self, CALL, DEAD, DUE};
use super::store::{decode_record, encode};
use super::tables::Tables;
use super::{QueueError, QueueStore};
use crate::model::call::CallRecord;
use std::collections::BTreeMap;

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
    let deliver = record.stage == crate::model::call::Stage::Deliver;
    value_of(
        &record.call.queue,
        deliver.then_some(record.call.target.as_str()),
    )
}

/// The due index's value of a call of `queue` (to deliver to `target`, if given).
fn value_of(queue: &str, target: Option<&str>) -> Vec<u8> {
    let mut v = queue.as_bytes().to_vec();
    if let Some(target) = target {
        v.push(0);
        v.extend_from_slice(target.as_bytes());
    }
    v
}

/// Reads a due index value: the queue, and the target if one is recorded.
fn parse_due_value(v: &[u8]) -> (&str, Option<&str>) {
    let text = std::str::from_utf8(v).unwrap_or_default();
    match text.split_once('\0') {
        Some((queue, target)) => (queue, Some(target)),
        None => (text, None),
    }
}

/// Whether a scan reads the due-index partition of value `v`: not if `pass` passes over its
/// queue (and target).
fn kept_by(pass: &dyn Fn(&str, Option<&str>) -> bool) -> impl Fn(&[u8]) -> bool + '_ {
    move |v| {
        let (queue, target) = parse_due_value(v);
        !pass(queue, target)
    }
}

/// The end of the due index's range of calls due at `now_ms` (exclusive).
fn due_until(now_ms: u64) -> Vec<u8> {
    keys::due(now_ms, i32::MIN, "\u{10FFFF}", b"")
}

/// The due index's key of `due`.
fn due_key_of(due: &DueCall) -> Vec<u8> {
    keys::due(
        due.due_ms,
        due.priority,
        &due.id,
        &value_of(&due.queue, due.target.as_deref()),
    )
}

/// What [`load_due_index`] found.
pub(super) struct Loaded {
    /// Entries an earlier version had kept on disk, now removed from it.
    pub moved: usize,
    /// Pending records that could not be read: each is indexed as due at once (with no queue),
    /// so the scheduler moves it to quarantine as it would any unreadable record it reaches.
    pub unreadable: usize,
}

/// Builds the due index (kept in memory only) from the pending call records in sled, after the
/// journal's replay; removes what an earlier version kept of it in sled.
pub(super) fn load_due_index(tables: &Tables) -> sled::Result<Loaded> {
    let db = tables.sled();
    let mut moved = 0;
    for key in db.scan_prefix([DUE]).keys() {
        db.remove(key?)?;
        moved += 1;
    }
    let mut unreadable = 0;
    let mut entries = Vec::new();
    for item in db.scan_prefix([CALL]) {
        let (k, v) = item?;
        match decode_record(&k, &v) {
            Ok(record) => entries.push((QueueStore::due_key(&record), due_value(&record))),
            Err(_) => {
                unreadable += 1;
                let id = String::from_utf8_lossy(&k[1..]);
                entries.push((keys::due(0, 0, &id, b""), Vec::new()));
            }
        }
        // In slices, so that a million pending calls do not hold their keys twice.
        if entries.len() >= 4096 {
            tables.load_index(entries.drain(..));
        }
    }
    tables.load_index(entries);
    Ok(Loaded { moved, unreadable })
}

impl QueueStore {
    /// Stores a new pending call, gives it its place in its queue's order, and schedules it.
    pub fn insert(&self, record: &CallRecord) -> Result<(), QueueError> {
        let mut t = self.txn();
        t.insert_call(record)?;
        t.commit()
    }

    /// Id of the first pending call of `queue` in stored order: the only one a queue with
    /// `keep_order` may run.
    pub fn head_of(&self, queue: &str) -> Result<Option<String>, QueueError> {
        match self.db().scan_prefix(keys::order_prefix(queue)).next() {
            Some(item) => Ok(Some(
                String::from_utf8_lossy(&item.map_err(|e| self.err(e))?.1).into_owned(),
            )),
            None => Ok(None),
        }
    }

    /// The pending record of `id`.
    pub fn get(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let key = keys::with_id(CALL, id);
        match self.db().get(&key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(decode_record(&key, &v)?)),
            None => Ok(None),
        }
    }

    /// The dead record of `id`.
    pub fn get_dead(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        let key = keys::with_id(DEAD, id);
        match self.db().get(&key).map_err(|e| self.err(e))? {
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
        self.order_entry(&mut b, &record);
        self.apply(b)?;
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
            if record.stage == crate::model::call::Stage::Execute {
                b.remember(self.ledger_entry(&record));
            }
            self.apply(b)?;
            return Ok(Some(record));
        }
        Ok(None)
    }

    /// Up to `limit` calls due at or before `now_ms`, earliest first (higher priority first at
    /// equal times); none from a stopped queue (see [`QueueStore::due_where`]).
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<DueCall>, QueueError> {
        self.due_where(now_ms, limit, limit, &|_| false, &|_, _| false)
    }

    /// Up to `want` calls due at or before `now_ms` for which `skip` is false, in due order,
    /// looking at no more than `max_scan` index entries; the calls of a queue (or, to deliver,
    /// of a queue and target) for which `pass` is true are passed over without being read, so
    /// a queue whose calls cannot start now does not hold back those of other queues due
    /// after them.
    ///
    /// A stopped queue lists none: its records may hold part of a change that was taken back,
    /// and no outcome could be recorded, so a call started now could run again and again.
    pub fn due_where(
        &self,
        now_ms: u64,
        want: usize,
        max_scan: usize,
        skip: &dyn Fn(&str) -> bool,
        pass: &dyn Fn(&str, Option<&str>) -> bool,
    ) -> Result<Vec<DueCall>, QueueError> {
        if self.stopped().is_some() {
            return Ok(Vec::new());
        }
        let keep = kept_by(pass);
        let mut out = Vec::new();
        for item in self
            .db()
            .range_where(vec![DUE]..due_until(now_ms), &keep)
            .take(max_scan)
        {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Some((due_ms, priority, id)) = keys::parse_due(&k) {
                if !skip(&id) {
                    let (queue, target) = parse_due_value(&v);
                    out.push(DueCall {
                        id,
                        queue: queue.to_owned(),
                        priority,
                        due_ms,
                        target: target.map(str::to_owned),
                    });
                    if out.len() >= want {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Moves the unreadable record of due call `due` out of the schedule into quarantine
    /// (`q` + id, bytes kept as they were), so it neither blocks the queue nor is lost.
    pub fn quarantine(&self, due: &DueCall) -> Result<(), QueueError> {
        let call_key = keys::with_id(CALL, &due.id);
        let mut b = Batch::default();
        if let Some(bytes) = self.db().get(&call_key).map_err(|e| self.err(e))? {
            b.insert(keys::with_id(keys::QUARANTINE, &due.id), bytes);
        }
        b.remove(call_key);
        b.remove(due_key_of(due));
        b.remove(keys::with_id(keys::STARTED, &due.id));
        b.remove(keys::with_id(keys::CRASHES, &due.id));
        self.apply(b)
    }

    /// How many calls of `queue` (to run here, not to deliver) are due at `now_ms`.
    pub fn count_due(&self, queue: &str, now_ms: u64) -> Result<usize, QueueError> {
        let keep = |v: &[u8]| v == queue.as_bytes();
        let mut n = 0;
        for item in self.db().range_where(vec![DUE]..due_until(now_ms), &keep) {
            item.map_err(|e| self.err(e))?;
            n += 1;
        }
        Ok(n)
    }

    /// When the earliest scheduled call is due of those `pass` does not pass over (see
    /// [`QueueStore::due_where`]), if any is.
    pub fn next_due_ms_where(
        &self,
        pass: &dyn Fn(&str, Option<&str>) -> bool,
    ) -> Result<Option<u64>, QueueError> {
        let keep = kept_by(pass);
        match self
            .db()
            .range_where(vec![DUE]..vec![DUE + 1], &keep)
            .next()
        {
            Some(item) => {
                Ok(keys::parse_due(&item.map_err(|e| self.err(e))?.0).map(|(at, _, _)| at))
            }
            None => Ok(None),
        }
    }

    /// When the earliest scheduled call is due, if any is.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        self.next_due_ms_where(&|_, _| false)
    }

    fn scan(
        &self,
        prefix: u8,
        keep: &dyn Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<CallRecord>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix([prefix]) {
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
            self.db().scan_prefix([CALL]).count(),
            self.db().scan_prefix([DEAD]).count(),
        )
    }

    /// Pending and dead calls per queue: the pending from the due index (keys and queue names
    /// only), the dead by reading their records.
    pub fn counts_by_queue(&self) -> Result<BTreeMap<String, (u64, u64)>, QueueError> {
        let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for item in self.db().scan_prefix([DUE]) {
            let (_, v) = item.map_err(|e| self.err(e))?;
            let (queue, _) = parse_due_value(&v);
            out.entry(queue.to_owned()).or_default().0 += 1;
        }
        for record in self.dead(&|_| true, usize::MAX)? {
            out.entry(record.call.queue).or_default().1 += 1;
        }
        Ok(out)
    }
}
