//! [`QueueStore`]: the operations on a cage's queue tree. Every change that touches several
//! keys is one [`Batch`], appended to the [`Journal`] before it is applied, so a crash leaves
//! either the old state or the new one. Nothing here waits for the disk: durability is
//! [`super::GroupCommit`]'s job, asked for by the caller.

use super::journal::{Batch, Journal};
use super::keys;
use super::ledger;
use super::rules::{QueueRule, Rules};
use super::tables::Tables;
use super::QueueError;
use crate::model::call::CallRecord;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Cache sled may use unless told otherwise; bounded so a million pending calls do not mean a
/// million in memory (64 MiB put a cage holding a million pending calls at 340 MB RSS, 32 MiB
/// at 270 MB).
pub const DEFAULT_CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// A cage's queue: the memory tables over one sled tree, behind the journal.
pub struct QueueStore {
    path: PathBuf,
    tables: Arc<Tables>,
    journal: Arc<Journal>,
    issued: Arc<AtomicU64>,
    /// What the store keeps per queue (set from the site config).
    rules: RwLock<Rules>,
    /// The database holds history records from before the ledger (`h` keys of calls without
    /// an idempotency key), which deduplicate until they expire.
    legacy_history: bool,
    /// When the ledger was last compacted (ms).
    compacted_ms: AtomicU64,
}

/// Format of stored values, written as their first byte so a later format can read (or
/// refuse, by name) what an earlier one wrote. Format 2 added the chain link of a call, format 3
/// its group, format 4 the operators' orders on its record; every other value is laid out as in
/// format 1.
const FORMAT: u8 = 4;
/// The first format, still read.
const FORMAT_1: u8 = 1;
/// The second format, still read.
const FORMAT_2: u8 = 2;
/// The third format, still read.
const FORMAT_3: u8 = 3;

fn corrupt(key: &[u8]) -> impl FnOnce(postcard::Error) -> QueueError + '_ {
    move |source| QueueError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    }
}

