//! The ledger: which calls a target finished, kept for their `retention` so that one offered
//! again (its acknowledgement was lost) is recognised and not run twice. Sixteen bytes a call
//! in a file of its own, not sled keys (two keys, about 1.2 KB on disk per call).
//!
//! The file is a hash table of 4 KiB buckets after a 4 KiB header. A call's [`Digest`] (the
//! first 12 bytes of a SHA-256 of its id, so no sender can make two ids collide) picks its
//! bucket; a bucket holds 256 slots of the digest and its expiry (seconds since [`EPOCH_S`],
//! little-endian; 0 marks an empty slot). A lookup or an insert reads one bucket and writes at
//! most one slot. An expired slot is free for the next insert that lands in its bucket, so
//! nothing sweeps the ledger key by key.
//!
//! The table grows a bucket at a time (linear hashing): when the slots in use pass three
//! eighths, the next bucket in turn is split (a bucket not yet split in a round holds up to
//! twice the average, so three quarters at most), its entries whose digest now picks the new
//! bucket copied there (a read and two writes), so no insert waits for the whole table to be
//! rewritten, however large it is. A split leaves the copied entries where they were until the
//! ledger is next synced with the new size, so the file as last synced (header and buckets)
//! finds every entry it held, whatever a crash keeps of later writes; after that sync their
//! old slots are free. Only a bucket whose every slot is live, even after a sync, makes the
//! table be rewritten whole into a new file at twice the size; and when most of it expired,
//! compaction rewrites it smaller.
//!
//! Durability comes from the journal: an entry is added when a journal entry that names it is
//! applied (and again when that entry is replayed; adding one twice changes nothing), and a
//! checkpoint syncs the ledger before it drops the journal segments. Reads and writes go
//! through the page cache (`pread`/`pwrite`), so the table costs the process no memory.

use super::QueueError;
use sha2::{Digest as _, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The ledger's file, beside sled's in the queue database directory.
pub const FILE: &str = "history.ledger";
/// A rebuilt table is written under this name, then renamed over [`FILE`].
const REBUILT: &str = "history.ledger.new";
/// First bytes of the file: the format.
const MAGIC: &[u8; 8] = b"CAGELDG1";
const PAGE: usize = 4096;
const SLOT: usize = 16;
const SLOTS: usize = PAGE / SLOT;
/// The smallest table: 16 buckets (64 KiB).
const MIN_BUCKETS: u64 = 16;
/// Expiries count seconds from 2020-01-01 UTC, so 32 bits reach the year 2156.
pub const EPOCH_S: u64 = 1_577_836_800;

/// What the ledger keeps of a call id.
pub type Digest = [u8; 12];

/// The digest of call id `id`.
pub fn digest(id: &str) -> Digest {
    let full = Sha256::new()
        .chain_update(b"cages call id\0")
        .chain_update(id.as_bytes())
        .finalize();
    let mut d = [0u8; 12];
    d.copy_from_slice(&full[..12]);
    d
}

/// The ledger's form of a Unix time in ms: seconds since [`EPOCH_S`], rounded up (an entry is
/// kept at least as long as asked), never 0 (which marks an empty slot).
pub fn expiry(unix_ms: u64) -> u32 {
    let s = unix_ms.div_ceil(1000).saturating_sub(EPOCH_S);
    s.clamp(1, u64::from(u32::MAX)) as u32
}

/// An entry to add: a digest and the expiry it is kept until.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// The call's digest.
    pub digest: Digest,
    /// Kept until (see [`expiry`]).
    pub until: u32,
}

impl Entry {
    /// The entry's 16 bytes, as stored in a slot and in the journal.
    pub fn to_bytes(self) -> [u8; SLOT] {
        let mut b = [0u8; SLOT];
        b[..12].copy_from_slice(&self.digest);
        b[12..].copy_from_slice(&self.until.to_le_bytes());
        b
    }

