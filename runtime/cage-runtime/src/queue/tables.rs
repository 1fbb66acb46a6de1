//! The memory tables: every change applied since the last checkpoint, held in memory and read
//! before sled. The journal is the system of record; sled is where a checkpoint puts what is
//! still there, in one pass. A call enqueued, run and finished between two checkpoints never
//! reaches sled: its insert and its removal meet in memory, and the checkpoint's removal of a
//! key sled never held costs sled a lookup, not a write.
//!
//! Layers, newest first: the *active* table (changes since the last freeze); tables *frozen* by
//! checkpoints still being written to sled; then sled. A key is what the newest layer holding it
//! says. A removal leaves nothing in memory: a key only the active table held is dropped, one
//! sled holds is removed from sled at once (as before the memory tables; the journal entry
//! comes first, so a replay repeats it), and only a key a frozen table holds gets a tombstone,
//! which hides the frozen value until that table is in sled. So scans of the due index never
//! wade through the ends of the calls done since the last checkpoint. A checkpoint
//! freezes the active table under the journal's lock (so the frozen tables hold exactly what
//! the journal's older segments hold), writes them to sled, flushes sled and only then drops
//! them and those segments. A failed checkpoint keeps its frozen tables readable and is redone.
//!
//! The due index is kept in memory only ([`memory_only`]): every pending call record implies its
//! entry, so [`Tables::load_index`] rebuilds it from the records at open and no checkpoint
//! writes it. A pending call then costs sled one key instead of two (about 170 bytes of disk
//! each), and the scheduler's scans of the due index never touch sled. The cost is memory:
//! about 80 bytes a pending call (its key once, and a number for its value, which few calls
//! differ in: a queue and a target).
//!
//! A change whose values are large ([`DIRECT_BYTES`]) goes to sled at once, as before the memory
//! tables: it costs memory, not keys, and sled's failures (a large value's file it cannot make)
//! then refuse the change that met them. A key it sets that a memory table holds is set there
//! too, so a frozen table written later cannot bring back an older value.

use super::fault::injected;
use super::journal::Batch;
use super::keys::{self, DUE};
use sled::IVec;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// A change carrying more value bytes than this is applied to sled at once.
pub const DIRECT_BYTES: usize = 64 * 1024;
/// Memory a key takes beside its bytes in a table (tree node share, lengths), for the budget.
const ENTRY_OVERHEAD: usize = 64;

/// What a table holds of a key.
#[derive(Clone, Debug)]
struct Held {
    /// Its newest value, or `None` where it was removed.
    value: Option<IVec>,
    /// Whether an older table or sled may hold the key: only then does a removal need to be
    /// kept (as a tombstone). A key set and removed between two checkpoints leaves nothing,
    /// so scans do not wade through the ends of finished calls.
    below: bool,
}

impl Held {
    fn bytes(&self, key: &[u8]) -> usize {
        key.len() + self.value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD
    }
}

/// One table: what it holds of each key it changed.
type Layer = BTreeMap<IVec, Held>;

/// Whether `key` is kept in memory only (the due index; see the module documentation).
pub(super) fn memory_only(key: &[u8]) -> bool {
    key.first() == Some(&DUE)
}

/// The part of a key kept in memory only that names its partition: the value it carries.
fn partition_of(key: &[u8]) -> &[u8] {
    keys::due_value_of(key)
}

/// The class of a partition: its name up to a group mark (a 1 byte), so the partitions of a
/// queue's calls to run here, grouped or not, are one class, and those of its calls to deliver
/// to one cage another.
pub fn class_of(part: &[u8]) -> &[u8] {
    match part.iter().position(|b| *b == 1) {
        Some(i) => &part[..i],
        None => part,
    }
}

/// The keys kept in memory only, in partitions: one for each value their keys end with (a
/// queue, a queue and a group, or a queue and a target for calls to deliver), so a scan can
/// pass over a whole partition whose calls cannot start now (a queue or group at its
/// concurrency) without reading its keys. A key's value is its partition's name: nothing else
/// is kept per key. The first key of each partition is kept again, in an ordered set per class
/// of partitions ([`class_of`]: a queue), so a scan in key order merges the partitions from
/// their heads (a step costs a logarithm of the partitions, not a look at each of them) and
/// passes over a whole queue, however many groups it has, at the cost of one look; and a
/// queue's partitions are one range of names.
#[derive(Default)]
struct Index {
    parts: BTreeMap<Box<[u8]>, BTreeSet<Box<[u8]>>>,
    heads: HashMap<Box<[u8]>, BTreeSet<Box<[u8]>>>,
    len: usize,
}

