//! The queue's journal: every change to the queue tree is appended here as one entry before it
//! is applied to the memory tables ([`super::tables`]). The journal, not sled, is the system of
//! record: it makes changes atomic and durable, and sled receives what is left of them at each
//! checkpoint.
//!
//! - *atomic*: an entry is written whole (length and CRC-32 checked) before any of its keys
//!   is applied, so a crash in the middle of applying leaves the whole entry in the journal,
//!   and replaying it on the next open completes the change;
//! - *durable*: group commit syncs the journal file (one sequential `fdatasync` shared by every
//!   waiting writer), so nothing waits on sled's own flush.
//!
//! Why not sled's batches: each `apply_batch` rolls sled's log buffer and takes sled's global
//! lock exclusively, and sled's `flush` holds that lock too, so batches and flushes queue behind
//! each other. A checkpoint writes key by key; single inserts and removes take no exclusive
//! lock.
//!
//! Segments are written full of zeros when made, and entries overwrite them in place: the
//! file's size never changes, so syncing it writes the entries' blocks and no file metadata
//! (an appended file costs an inode write on every `fdatasync`, roughly halving the sync rate).
//! A zero length field ends a segment's entries. The format is meant to be shipped as it is:
//! a replica that applies the same entries in the same order ends in the same state.
//!
//! A *checkpoint* starts a new segment and freezes the memory tables at that point, writes
//! them to sled, flushes sled (and syncs its data file), after which the journal segments
//! written before it are no longer needed and are deleted. Replaying an entry twice is
//! harmless: entries are whole values set or removed, so replaying every entry since the last
//! checkpoint, in order, ends in the state the last one left. Replay at open writes straight to
//! sled and checkpoints.
//!
//! *Take-back*: a change that fails after its entry was written (the write reported an error,
//! or applying one of its keys failed) was never acknowledged, and must never take effect, or a
//! refused call would run after the next restart. Before the failure is answered, the writer
//! (still holding the journal) restores the keys that it changed, and appends and syncs a
//! *void* entry naming the failed one (segment and offset) and carrying the earlier values of
//! the keys that reached sled (a large change goes to sled at once): replay skips the voided
//! entry and applies the earlier values where the void stands, which also repairs keys that
//! sled had already written to its own log. When no key reached sled, erasing the failed
//! entry's header in place (which ends its segment there) serves too, for a disk that can no
//! longer make the next segment. If neither can be made durable, the outcome is unknown, and
//! the journal says so and stops taking writes (see [`Journal::apply`]).

use super::fault::{injected, Faults, Steps};
use super::ledger::{self, Ledger};
use super::tables::{memory_only, Failed, Tables};
use super::QueueError;
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// First bytes of every segment file: the format, so a later one can be told apart.
const MAGIC: &[u8; 8] = b"CAGEJRN1";
/// An entry larger than this is not one this journal wrote (a length field read from garbage).
const MAX_ENTRY: u32 = 256 * 1024 * 1024;
/// Size of a segment as made (zero-filled); an entry that does not fit starts a new one.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// A checkpoint makes the next segment under this name ahead of time, then renames it.
const PREPARED: &str = "journal.prepared";
/// An entry that does not fit makes the next segment under this name, then renames it.
const ROLLED: &str = "journal.rolled";
const INSERT: u8 = 1;
const REMOVE: u8 = 0;
/// A change's tag for an entry added to the ledger of finished calls (16 bytes follow).
const REMEMBER: u8 = 3;
/// First byte of a void entry (a change's first byte is [`INSERT`] or [`REMOVE`]).
const VOID: u8 = 2;

/// Changes to several keys of the queue tree, applied as one journal entry.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    /// Entries for the ledger of finished calls (see [`super::ledger`]).
    remember: Vec<ledger::Entry>,
}