    /// An entry read back from 16 bytes.
    pub fn from_bytes(b: &[u8; SLOT]) -> Entry {
        let mut digest = [0u8; 12];
        digest.copy_from_slice(&b[..12]);
        Entry {
            digest,
            until: u32::from_le_bytes([b[12], b[13], b[14], b[15]]),
        }
    }
}

/// The bucket that `digest` picks in a table of `buckets` buckets (linear hashing: with `lo`
/// the largest power of two not above `buckets`, the hash modulo `2 lo` if that bucket exists
/// yet, else modulo `lo`; for a power of two, the hash modulo `buckets`).
fn bucket_of(digest: &Digest, buckets: u64) -> u64 {
    let mut h = [0u8; 8];
    h.copy_from_slice(&digest[..8]);
    let h = u64::from_le_bytes(h);
    let lo = low_power(buckets);
    let b = h & (2 * lo - 1);
    if b < buckets {
        b
    } else {
        h & (lo - 1)
    }
}

/// The largest power of two not above `buckets`.
fn low_power(buckets: u64) -> u64 {
    1 << (63 - buckets.leading_zeros())
}

/// Buckets the file grows by at a time (1 MiB), so a split rarely changes its size.
const GROW_BUCKETS: u64 = 256;

fn offset(bucket: u64) -> u64 {
    (bucket + 1) * PAGE as u64
}

fn slot(page: &[u8], i: usize) -> Entry {
    let mut b = [0u8; SLOT];
    b.copy_from_slice(&page[i * SLOT..(i + 1) * SLOT]);
    Entry::from_bytes(&b)
}

/// The call-id ledger of one queue database.
pub struct Ledger {
    path: PathBuf,
    inner: Mutex<Table>,
}

struct Table {
    file: File,
    buckets: u64,
    /// The bucket count the file's header had when last synced: an entry's copy left behind
    /// by a split stays until this count picks its new bucket.
    synced: u64,
    /// Slots holding an entry in the bucket it belongs to (live or expired; not a copy a split
    /// left behind), as counted at the last rebuild plus inserts and splits since.
    used: u64,
    /// The file's length (at least the buckets' end).
    len: u64,
    page: Vec<u8>,
}

/// How full the table is, for `cage` commands and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSize {
    /// Slots in use, live or expired.
    pub used: u64,
    /// Slots in all.
    pub slots: u64,
    /// The file's size in bytes.
    pub bytes: u64,
}