impl Index {
    fn set(&mut self, key: &[u8], present: bool) {
        let part = partition_of(key);
        let class = class_of(part);
        if present {
            let keys = self.parts.entry(part.into()).or_default();
            let old_head = keys.first().filter(|h| ***h > *key).cloned();
            let was_empty = keys.is_empty();
            if keys.insert(key.into()) {
                self.len += 1;
                if old_head.is_some() || was_empty {
                    let heads = self.heads.entry(class.into()).or_default();
                    if let Some(old) = old_head {
                        heads.remove(&old);
                    }
                    heads.insert(key.into());
                }
            }
        } else if let Some(keys) = self.parts.get_mut(part) {
            let was_head = keys.first().is_some_and(|h| **h == *key);
            if keys.remove(key) {
                self.len -= 1;
                if was_head {
                    let next = keys.first().cloned();
                    if next.is_none() {
                        self.parts.remove(part);
                    }
                    if let Some(heads) = self.heads.get_mut(class) {
                        heads.remove(key);
                        match next {
                            Some(next) => {
                                heads.insert(next);
                            }
                            None if heads.is_empty() => {
                                self.heads.remove(class);
                            }
                            None => {}
                        }
                    }
                }
            }
        }
    }

    fn get(&self, key: &[u8]) -> Option<IVec> {
        let part = partition_of(key);
        self.parts
            .get(part)
            .filter(|keys| keys.contains(key))
            .map(|_| IVec::from(part))
    }
}

/// What a scan of the due index does after visiting a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visit {
    /// Go on, with the next key of this partition among the rest.
    Next,
    /// Go on without the rest of this partition.
    Leave,
    /// Go on without the rest of this partition's class (see [`class_of`]).
    LeaveClass,
    /// End the scan.
    Stop,
}

/// The keys kept in memory only, read under the tables' read lock (see [`Tables::with_index`]).
pub struct DueIndex<'a>(&'a Index);

/// One partition of the due index: its keys in order.
pub struct Partition<'a>(&'a BTreeSet<Box<[u8]>>);

