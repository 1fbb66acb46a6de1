//! The queue's journal: every change to the queue tree is appended here as one entry before it
//! is applied to sled, key by key. The journal, not sled, makes changes atomic and durable:
//!
//! - *atomic*: an entry is written whole (length and CRC-32 checked) before any of its keys
//!   reaches sled, so a crash in the middle of applying leaves the whole entry in the journal,
//!   and replaying it on the next open completes the change;
//! - *durable*: group commit syncs the journal file (one sequential `fdatasync` shared by every
//!   waiting writer), so nothing waits on sled's own flush.
//!
//! Why not sled's batches: each `apply_batch` rolls sled's log buffer and takes sled's global
//! lock exclusively, and sled's `flush` holds that lock too, so batches and flushes queue behind
//! each other. Single inserts and removes take no exclusive lock and never wait for a flush.
//!
//! Segments are written full of zeros when made, and entries overwrite them in place: the
//! file's size never changes, so syncing it writes the entries' blocks and no file metadata
//! (an appended file costs an inode write on every `fdatasync`, roughly halving the sync rate).
//! A zero length field ends a segment's entries.
//!
//! A *checkpoint* flushes sled (and syncs its data file), after which the journal segments
//! written before it are no longer needed and are deleted. Replaying an entry twice is harmless:
//! entries are whole values set or removed, so replaying every entry since the last checkpoint,
//! in order, ends in the state the last one left.

use super::QueueError;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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

/// Changes to several keys of the queue tree, applied as one journal entry.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Batch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
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

    /// Whether nothing is to change.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The entry's bytes: per change a tag, the key, and for an insert the value.
    fn encode(&self, out: &mut Vec<u8>) {
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

    fn apply_to(&self, db: &sled::Db) -> sled::Result<()> {
        for (k, v) in &self.ops {
            match v {
                Some(v) => db.insert(k, v.as_slice())?,
                None => db.remove(k)?,
            };
        }
        Ok(())
    }
}

/// Frames an entry: length and CRC-32 of the payload, then the payload.
fn frame(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&[0; 8]);
    batch.encode(out);
    let len = (out.len() - 8) as u32;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
}

/// What reading a segment found.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    entries: Vec<Batch>,
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
        match Batch::decode(&payload) {
            Some(b) => scan.entries.push(b),
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
    /// An append failed part-way: the file may end in half an entry, after which nothing may
    /// be appended (replay stops there), so the next append starts a new segment first.
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
    /// Segments that ended in a torn entry (its bytes were never acknowledged).
    pub torn: usize,
}