impl Ledger {
    /// Opens the ledger in `dir`, making an empty one if there is none.
    pub fn open(dir: &Path) -> Result<Ledger, QueueError> {
        let path = dir.join(FILE);
        let _ = std::fs::remove_file(dir.join(REBUILT));
        let table = if path.exists() {
            Table::read(&path)?
        } else {
            let made = Table::make(&dir.join(REBUILT), MIN_BUCKETS)?;
            std::fs::rename(dir.join(REBUILT), &path).map_err(io_error("rename into", &path))?;
            made
        };
        Ok(Ledger {
            path,
            inner: Mutex::new(table),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `digest` is kept and not expired at `now` (an [`expiry`]).
    pub fn contains(&self, digest: &Digest, now: u32) -> Result<bool, QueueError> {
        let mut t = self.lock();
        let bucket = bucket_of(digest, t.buckets);
        t.load(bucket).map_err(io_error("read", &self.path))?;
        Ok((0..SLOTS)
            .map(|i| slot(&t.page, i))
            .any(|e| e.digest == *digest && e.until > now))
    }

    /// Keeps `entry` (or keeps an entry already there until the later of both expiries);
    /// `now` tells which slots have expired and may be taken.
    pub fn remember(&self, entry: Entry, now: u32) -> Result<(), QueueError> {
        let mut t = self.lock();
        let err = |e| io_error("write", &self.path)(e);
        loop {
            let bucket = bucket_of(&entry.digest, t.buckets);
            t.load(bucket).map_err(err)?;
            // A free slot, and whether taking it adds to `used`: an empty one or a copy a
            // split left behind does, an expired entry's (counted already) does not.
            let (mut free, mut found) = (None, None);
            for i in 0..SLOTS {
                let e = slot(&t.page, i);
                if e.until == 0 || t.left_behind(&e, bucket) {
                    free = free.or(Some((i, true)));
                } else if e.digest == entry.digest {
                    found = Some((i, e.until));
                    break;
                } else if e.until <= now {
                    free = free.or(Some((i, false)));
                }
            }
            let (i, fresh) = match (found, free) {
                (Some((_, until)), _) if until >= entry.until => return Ok(()),
                (Some((i, _)), _) => (i, false),
                (None, Some(free)) => free,
                (None, None) if t.synced != t.buckets => {
                    // Copies left behind by splits since the last sync hold slots: a sync
                    // frees them.
                    t.sync().map_err(io_error("fdatasync", &self.path))?;
                    continue;
                }
                (None, None) => {
                    // Every slot of the bucket is live: a bigger table spreads it.
                    let live = t.live(now).map_err(io_error("rebuild", &self.path))?;
                    let buckets = Table::buckets_for(live).max(t.buckets.next_power_of_two() * 2);
                    t.rebuild(&self.path, now, buckets)?;
                    continue;
                }
            };
            let at = offset(bucket) + (i * SLOT) as u64;
            t.file.write_all_at(&entry.to_bytes(), at).map_err(err)?;
            if fresh {
                t.used += 1;
                if t.used * 8 > t.buckets * SLOTS as u64 * 3 {
                    t.split(now).map_err(io_error("grow", &self.path))?;
                }
            }
            return Ok(());
        }
    }

    /// Rewrites the table smaller if its live entries at `now` fit in a smaller one (expired
    /// slots are reused by inserts, but only a rewrite gives their space back). Reads the whole
    /// table: for an occasional sweep.
    pub fn compact(&self, now: u32) -> Result<(), QueueError> {
        let mut t = self.lock();
        let live = t.live(now).map_err(io_error("read", &self.path))?;
        let buckets = Table::buckets_for(live);
        if buckets < t.buckets {
            t.rebuild(&self.path, now, buckets)?;
        }
        Ok(())
    }

    /// Syncs every entry added so far to the device (a checkpoint's part).
    ///
    /// The device's work happens without the table's lock: inserts, which the journal makes
    /// under its own lock, would otherwise wait for it (every writer of the queue, for as long
    /// as the device takes to write back a checkpoint's worth of buckets). What they write
    /// meanwhile goes with the next sync; the header written counts only buckets whose data
    /// was synced first.
    pub fn sync(&self) -> Result<(), QueueError> {
        let fail = |e| io_error("fdatasync", &self.path)(e);
        let (file, buckets) = {
            let t = self.lock();
            (t.file.try_clone().map_err(fail)?, t.buckets)
        };
        file.sync_data().map_err(fail)?;
        {
            let mut t = self.lock();
            if !same_file(&t.file, &file) {
                // Rebuilt meanwhile: the rebuild synced every live entry into its new file.
                return Ok(());
            }
            // A sync made meanwhile (a full bucket's) may have counted more buckets already.
            let count = buckets.max(t.synced);
            t.write_header_counting(count)
                .map_err(io_error("write", &self.path))?;
        }
        file.sync_data().map_err(fail)?;
        let mut t = self.lock();
        if same_file(&t.file, &file) {
            t.synced = t.synced.max(buckets);
        }
        Ok(())
    }

    /// How full the table is.
    pub fn size(&self) -> LedgerSize {
        let t = self.lock();
        LedgerSize {
            used: t.used,
            slots: t.buckets * SLOTS as u64,
            bytes: offset(t.buckets),
        }
    }
}

/// Whether `a` and `b` are the same open file (a rebuild replaces the table's file).
fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

impl Table {
    /// A new, empty table of `buckets` buckets in a new file at `path`.
    fn make(path: &Path, buckets: u64) -> Result<Table, QueueError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(io_error("create", path))?;
        file.set_len(offset(buckets))
            .map_err(io_error("size", path))?;
        let mut t = Table {
            file,
            buckets,
            synced: buckets,
            used: 0,
            len: offset(buckets),
            page: vec![0; PAGE],
        };
        t.write_header().map_err(io_error("write", path))?;
        Ok(t)
    }

    /// Syncs the buckets, then the header naming their count: a header durable before the
    /// buckets it counts could send a lookup to a bucket a crash lost.
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        self.write_header()?;
        self.file.sync_data()?;
        self.synced = self.buckets;
        Ok(())
    }

    /// Whether `e`, found in `bucket`, is a copy a split left behind that the synced file no
    /// longer needs (both the table now and the table as synced pick another bucket for it).
    fn left_behind(&self, e: &Entry, bucket: u64) -> bool {
        bucket_of(&e.digest, self.buckets) != bucket && bucket_of(&e.digest, self.synced) != bucket
    }

    /// Adds one bucket, copying into it the live entries of the bucket it splits from that
    /// now pick it (the originals stay until a sync, see the module documentation).
    fn split(&mut self, now: u32) -> std::io::Result<()> {
        let new = self.buckets;
        let from = new - low_power(new);
        if self.len < offset(new + 1) {
            let len = offset(new + GROW_BUCKETS);
            self.file.set_len(len)?;
            self.len = len;
        }
        self.load(from)?;
        let mut out = vec![0u8; PAGE];
        let (mut filled, mut dropped) = (0, 0);
        for i in 0..SLOTS {
            let e = slot(&self.page, i);
            if e.until == 0 || bucket_of(&e.digest, new + 1) != new || self.left_behind(&e, from) {
                continue;
            }
            if e.until > now {
                out[filled * SLOT..(filled + 1) * SLOT].copy_from_slice(&e.to_bytes());
                filled += 1;
            } else {
                dropped += 1;
            }
        }
        self.file.write_all_at(&out, offset(new))?;
        self.buckets = new + 1;
        // A moved entry is counted once, in its new bucket; an expired one that would have
        // moved is left behind like a copy, uncounted.
        self.used = self.used.saturating_sub(dropped);
        Ok(())
    }

    fn read(path: &Path) -> Result<Table, QueueError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_error("open", path))?;
        let mut header = [0u8; 28];
        file.read_exact_at(&mut header, 0)
            .map_err(io_error("read", path))?;
        let bad = |why: String| QueueError::Ledger {
            path: path.display().to_string(),
            why,
        };
        if &header[..8] != MAGIC {
            return Err(bad("it does not start as a cages ledger".into()));
        }
        let word = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().unwrap_or([0; 8]));
        let crc = u32::from_le_bytes(header[24..28].try_into().unwrap_or([0; 4]));
        if crc != crc32fast::hash(&header[..24]) {
            return Err(bad("its header is damaged (checksum)".into()));
        }
        let (buckets, used) = (word(8), word(16));
        if buckets < MIN_BUCKETS || buckets > u64::MAX / PAGE as u64 / 2 {
            return Err(bad(format!("its header names {buckets} buckets")));
        }
        let len = file.metadata().map_err(io_error("read", path))?.len();
        if len < offset(buckets) {
            return Err(bad(format!(
                "it is {len} bytes long, its header says at least {}",
                offset(buckets)
            )));
        }
        Ok(Table {
            file,
            buckets,
            synced: buckets,
            used,
            len,
            page: vec![0; PAGE],
        })
    }

    fn write_header(&mut self) -> std::io::Result<()> {
        self.write_header_counting(self.buckets)
    }

    /// Writes the header saying the table has `buckets` buckets (at most the count it has).
    fn write_header_counting(&mut self, buckets: u64) -> std::io::Result<()> {
        let mut h = Vec::with_capacity(28);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&buckets.to_le_bytes());
        h.extend_from_slice(&self.used.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&h, 0)
    }

    fn load(&mut self, bucket: u64) -> std::io::Result<()> {
        self.file.read_exact_at(&mut self.page, offset(bucket))
    }

    /// Rewrites the table with its entries live at `now` into `buckets` buckets (more, should a
    /// bucket of that size overflow).
    fn rebuild(&mut self, path: &Path, now: u32, mut buckets: u64) -> Result<(), QueueError> {
        let err = |e| io_error("rebuild", path)(e);
        let dir = path.parent().unwrap_or(Path::new("."));
        let new_path = dir.join(REBUILT);
        let (table, used) = loop {
            let mut table = Table::make(&new_path, buckets)?;
            match self.copy_live_into(&mut table, now).map_err(err)? {
                Some(used) => break (table, used),
                // A bucket of the smaller table would overflow: try the next size.
                None => buckets *= 2,
            }
        };
        let mut table = table;
        table.used = used;
        table.write_header().map_err(err)?;
        table
            .file
            .sync_data()
            .map_err(io_error("fdatasync", &new_path))?;
        std::fs::rename(&new_path, path).map_err(io_error("rename into", path))?;
        if let Ok(d) = File::open(dir) {
            d.sync_all().map_err(io_error("fdatasync", dir))?;
        }
        tracing::debug!(
            "ledger {}: rebuilt with {used} live entries in {} buckets (was {})",
            path.display(),
            table.buckets,
            self.buckets
        );
        *self = table;
        Ok(())
    }

    /// Live entries at `now`, counted over the whole table.
    fn live(&mut self, now: u32) -> std::io::Result<u64> {
        let mut live = 0u64;
        for b in 0..self.buckets {
            self.load(b)?;
            live += (0..SLOTS)
                .map(|i| slot(&self.page, i))
                .filter(|e| e.until > now && bucket_of(&e.digest, self.buckets) == b)
                .count() as u64;
        }
        Ok(live)
    }

    /// The size of table that holds `live` entries half full.
    fn buckets_for(live: u64) -> u64 {
        (live * 2)
            .div_ceil(SLOTS as u64)
            .next_power_of_two()
            .max(MIN_BUCKETS)
    }

    /// Copies every live entry into `to` (a new, empty table), bucket by bucket of `to`;
    /// `None` if a bucket of `to` cannot hold its entries.
    fn copy_live_into(&mut self, to: &mut Table, now: u32) -> std::io::Result<Option<u64>> {
        let mut out = vec![0u8; PAGE];
        let mut used = 0;
        for n in 0..to.buckets {
            out.fill(0);
            let mut filled = 0;
            // The old buckets whose entries can land in new bucket `n` (a power of two of
            // buckets): larger, the one or two buckets a digest of `n` picks now; smaller,
            // every old bucket that is `n` modulo the new size. Each entry is taken from the
            // bucket it belongs to now (not from a copy a split left behind).
            let lo = low_power(self.buckets);
            let sources: Vec<u64> = if to.buckets >= 2 * lo {
                let high = n & (2 * lo - 1);
                let low = n & (lo - 1);
                if high < self.buckets && high != low {
                    vec![low, high]
                } else {
                    vec![low]
                }
            } else {
                (n..self.buckets).step_by(to.buckets as usize).collect()
            };
            for b in sources {
                self.load(b)?;
                for i in 0..SLOTS {
                    let e = slot(&self.page, i);
                    if e.until <= now
                        || bucket_of(&e.digest, to.buckets) != n
                        || bucket_of(&e.digest, self.buckets) != b
                    {
                        continue;
                    }
                    if filled == SLOTS {
                        return Ok(None);
                    }
                    out[filled * SLOT..(filled + 1) * SLOT].copy_from_slice(&e.to_bytes());
                    filled += 1;
                }
            }
            if filled > 0 {
                to.file.write_all_at(&out, offset(n))?;
            }
            used += filled as u64;
        }
        Ok(Some(used))
    }
}