/// Decodes a call record of either format.
pub(super) fn decode_record(key: &[u8], bytes: &[u8]) -> Result<CallRecord, QueueError> {
    match bytes.split_first() {
        Some((&FORMAT_1, body)) => postcard::from_bytes::<super::legacy::CallRecord1>(body)
            .map(Into::into)
            .map_err(corrupt(key)),
        Some((&FORMAT_2, body)) => postcard::from_bytes::<super::legacy::CallRecord2>(body)
            .map(Into::into)
            .map_err(corrupt(key)),
        Some((&FORMAT_3, body)) => postcard::from_bytes::<super::legacy::CallRecord3>(body)
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
        Some((&(FORMAT | FORMAT_1 | FORMAT_2 | FORMAT_3), body)) => {
            postcard::from_bytes(body).map_err(corrupt(key))
        }
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
        let legacy_history = db
            .scan_prefix([keys::HISTORY])
            .next()
            .transpose()
            .map_err(storage)?
            .is_some();
        let tables = Tables::new(db);
        let rebuilding = std::time::Instant::now();
        let loaded = super::calls::load_due_index(&tables).map_err(storage)?;
        tracing::info!(
            "queue database {}: due index of {} pending call(s) rebuilt in {} ms",
            dir.display(),
            tables.index_len(),
            rebuilding.elapsed().as_millis()
        );
        if loaded.moved > 0 {
            tracing::info!(
                "queue database {}: {} due index entries moved from disk to memory",
                dir.display(),
                loaded.moved
            );
        }
        if loaded.unreadable > 0 {
            tracing::warn!(
                "queue database {}: {} pending call record(s) could not be read; they are due \
                 at once and move to quarantine when the scheduler reaches them",
                dir.display(),
                loaded.unreadable
            );
        }
        Ok(QueueStore {
            path: dir.to_owned(),
            tables: Arc::new(tables),
            journal: Arc::new(journal),
            issued: Arc::new(AtomicU64::new(issued)),
            rules: RwLock::new(Rules::default()),
            legacy_history,
            compacted_ms: AtomicU64::new(crate::model::clock::now_ms()),
        })
    }

    /// The queue tree (memory tables over sled); only the queue module writes it, and only
    /// through the journal.
    pub(super) fn db(&self) -> &Tables {
        &self.tables
    }

    /// The queue tree, for group commit's checkpoints.
    pub(super) fn tables(&self) -> Arc<Tables> {
        self.tables.clone()
    }

    /// Bytes of changes held in memory until the next checkpoint.
    pub fn memory_bytes(&self) -> usize {
        self.tables.memory_bytes()
    }

    /// The rules in force for `queue`.
    pub(super) fn rule(&self, queue: &str) -> QueueRule {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .of(queue)
    }

    /// Replaces the rules (see [`super::rules`]).
    pub(super) fn put_rules(&self, rules: Rules) {
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) = rules;
    }

    /// The ledger entry of `record` finished now: kept for its queue's retention.
    pub(super) fn ledger_entry(&self, record: &CallRecord) -> ledger::Entry {
        ledger::Entry {
            digest: ledger::digest(&record.call.id),
            until: ledger::expiry(crate::model::clock::after(
                crate::model::clock::now_ms(),
                self.rule(&record.call.queue).retention,
            )),
        }
    }

    /// Whether history records from before the ledger may still be found.
    pub(super) fn legacy_history(&self) -> bool {
        self.legacy_history
    }

    /// The ledger of finished calls.
    pub fn ledger(&self) -> &ledger::Ledger {
        self.journal.ledger()
    }

    /// Gives back the ledger's space of expired entries, at most every ten minutes.
    pub(super) fn compact_ledger(&self, now_ms: u64) -> Result<(), QueueError> {
        const EVERY_MS: u64 = 10 * 60 * 1000;
        let last = self.compacted_ms.load(Ordering::Relaxed);
        if now_ms < last.saturating_add(EVERY_MS) {
            return Ok(());
        }
        self.compacted_ms.store(now_ms, Ordering::Relaxed);
        self.ledger().compact(ledger::expiry(now_ms))
    }

    /// The journal, for group commit.
    pub fn journal(&self) -> Arc<Journal> {
        self.journal.clone()
    }

    /// Makes every change so far durable in sled itself and empties the journal (at shutdown,
    /// and from group commit as the journal grows).
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        self.journal.checkpoint(&self.tables)
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
        self.journal.apply(&self.tables, &batch, || {})
    }

    /// Applies `batch` and syncs the journal before returning (for take-backs, which must be
    /// on disk before a refusal is answered).
    pub(super) fn apply_durably(&self, batch: Batch) -> Result<(), QueueError> {
        self.journal.apply_durably(&self.tables, &batch)
    }

    /// Why this queue takes no more writes, if it stopped (see [`Journal::apply`]).
    pub fn stopped(&self) -> Option<&str> {
        self.journal.stopped()
    }

    pub(super) fn due_key(r: &CallRecord) -> Vec<u8> {
        keys::due(
            r.next_at_ms,
            r.call.priority,
            &r.call.id,
            &super::calls::due_value(r),
        )
    }

    pub(super) fn next_seq(&self) -> Result<u64, QueueError> {
        self.tables.sled().generate_id().map_err(|e| self.err(e))
    }

    /// Applies a batch that stored calls up to sequence `seq`, then publishes `seq` as issued:
    /// only after the batch is applied may a flush that starts later count it as covered.
    pub(super) fn apply_stored(&self, batch: Batch, seq: u64) -> Result<(), QueueError> {
        self.journal.apply(&self.tables, &batch, || {
            self.issued.fetch_max(seq, Ordering::AcqRel);
        })
    }

    /// The highest sequence number given to a stored call so far, shared with group commit.
    pub fn issued(&self) -> Arc<AtomicU64> {
        self.issued.clone()
    }

    pub(super) fn order_key(r: &CallRecord) -> Vec<u8> {
        keys::order(&r.call.queue, r.call.group.as_deref(), r.seq)
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
            std::mem::forget(self.tables.sled().clone());
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The store in `dir` opened again within this process. sled's background flusher may
    /// hold the file lock a moment after the last handle is dropped (a new process never
    /// meets it; a reopen within one process can).
    pub(in crate::queue) fn reopen(dir: &std::path::Path) -> QueueStore {
        let started = std::time::Instant::now();
        loop {
            match QueueStore::open(dir) {
                Ok(s) => break s,
                Err(e) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    assert!(e.to_string().contains("could not acquire lock"), "{e}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    use crate::model::call::{Attempt, QueuedCall, Stage};
    use crate::queue::keys::{CALL, DUE};
    use crate::queue::Acceptance;

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
            group: None,
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

        // A pending call keeps its key past expiry; a finished one loses it.
        assert_eq!(s.expire_history(10_000, 50_000, 100).unwrap(), 0);
        s.finish(&r).unwrap();
        let c3 = CallRecord::new(call("c3", 0, None), Stage::Execute, 1000);
        s.accept(&c3, 1000, 9000).unwrap();
        s.finish(&s.get("c3").unwrap().unwrap()).unwrap();
        // c3 has no key, so no history record; c1's was pushed back to 60 000.
        assert_eq!(s.expire_history(10_000, 50_000, 100).unwrap(), 0);
        assert_eq!(
            s.accept(&other, 11_000, 20_000).unwrap(),
            Acceptance::DuplicateKey("c1".into())
        );
        assert_eq!(s.expire_history(60_000, 50_000, 100).unwrap(), 1);
        assert_eq!(
            s.accept(&other, 61_000, 90_000).unwrap(),
            Acceptance::Accepted
        );
        // Finished calls are in the ledger for their queue's retention (from the wall clock).
        for again in [&r, &c3] {
            assert_eq!(
                s.accept(again, 62_000, 90_000).unwrap(),
                Acceptance::AlreadyAccepted
            );
        }
    }

    #[test]
    fn finished_and_dead_calls_are_recognised_until_their_retention_ends() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::model::clock::now_ms();
        {
            let s = QueueStore::open(dir.path()).unwrap();
            let keep = |secs| QueueRule {
                retention: std::time::Duration::from_secs(secs),
                keep_order: false,
            };
            s.set_rules(Rules {
                default: keep(3600),
                queues: [("short".to_string(), keep(60))].into(),
            })
            .unwrap();
            let mut short = call("short-1", 0, None);
            short.queue = "short".into();
            for c in [call("done", 0, None), call("dead", 0, None), short] {
                let r = CallRecord::new(c, Stage::Execute, now);
                assert_eq!(s.accept(&r, now, now + 1).unwrap(), Acceptance::Accepted);
            }
            s.finish(&s.get("done").unwrap().unwrap()).unwrap();
            s.finish(&s.get("short-1").unwrap().unwrap()).unwrap();
            let dead = s.get("dead").unwrap().unwrap();
            let mut buried = dead.clone();
            buried.dead_reason = Some("gave up".into());
            s.bury(&dead, &buried).unwrap();
            s.cancel("dead").unwrap().unwrap();
            // A source's delivery record is not remembered: only calls executed here are.
            s.insert(&CallRecord::new(call("sent", 0, None), Stage::Deliver, now))
                .unwrap();
            s.finish(&s.get("sent").unwrap().unwrap()).unwrap();
        }
        let s = reopen(dir.path());
        let offered = |id: &str, at: u64| {
            let r = CallRecord::new(call(id, 0, None), Stage::Execute, at);
            let answer = s.accept(&r, at, at + 1).unwrap();
            if answer == Acceptance::Accepted {
                s.take_back(id).unwrap();
            }
            answer
        };
        for id in ["done", "dead", "short-1"] {
            assert_eq!(offered(id, now), Acceptance::AlreadyAccepted, "{id}");
        }
        assert_eq!(offered("sent", now), Acceptance::Accepted);
        assert_eq!(offered("short-1", now + 62_000), Acceptance::Accepted);
        assert_eq!(offered("done", now + 62_000), Acceptance::AlreadyAccepted);
        assert_eq!(offered("done", now + 3_602_000), Acceptance::Accepted);
    }

    /// The memory tables: a call accepted and finished between two checkpoints never reaches
    /// sled, nor does one still pending; a crash (no checkpoint) replays both from the journal:
    /// the finished one is not pending and is recognised if offered again, the other pends.
    #[test]
    fn calls_between_checkpoints_stay_out_of_sled_and_a_crash_replays_them() {
        let dir = tempfile::tempdir().unwrap();
        let now = crate::model::clock::now_ms();
        let in_sled =
            |s: &QueueStore, id: &str| s.db().sled().contains_key(keys::with_id(CALL, id)).unwrap();
        {
            let s = QueueStore::open(dir.path()).unwrap();
            let brief = CallRecord::new(call("brief", 0, None), Stage::Execute, now);
            assert_eq!(
                s.accept(&brief, now, now + 1).unwrap(),
                Acceptance::Accepted
            );
            s.finish(&s.get("brief").unwrap().unwrap()).unwrap();
            s.insert(&CallRecord::new(
                call("waiting", 0, None),
                Stage::Execute,
                now,
            ))
            .unwrap();
            assert_eq!(s.due(now, 10).unwrap().len(), 1);
            assert!(!in_sled(&s, "brief") && !in_sled(&s, "waiting"));
            assert!(s.memory_bytes() > 0);
        }
        let s = reopen(dir.path());
        assert!(s.get("brief").unwrap().is_none());
        assert_eq!(s.due(now, 10).unwrap()[0].id, "waiting");
        let again = CallRecord::new(call("brief", 0, None), Stage::Execute, now);
        assert_eq!(
            s.accept(&again, now, now + 1).unwrap(),
            Acceptance::AlreadyAccepted
        );
        // The replay put what was left in sled (a checkpoint at open), and nothing more.
        assert!(in_sled(&s, "waiting") && !in_sled(&s, "brief"));
    }

    #[test]
    fn the_due_index_stays_in_memory_and_is_rebuilt_from_the_records_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let due_in_sled = |s: &QueueStore| s.db().sled().scan_prefix([DUE]).count();
        let listed = |s: &QueueStore| -> Vec<(String, u64, i32)> {
            s.due(u64::MAX - 1, 10)
                .unwrap()
                .into_iter()
                .map(|d| (d.id, d.due_ms, d.priority))
                .collect()
        };
        let expect = vec![
            ("hi".to_string(), 2000, 5),
            ("lo".to_string(), 2000, 0),
            ("moved".to_string(), 7000, 0),
        ];
        {
            let s = QueueStore::open(dir.path()).unwrap();
            for (id, priority) in [("lo", 0), ("hi", 5), ("moved", 0), ("gone", 0)] {
                s.insert(&CallRecord::new(
                    call(id, priority, None),
                    Stage::Execute,
                    2000,
                ))
                .unwrap();
            }
            s.checkpoint().unwrap();
            // After the checkpoint, so only the journal holds these changes.
            let old = s.get("moved").unwrap().unwrap();
            let mut new = old.clone();
            new.next_at_ms = 7000;
            s.update(&old, &new).unwrap();
            s.finish(&s.get("gone").unwrap().unwrap()).unwrap();
            assert_eq!(listed(&s), expect);
            assert_eq!(due_in_sled(&s), 0, "a checkpoint writes no due index entry");
            assert_eq!(s.db().index_len(), 3);
        }
        // A crash: the replay brings back the records, and the index follows them.
        let s = reopen(dir.path());
        assert_eq!(listed(&s), expect);
        assert_eq!(due_in_sled(&s), 0);
        assert_eq!(s.counts_by_queue().unwrap()["retry"], (3, 0));

        // A database from before kept its due index in sled, and one of its entries was stale.
        s.db()
            .sled()
            .insert(keys::due(1, 0, "stale", b"retry"), &b"retry"[..])
            .unwrap();
        s.db()
            .sled()
            .insert(keys::due(2000, 0, "lo", b"retry"), &b"retry"[..])
            .unwrap();
        s.checkpoint().unwrap();
        drop(s);
        let s = reopen(dir.path());
        assert_eq!(listed(&s), expect, "only what the records say is due");
        assert_eq!(due_in_sled(&s), 0, "the old entries are gone from disk");

        // An unreadable record is due at once, so the scheduler moves it to quarantine.
        s.db()
            .sled()
            .insert(keys::with_id(CALL, "bad"), &[9u8, 1, 2][..])
            .unwrap();
        s.checkpoint().unwrap();
        drop(s);
        let s = reopen(dir.path());
        let first = s.due(1, 10).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].id.as_str(), first[0].due_ms), ("bad", 0));
        assert!(s.get("bad").is_err());
        s.quarantine(&first[0]).unwrap();
        assert_eq!(listed(&s), expect);
    }

    #[test]
    fn an_expired_backlog_drains_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        let ids: Vec<String> = (0..25).map(|i| format!("b{i}")).collect();
        for id in &ids {
            let r = CallRecord::new(call(id, 0, Some(id)), Stage::Execute, 1000);
            assert_eq!(s.accept(&r, 1000, 9000).unwrap(), Acceptance::Accepted);
            s.finish(&s.get(id).unwrap().unwrap()).unwrap();
        }
        let batches: Vec<usize> = (0..4)
            .map(|_| s.expire_history(10_000, 50_000, 10).unwrap())
            .collect();
        assert_eq!(batches, [10, 10, 5, 0]);
        for id in &ids {
            // The key is free again (the id itself stays in the ledger).
            let again = CallRecord::new(
                call(&format!("{id}-2"), 0, Some(id)),
                Stage::Execute,
                11_000,
            );
            assert_eq!(
                s.accept(&again, 11_000, 90_000).unwrap(),
                Acceptance::Accepted
            );
        }
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

    /// Stores a call of queue `retry` to run here, in `group`, due at `at`.
    fn grouped(s: &QueueStore, id: &str, group: Option<&str>, at: u64) {
        let mut c = call(id, 0, None);
        c.group = group.map(Into::into);
        s.insert(&CallRecord::new(c, Stage::Execute, at)).unwrap();
    }

    fn ids(calls: &[crate::queue::DueCall]) -> Vec<&str> {
        calls.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn a_due_scan_takes_from_each_group_no_more_than_its_room() {
        use crate::queue::Room;
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        for i in 0..5 {
            grouped(&s, &format!("a{i}"), Some("A"), 1000 + i);
        }
        grouped(&s, "b0", Some("B"), 1010);
        grouped(&s, "b1", Some("B"), 1011);
        grouped(&s, "n0", None, 1020);
        let due = s.due(5000, 100).unwrap();
        assert_eq!(due.len(), 8);
        assert_eq!(due[0].group.as_deref(), Some("A"));
        assert_eq!(due[7].group, None);
        // A has room for one, the queue for three: A's backlog does not fill the scan.
        let room = |v: &crate::queue::DueValue<'_>| match v.group {
            Some("A") => Room { queue: 3, part: 1 },
            _ => Room {
                queue: 3,
                part: usize::MAX,
            },
        };
        let due = s.due_where(5000, 100, 100, &|_| false, &room).unwrap();
        assert_eq!(ids(&due), vec!["a0", "b0", "b1"]);
        // A group without room is passed over; a running call is not counted.
        let room = |v: &crate::queue::DueValue<'_>| match v.group {
            Some("B") => Room { queue: 0, part: 0 },
            _ => Room { queue: 10, part: 2 },
        };
        let due = s
            .due_where(5000, 100, 100, &|id| id == "a0", &room)
            .unwrap();
        assert_eq!(ids(&due), vec!["a1", "a2", "n0"]);
        // The index rebuilt at open says the same.
        drop(s);
        let s = QueueStore::open(dir.path()).unwrap();
        let due = s
            .due_where(5000, 100, 100, &|id| id == "a0", &room)
            .unwrap();
        assert_eq!(ids(&due), vec!["a1", "a2", "n0"]);
        assert_eq!(s.count_due("retry", 5000, &|g| g == "A").unwrap(), (8, 5));
    }

    #[test]
    fn a_queue_out_of_room_is_left_whole_however_many_groups_it_has() {
        use crate::queue::Room;
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        for i in 0..50 {
            grouped(&s, &format!("g{i}"), Some(&format!("G{i}")), 1000 + i);
        }
        let mut later = call("other-1", 0, None);
        later.queue = "other".into();
        s.insert(&CallRecord::new(later, Stage::Execute, 2000))
            .unwrap();
        let room = |v: &crate::queue::DueValue<'_>| match v.queue {
            "retry" => Room { queue: 2, part: 1 },
            _ => Room::ANY,
        };
        // Two of retry's groups fill its room; the scan leaves the other 48 unread and still
        // reaches the other queue within a budget of four entries.
        let due = s.due_where(5000, 100, 4, &|_| false, &room).unwrap();
        assert_eq!(ids(&due), vec!["g0", "g1", "other-1"]);
    }

    #[test]
    fn a_queue_in_turn_serves_its_groups_one_after_another_and_goes_round() {
        use crate::queue::Room;
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        // A's backlog was stored before B's and C's calls.
        for i in 0..10 {
            grouped(&s, &format!("a{i}"), Some("A"), 1000 + i);
        }
        for i in 0..2 {
            grouped(&s, &format!("b{i}"), Some("B"), 2000 + i);
        }
        grouped(&s, "c0", Some("C"), 3000);
        grouped(&s, "later", Some("C"), 9000);
        let any = |_: &crate::queue::DueValue<'_>| Room::ANY;
        let turn = |want, after: Option<&[u8]>, skip: &dyn Fn(&str) -> bool| {
            s.due_in_turn("retry", 5000, want, 1000, after, skip, &any)
                .unwrap()
        };
        let (due, cursor) = turn(6, None, &|_| false);
        assert_eq!(ids(&due), vec!["a0", "b0", "c0", "a1", "b1", "a2"]);
        assert_eq!(cursor.as_deref(), Some(&b"retry\x01A"[..]));
        // The next turn starts after the group the last one ended at.
        let (due, cursor) = turn(2, cursor.as_deref(), &|id| id.starts_with('a'));
        assert_eq!(ids(&due), vec!["b0", "c0"]);
        assert_eq!(cursor.as_deref(), Some(&b"retry\x01C"[..]));
        // A group's room bounds what it gives; the queue's bounds the whole turn.
        let room = |v: &crate::queue::DueValue<'_>| Room {
            queue: 4,
            part: if v.group == Some("A") { 1 } else { 5 },
        };
        let (due, _) = s
            .due_in_turn("retry", 5000, 100, 1000, None, &|_| false, &room)
            .unwrap();
        assert_eq!(ids(&due), vec!["a0", "b0", "c0", "b1"]);
        // Another queue's calls are not its own.
        let (due, _) = s
            .due_in_turn("other", 5000, 100, 1000, None, &|_| false, &any)
            .unwrap();
        assert!(due.is_empty());
    }

    #[test]
    fn head_of_follows_stored_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        s.set_rules(ordered("retry")).unwrap();
        assert_eq!(s.head_of("retry", None).unwrap(), None);
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
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("first"));
        s.finish(&s.get("first").unwrap().unwrap()).unwrap();
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("second"));
    }

    #[test]
    fn each_group_keeps_its_own_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        s.set_rules(ordered("retry")).unwrap();
        grouped(&s, "a1", Some("A"), 1000);
        grouped(&s, "b1", Some("B"), 1001);
        grouped(&s, "a2", Some("A"), 1002);
        grouped(&s, "n1", None, 1003);
        assert_eq!(
            s.head_of("retry", Some("A")).unwrap().as_deref(),
            Some("a1")
        );
        assert_eq!(
            s.head_of("retry", Some("B")).unwrap().as_deref(),
            Some("b1")
        );
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("n1"));
        s.finish(&s.get("a1").unwrap().unwrap()).unwrap();
        assert_eq!(
            s.head_of("retry", Some("A")).unwrap().as_deref(),
            Some("a2")
        );
        assert_eq!(
            s.head_of("retry", Some("B")).unwrap().as_deref(),
            Some("b1")
        );
        // A group whose name begins like another's is its own group.
        assert_eq!(s.head_of("retry", Some("A2")).unwrap(), None);
    }

    /// Rules under which `queue` keeps order.
    fn ordered(queue: &str) -> Rules {
        let mut rules = Rules::default();
        let rule = QueueRule {
            keep_order: true,
            ..rules.default
        };
        rules.queues.insert(queue.into(), rule);
        rules
    }

    #[test]
    fn a_queue_that_starts_keeping_order_gets_every_pending_call_indexed() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = QueueStore::open(dir.path()).unwrap();
            for (id, priority) in [("first", 0), ("second", 9)] {
                s.insert(&CallRecord::new(
                    call(id, priority, None),
                    Stage::Execute,
                    9000,
                ))
                .unwrap();
            }
            // Not keeping order: nothing indexed.
            assert_eq!(s.head_of("retry", None).unwrap(), None);
            assert_eq!(s.counts_by_queue().unwrap()["retry"], (2, 0));
        }
        let s = reopen(dir.path());
        s.set_rules(ordered("retry")).unwrap();
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("first"));
        s.insert(&CallRecord::new(
            call("third", 0, None),
            Stage::Execute,
            1000,
        ))
        .unwrap();
        for id in ["first", "second"] {
            s.finish(&s.get(id).unwrap().unwrap()).unwrap();
        }
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("third"));
        // Order dropped and taken up again: calls stored meanwhile are indexed too.
        s.set_rules(Rules::default()).unwrap();
        s.insert(&CallRecord::new(
            call("fourth", 0, None),
            Stage::Execute,
            1000,
        ))
        .unwrap();
        s.finish(&s.get("third").unwrap().unwrap()).unwrap();
        assert_eq!(s.head_of("retry", None).unwrap(), None);
        s.set_rules(ordered("retry")).unwrap();
        assert_eq!(s.head_of("retry", None).unwrap().as_deref(), Some("fourth"));
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
        // Damaged in sled (where a checkpoint put it).
        s.checkpoint().unwrap();
        s.db()
            .sled()
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
        s.db()
            .sled()
            .insert(keys::with_id(CALL, "old"), bytes)
            .unwrap();
        let r = s.get("old").unwrap().unwrap();
        assert_eq!((r.call.priority, r.call.chain, r.seq), (4, None, 7));
        assert_eq!(s.pending(&|_| true, 10).unwrap().len(), 1);
    }

    #[test]
    fn records_of_formats_2_and_3_still_read_and_a_group_survives() {
        let dir = tempfile::tempdir().unwrap();
        let s = QueueStore::open(dir.path()).unwrap();
        // Format 2's layout: the call with its chain link and no group.
        let mut old = call("two", 5, None);
        old.chain = Some(crate::model::call::ChainLink {
            chain: "ch".into(),
            owner: "a".into(),
            step: 2,
        });
        let call2 = crate::model::call::UngroupedCall::from(old.clone());
        let record = (
            call2,
            Stage::Execute,
            Vec::<Attempt>::new(),
            2000u64,
            1000u64,
            None::<String>,
            9u64,
        );
        let bytes = postcard::to_extend(&record, vec![FORMAT_2]).unwrap();
        s.db()
            .sled()
            .insert(keys::with_id(CALL, "two"), bytes)
            .unwrap();
        let r = s.get("two").unwrap().unwrap();
        assert_eq!((&r.call, r.seq), (&old, 9));
        // A call with a group keeps it through the store.
        let mut grouped = call("three", 0, None);
        grouped.group = Some("customer-42".into());
        s.insert(&CallRecord::new(grouped, Stage::Execute, 1000))
            .unwrap();
        let back = s.get("three").unwrap().unwrap();
        assert_eq!(back.call.group.as_deref(), Some("customer-42"));
        // Format 3's layout: the call with its group, the record without operators' orders.
        let mut three = call("three-old", 0, None);
        three.group = Some("customer-7".into());
        let record = (
            three.clone(),
            Stage::Execute,
            Vec::<Attempt>::new(),
            2000u64,
            1000u64,
            None::<String>,
            11u64,
        );
        let bytes = postcard::to_extend(&record, vec![FORMAT_3]).unwrap();
        s.db()
            .sled()
            .insert(keys::with_id(CALL, "three-old"), bytes)
            .unwrap();
        let r = s.get("three-old").unwrap().unwrap();
        assert_eq!((&r.call, r.seq, r.events.len()), (&three, 11, 0));
    }

    #[test]
    fn a_second_open_of_a_held_queue_says_it_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = QueueStore::open(dir.path()).unwrap();
        let again = QueueStore::open(dir.path()).err().unwrap();
        assert!(again.is_locked(), "{again}");
        let other = QueueError::Unrecognised { path: "x".into() };
        assert!(!other.is_locked());
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
            s.checkpoint().unwrap();
        }
        let s = reopen(dir.path());
        let r = s.get("keep").unwrap().unwrap();
        assert_eq!((r.stage, r.call.priority), (Stage::Deliver, 3));
        assert_eq!(s.due(1000, 10).unwrap()[0].id, "keep");
    }
}
