//! The calls table: pending calls (`c`), their due index (`d`, kept in memory only and rebuilt
//! from the records at open: see [`super::tables`]) and stored order per queue
//! (`o`, for queues that keep order: see [`super::rules`]), dead letters (`x`) and quarantined records (`q`). Listings for operators read here.

use super::journal::Batch;
use super::keys::{self, CALL, DEAD, DUE};
use super::store::{decode_record, encode};
use super::tables::{Tables, Visit};
use super::{QueueError, QueueStore};
use crate::model::call::{CallEvent, CallRecord};
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
    /// Its group, for a call to run here that has one.
    pub group: Option<String>,
}

/// What a due-index value (the name of a partition of the index) says of its calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DueValue<'a> {
    /// Their queue.
    pub queue: &'a str,
    /// For calls to deliver, the cage they go to.
    pub target: Option<&'a str>,
    /// For calls to run here, their group if they have one.
    pub group: Option<&'a str>,
}

/// How many due calls may start now, as the scheduler says of a partition of the due index:
/// calls of its queue, and calls of the partition itself (its group, or its queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// Calls of the partition's queue (for calls to deliver, no bound: `usize::MAX`).
    pub queue: usize,
    /// Calls of the partition.
    pub part: usize,
}

impl Room {
    /// No bound.
    pub const ANY: Room = Room {
        queue: usize::MAX,
        part: usize::MAX,
    };
}

/// Separates a queue from the target of calls to deliver in a due-index value.
const TARGET_MARK: u8 = 0;
/// Separates a queue from the group of calls to run here in a due-index value.
const GROUP_MARK: u8 = 1;

/// The due index's value for `record`: its queue, and for a call to deliver, its target (so
/// the scheduler can hold back calls for a busy cage without reading their records), or for a
/// call to run here, its group (so it can pass over a group at its limits).
pub(super) fn due_value(record: &CallRecord) -> Vec<u8> {
    let deliver = record.stage == crate::model::call::Stage::Deliver;
    value_of(DueValue {
        queue: &record.call.queue,
        target: deliver.then_some(record.call.target.as_str()),
        group: record.call.group.as_deref().filter(|_| !deliver),
    })
}

/// The due index's value of `v`.
fn value_of(v: DueValue<'_>) -> Vec<u8> {
    let mut out = v.queue.as_bytes().to_vec();
    if let Some(target) = v.target {
        out.push(TARGET_MARK);
        out.extend_from_slice(target.as_bytes());
    } else if let Some(group) = v.group {
        out.push(GROUP_MARK);
        out.extend_from_slice(group.as_bytes());
    }
    out
}

/// Reads a due-index value (queue and group names hold neither mark).
pub fn parse_due_value(v: &[u8]) -> DueValue<'_> {
    let text = std::str::from_utf8(v).unwrap_or_default();
    let mut value = DueValue {
        queue: text,
        target: None,
        group: None,
    };
    if let Some(i) = text
        .bytes()
        .position(|b| b == TARGET_MARK || b == GROUP_MARK)
    {
        value.queue = &text[..i];
        if v[i] == TARGET_MARK {
            value.target = Some(&text[i + 1..]);
        } else {
            value.group = Some(&text[i + 1..]);
        }
    }
    value
}

/// The names of the due-index partitions of `queue` lie from this (inclusive)...
fn queue_parts_from(queue: &str) -> Vec<u8> {
    queue.as_bytes().to_vec()
}

/// ...to this (exclusive): the queue's name, then either mark and whatever follows it.
fn queue_parts_to(queue: &str) -> Vec<u8> {
    let mut v = queue.as_bytes().to_vec();
    v.push(GROUP_MARK + 1);
    v
}