fn io_error<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> QueueError + 'a {
    move |source| QueueError::LedgerIo {
        what,
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u64, until: u32) -> Entry {
        Entry {
            digest: digest(&format!("call-{n}")),
            until,
        }
    }

    /// A new ledger holding calls `0..n`, call `i` kept until `until(i)` (added at 10).
    fn ledger_of(n: u64, until: impl Fn(u64) -> u32) -> (tempfile::TempDir, Ledger) {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        for i in 0..n {
            l.remember(entry(i, until(i)), 10).unwrap();
        }
        (dir, l)
    }

    #[test]
    fn an_entry_is_kept_until_its_expiry_and_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        l.remember(entry(1, 100), 10).unwrap();
        assert!(l.contains(&entry(1, 0).digest, 99).unwrap());
        assert!(!l.contains(&entry(1, 0).digest, 100).unwrap());
        assert!(!l.contains(&entry(2, 0).digest, 10).unwrap());
        // Added again with a later expiry: kept to the later one; an earlier one changes nothing.
        l.remember(entry(1, 200), 10).unwrap();
        l.remember(entry(1, 150), 10).unwrap();
        assert!(l.contains(&entry(1, 0).digest, 199).unwrap());
        l.sync().unwrap();
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert!(l.contains(&entry(1, 0).digest, 199).unwrap());
        assert_eq!(l.size().used, 1);
    }

    #[test]
    fn the_table_grows_and_shrinks_with_what_is_live() {
        let n = 20_000;
        let (dir, l) = ledger_of(n, |i| if i % 2 == 0 { 50 } else { 500 });
        let grown = l.size();
        assert_eq!(grown.used, n);
        assert!(grown.used * 8 <= grown.slots * 3 + 8, "{grown:?}");
        assert!((0..n).all(|i| l.contains(&entry(i, 0).digest, 40).unwrap()));
        // Half expire by 60: later inserts take their slots before any free one.
        for i in n..n + n / 2 {
            l.remember(entry(i, 500), 60).unwrap();
        }
        assert!(l.size().used < n + n / 2, "{:?}", l.size());
        for i in 0..n + n / 2 {
            let expect = i % 2 == 1 || i >= n;
            assert_eq!(l.contains(&entry(i, 0).digest, 60).unwrap(), expect, "{i}");
        }
        // Everything but one entry expires: compacting leaves the smallest table.
        l.remember(entry(0, 10_000), 600).unwrap();
        l.compact(600).unwrap();
        assert_eq!(l.size().slots, MIN_BUCKETS * SLOTS as u64);
        assert_eq!(l.size().used, 1);
        assert!(l.contains(&entry(0, 0).digest, 9_999).unwrap());
        assert!(!l.contains(&entry(1, 0).digest, 600).unwrap());
        drop(l);
        assert!(!dir.path().join(REBUILT).exists());
        let reopened = Ledger::open(dir.path()).unwrap();
        assert!(reopened.contains(&entry(0, 0).digest, 9_999).unwrap());
    }

    #[test]
    fn the_table_grows_a_bucket_at_a_time_and_every_entry_stays_found() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let n = 30_000;
        let mut sizes = std::collections::BTreeSet::new();
        for i in 0..n {
            l.remember(entry(i, 500), 10).unwrap();
            sizes.insert(l.size().slots / SLOTS as u64);
        }
        // Grown one bucket at a time, never rewritten: every count from 16 up was seen.
        let last = *sizes.last().unwrap();
        assert!(!last.is_power_of_two() || last > 64, "{last}");
        assert_eq!(sizes.len() as u64, last - MIN_BUCKETS + 1);
        assert_eq!(l.size().used, n);
        assert!((0..n).all(|i| l.contains(&entry(i, 0).digest, 40).unwrap()));
        assert!(!l.contains(&entry(n, 0).digest, 40).unwrap());
        l.sync().unwrap();
        drop(l);
        let l = Ledger::open(dir.path()).unwrap();
        assert!((0..n).all(|i| l.contains(&entry(i, 0).digest, 40).unwrap()));
        // A rebuild from a table that is not a power of two (compaction) keeps every entry.
        let mut t = l.lock();
        t.rebuild(
            &dir.path().join(FILE),
            10,
            MIN_BUCKETS.max(last.next_power_of_two() / 2),
        )
        .unwrap();
        drop(t);
        assert!((0..n).all(|i| l.contains(&entry(i, 0).digest, 40).unwrap()));
    }

    /// What a crash keeps: the header as last synced, and any mix of later bucket writes. The
    /// file as it stands (every later write) under the synced header finds every entry added
    /// before that sync, though splits since moved them and later inserts took slots.
    #[test]
    fn the_file_as_last_synced_finds_every_entry_it_held() {
        let synced = 5_000;
        let (dir, l) = ledger_of(synced, |_| 500);
        l.sync().unwrap();
        for i in synced..synced * 4 {
            l.remember(entry(i, 500), 10).unwrap();
        }
        let copy = tempfile::tempdir().unwrap();
        std::fs::copy(dir.path().join(FILE), copy.path().join(FILE)).unwrap();
        let crashed = Ledger::open(copy.path()).unwrap();
        // The header is the last synced one (a bucket that filled up syncs by itself).
        assert!(crashed.size().slots <= l.size().slots);
        for i in 0..synced {
            assert!(crashed.contains(&entry(i, 0).digest, 40).unwrap(), "{i}");
        }
    }

    /// A checkpoint syncs while the queue goes on finishing calls: inserts are not held for the
    /// device's work, and after each sync the file under its header finds every entry added
    /// before the sync began, though the table grew meanwhile.
    #[test]
    fn a_sync_made_while_inserts_go_on_keeps_what_came_before_it() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (dir, l) = ledger_of(1_000, |_| 500);
        let l = std::sync::Arc::new(l);
        let added = std::sync::Arc::new(AtomicU64::new(1_000));
        let writer = {
            let (l, added) = (l.clone(), added.clone());
            std::thread::spawn(move || {
                for i in 1_000..40_000 {
                    l.remember(entry(i, 500), 10).unwrap();
                    added.store(i + 1, Ordering::Release);
                }
            })
        };
        let mut checked = 0;
        while !writer.is_finished() || checked == 0 {
            let before = added.load(Ordering::Acquire);
            l.sync().unwrap();
            let copy = tempfile::tempdir().unwrap();
            std::fs::copy(dir.path().join(FILE), copy.path().join(FILE)).unwrap();
            let crashed = Ledger::open(copy.path()).unwrap();
            for i in 0..before {
                assert!(
                    crashed.contains(&entry(i, 0).digest, 40).unwrap(),
                    "{i} of {before}"
                );
            }
            checked += 1;
        }
        writer.join().unwrap();
        l.sync().unwrap();
        let reopened = Ledger::open(dir.path()).unwrap();
        assert!((0..40_000).all(|i| reopened.contains(&entry(i, 0).digest, 40).unwrap()));
    }

    #[test]
    fn a_damaged_or_foreign_file_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        drop(Ledger::open(dir.path()).unwrap());
        let path = dir.path().join(FILE);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0xff], 9).unwrap();
        let e = Ledger::open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("history.ledger") && e.contains("checksum"),
            "{e}"
        );
        std::fs::write(&path, b"not a ledger at all, just some text.").unwrap();
        let e = Ledger::open(dir.path()).err().unwrap().to_string();
        assert!(e.contains("does not start as a cages ledger"), "{e}");
    }

    #[test]
    fn expiries_round_up_and_never_mark_a_slot_empty() {
        assert_eq!(expiry(0), 1);
        assert_eq!(expiry(EPOCH_S * 1000 + 1), 1);
        assert_eq!(expiry(EPOCH_S * 1000 + 1001), 2);
        assert_eq!(expiry(u64::MAX), u32::MAX);
        let e = entry(7, 12345);
        assert_eq!(Entry::from_bytes(&e.to_bytes()), e);
    }
}