impl<'a> Partition<'a> {
    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds none (a partition is dropped when its last key goes, so never).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Its keys after `after` (from the first if `None`) and before `end`, in order.
    pub fn keys(&self, after: Option<&[u8]>, end: &[u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // The range keeps no borrow of its bounds, only of the set.
        self.0
            .range::<[u8], _>((start, Bound::Excluded(end)))
            .map(|k| &**k)
    }
}

impl<'a> DueIndex<'a> {
    /// Visits the keys before `end` of the partitions `keep` selects (asked once for each
    /// partition, as the scan reaches its first key) among the classes `keep_class` selects
    /// (asked once for each class, first), in key order, as `visit` says.
    pub fn scan(
        &self,
        end: &[u8],
        keep_class: &mut dyn FnMut(&'a [u8]) -> bool,
        keep: &mut dyn FnMut(&'a [u8]) -> bool,
        visit: &mut dyn FnMut(&'a [u8], &'a [u8]) -> Visit,
    ) {
        use std::cmp::Reverse;
        let index = self.0;
        let bounds = (Bound::Unbounded, Bound::Excluded(end));
        // The heads of the classes kept, each in key order.
        let mut classes: Vec<_> = index
            .heads
            .iter()
            .filter(|(class, _)| keep_class(class))
            .map(|(_, heads)| heads.range::<[u8], _>(bounds))
            .collect();
        // The next head of each class and the next key of each partition under way, smallest
        // first, each with its class and whether it is a head.
        let mut next: std::collections::BinaryHeap<Reverse<(&'a [u8], usize, bool)>> =
            Default::default();
        for (i, heads) in classes.iter_mut().enumerate() {
            if let Some(h) = heads.next() {
                next.push(Reverse((&**h, i, true)));
            }
        }
        let mut left = vec![false; classes.len()];
        while let Some(Reverse((key, class, head))) = next.pop() {
            if left[class] {
                continue;
            }
            if head {
                if let Some(h) = classes[class].next() {
                    next.push(Reverse((&**h, class, true)));
                }
                if !keep(partition_of(key)) {
                    continue;
                }
            }
            let part = partition_of(key);
            match visit(key, part) {
                Visit::Stop => return,
                Visit::Leave => {}
                Visit::LeaveClass => left[class] = true,
                Visit::Next => {
                    let after = index.parts.get(part).and_then(|keys| {
                        keys.range::<[u8], _>((Bound::Excluded(key), Bound::Excluded(end)))
                            .next()
                    });
                    if let Some(after) = after {
                        next.push(Reverse((&**after, class, false)));
                    }
                }
            }
        }
    }

    /// The partitions named from `from` (inclusive) to `to` (exclusive), in name order.
    pub fn partitions(
        &self,
        from: &[u8],
        to: &[u8],
    ) -> impl Iterator<Item = (&'a [u8], Partition<'a>)> + 'a {
        self.0
            .parts
            .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
            .map(|(name, keys)| (&**name, Partition(keys)))
    }

    /// The partition named `name`, if it holds keys.
    pub fn partition(&self, name: &[u8]) -> Option<Partition<'a>> {
        self.0.parts.get(name).map(Partition)
    }

    /// The first key before `end` of the partitions `keep` selects among the classes
    /// `keep_class` selects.
    pub fn first(
        &self,
        end: &[u8],
        keep_class: &mut dyn FnMut(&'a [u8]) -> bool,
        keep: &mut dyn FnMut(&'a [u8]) -> bool,
    ) -> Option<&'a [u8]> {
        let mut best: Option<&'a [u8]> = None;
        for (class, heads) in &self.0.heads {
            if !keep_class(class) {
                continue;
            }
            let found = heads
                .range::<[u8], _>((Bound::Unbounded, Bound::Excluded(end)))
                .map(|h| &**h)
                .take_while(|h| best.is_none_or(|b| *h < b))
                .find(|h| keep(partition_of(h)));
            if found.is_some() {
                best = found;
            }
        }
        best
    }
}

#[derive(Default)]
struct Layers {
    /// The keys kept in memory only.
    index: Index,
    active: Layer,
    /// Bytes the active table holds (keys, values and [`ENTRY_OVERHEAD`] each).
    active_bytes: usize,
    /// Tables frozen by checkpoints not yet finished, oldest first.
    frozen: Vec<Arc<Layer>>,
}

impl Layers {
    /// What the memory tables say of `key`: `Some(None)` if it was removed, `None` if they
    /// hold nothing of it (sled then answers).
    fn lookup(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.active
            .get(key)
            .or_else(|| self.frozen.iter().rev().find_map(|l| l.get(key)))
            .map(|h| h.value.clone())
    }

    /// The first key after `after` and before `end` in any table, with what its newest table
    /// says of it.
    fn next(&self, after: &Bound<IVec>, end: &Bound<IVec>) -> Option<(IVec, Option<IVec>)> {
        let mut best: Option<(&IVec, &Held)> = None;
        // Newest first: on equal keys the first one found stays.
        for layer in std::iter::once(&self.active).chain(self.frozen.iter().rev().map(|l| &**l)) {
            if let Some((k, v)) = layer.range::<IVec, _>((after.clone(), end.clone())).next() {
                if best.is_none_or(|(b, _)| k < b) {
                    best = Some((k, v));
                }
            }
        }
        best.map(|(k, h)| (k.clone(), h.value.clone()))
    }

    /// Makes the changes `which` of `ops` to keys kept in memory only.
    fn set_index(&mut self, ops: &[(Vec<u8>, Option<Vec<u8>>)], which: &[usize]) {
        for i in which {
            let (k, v) = &ops[*i];
            debug_assert!(v.as_ref().is_none_or(|v| v[..] == *partition_of(k)));
            self.index.set(k, v.is_some());
        }
    }

    /// Makes the active table hold `held` of `key` (`None`: nothing); answers what it held.
    fn put(&mut self, key: IVec, held: Option<Held>) -> Option<Held> {
        if let Some(held) = &held {
            self.active_bytes += held.bytes(&key);
        }
        let old = match held {
            Some(held) => self.active.insert(key.clone(), held),
            None => self.active.remove(&key),
        };
        if let Some(old) = &old {
            self.active_bytes = self.active_bytes.saturating_sub(old.bytes(&key));
        }
        old
    }
}

/// The queue tree: the memory tables over sled (see the module documentation).
pub struct Tables {
    db: sled::Db,
    layers: RwLock<Layers>,
}

/// A change that failed part-way: the error, and the change that puts back the keys it had
/// changed in sled (empty when it changed only memory, which is already put back).
pub(super) struct Failed {
    pub source: sled::Error,
    pub undo: Batch,
}

impl Tables {
    /// The tables over `db`, empty.
    pub fn new(db: sled::Db) -> Tables {
        Tables {
            db,
            layers: RwLock::default(),
        }
    }

    /// sled itself, for what bypasses the tables (ids, the marker, checkpoints).
    pub fn sled(&self) -> &sled::Db {
        &self.db
    }

    fn read(&self) -> RwLockReadGuard<'_, Layers> {
        self.layers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Layers> {
        self.layers.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value of `key`.
    pub fn get(&self, key: impl AsRef<[u8]>) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        if memory_only(key) {
            return Ok(self.read().index.get(key));
        }
        match self.read().lookup(key) {
            Some(held) => Ok(held),
            None => self.db.get(key),
        }
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: impl AsRef<[u8]>) -> sled::Result<bool> {
        Ok(self.get(key)?.is_some())
    }

    /// The keys from `start` (inclusive) to `end` (exclusive) with their values, in key order.
    /// A range must not hold both keys kept in memory only and other keys; a range of those is
    /// read whole at once (the scheduler reads the due index through [`Tables::with_index`]).
    pub fn range(&self, range: std::ops::Range<Vec<u8>>) -> Iter<'_> {
        let start = IVec::from(range.start);
        let end = IVec::from(range.end);
        let only_memory = memory_only(&start);
        debug_assert!(!only_memory || end.as_ref() <= [DUE + 1].as_slice());
        Iter {
            tables: self,
            sled: (!only_memory).then(|| self.db.range(start.clone()..end.clone()).peekable()),
            memory: only_memory.then(|| self.index_range(&start, &end).into_iter()),
            after: Bound::Included(start),
            end: Bound::Excluded(end),
            held: None,
            held_done: false,
        }
    }

    /// The keys kept in memory only from `start` to `end` (exclusive), with their values.
    fn index_range(&self, start: &[u8], end: &[u8]) -> Vec<(IVec, IVec)> {
        let mut out = Vec::new();
        self.with_index(|index| {
            index.scan(end, &mut |_| true, &mut |_| true, &mut |key, part| {
                if key >= start {
                    out.push((IVec::from(key), IVec::from(part)));
                }
                Visit::Next
            })
        });
        out
    }

    /// Runs `f` over the keys kept in memory only, under the tables' read lock: writers wait
    /// until it returns.
    pub fn with_index<R>(&self, f: impl FnOnce(DueIndex<'_>) -> R) -> R {
        f(DueIndex(&self.read().index))
    }

    /// The keys starting with `prefix`, with their values, in key order.
    pub fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Iter<'_> {
        let prefix = prefix.as_ref();
        match prefix_end(prefix) {
            Some(end) => self.range(prefix.to_vec()..end),
            None => Iter {
                tables: self,
                sled: Some(self.db.scan_prefix(prefix).peekable()),
                memory: None,
                after: Bound::Included(IVec::from(prefix)),
                end: Bound::Unbounded,
                held: None,
                held_done: false,
            },
        }
    }

    /// Applies `batch`'s key changes in order: in memory, or in sled at once when its values
    /// are large (see the module documentation). With `fail_at`, the change of that index
    /// fails instead (fault injection). Called under the journal's lock, which orders writers.
    pub(super) fn apply(&self, batch: &Batch, fail_at: Option<usize>) -> Result<(), Failed> {
        let ops = batch.ops();
        let value_bytes: usize = ops
            .iter()
            .filter_map(|(_, v)| v.as_ref())
            .map(Vec::len)
            .sum();
        if value_bytes > DIRECT_BYTES {
            return self.apply_direct(&mut self.write(), ops, fail_at);
        }
        let mut replaced = Vec::with_capacity(ops.len());
        let mut in_sled = Vec::new();
        // Changes of keys kept in memory only cannot fail: they are made once the rest is.
        let mut in_index = Vec::new();
        for (i, (k, v)) in ops.iter().enumerate() {
            let key = IVec::from(k.as_slice());
            let result = if fail_at == Some(i) {
                Err(sled::Error::Io(injected(&format!("apply:{i}"))))
            } else if memory_only(k) {
                in_index.push(i);
                continue;
            } else {
                self.set(key.clone(), v.as_deref().map(IVec::from), &mut in_sled)
            };
            match result {
                Ok(old) => replaced.push((key, old)),
                Err(source) => {
                    // Memory is put back here; what was removed from sled, by the undo.
                    let mut layers = self.write();
                    for (key, old) in replaced.into_iter().rev() {
                        layers.put(key, old);
                    }
                    let mut undo = Batch::default();
                    for (key, was) in in_sled.iter().rev() {
                        undo.insert(key, was);
                    }
                    return Err(Failed { source, undo });
                }
            }
        }
        if !in_index.is_empty() {
            self.write().set_index(ops, &in_index);
        }
        Ok(())
    }

    /// Sets `key` to `value` in the active table, or removes it; answers what the active table
    /// held of it before. A removal of a key that no frozen table holds is made in sled at once
    /// (sled ignores one of a key it does not hold), pushing onto `in_sled` the value sled had:
    /// a tombstone would hide the key from scans only until the next checkpoint, and every
    /// scan of the due index would wade through the tombstones of the calls done meanwhile.
    ///
    /// The tables are locked only to look and to change memory, never across sled's work, so
    /// readers do not wait for it. Called under the journal's lock: no other writer and no
    /// freeze comes between the look and the change (a checkpoint may drop a frozen table in
    /// between, once sled holds it, which leaves the answer right).
    fn set(
        &self,
        key: IVec,
        value: Option<IVec>,
        in_sled: &mut Vec<(IVec, IVec)>,
    ) -> sled::Result<Option<Held>> {
        let (frozen, held_below) = {
            let layers = self.read();
            (
                layers.frozen.iter().any(|l| l.contains_key(&key)),
                layers.active.get(&key).map(|h| h.below),
            )
        };
        if value.is_some() || frozen {
            let below = match held_below {
                Some(below) => below,
                None => frozen || self.db.contains_key(&key)?,
            };
            return Ok(self.write().put(key, Some(Held { value, below })));
        }
        if held_below.is_none_or(|below| below) {
            if let Some(was) = self.db.remove(&key)? {
                in_sled.push((key.clone(), was));
            }
        }
        if held_below.is_none() {
            return Ok(None);
        }
        Ok(self.write().put(key, None))
    }

    /// Applies `ops` to sled, key by key; a key a memory table holds is set there too.
    fn apply_direct(
        &self,
        layers: &mut Layers,
        ops: &[(Vec<u8>, Option<Vec<u8>>)],
        fail_at: Option<usize>,
    ) -> Result<(), Failed> {
        let mut before = Vec::with_capacity(ops.len());
        let undo = |before: &[(&[u8], Option<IVec>)]| {
            // Earlier values, latest first, so a key changed twice ends as it was.
            let mut undo = Batch::default();
            for (k, old) in before.iter().rev() {
                match old {
                    Some(v) => undo.insert(k, v),
                    None => undo.remove(k),
                }
            }
            undo
        };
        let mut in_index = Vec::new();
        for (i, (k, v)) in ops.iter().enumerate() {
            let result = if fail_at == Some(i) {
                Err(sled::Error::Io(injected(&format!("apply:{i}"))))
            } else if memory_only(k) {
                in_index.push(i);
                continue;
            } else {
                match v {
                    Some(v) => self.db.insert(k, v.as_slice()),
                    None => self.db.remove(k),
                }
            };
            match result {
                Ok(in_sled) => {
                    let held = layers.lookup(k);
                    if held.is_some() {
                        let value = v.as_deref().map(IVec::from);
                        layers.put(IVec::from(k.as_slice()), Some(Held { value, below: true }));
                    }
                    before.push((k.as_slice(), held.unwrap_or(in_sled)));
                }
                Err(source) => {
                    return Err(Failed {
                        source,
                        undo: undo(&before),
                    })
                }
            }
        }
        layers.set_index(ops, &in_index);
        Ok(())
    }

    /// Puts `entries` into the keys kept in memory only (at open, from the call records).
    pub(super) fn load_index(&self, entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>) {
        let mut layers = self.write();
        for (k, v) in entries {
            debug_assert!(memory_only(&k) && v[..] == *partition_of(&k));
            layers.index.set(&k, true);
        }
    }

    /// Number of keys kept in memory only.
    pub fn index_len(&self) -> usize {
        self.read().index.len
    }

    /// Bytes the active table holds: what the next checkpoint writes to sled at most.
    pub fn memory_bytes(&self) -> usize {
        self.read().active_bytes
    }

    /// Freezes the active table (under the journal's lock, at a segment switch): it is written
    /// to sled by [`Tables::spill`].
    pub(super) fn freeze(&self) {
        let mut layers = self.write();
        let active = std::mem::take(&mut layers.active);
        layers.active_bytes = 0;
        if !active.is_empty() {
            layers.frozen.push(Arc::new(active));
        }
    }

    /// Writes every frozen table to sled, oldest first; answers how many, for
    /// [`Tables::forget_spilled`] once sled has flushed them.
    pub(super) fn spill(&self) -> sled::Result<usize> {
        let frozen = self.read().frozen.clone();
        for layer in &frozen {
            for (k, held) in layer.iter() {
                // sled short-circuits a removal of a key it does not hold without writing.
                match &held.value {
                    Some(v) => self.db.insert(k, v.clone())?,
                    None => self.db.remove(k)?,
                };
            }
        }
        Ok(frozen.len())
    }

    /// Drops the `n` oldest frozen tables, which sled now holds durably.
    pub(super) fn forget_spilled(&self, n: usize) {
        let mut layers = self.write();
        let n = n.min(layers.frozen.len());
        layers.frozen.drain(..n);
    }
}

/// The first key after every key that starts with `prefix`, if there is one.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// Keys and values of a range, the memory tables merged over sled (newest layer wins; removed
/// keys left out). Each step looks up the tables afresh, so it holds no lock between steps.
pub struct Iter<'a> {
    tables: &'a Tables,
    /// sled's keys of the range; `None` for a range of keys kept in memory only.
    sled: Option<std::iter::Peekable<sled::Iter>>,
    /// Where the next look into the memory tables starts.
    after: Bound<IVec>,
    end: Bound<IVec>,
    /// The memory tables' next key, looked up but not yet passed.
    held: Option<(IVec, Option<IVec>)>,
    held_done: bool,
    /// A range of keys kept in memory only, read whole.
    memory: Option<std::vec::IntoIter<(IVec, IVec)>>,
}

impl Iterator for Iter<'_> {
    type Item = sled::Result<(IVec, IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(memory) = self.memory.as_mut() {
            return memory.next().map(Ok);
        }
        let sled = self.sled.as_mut()?;
        loop {
            if self.held.is_none() && !self.held_done {
                self.held = self.tables.read().next(&self.after, &self.end);
                self.held_done = self.held.is_none();
            }
            let from_sled = match sled.peek() {
                Some(Ok((k, _))) => Some(k.clone()),
                Some(Err(_)) => return sled.next(),
                None => None,
            };
            let take_held = match (&self.held, from_sled) {
                (None, None) => return None,
                (None, Some(_)) => false,
                (Some(_), None) => true,
                (Some((h, _)), Some(s)) => {
                    if *h == s {
                        // The memory tables hold a newer value of sled's key.
                        sled.next();
                    }
                    *h <= s
                }
            };
            if !take_held {
                return sled.next();
            }
            let (k, v) = self.held.take()?;
            self.after = Bound::Excluded(k.clone());
            if let Some(v) = v {
                return Some(Ok((k, v)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> (tempfile::TempDir, Tables) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        (dir, Tables::new(db))
    }

    fn batch(ops: &[(&str, Option<&str>)]) -> Batch {
        let mut b = Batch::default();
        for (k, v) in ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        b
    }

    fn listed(it: Iter<'_>) -> Vec<(String, String)> {
        it.map(|r| {
            let (k, v) = r.unwrap();
            (
                String::from_utf8(k.to_vec()).unwrap(),
                String::from_utf8(v.to_vec()).unwrap(),
            )
        })
        .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn newer_layers_hide_older_ones_in_lookups_and_scans() {
        let (_dir, t) = tables();
        for (k, v) in [
            ("a1", "sled"),
            ("a2", "sled"),
            ("a4", "sled"),
            ("b1", "sled"),
        ] {
            t.sled().insert(k, v).unwrap();
        }
        t.apply(
            &batch(&[("a2", Some("frozen")), ("a3", Some("frozen"))]),
            None,
        )
        .ok()
        .unwrap();
        t.freeze();
        t.apply(
            &batch(&[("a3", Some("active")), ("a4", None), ("a0", Some("active"))]),
            None,
        )
        .ok()
        .unwrap();
        let expect = pairs(&[
            ("a0", "active"),
            ("a1", "sled"),
            ("a2", "frozen"),
            ("a3", "active"),
        ]);
        assert_eq!(listed(t.scan_prefix("a")), expect);
        assert_eq!(listed(t.range(b"a".to_vec()..b"b".to_vec())), expect);
        assert_eq!(
            listed(t.range(b"a2".to_vec()..b"a3".to_vec())),
            pairs(&[("a2", "frozen")])
        );
        assert_eq!(t.get("a4").unwrap(), None);
        assert_eq!(t.get("b1").unwrap().unwrap(), "sled");
        assert!(!t.contains_key("a9").unwrap());

        // A checkpoint's work: sled ends as the tables said, and nothing reads differently.
        t.freeze();
        assert_eq!(t.spill().unwrap(), 2);
        t.forget_spilled(2);
        assert_eq!(listed(t.scan_prefix("a")), expect);
        assert_eq!(t.sled().get("a4").unwrap(), None);
        assert_eq!(t.memory_bytes(), 0);
    }

    #[test]
    fn a_key_set_and_removed_between_checkpoints_never_reaches_sled() {
        let (_dir, t) = tables();
        t.apply(&batch(&[("c1", Some("call")), ("e1", Some("mark"))]), None)
            .ok()
            .unwrap();
        t.apply(&batch(&[("e1", None), ("c1", None), ("never", None)]), None)
            .ok()
            .unwrap();
        assert!(t.scan_prefix("").next().is_none());
        assert_eq!(
            t.memory_bytes(),
            0,
            "no tombstone is kept for what sled never held"
        );
        t.freeze();
        t.spill().unwrap();
        t.forget_spilled(1);
        assert!(t.sled().is_empty());
    }

    #[test]
    fn a_failed_change_puts_memory_back_and_a_large_one_reports_what_sled_held() {
        let (_dir, t) = tables();
        t.apply(&batch(&[("k1", Some("old"))]), None).ok().unwrap();
        let failed = t
            .apply(&batch(&[("k1", Some("new")), ("k2", Some("new"))]), Some(1))
            .err()
            .unwrap();
        assert!(failed.undo.is_empty());
        assert_eq!(t.get("k1").unwrap().unwrap(), "old");
        assert_eq!(t.get("k2").unwrap(), None);
        // A removal of what sled holds is made there at once, and the undo puts it back.
        t.sled().insert("s1", "in sled").unwrap();
        let failed = t
            .apply(
                &batch(&[("s1", None), ("k1", None), ("k2", Some("new"))]),
                Some(2),
            )
            .err()
            .unwrap();
        assert_eq!(failed.undo, batch(&[("s1", Some("in sled"))]));
        assert_eq!(t.get("k1").unwrap().unwrap(), "old");
        assert_eq!(t.sled().get("s1").unwrap(), None);

        // Large: straight to sled, and a key the tables hold is set there too.
        let big = "x".repeat(DIRECT_BYTES + 1);
        t.apply(&batch(&[("k1", Some(&big)), ("k3", Some("s"))]), None)
            .ok()
            .unwrap();
        assert_eq!(t.get("k1").unwrap().unwrap().len(), big.len());
        assert_eq!(t.sled().get("k3").unwrap().unwrap(), "s");
        let failed = t
            .apply(&batch(&[("k3", Some(&big)), ("k4", Some("s"))]), Some(1))
            .err()
            .unwrap();
        assert_eq!(failed.undo, batch(&[("k3", Some("s"))]));
    }

    #[test]
    fn keys_kept_in_memory_only_never_reach_sled() {
        let (_dir, t) = tables();
        let due = |at: u64, id: &str, value: &[u8]| keys::due(at, 0, id, value);
        let (d1, d2, d3) = (
            due(1, "a", b"q"),
            due(2, "b", b"q"),
            due(3, "c", b"r\0cage"),
        );
        let change = |ops: &[(&[u8], Option<&[u8]>)]| {
            let mut b = Batch::default();
            for (k, v) in ops {
                match v {
                    Some(v) => b.insert(k, v),
                    None => b.remove(k),
                }
            }
            b
        };
        let listed = |it: Iter<'_>| -> Vec<(Vec<u8>, Vec<u8>)> {
            it.map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
        };
        let entry = |k: &[u8], v: &[u8]| (k.to_vec(), v.to_vec());
        t.apply(
            &change(&[
                (&d2, Some(b"q")),
                (b"c2", Some(b"call")),
                (&d1, Some(b"q")),
                (&d3, Some(b"r\0cage")),
            ]),
            None,
        )
        .ok()
        .unwrap();
        assert_eq!(
            listed(t.scan_prefix([DUE])),
            vec![entry(&d1, b"q"), entry(&d2, b"q"), entry(&d3, b"r\0cage")]
        );
        // A scan passes over the partitions it is told to.
        let mut seen = Vec::new();
        t.with_index(|index| {
            index.scan(
                &[DUE + 1],
                &mut |_| true,
                &mut |v| v != b"q",
                &mut |k, v| {
                    seen.push(entry(k, v));
                    Visit::Next
                },
            )
        });
        assert_eq!(seen, vec![entry(&d3, b"r\0cage")]);
        t.apply(&change(&[(&d3, None)]), None).ok().unwrap();
        assert_eq!(
            listed(t.range(d2.clone()..vec![DUE + 1])),
            vec![entry(&d2, b"q")]
        );
        assert_eq!(t.get(&d1).unwrap().unwrap(), b"q");
        assert_eq!(t.get(&d3).unwrap(), None);

        // A change that fails leaves them as they were; a large one keeps them in memory.
        t.apply(&change(&[(&d1, None), (b"c3", Some(b"x"))]), Some(1))
            .err()
            .unwrap();
        assert_eq!(t.index_len(), 2);
        let big = vec![b'x'; DIRECT_BYTES + 1];
        t.apply(
            &change(&[(&d3, Some(b"r\0cage")), (b"c4", Some(&big))]),
            None,
        )
        .ok()
        .unwrap();
        assert_eq!(t.index_len(), 3);

        t.freeze();
        t.spill().unwrap();
        t.forget_spilled(1);
        assert!(t.sled().scan_prefix([DUE]).next().is_none());
        assert_eq!(t.sled().get("c2").unwrap().unwrap(), "call");
        assert_eq!(listed(t.scan_prefix([DUE])).len(), 3);
    }

    #[test]
    fn a_merged_scan_lists_every_partition_in_key_order_as_keys_come_and_go() {
        let (_dir, t) = tables();
        let mut model = BTreeSet::new();
        // A fixed pseudo-random walk over 40 partitions: inserts and removes, heads changing.
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for step in 0..4000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let part = format!("q\u{1}g{}", x % 40);
            let key = keys::due(x % 500, 0, &format!("id{}", x % 997), part.as_bytes());
            let mut b = Batch::default();
            if step % 3 == 2 && !model.is_empty() {
                let victim: Vec<u8> = model
                    .iter()
                    .nth((x as usize) % model.len())
                    .cloned()
                    .unwrap();
                model.remove(&victim);
                b.remove(victim);
            } else {
                model.insert(key.clone());
                b.insert(key, part.as_bytes());
            }
            t.apply(&b, None).ok().unwrap();
        }
        let mut seen = Vec::new();
        t.with_index(|index| {
            index.scan(&[DUE + 1], &mut |_| true, &mut |_| true, &mut |k, v| {
                assert_eq!(keys::due_value_of(k), v);
                seen.push(k.to_vec());
                Visit::Next
            })
        });
        assert_eq!(seen, model.iter().cloned().collect::<Vec<_>>());
        assert_eq!(t.index_len(), model.len());
        // Leaving a partition drops the rest of it, and only it.
        let mut firsts = Vec::new();
        t.with_index(|index| {
            index.scan(&[DUE + 1], &mut |_| true, &mut |_| true, &mut |k, _| {
                firsts.push(k.to_vec());
                Visit::Leave
            })
        });
        let parts: BTreeSet<&[u8]> = model.iter().map(|k| keys::due_value_of(k)).collect();
        assert_eq!(firsts.len(), parts.len());
        for k in &firsts {
            let first = model
                .iter()
                .find(|m| keys::due_value_of(m) == keys::due_value_of(k));
            assert_eq!(first, Some(k));
        }
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255]), None);
    }
}