/// The due call a due-index key of partition `part` names, if the key is well formed.
fn due_call(key: &[u8], part: &[u8]) -> Option<DueCall> {
    let (due_ms, priority, id) = keys::parse_due(key)?;
    let v = parse_due_value(part);
    Some(DueCall {
        id,
        queue: v.queue.to_owned(),
        priority,
        due_ms,
        target: v.target.map(str::to_owned),
        group: v.group.map(str::to_owned),
    })
}

/// Due calls of one partition whose priorities are weighed against each other at a pump: the
/// call of highest priority among the first this many due goes first (beyond them, due order).
pub const PRIORITY_WINDOW: usize = 64;

/// Puts due-index keys in start order: higher priority first, due order within a priority.
fn by_priority(keys: &mut [&[u8]]) {
    keys.sort_by_key(|k| std::cmp::Reverse(keys::parse_due(k).map_or(i32::MIN, |(_, p, _)| p)));
}

/// A partition a due scan met: its name, its room, the keys gathered from it.
type Gather<'k> = (&'k [u8], Room, Vec<&'k [u8]>);

/// The partitions a due scan met, in the order it met them, with their room and the keys
/// gathered from each.
#[derive(Default)]
struct Gathered<'k> {
    parts: Vec<Gather<'k>>,
    place: std::collections::HashMap<&'k [u8], usize>,
}

/// A group's place in a turn of [`QueueStore::due_in_turn`].
struct Turn<'k> {
    /// What may start of it.
    room: Room,
    /// Calls taken from it.
    taken: usize,
    /// Due calls read and not yet taken, in start order.
    ready: std::collections::VecDeque<&'k [u8]>,
    /// The last key read.
    read_to: Option<&'k [u8]>,
    /// Every due call of it was read.
    read_all: bool,
}