impl Journal {
    /// Replays into `db` what the segments in `dir` hold, checkpoints, and starts a new segment.
    pub fn open(dir: &Path, db: &sled::Db) -> Result<(Journal, Replayed), QueueError> {
        let found = segments(dir).map_err(io_error("list", dir))?;
        let mut replayed = Replayed::default();
        // The last segment, if it holds no entry and nothing torn (a graceful stop's
        // checkpoint left it so): written to again rather than a new one made on every start.
        let mut unused_last = false;
        for (i, (_, path)) in found.iter().enumerate() {
            let file = File::open(path).map_err(io_error("open", path))?;
            let scan = scan(file).map_err(io_error("read", path))?;
            for entry in &scan.entries {
                entry.apply_to(db).map_err(|source| QueueError::Storage {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            replayed.entries += scan.entries.len();
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
        };
        if found.iter().any(|(n, _)| *n < current) {
            journal.flush_db(db)?;
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
        *seg = Self::install(&self.dir, made, seg.number + 1)?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Segment> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `batch` and then applies it to `db`; `then` runs while the journal is still
    /// held, so what it publishes is ordered with the entry. Journal order is apply order, which
    /// replay relies on when two writers change the same key. If sled fails part-way, the
    /// caller gets the error (nothing was acknowledged) and the whole entry, already in the
    /// journal, is completed by the replay at the next start.
    pub fn apply(
        &self,
        db: &sled::Db,
        batch: &Batch,
        then: impl FnOnce(),
    ) -> Result<(), QueueError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        let seg = &mut *guard;
        let mut buf = std::mem::take(&mut seg.buf);
        frame(batch, &mut buf);
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
        let written = seg.file.write_all_at(&buf, seg.bytes);
        let len = buf.len() as u64;
        seg.buf = buf;
        if let Err(e) = written {
            seg.torn = true;
            return Err(io_error(
                "write to",
                &self.dir.join(segment_name(seg.number)),
            )(e));
        }
        seg.bytes += len;
        batch.apply_to(db).map_err(|source| QueueError::Storage {
            path: self.dir.display().to_string(),
            source,
        })?;
        then();
        Ok(())
    }

    /// Syncs what was appended so far to the device.
    pub fn sync(&self) -> Result<(), QueueError> {
        let (file, number) = {
            let seg = self.lock();
            (seg.file.clone(), seg.number)
        };
        file.sync_data()
            .map_err(|e| io_error("fdatasync", &self.dir.join(segment_name(number)))(e))
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
    pub fn checkpoint(&self, db: &sled::Db) -> Result<(), QueueError> {
        // A new segment first: entries appended from now on go there and are kept; everything
        // in the older ones was applied to sled before the switch, so the flush below covers it.
        let _one = self.checkpointing.lock().unwrap_or_else(|p| p.into_inner());
        // The zero-filling happens before the journal is held, so writers do not wait for it.
        let prepared = Self::prepare(&self.dir, PREPARED, SEGMENT_BYTES)?;
        let number = {
            let mut seg = self.lock();
            *seg = Self::install(&self.dir, prepared, seg.number + 1)?;
            seg.number
        };
        self.flush_db(db)?;
        self.remove_before(number)
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
            frame(e, &mut buf);
            out.extend_from_slice(&buf);
        }
        out
    }

    #[test]
    fn entries_read_back_as_written() {
        let a = batch(&[("a", Some("1")), ("b", None)]);
        let b = batch(&[("c", Some(""))]);
        let mut bytes = segment_of(&[a.clone(), b.clone()]);
        let scan_of = |bytes: &[u8]| scan(bytes).unwrap();
        assert_eq!(scan_of(&bytes).entries, vec![a.clone(), b.clone()]);
        // The zeros a segment is made with end it cleanly.
        bytes.extend_from_slice(&[0; 100]);
        let found = scan_of(&bytes);
        assert_eq!(found.entries, vec![a, b]);
        assert_eq!(found.torn_at, None);
    }

    #[test]
    fn an_entry_that_does_not_fit_starts_the_next_segment() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (journal, _) = Journal::open(dir.path(), &db).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES / 3) as usize];
        for k in ["a", "b", "c", "d"] {
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
            assert_eq!(scan.entries, vec![a.clone()], "cut at {cut}");
            assert_eq!(scan.torn_at, Some(first_end));
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        assert_eq!(scan(&flipped[..]).unwrap().entries, vec![a]);
        assert_eq!(scan(&b"garbage"[..]).unwrap().torn_at, Some(0));
    }

    #[test]
    fn replay_completes_changes_a_crash_cut_short() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let (journal, _) = Journal::open(dir.path(), &db).unwrap();
            journal
                .apply(&db, &batch(&[("x", Some("1")), ("y", Some("1"))]), || {})
                .unwrap();
            journal.sync().unwrap();
            // A crash before sled's flush loses sled's copy; simulate the worst case, where
            // only the first key had reached sled, by writing the journal entry again by hand.
            let mut seg = journal.lock();
            let seg = &mut *seg;
            frame(
                &batch(&[("x", Some("2")), ("y", Some("2")), ("z", None)]),
                &mut seg.buf,
            );
            seg.file.write_all_at(&seg.buf, seg.bytes).unwrap();
        }
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (journal, replayed) = Journal::open(dir.path(), &db).unwrap();
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
    fn an_unused_last_segment_is_written_again_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let before = {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let (journal, _) = Journal::open(dir.path(), &db).unwrap();
            journal
                .apply(&db, &batch(&[("a", Some("1"))]), || {})
                .unwrap();
            journal.checkpoint(&db).unwrap();
            segments(dir.path()).unwrap()
        };
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (journal, replayed) = Journal::open(dir.path(), &db).unwrap();
        assert_eq!(replayed, Replayed::default());
        assert_eq!(segments(dir.path()).unwrap(), before, "no new segment made");
        journal
            .apply(&db, &batch(&[("b", Some("2"))]), || {})
            .unwrap();
        drop(journal);
        drop(db);
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (_, replayed) = Journal::open(dir.path(), &db).unwrap();
        assert_eq!(replayed.entries, 1, "what was written to it replays");
        assert_eq!(db.get("b").unwrap().unwrap(), &b"2"[..]);
    }

    #[test]
    fn a_checkpoint_keeps_later_entries() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let (journal, _) = Journal::open(dir.path(), &db).unwrap();
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
        assert_eq!(scan.entries, vec![batch(&[("b", Some("1"))])]);
    }
}