impl Batch {
    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.ops
            .push((key.as_ref().to_vec(), Some(value.as_ref().to_vec())));
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.ops.push((key.as_ref().to_vec(), None));
    }

    /// Adds `entry` to the ledger of finished calls.
    pub fn remember(&mut self, entry: ledger::Entry) {
        self.remember.push(entry);
    }

    /// Whether nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && self.remember.is_empty()
    }

    /// The entry's bytes: per change a tag, the key, and for an insert the value.
    fn encode(&self, out: &mut Vec<u8>) {
        for e in &self.remember {
            out.push(REMEMBER);
            out.extend_from_slice(&e.to_bytes());
        }
        for (k, v) in &self.ops {
            out.push(if v.is_some() { INSERT } else { REMOVE });
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(k);
            if let Some(v) = v {
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }

    /// Reads an entry's bytes back; `None` if they are not what [`Batch::encode`] writes.
    fn decode(mut bytes: &[u8]) -> Option<Batch> {
        fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if bytes.len() < n {
                return None;
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Some(head)
        }
        fn len(bytes: &mut &[u8]) -> Option<usize> {
            let b = take(bytes, 4)?;
            Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }
        let mut batch = Batch::default();
        while !bytes.is_empty() {
            let tag = take(&mut bytes, 1)?[0];
            if tag == REMEMBER {
                let e = take(&mut bytes, 16)?;
                batch
                    .remember
                    .push(ledger::Entry::from_bytes(e.try_into().ok()?));
                continue;
            }
            let n = len(&mut bytes)?;
            let key = take(&mut bytes, n)?.to_vec();
            let value = match tag {
                INSERT => {
                    let n = len(&mut bytes)?;
                    Some(take(&mut bytes, n)?.to_vec())
                }
                REMOVE => None,
                _ => return None,
            };
            batch.ops.push((key, value));
        }
        Some(batch)
    }

    /// The key changes, in order.
    pub(super) fn ops(&self) -> &[(Vec<u8>, Option<Vec<u8>>)] {
        &self.ops
    }

    /// Adds the ledger entries, then applies the key changes to `tables` (see
    /// [`Tables::apply`]); with `fail_at`, the key change of that index fails instead (fault
    /// injection).
    ///
    /// Ledger entries go first, so a finished call is in the ledger before its pending record
    /// is gone (a call offered again meanwhile finds one or the other). They are never taken
    /// back: an entry for a call whose finishing failed only says it was accepted, which its
    /// pending record says too.
    fn apply_to(
        &self,
        tables: &Tables,
        ledger: &Ledger,
        fail_at: Option<usize>,
    ) -> Result<(), Failed> {
        self.remember_in(ledger).map_err(|source| Failed {
            source,
            undo: Batch::default(),
        })?;
        tables.apply(self, fail_at)
    }

    /// Adds the ledger entries and applies the key changes straight to sled (replay at open,
    /// before the memory tables take any change).
    fn replay_into(&self, db: &sled::Db, ledger: &Ledger) -> sled::Result<()> {
        self.remember_in(ledger)?;
        // The keys kept in memory only are rebuilt from the records after the replay.
        for (k, v) in self.ops.iter().filter(|(k, _)| !memory_only(k)) {
            match v {
                Some(v) => db.insert(k, v.as_slice())?,
                None => db.remove(k)?,
            };
        }
        Ok(())
    }

    fn remember_in(&self, ledger: &Ledger) -> sled::Result<()> {
        if !self.remember.is_empty() {
            let now = ledger::expiry(crate::model::clock::now_ms());
            for e in &self.remember {
                ledger
                    .remember(*e, now)
                    .map_err(|e| sled::Error::Io(std::io::Error::other(e.to_string())))?;
            }
        }
        Ok(())
    }
}

/// One journal entry as read back.
#[derive(Debug, Clone, PartialEq)]
enum Entry {
    /// A change to apply.
    Change(Batch),
    /// The change at byte `offset` of segment `segment` failed and was taken back: replay skips
    /// it, and applies `undo` (the earlier values of the keys it had changed in sled) here.
    Void {
        segment: u64,
        offset: u64,
        undo: Batch,
    },
}

impl Entry {
    /// A void's payload: its tag, the voided entry's place, then the undo as a change's bytes.
    fn encode_void(segment: u64, offset: u64, undo: &Batch, out: &mut Vec<u8>) {
        out.push(VOID);
        out.extend_from_slice(&segment.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        undo.encode(out);
    }

    fn decode(bytes: &[u8]) -> Option<Entry> {
        match bytes.split_first() {
            Some((&VOID, rest)) => {
                let (place, undo) = rest.split_at_checked(16)?;
                let (segment, offset) = place.split_at(8);
                Some(Entry::Void {
                    segment: u64::from_le_bytes(segment.try_into().ok()?),
                    offset: u64::from_le_bytes(offset.try_into().ok()?),
                    undo: Batch::decode(undo)?,
                })
            }
            _ => Batch::decode(bytes).map(Entry::Change),
        }
    }
}

/// Frames an entry whose payload `encode` writes: length and CRC-32 of the payload, then the
/// payload.
fn frame(encode: impl FnOnce(&mut Vec<u8>), out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; 8]);
    encode(out);
    let len = (out.len() - 8) as u32;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a segment found.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    /// Each whole entry with the byte offset it starts at.
    entries: Vec<(u64, Entry)>,
    /// Bytes after the last whole entry (a write a crash cut short), if any.
    torn_at: Option<u64>,
}