/// The id in a due-index key (empty if it is not one).
fn id_of(key: &[u8]) -> &str {
    std::str::from_utf8(keys::due_id_of(key)).unwrap_or_default()
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
        &value_of(DueValue {
            queue: &due.queue,
            target: due.target.as_deref(),
            group: due.group.as_deref(),
        }),
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

    /// Id of the first pending call of `queue` (and `group`: each group keeps its own order)
    /// in stored order: the only one of them a queue with `keep_order` may run.
    pub fn head_of(&self, queue: &str, group: Option<&str>) -> Result<Option<String>, QueueError> {
        match self
            .db()
            .scan_prefix(keys::order_prefix(queue, group))
            .next()
        {
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
        self.revive_at(id, now_ms, now_ms, None)
    }

    /// Call `id`, pending or dead.
    pub fn get_any(&self, id: &str) -> Result<Option<CallRecord>, QueueError> {
        match self.get(id)? {
            Some(r) => Ok(Some(r)),
            None => self.get_dead(id),
        }
    }

    /// Makes pending call `id` due at `due_ms`, with `event` (the order that did it) added to
    /// its history; whether it was pending.
    pub fn make_due(
        &self,
        id: &str,
        due_ms: u64,
        event: Option<CallEvent>,
    ) -> Result<bool, QueueError> {
        let Some(record) = self.get(id)? else {
            return Ok(false);
        };
        let mut updated = record.clone();
        updated.next_at_ms = due_ms;
        updated.events.extend(event);
        self.update(&record, &updated)?;
        Ok(true)
    }

    /// Moves dead call `id` back to pending with a fresh give-up window from `now_ms`, due at
    /// `due_ms`, with `event` (the order that revived it) added to its history.
    pub fn revive_at(
        &self,
        id: &str,
        now_ms: u64,
        due_ms: u64,
        event: Option<CallEvent>,
    ) -> Result<Option<CallRecord>, QueueError> {
        let Some(mut record) = self.get_dead(id)? else {
            return Ok(None);
        };
        record.dead_reason = None;
        record.next_at_ms = due_ms.max(now_ms);
        record.window_start_ms = now_ms;
        record.events.extend(event);
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
        self.due_where(now_ms, limit, limit, &|_| false, &|_| Room::ANY)
    }

    /// Up to `want` calls due at or before `now_ms` for which `skip` is false, looking at no
    /// more than `max_scan` index entries, taking from each partition of the index (a queue, a
    /// queue's group, or a queue's calls for one cage) no more than `room` says may start now:
    /// a partition without room is passed over without being read, so a queue or group whose
    /// calls cannot start now does not hold back those due after them. Partitions come in due
    /// order of their first due call; within one, the calls of highest priority among its first
    /// [`PRIORITY_WINDOW`] due come first.
    ///
    /// A stopped queue lists none: its records may hold part of a change that was taken back,
    /// and no outcome could be recorded, so a call started now could run again and again.
    pub fn due_where(
        &self,
        now_ms: u64,
        want: usize,
        max_scan: usize,
        skip: &dyn Fn(&str) -> bool,
        room: &dyn Fn(&DueValue<'_>) -> Room,
    ) -> Result<Vec<DueCall>, QueueError> {
        if self.stopped().is_some() {
            return Ok(Vec::new());
        }
        let end = due_until(now_ms);
        let mut out = Vec::new();
        self.db().with_index(|index| {
            // The partitions met, in order, with their room and the keys gathered from them.
            let parts = std::cell::RefCell::new(Gathered::default());
            let (mut scanned, mut usable) = (0, 0);
            let mut per_queue: std::collections::HashMap<&str, usize> = Default::default();
            index.scan(
                &end,
                &mut |class| {
                    let r = room(&parse_due_value(class));
                    r.queue > 0 && r.part > 0
                },
                &mut |part| {
                    let r = room(&parse_due_value(part));
                    let open = r.queue > 0 && r.part > 0;
                    if open {
                        let mut g = parts.borrow_mut();
                        let at = g.parts.len();
                        g.place.insert(part, at);
                        g.parts.push((part, r, Vec::new()));
                    }
                    open
                },
                &mut |key, part| {
                    scanned += 1;
                    if scanned > max_scan {
                        return Visit::Stop;
                    }
                    if skip(id_of(key)) {
                        return Visit::Next;
                    }
                    let mut g = parts.borrow_mut();
                    let Some(at) = g.place.get(part).copied() else {
                        return Visit::Leave;
                    };
                    let (_, r, keys) = &mut g.parts[at];
                    let r = *r;
                    // Calls of a queue to run here count against its room across its groups.
                    let execute = parse_due_value(part);
                    let of_queue = match execute.target {
                        None => Some(per_queue.entry(execute.queue).or_default()),
                        Some(_) => None,
                    };
                    // A queue whose room is taken reads no further partition (within one
                    // partition, the priority window is still read).
                    if keys.is_empty() && of_queue.as_ref().is_some_and(|n| **n >= r.queue) {
                        return Visit::LeaveClass;
                    }
                    keys.push(key);
                    let fits = r.part.min(r.queue);
                    if keys.len() <= fits {
                        usable += 1;
                        if let Some(n) = of_queue {
                            *n += 1;
                        }
                    }
                    if usable >= want {
                        Visit::Stop
                    } else if keys.len() >= fits.max(PRIORITY_WINDOW) {
                        Visit::Leave
                    } else {
                        Visit::Next
                    }
                },
            );
            per_queue.clear();
            for (part, r, mut keys) in parts.into_inner().parts {
                let v = parse_due_value(part);
                let of_queue = per_queue.entry(v.queue).or_default();
                let fits = if v.target.is_some() {
                    r.part
                } else {
                    r.part.min(r.queue.saturating_sub(*of_queue))
                };
                by_priority(&mut keys);
                for key in keys.into_iter().take(fits) {
                    if out.len() >= want {
                        return;
                    }
                    if let Some(call) = due_call(key, part) {
                        out.push(call);
                        if v.target.is_none() {
                            *of_queue += 1;
                        }
                    }
                }
            }
        });
        Ok(out)
    }

    /// Up to `want` calls of `queue` to run here, due at or before `now_ms`, taken from its
    /// groups in turn: one call of each group in the order of their names, starting after
    /// group partition `after` (as the last turn left it) and going round, then another of
    /// each, and so on, within what `room` allows and looking at no more than `max_scan` index
    /// entries; also the partition to start after next time. Within a group, the call of
    /// highest priority among its first [`PRIORITY_WINDOW`] due goes first. A queue's calls
    /// without a group are one group.
    #[allow(clippy::too_many_arguments)]
    pub fn due_in_turn(
        &self,
        queue: &str,
        now_ms: u64,
        want: usize,
        max_scan: usize,
        after: Option<&[u8]>,
        skip: &dyn Fn(&str) -> bool,
        room: &dyn Fn(&DueValue<'_>) -> Room,
    ) -> Result<(Vec<DueCall>, Option<Vec<u8>>), QueueError> {
        if self.stopped().is_some() {
            return Ok((Vec::new(), after.map(<[u8]>::to_vec)));
        }
        let (end, from, to) = (
            due_until(now_ms),
            queue_parts_from(queue),
            queue_parts_to(queue),
        );
        let after = after.filter(|a| **a >= *from && **a < *to);
        let mut out = Vec::new();
        let mut cursor = after.map(<[u8]>::to_vec);
        self.db().with_index(|index| {
            let mut groups: std::collections::HashMap<&[u8], Turn<'_>> = Default::default();
            let mut scanned = 0;
            'laps: loop {
                // Round from the group after the last one served, back to it.
                let ring: Box<dyn Iterator<Item = _>> = match after {
                    Some(a) => Box::new(
                        index
                            .partitions(a, &to)
                            .filter(move |(name, _)| *name != a)
                            .chain(index.partitions(&from, a))
                            .chain(index.partition(a).map(|p| (a, p))),
                    ),
                    None => Box::new(index.partitions(&from, &to)),
                };
                let mut took = false;
                for (name, keys) in ring {
                    let v = parse_due_value(name);
                    if v.target.is_some() || v.queue != queue {
                        continue;
                    }
                    scanned += 1;
                    if scanned > max_scan {
                        break 'laps;
                    }
                    let turn = groups.entry(name).or_insert_with(|| Turn {
                        room: room(&v),
                        taken: 0,
                        ready: std::collections::VecDeque::new(),
                        read_to: None,
                        read_all: false,
                    });
                    if out.len() >= turn.room.queue.min(want) {
                        break 'laps;
                    }
                    cursor = Some(name.to_vec());
                    if turn.taken >= turn.room.part {
                        continue;
                    }
                    if turn.ready.is_empty() && !turn.read_all {
                        // The next window of its due calls, best priority first.
                        let mut window = Vec::new();
                        for key in keys.keys(turn.read_to, &end) {
                            scanned += 1;
                            turn.read_to = Some(key);
                            if !skip(id_of(key)) {
                                window.push(key);
                                if window.len() >= PRIORITY_WINDOW {
                                    break;
                                }
                            }
                        }
                        turn.read_all = window.len() < PRIORITY_WINDOW;
                        by_priority(&mut window);
                        turn.ready.extend(window);
                    }
                    let Some(key) = turn.ready.pop_front() else {
                        continue;
                    };
                    turn.taken += 1;
                    if let Some(call) = due_call(key, name) {
                        out.push(call);
                        took = true;
                    }
                }
                if !took {
                    break;
                }
            }
        });
        Ok((out, cursor))
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

    /// Whether a call of `queue` in `group` (or without a group) to run here is due at
    /// `now_ms` for which `skip` is false.
    pub fn has_due_in(
        &self,
        queue: &str,
        group: Option<&str>,
        now_ms: u64,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<bool, QueueError> {
        let part = value_of(DueValue {
            queue,
            target: None,
            group,
        });
        let end = due_until(now_ms);
        Ok(self.db().with_index(|index| {
            index
                .partition(&part)
                .is_some_and(|keys| keys.keys(None, &end).any(|k| !skip(id_of(k))))
        }))
    }

    /// How many calls of `queue` (to run here, not to deliver) are due at `now_ms`: of the
    /// whole queue, and of those of its groups `group` selects.
    pub fn count_due(
        &self,
        queue: &str,
        now_ms: u64,
        group: &dyn Fn(&str) -> bool,
    ) -> Result<(usize, usize), QueueError> {
        let (end, from, to) = (
            due_until(now_ms),
            queue_parts_from(queue),
            queue_parts_to(queue),
        );
        Ok(self.db().with_index(|index| {
            let (mut all, mut selected) = (0, 0);
            for (name, keys) in index.partitions(&from, &to) {
                let v = parse_due_value(name);
                if v.target.is_some() || v.queue != queue {
                    continue;
                }
                let n = keys.keys(None, &end).count();
                all += n;
                if v.group.is_some_and(group) {
                    selected += n;
                }
            }
            (all, selected)
        }))
    }

    /// When the earliest scheduled call is due of those `pass` does not pass over (see
    /// [`QueueStore::due_where`]), if any is.
    pub fn next_due_ms_where(
        &self,
        pass: &dyn Fn(&DueValue<'_>) -> bool,
    ) -> Result<Option<u64>, QueueError> {
        Ok(self.db().with_index(|index| {
            index
                .first(
                    &[DUE + 1],
                    &mut |class| !pass(&parse_due_value(class)),
                    &mut |part| !pass(&parse_due_value(part)),
                )
                .and_then(keys::parse_due)
                .map(|(at, _, _)| at)
        }))
    }

    /// When the earliest scheduled call is due, if any is.
    pub fn next_due_ms(&self) -> Result<Option<u64>, QueueError> {
        self.next_due_ms_where(&|_| false)
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

    /// Ids of the pending (or, with `dead`, dead) calls that `keep` selects, at most `limit`,
    /// in id order (records are read one at a time and not kept).
    pub fn ids_where(
        &self,
        dead: bool,
        keep: &dyn Fn(&CallRecord) -> bool,
        limit: usize,
    ) -> Result<Vec<String>, QueueError> {
        let mut out = Vec::new();
        for item in self.db().scan_prefix([if dead { DEAD } else { CALL }]) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(record) = decode_record(&k, &v) {
                if keep(&record) {
                    out.push(record.call.id);
                }
            }
        }
        Ok(out)
    }

    /// How many pending (or, with `dead`, dead) calls `keep` selects.
    pub fn count_where(
        &self,
        dead: bool,
        keep: &dyn Fn(&CallRecord) -> bool,
    ) -> Result<usize, QueueError> {
        let mut n = 0;
        for item in self.db().scan_prefix([if dead { DEAD } else { CALL }]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if decode_record(&k, &v).is_ok_and(|r| keep(&r)) {
                n += 1;
            }
        }
        Ok(n)
    }

    /// How many pending calls to run here target each method of `module`.
    pub fn pending_methods(&self, module: &str) -> Result<BTreeMap<String, usize>, QueueError> {
        let mut out = BTreeMap::new();
        for item in self.db().scan_prefix([CALL]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            if let Ok(record) = decode_record(&k, &v) {
                let call = record.call;
                if record.stage == crate::model::call::Stage::Execute && call.module == module {
                    *out.entry(call.method).or_default() += 1;
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
        self.db().with_index(|index| {
            for (name, keys) in index.partitions(&[], &[u8::MAX]) {
                let queue = parse_due_value(name).queue;
                match out.get_mut(queue) {
                    Some(counts) => counts.0 += keys.len() as u64,
                    None => {
                        out.insert(queue.to_owned(), (keys.len() as u64, 0));
                    }
                }
            }
        });
        for record in self.dead(&|_| true, usize::MAX)? {
            out.entry(record.call.queue).or_default().1 += 1;
        }
        Ok(out)
    }
}