/// Reads every whole entry of a segment, stopping at the first one that is cut short or fails
/// its check: entries are appended in order, so nothing after a torn one was acknowledged.
fn scan(reader: impl Read) -> std::io::Result<Scan> {
    let mut r = BufReader::new(reader);
    let mut magic = [0u8; 8];
    let mut scan = Scan::default();
    if read_full(&mut r, &mut magic)? < MAGIC.len() || &magic != MAGIC {
        scan.torn_at = Some(0);
        return Ok(scan);
    }
    let mut offset = MAGIC.len() as u64;
    loop {
        let mut head = [0u8; 8];
        let n = read_full(&mut r, &mut head)?;
        if n == 0 {
            return Ok(scan);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if n == head.len() && len == 0 {
            // The zeros the segment was made with: no entry was written here.
            return Ok(scan);
        }
        if n < head.len() || len > MAX_ENTRY {
            scan.torn_at = Some(offset);
            return Ok(scan);
        }
        let mut payload = vec![0u8; len as usize];
        if read_full(&mut r, &mut payload)? < payload.len() || crc32fast::hash(&payload) != crc {
            scan.torn_at = Some(offset);
            return Ok(scan);
        }
        match Entry::decode(&payload) {
            Some(e) => scan.entries.push((offset, e)),
            None => {
                scan.torn_at = Some(offset);
                return Ok(scan);
            }
        }
        offset += 8 + u64::from(len);
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn segment_name(number: u64) -> String {
    format!("journal-{number:012}.log")
}

/// Segment files in `dir`, oldest first.
fn segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("journal-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The error for `action` on `path` failing with `source`.
fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> QueueError + 'a {
    move |source| QueueError::Journal {
        action,
        path: path.display().to_string(),
        source,
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

struct Segment {
    number: u64,
    file: Arc<File>,
    /// Where the next entry goes (bytes in use).
    bytes: u64,
    /// The file's size.
    capacity: u64,
    /// An append failed part-way, or a failed entry's header was erased: the file may end in
    /// half an entry, or its entries end early, after which nothing may be appended (replay
    /// stops there), so the next append starts a new segment first.
    torn: bool,
    /// Reused for framing, so appending allocates nothing once warm.
    buf: Vec<u8>,
}

impl Segment {
    /// Segment `number` in `file` of `capacity` bytes, holding no entry yet.
    fn empty(number: u64, file: File, capacity: u64) -> Segment {
        Segment {
            number,
            file: Arc::new(file),
            bytes: MAGIC.len() as u64,
            capacity,
            torn: false,
            buf: Vec::new(),
        }
    }
}

/// The journal of one queue database (see the module documentation).
pub struct Journal {
    dir: PathBuf,
    current: Mutex<Segment>,
    /// One checkpoint at a time (group commit's and the one at shutdown).
    checkpointing: Mutex<()>,
    /// Why the journal takes no more writes, once it stopped (see [`Journal::apply`]).
    stopped: OnceLock<String>,
    faults: Faults,
    /// The ledger of finished calls, which changes apply to beside sled.
    ledger: Arc<Ledger>,
}

/// A zero-filled segment file under a temporary name, not yet in use.
struct Made {
    file: File,
    name: &'static str,
    capacity: u64,
}

/// What opening the journal replayed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Replayed {
    /// Entries applied again.
    pub entries: usize,
    /// Entries left out because they failed and were taken back (voided).
    pub voided: usize,
    /// Segments that ended in a torn entry (its bytes were never acknowledged).
    pub torn: usize,
}

impl Journal {
    /// Replays into `db` what the segments in `dir` hold (leaving out changes that were taken
    /// back), checkpoints, and starts a new segment.
    pub fn open(dir: &Path, db: &sled::Db) -> Result<(Journal, Replayed), QueueError> {
        let found = segments(dir).map_err(io_error("list", dir))?;
        let ledger = Arc::new(Ledger::open(dir)?);
        let mut replayed = Replayed::default();
        // Every segment is read before any entry is applied: a void may stand in a later
        // segment than the change it takes back (when that change's segment was full or torn).
        let mut scans = Vec::with_capacity(found.len());
        for (_, path) in &found {
            let file = File::open(path).map_err(io_error("open", path))?;
            scans.push(scan(file).map_err(io_error("read", path))?);
        }
        // A void whose change is in a segment already deleted (a crash part-way through deleting
        // a checkpoint's segments) names nothing here, which is harmless: that change is not
        // replayed either, and the void's undo sets values that later entries overwrite.
        let voided: HashSet<(u64, u64)> = scans
            .iter()
            .flat_map(|s| &s.entries)
            .filter_map(|(_, e)| match e {
                Entry::Void {
                    segment, offset, ..
                } => Some((*segment, *offset)),
                Entry::Change(_) => None,
            })
            .collect();
        let storage = |source| QueueError::Storage {
            path: dir.display().to_string(),
            source,
        };
        // The last segment, if it holds no entry and nothing torn (a graceful stop's
        // checkpoint left it so): written to again rather than a new one made on every start.
        let mut unused_last = false;
        for (i, ((number, path), scan)) in found.iter().zip(&scans).enumerate() {
            for (offset, entry) in &scan.entries {
                let batch = match entry {
                    Entry::Change(_) if voided.contains(&(*number, *offset)) => {
                        replayed.voided += 1;
                        continue;
                    }
                    Entry::Change(batch) => {
                        replayed.entries += 1;
                        batch
                    }
                    Entry::Void { undo, .. } => undo,
                };
                batch.replay_into(db, &ledger).map_err(storage)?;
            }
            if let Some(at) = scan.torn_at {
                replayed.torn += 1;
                tracing::warn!(
                    "queue journal {}: the entry at byte {at} was cut short by a crash; it was \
                     never acknowledged and is left out",
                    path.display()
                );
            }
            unused_last = i + 1 == found.len() && scan.entries.is_empty() && scan.torn_at.is_none();
        }
        for leftover in [PREPARED, ROLLED] {
            let _ = std::fs::remove_file(dir.join(leftover));
        }
        let segment = match found.last() {
            Some((n, path)) if unused_last => Self::reopen(path, *n)?,
            last => {
                let next = last.map_or(1, |(n, _)| n + 1);
                Self::install(dir, Self::prepare(dir, ROLLED, SEGMENT_BYTES)?, next)?
            }
        };
        let current = segment.number;
        let journal = Journal {
            dir: dir.to_owned(),
            current: Mutex::new(segment),
            checkpointing: Mutex::new(()),
            stopped: OnceLock::new(),
            faults: Faults::from_env(),
            ledger,
        };
        if found.iter().any(|(n, _)| *n < current) {
            journal.flush_db(db)?;
            journal.ledger.sync()?;
            journal.remove_before(current)?;
        }
        Ok((journal, replayed))
    }

    /// An existing segment that holds no entry, to write from its start.
    fn reopen(path: &Path, number: u64) -> Result<Segment, QueueError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        let capacity = file.metadata().map_err(io_error("read", path))?.len();
        Ok(Segment::empty(number, file, capacity))
    }

    /// Makes a zero-filled segment of `capacity` bytes under the temporary `name`, synced.
    fn prepare(dir: &Path, name: &'static str, capacity: u64) -> Result<Made, QueueError> {
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(io_error("create", &path))?;
        file.write_all(MAGIC).map_err(io_error("write", &path))?;
        let zeros = vec![0u8; 1024 * 1024];
        let mut left = capacity.saturating_sub(MAGIC.len() as u64);
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])
                .map_err(io_error("write", &path))?;
            left -= n as u64;
        }
        file.sync_data().map_err(io_error("fdatasync", &path))?;
        Ok(Made {
            file,
            name,
            capacity: capacity.max(MAGIC.len() as u64),
        })
    }

    /// Renames a made segment to segment `number` and makes the name durable.
    fn install(dir: &Path, made: Made, number: u64) -> Result<Segment, QueueError> {
        let Made {
            file,
            name,
            capacity,
        } = made;
        let path = dir.join(segment_name(number));
        std::fs::rename(dir.join(name), &path).map_err(io_error("rename to", &path))?;
        // The segment's name must survive a power loss too, or its entries would.
        sync_dir(dir).map_err(io_error("fsync", dir))?;
        Ok(Segment::empty(number, file, capacity))
    }

    /// A new segment after the current one, big enough for an entry of `need` bytes (made
    /// while the journal is held: only when an entry does not fit or an append failed).
    fn roll(&self, seg: &mut Segment, need: u64) -> Result<(), QueueError> {
        let capacity = SEGMENT_BYTES.max(need + MAGIC.len() as u64 + 8);
        let made = Self::prepare(&self.dir, ROLLED, capacity)?;
        self.sync_before_leaving(seg)?;
        *seg = Self::install(&self.dir, made, seg.number + 1)?;
        Ok(())
    }

    /// Syncs segment `seg` before writers move on to the next: [`Journal::sync`] covers only
    /// the current segment, and a writer whose entry went into this one may be waiting for it.
    fn sync_before_leaving(&self, seg: &Segment) -> Result<(), QueueError> {
        seg.file
            .sync_data()
            .map_err(io_error("fdatasync", &self.segment_path(seg.number)))
    }

    fn segment_path(&self, number: u64) -> PathBuf {
        self.dir.join(segment_name(number))
    }

    fn lock(&self) -> MutexGuard<'_, Segment> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The error for a write to a journal that stopped, if it did.
    fn refuse_if_stopped(&self) -> Result<(), QueueError> {
        match self.stopped.get() {
            Some(why) => Err(QueueError::Stopped(why.clone())),
            None => Ok(()),
        }
    }

    /// Why the journal takes no more writes, if it stopped.
    pub fn stopped(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    fn stop(&self, why: String) {
        tracing::error!(
            "queue database {}: no more changes are taken until the cage restarts: {why}",
            self.dir.display()
        );
        let _ = self.stopped.set(why);
    }

    /// Appends `batch` and then applies it to `tables`; `then` runs while the journal is still
    /// held, so what it publishes is ordered with the entry. Journal order is apply order, which
    /// replay relies on when two writers change the same key.
    ///
    /// A change that fails after its entry was written is taken back whole before this returns
    /// (see the module documentation): the error is then [`QueueError::TakenBack`], and no
    /// replay brings the change back. Two failures stop the journal (every later write gets
    /// [`QueueError::Stopped`], until a restart replays the journal into a consistent sled):
    /// - applying it failed: for a large change written to sled at once, sled's errors do not
    ///   heal (an I/O error poisons sled 0.34 for good, and a failed large-value file leaves its
    ///   log buffer unwritable), and its keys may hold part of the taken-back change until the
    ///   restart; only replay repairs them, so nothing more is written on top (a failure in
    ///   memory is only ever injected, and is treated the same);
    /// - the take-back itself could not be made durable (the disk is gone): the change may
    ///   still come back after a crash, so "refused" would be a lie. The error is then
    ///   [`QueueError::Unknown`]: the caller must report the outcome as unknown.
    pub fn apply(
        &self,
        tables: &Tables,
        batch: &Batch,
        then: impl FnOnce(),
    ) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let faults = self.faults.steps();
        let mut guard = self.lock();
        // Under the journal: a writer that stops it does so before letting go of it.
        self.refuse_if_stopped()?;
        let seg = &mut *guard;
        let mut buf = std::mem::take(&mut seg.buf);
        frame(|out| batch.encode(out), &mut buf);
        if seg.torn || seg.bytes + buf.len() as u64 > seg.capacity {
            // A torn segment stays until the next checkpoint; replay reads past its end into
            // the new one.
            if let Err(e) = self.roll(seg, buf.len() as u64) {
                seg.buf = buf;
                return Err(e);
            }
        }
        // Written to the file (the kernel's page cache) before sled sees any key: a process
        // crash after this point finds the whole entry on the next open.
        let at = (seg.number, seg.bytes);
        let mut written = seg.file.write_all_at(&buf, seg.bytes);
        if written.is_ok() && faults.write {
            written = Err(injected("write"));
        }
        let len = buf.len() as u64;
        seg.buf = buf;
        if let Err(e) = written {
            // Some or all of the entry may be in the file.
            seg.torn = true;
            let failed = io_error("write to", &self.segment_path(seg.number))(e);
            return Err(self.take_back(tables, seg, at, None, failed, &faults));
        }
        seg.bytes += len;
        match batch.apply_to(tables, &self.ledger, faults.apply_key) {
            Ok(()) => {
                then();
                Ok(())
            }
            Err(Failed { source, undo }) => {
                let failed = QueueError::Storage {
                    path: self.dir.display().to_string(),
                    source,
                };
                Err(self.take_back(tables, seg, at, Some(undo), failed, &faults))
            }
        }
    }

    /// Takes back the change whose entry starts at `at` (segment, offset) and failed with
    /// `failed`; `undo` puts back the keys it had changed in sled (`None`: it was never
    /// applied; empty: what it changed in memory is already put back). Answers the error to give
    /// its writer.
    ///
    /// The key on which sled failed is not in `undo`: sled changes a key in memory and then
    /// fails only when it can no longer write its log at all, so that change never reaches
    /// sled's files, and the restart that the stop below requires reads the key as it was.
    fn take_back(
        &self,
        tables: &Tables,
        seg: &mut Segment,
        at: (u64, u64),
        undo: Option<Batch>,
        failed: QueueError,
        faults: &Steps,
    ) -> QueueError {
        let applied = undo.is_some();
        let undo = undo.unwrap_or_default();
        // For readers until the restart; replay does the same from the void below.
        let restored = undo
            .apply_to(tables, &self.ledger, None)
            .map_err(|f| f.source);
        let failed_file = seg.file.clone();
        let voided = self.void(seg, at, &undo, faults).or_else(|void_failed| {
            // Without keys to put back, erasing the entry's header does as well, and needs
            // no new segment (which a read-only directory would refuse).
            if !undo.is_empty() {
                return Err(void_failed);
            }
            seg.torn |= seg.number == at.0;
            self.erase(&failed_file, at, faults)
                .map_err(|erase_failed| {
                    QueueError::Flush(format!("{void_failed}; and {erase_failed}"))
                })
        });
        match voided {
            Ok(()) => {
                tracing::error!(
                    "queue journal {}: a change failed and was taken back: {failed}",
                    self.segment_path(at.0).display()
                );
                if applied {
                    self.stop(match restored {
                        Ok(()) => format!("applying a change failed: {failed}"),
                        Err(e) => format!(
                            "applying a change failed: {failed}; and putting back the keys it \
                             had changed failed ({e}): they read wrong until the restart"
                        ),
                    });
                }
                QueueError::TakenBack(Box::new(failed))
            }
            Err(undo_failed) => {
                self.stop(format!(
                    "a failed change could not be taken back ({failed}; {undo_failed})"
                ));
                QueueError::Unknown {
                    failed: Box::new(failed),
                    undo: Box::new(undo_failed),
                }
            }
        }
    }

    /// Appends and syncs a void entry for the change at `at`, carrying `undo`.
    fn void(
        &self,
        seg: &mut Segment,
        at: (u64, u64),
        undo: &Batch,
        faults: &Steps,
    ) -> Result<(), QueueError> {
        if faults.take_back {
            return Err(io_error("write a void entry to", &self.dir)(injected(
                "takeback",
            )));
        }
        let mut buf = Vec::new();
        frame(|out| Entry::encode_void(at.0, at.1, undo, out), &mut buf);
        if seg.torn || seg.bytes + buf.len() as u64 > seg.capacity {
            self.roll(seg, buf.len() as u64)?;
        }
        let path = self.segment_path(seg.number);
        if let Err(e) = seg.file.write_all_at(&buf, seg.bytes) {
            seg.torn = true;
            return Err(io_error("write a void entry to", &path)(e));
        }
        seg.bytes += buf.len() as u64;
        seg.file.sync_data().map_err(io_error("fdatasync", &path))
    }

    /// Zeroes the header of the entry at `at` in `file` (its segment) and syncs it: replay then
    /// ends that segment there. Only for the last entry of a segment nothing is appended to
    /// after it (it is marked torn).
    fn erase(&self, file: &File, at: (u64, u64), faults: &Steps) -> Result<(), QueueError> {
        let path = self.segment_path(at.0);
        if faults.take_back {
            return Err(io_error("erase an entry of", &path)(injected("takeback")));
        }
        file.write_all_at(&[0; 8], at.1)
            .map_err(io_error("erase an entry of", &path))?;
        file.sync_data().map_err(io_error("fdatasync", &path))
    }

    /// Applies `batch` as [`Journal::apply`] does and syncs the journal before returning: for
    /// a change that takes back one whose acknowledgement failed, which must be on disk before
    /// the refusal is answered. If it cannot be synced, the journal stops (as in `apply`).
    pub fn apply_durably(&self, tables: &Tables, batch: &Batch) -> Result<(), QueueError> {
        self.apply(tables, batch, || {})?;
        self.sync().inspect_err(|e| {
            self.stop(format!("a take-back could not be made durable: {e}"));
        })
    }

    /// Syncs what was appended so far to the device.
    pub fn sync(&self) -> Result<(), QueueError> {
        let (file, number) = {
            let seg = self.lock();
            (seg.file.clone(), seg.number)
        };
        let path = self.segment_path(number);
        if self.faults.steps().sync {
            return Err(io_error("fdatasync", &path)(injected("sync")));
        }
        file.sync_data().map_err(io_error("fdatasync", &path))
    }

    /// Bytes in the current segment.
    pub fn len(&self) -> u64 {
        self.lock().bytes
    }

    /// Whether the current segment holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() <= MAGIC.len() as u64
    }

    /// Makes everything applied so far durable in sled and drops the segments that held it.
    /// A stopped journal refuses: sled may hold part of a taken-back change, which only the
    /// replay of the segments kept can repair.
    pub fn checkpoint(&self, tables: &Tables) -> Result<(), QueueError> {
        // A new segment first: entries appended from now on go there and are kept; everything
        // in the older ones was applied to the tables frozen at the switch, which are written
        // to sled and flushed below.
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        self.refuse_if_stopped()?;
        // The zero-filling happens before the journal is held, so writers do not wait for it.
        let prepared = Self::prepare(&self.dir, PREPARED, SEGMENT_BYTES)?;
        let number = {
            let mut seg = self.lock();
            self.refuse_if_stopped()?;
            // Should the flush below fail, the old segment still has to hold what its writers
            // are acknowledged on by the next sync (of the new segment).
            self.sync_before_leaving(&seg)?;
            *seg = Self::install(&self.dir, prepared, seg.number + 1)?;
            // Under the journal: the frozen tables hold exactly the older segments' changes.
            tables.freeze();
            seg.number
        };
        let spilled = tables.spill().map_err(|source| QueueError::Storage {
            path: self.dir.display().to_string(),
            source,
        })?;
        self.flush_db(tables.sled())?;
        self.ledger.sync()?;
        tables.forget_spilled(spilled);
        self.remove_before(number)
    }

    /// The ledger of finished calls.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    fn flush_db(&self, db: &sled::Db) -> Result<(), QueueError> {
        db.flush().map_err(|source| QueueError::Storage {
            path: self.dir.display().to_string(),
            source,
        })?;
        // sled's flush writes with sync_file_range, which leaves the device's cache unflushed.
        let data = self.dir.join("db");
        File::open(&data)
            .and_then(|f| f.sync_data())
            .map_err(io_error("fdatasync", &data))
    }

    fn remove_before(&self, number: u64) -> Result<(), QueueError> {
        let found = segments(&self.dir).map_err(io_error("list", &self.dir))?;
        for (_, path) in found.into_iter().filter(|(n, _)| *n < number) {
            std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens sled in `dir`, waiting while sled's flusher of a just-dropped handle still holds
    /// the file lock (a new process never meets it; a reopen within one process can).
    fn open_db(dir: &Path) -> Tables {
        let started = std::time::Instant::now();
        loop {
            match sled::Config::new().path(dir).open() {
                Ok(db) => return Tables::new(db),
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn batch(pairs: &[(&str, Option<&str>)]) -> Batch {
        let mut b = Batch::default();
        for (k, v) in pairs {
            match v {
                Some(v) => b.insert(k.as_bytes(), v.as_bytes()),
                None => b.remove(k.as_bytes()),
            }
        }
        b
    }

    fn segment_of(entries: &[Batch]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        let mut buf = Vec::new();
        for e in entries {
            frame(|out| e.encode(out), &mut buf);
            out.extend_from_slice(&buf);
        }
        out
    }

    /// The changes a scan found, without their offsets.
    fn changes(scan: &Scan) -> Vec<Batch> {
        scan.entries
            .iter()
            .filter_map(|(_, e)| match e {
                Entry::Change(b) => Some(b.clone()),
                Entry::Void { .. } => None,
            })
            .collect()
    }

    #[test]
    fn entries_read_back_as_written() {
        let a = batch(&[("a", Some("1")), ("b", None)]);
        let b = batch(&[("c", Some(""))]);
        let mut bytes = segment_of(&[a.clone(), b.clone()]);
        let scan_of = |bytes: &[u8]| scan(bytes).unwrap();
        assert_eq!(changes(&scan_of(&bytes)), vec![a.clone(), b.clone()]);
        // The zeros a segment is made with end it cleanly.
        bytes.extend_from_slice(&[0; 100]);
        let found = scan_of(&bytes);
        assert_eq!(changes(&found), vec![a, b]);
        assert_eq!(found.torn_at, None);
    }

    #[test]
    fn an_entry_that_does_not_fit_starts_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let (journal, _) = Journal::open(dir.path(), db.sled()).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        for k in ["a", "b", "c", "e"] {
            let mut b = Batch::default();
            b.insert(k, &big);
            journal.apply(&db, &b, || {}).unwrap();
        }
        let found = segments(dir.path()).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        let entries: usize = found
            .iter()
            .map(|(_, p)| scan(File::open(p).unwrap()).unwrap().entries.len())
            .sum();
        assert_eq!(entries, 4);
        for (_, p) in &found {
            assert!(std::fs::metadata(p).unwrap().len() >= SEGMENT_BYTES);
        }
    }

    #[test]
    fn a_torn_or_damaged_entry_ends_the_scan() {
        let a = batch(&[("a", Some("1"))]);
        let b = batch(&[("b", Some("2")), ("c", Some("3"))]);
        let whole = segment_of(&[a.clone(), b]);
        let first_end = segment_of(std::slice::from_ref(&a)).len() as u64;
        for cut in first_end as usize + 1..whole.len() {
            let scan = scan(&whole[..cut]).unwrap();
            assert_eq!(changes(&scan), vec![a.clone()], "cut at {cut}");
            assert_eq!(scan.torn_at, Some(first_end));
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(changes(&scan(&flipped[..]).unwrap()), vec![a]);
        assert_eq!(scan(&b"garbage"[..]).unwrap().torn_at, Some(0));
    }

    #[test]
    fn replay_completes_changes_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = open_db(dir.path());
            let (journal, _) = Journal::open(dir.path(), db.sled()).unwrap();
            journal
                .apply(&db, &batch(&[("x", Some("1")), ("y", Some("1"))]), || {})
                .unwrap();
            journal.sync().unwrap();
            // A crash before sled's flush loses sled's copy; simulate the worst case, where
            // only the first key had reached sled, by writing the journal entry again by hand.
            let mut seg = journal.lock();
            let seg = &mut *seg;
            let b = batch(&[("x", Some("2")), ("y", Some("2")), ("z", None)]);
            frame(|out| b.encode(out), &mut seg.buf);
            seg.file.write_all_at(&seg.buf, seg.bytes).unwrap();
        }
        let db = open_db(dir.path());
        let (journal, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!(replayed.entries, 2);
        assert_eq!(db.get("x").unwrap().unwrap(), &b"2"[..]);
        assert_eq!(db.get("y").unwrap().unwrap(), &b"2"[..]);
        assert!(journal.is_empty());
        assert_eq!(
            segments(dir.path()).unwrap().len(),
            1,
            "replayed segments dropped"
        );
    }

    #[test]
    fn ledger_entries_replay_when_the_ledger_lost_them() {
        let dir = tempfile::tempdir().unwrap();
        let entry = ledger::Entry {
            digest: ledger::digest("c-1"),
            until: u32::MAX,
        };
        let mut b = batch(&[("c-1", None)]);
        b.remember(entry);
        assert_eq!(
            changes(&scan(&segment_of(std::slice::from_ref(&b))[..]).unwrap()),
            vec![b.clone()],
            "an entry with ledger entries reads back whole"
        );
        let (db, journal) = open(dir.path());
        journal.apply(&db, &b, || {}).unwrap();
        assert!(journal.ledger().contains(&entry.digest, 1).unwrap());
        journal.sync().unwrap();
        // A power cut before the checkpoint: the ledger's pages never reached the disk.
        drop(journal);
        drop(db);
        std::fs::remove_file(dir.path().join(ledger::FILE)).unwrap();
        let db = open_db(dir.path());
        let (journal, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!(replayed.entries, 1);
        assert!(journal.ledger().contains(&entry.digest, 1).unwrap());
    }

    #[test]
    fn an_unused_last_segment_is_written_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let db = open_db(dir.path());
            let (journal, _) = Journal::open(dir.path(), db.sled()).unwrap();
            journal
                .apply(&db, &batch(&[("a", Some("1"))]), || {})
                .unwrap();
            journal.checkpoint(&db).unwrap();
            segments(dir.path()).unwrap()
        };
        let db = open_db(dir.path());
        let (journal, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!(replayed, Replayed::default());
        assert_eq!(segments(dir.path()).unwrap(), before, "no new segment made");
        journal
            .apply(&db, &batch(&[("b", Some("2"))]), || {})
            .unwrap();
        drop(journal);
        drop(db);
        let db = open_db(dir.path());
        let (_, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!(replayed.entries, 1, "what was written to it replays");
        assert_eq!(db.get("b").unwrap().unwrap(), &b"2"[..]);
    }

    #[test]
    fn a_checkpoint_keeps_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path());
        let (journal, _) = Journal::open(dir.path(), db.sled()).unwrap();
        journal
            .apply(&db, &batch(&[("a", Some("1"))]), || {})
            .unwrap();
        journal.checkpoint(&db).unwrap();
        assert!(journal.is_empty());
        journal
            .apply(&db, &batch(&[("b", Some("1"))]), || {})
            .unwrap();
        let found = segments(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        let scan = scan(File::open(&found[0].1).unwrap()).unwrap();
        assert_eq!(changes(&scan), vec![batch(&[("b", Some("1"))])]);
    }

    fn open(dir: &Path) -> (Tables, Journal) {
        let db = open_db(dir);
        let (journal, _) = Journal::open(dir, db.sled()).unwrap();
        (db, journal)
    }

    /// Drops `journal` and `db` (as a process that dies does) and opens them again.
    fn reopen(dir: &Path, journal: Journal, db: Tables) -> (Tables, Journal, Replayed) {
        drop(journal);
        drop(db);
        let db = open_db(dir);
        let (journal, replayed) = Journal::open(dir, db.sled()).unwrap();
        (db, journal, replayed)
    }

    /// Makes `journal` fail `steps` while the returned file exists.
    fn inject(journal: &mut Journal, steps: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fault");
        std::fs::write(&file, steps).unwrap();
        journal.faults = Faults::at(file.clone());
        (dir, file)
    }

    fn value(db: &Tables, key: &str) -> Option<String> {
        db.get(key)
            .unwrap()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    fn framed(encode: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut buf = Vec::new();
        frame(encode, &mut buf);
        buf
    }

    /// Writes segment `number` in `dir` holding the framed `entries`.
    fn write_segment(dir: &Path, number: u64, entries: &[&[u8]]) {
        let mut bytes = MAGIC.to_vec();
        for e in entries {
            bytes.extend_from_slice(e);
        }
        bytes.resize(bytes.len() + 64, 0);
        std::fs::write(dir.join(segment_name(number)), bytes).unwrap();
    }

    #[test]
    fn a_change_that_fails_part_way_is_taken_back_whole_and_never_replayed() {
        let old = || (Some("old".to_owned()), None, Some("old".to_owned()));
        // Small changes are applied in memory; one with a large value goes to sled at once.
        let big = "x".repeat(super::super::tables::DIRECT_BYTES + 1);
        for (fail_at, large) in (0..3).flat_map(|i| [(i, false), (i, true)]) {
            let dir = tempfile::tempdir().unwrap();
            let (db, mut journal) = open(dir.path());
            journal
                .apply(
                    &db,
                    &batch(&[("a", Some("old")), ("gone", Some("old"))]),
                    || {},
                )
                .unwrap();
            let _fault = inject(&mut journal, &format!("apply:{fail_at}"));
            let mut change = batch(&[("a", Some("new")), ("b", Some("new")), ("gone", None)]);
            if large {
                change.insert("big", &big);
            }
            let mut published = false;
            let err = journal
                .apply(&db, &change, || published = true)
                .unwrap_err();
            assert!(matches!(err, QueueError::TakenBack(_)), "{err}");
            assert!(err.is_refusal() && !published);
            let state = |db: &Tables| (value(db, "a"), value(db, "b"), value(db, "gone"));
            assert_eq!(
                state(&db),
                old(),
                "readers see no trace (key {fail_at}, large {large})"
            );
            // sled's failures do not heal: nothing more is written until a restart replays.
            let later = journal.apply(&db, &batch(&[("c", Some("1"))]), || {});
            assert!(matches!(later, Err(QueueError::Stopped(_))), "{later:?}");
            assert!(journal.stopped().is_some());
            assert!(matches!(
                journal.checkpoint(&db),
                Err(QueueError::Stopped(_))
            ));
            // The worst case for the restart: sled wrote the keys it had applied to its own log
            // (and not the keys put back). Only a large change reaches sled before a checkpoint.
            for (k, v) in change.ops.iter().take(if large { fail_at } else { 0 }) {
                match v {
                    Some(v) => db.sled().insert(k, v.as_slice()).map(drop),
                    None => db.sled().remove(k).map(drop),
                }
                .unwrap();
            }
            let (db, journal, replayed) = reopen(dir.path(), journal, db);
            assert_eq!(
                (replayed.entries, replayed.voided),
                (1, 1),
                "key {fail_at}, large {large}"
            );
            assert_eq!(
                state(&db),
                old(),
                "after the replay (key {fail_at}, large {large})"
            );
            assert_eq!(value(&db, "c"), None);
            assert!(journal.stopped().is_none());
            journal
                .apply(&db, &batch(&[("c", Some("1"))]), || {})
                .unwrap();
        }
    }

    #[test]
    fn a_write_that_fails_is_taken_back_even_when_its_bytes_are_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut journal) = open(dir.path());
        let (_d, fault) = inject(&mut journal, "write");
        let err = journal
            .apply(&db, &batch(&[("x", Some("1"))]), || {})
            .unwrap_err();
        assert!(matches!(err, QueueError::TakenBack(_)), "{err}");
        assert_eq!(value(&db, "x"), None);
        // The failed entry is whole in its segment; the void went to the next one.
        let found = segments(dir.path()).unwrap();
        assert_eq!(found.len(), 2, "{found:?}");
        let first = scan(File::open(&found[0].1).unwrap()).unwrap();
        assert_eq!(changes(&first), vec![batch(&[("x", Some("1"))])]);
        // Nothing reached sled, so the journal goes on.
        std::fs::remove_file(&fault).unwrap();
        journal
            .apply(&db, &batch(&[("y", Some("1"))]), || {})
            .unwrap();
        let (db, journal, replayed) = reopen(dir.path(), journal, db);
        assert_eq!((replayed.entries, replayed.voided), (1, 1));
        assert_eq!((value(&db, "x"), value(&db, "y")), (None, Some("1".into())));
        // The replay's checkpoint dropped the void with the change it names.
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        let (db, _, replayed) = reopen(dir.path(), journal, db);
        assert_eq!(replayed, Replayed::default());
        assert_eq!(value(&db, "x"), None);
    }

    #[test]
    fn without_room_for_a_new_segment_a_failed_entry_is_erased_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut journal) = open(dir.path());
        journal
            .apply(&db, &batch(&[("a", Some("1"))]), || {})
            .unwrap();
        // What the next segment would be made as is a directory: no segment can be made (as in
        // a read-only directory), so the void has nowhere to go.
        let blocker = dir.path().join(ROLLED);
        std::fs::create_dir(&blocker).unwrap();
        let (_d, fault) = inject(&mut journal, "write");
        let err = journal
            .apply(&db, &batch(&[("x", Some("1"))]), || {})
            .unwrap_err();
        assert!(matches!(err, QueueError::TakenBack(_)), "{err}");
        let found = segments(dir.path()).unwrap();
        assert_eq!(found.len(), 1);
        let only = scan(File::open(&found[0].1).unwrap()).unwrap();
        assert_eq!(changes(&only), vec![batch(&[("a", Some("1"))])]);
        assert_eq!(only.torn_at, None, "the erased header ends the segment");
        // Nothing is appended after the erased entry: a write needs the next segment.
        std::fs::remove_file(&fault).unwrap();
        let refused = journal.apply(&db, &batch(&[("b", Some("1"))]), || {});
        assert!(
            matches!(refused, Err(QueueError::Journal { .. })),
            "{refused:?}"
        );
        std::fs::remove_dir(&blocker).unwrap();
        journal
            .apply(&db, &batch(&[("b", Some("1"))]), || {})
            .unwrap();
        let (db, _, replayed) = reopen(dir.path(), journal, db);
        assert_eq!((replayed.entries, replayed.voided), (2, 0));
        assert_eq!(
            (value(&db, "a"), value(&db, "b"), value(&db, "x")),
            (Some("1".into()), Some("1".into()), None)
        );
    }

    #[test]
    fn a_change_that_cannot_be_taken_back_has_an_unknown_outcome_and_stops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut journal) = open(dir.path());
        let _fault = inject(&mut journal, "apply:1, takeback");
        let err = journal
            .apply(&db, &batch(&[("a", Some("1")), ("b", Some("1"))]), || {})
            .unwrap_err();
        assert!(matches!(err, QueueError::Unknown { .. }), "{err}");
        assert!(!err.is_refusal());
        assert!(err.to_string().contains("outcome unknown"), "{err}");
        assert!(matches!(
            journal.apply(&db, &batch(&[("c", Some("1"))]), || {}),
            Err(QueueError::Stopped(_))
        ));
        // Why "refused" would have been a lie: the whole entry is still there, and replays.
        let (db, _, replayed) = reopen(dir.path(), journal, db);
        assert_eq!((replayed.entries, replayed.voided), (1, 0));
        assert_eq!(
            (value(&db, "a"), value(&db, "b")),
            (Some("1".into()), Some("1".into()))
        );
    }

    #[test]
    fn a_take_back_that_cannot_be_synced_stops_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut journal) = open(dir.path());
        let _fault = inject(&mut journal, "sync");
        assert!(journal.sync().is_err());
        let err = journal
            .apply_durably(&db, &batch(&[("x", None)]))
            .unwrap_err();
        assert!(!err.is_refusal(), "{err}");
        assert!(journal.stopped().is_some());
    }

    #[test]
    fn writers_before_a_failed_one_stay_durable() {
        // Group commit: several writers append, one fails, one sync serves the rest.
        let dir = tempfile::tempdir().unwrap();
        let (db, mut journal) = open(dir.path());
        let (_d, fault) = inject(&mut journal, "apply:1");
        for k in ["w1", "w2"] {
            journal
                .apply(&db, &batch(&[(k, Some("1"))]), || {})
                .unwrap();
        }
        let failed = journal.apply(&db, &batch(&[("w3", Some("1")), ("w3b", Some("1"))]), || {});
        assert!(
            matches!(failed, Err(QueueError::TakenBack(_))),
            "{failed:?}"
        );
        std::fs::remove_file(fault).unwrap();
        journal.sync().unwrap();
        let (db, _, replayed) = reopen(dir.path(), journal, db);
        assert_eq!((replayed.entries, replayed.voided), (2, 1));
        assert_eq!(
            (
                value(&db, "w1"),
                value(&db, "w2"),
                value(&db, "w3"),
                value(&db, "w3b")
            ),
            (Some("1".into()), Some("1".into()), None, None)
        );
    }

    #[test]
    fn replay_skips_a_change_voided_in_a_later_segment_and_a_void_of_a_deleted_one_is_harmless() {
        let dir = tempfile::tempdir().unwrap();
        let a = framed(|o| batch(&[("a", Some("1"))]).encode(o));
        let x = framed(|o| batch(&[("a", Some("2")), ("b", Some("2"))]).encode(o));
        let x_at = (MAGIC.len() + a.len()) as u64;
        let undo = batch(&[("a", Some("1"))]);
        let void = framed(|o| Entry::encode_void(1, x_at, &undo, o));
        let c = framed(|o| batch(&[("c", Some("3"))]).encode(o));
        write_segment(dir.path(), 1, &[&a, &x]);
        write_segment(dir.path(), 2, &[&void, &c]);
        let db = open_db(dir.path());
        let (_, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!((replayed.entries, replayed.voided), (2, 1));
        assert_eq!(
            (value(&db, "a"), value(&db, "b"), value(&db, "c")),
            (Some("1".into()), None, Some("3".into()))
        );

        // Segment 5, which held the voided change, was deleted by a checkpoint that a crash cut
        // short before it deleted segment 6: the void names nothing, and later entries win.
        let dir = tempfile::tempdir().unwrap();
        let void = framed(|o| Entry::encode_void(5, 8, &batch(&[("k", Some("before"))]), o));
        let later = framed(|o| batch(&[("k", Some("after"))]).encode(o));
        write_segment(dir.path(), 6, &[&void, &later]);
        let db = open_db(dir.path());
        let (journal, replayed) = Journal::open(dir.path(), db.sled()).unwrap();
        assert_eq!((replayed.entries, replayed.voided), (1, 0));
        assert_eq!(value(&db, "k"), Some("after".into()));
        assert!(journal.current.lock().unwrap().number > 6, "numbers go on");
    }
}
