//! The cage's database: calls held until accepted (source side) or executed (target side),
//! with a due-time index, dead letters, the history used to deduplicate, module state, jobs
//! and chains, in memory tables over one sled tree, behind a write-ahead journal that is the
//! system of record. What is stored are the records
//! of [`crate::model`]; nothing here knows of chain or job logic, modules or the network.
//!
//! - [`store`]: opening the database, the value format, applying changes through the journal.
//! - one file per table, each a narrow set of operations on [`QueueStore`]:
//!   [`calls`] (pending, due index, order, dead letters, quarantine), [`history`] (accepted
//!   ids and idempotency keys, and their expiry), [`state`] (module state and executed marks),
//!   [`jobs`] (stored jobs and firing a run), [`chains`] (chain records, children, groups),
//!   [`crashes`] (start marks of running attempts, crash counts of calls).
//! - [`txn`]: one atomic change across tables (a step's end with its chain's advance).
//! - [`keys`]: the byte layout of the one sled tree (prefix per kind, big-endian times).
//! - [`rules`]: what the store follows of each queue's policy (retention, keep_order).
//! - [`ledger`]: the ids of finished calls, 16 bytes each, for deduplication within retention.
//! - [`tables`]: the memory tables: changes since the last checkpoint, read before sled; a
//!   checkpoint writes what is left of them to sled.
//! - [`journal`]: each batch appended (length, CRC) before it reaches sled; replayed on open; a
//!   change that fails after its entry is written is taken back (voided) before it is refused.
//! - [`txn`]: one atomic change of several records (a step's end with its chain's advance).
//! - [`commit`]: group commit: one `fdatasync` of the journal shared by every waiting writer,
//!   and checkpoints (sled flushed, old journal segments dropped).
//! - [`fault`]: storage faults the test suites inject at each step of a change.
//!
//! The queue knows nothing of modules or the network: the scheduler asks it for due calls and
//! tells it how attempts ended.

pub mod calls;
pub mod chains;
pub mod commit;
pub mod crashes;
pub mod fault;
pub mod history;
pub mod jobs;
pub mod journal;
mod keys;
pub mod ledger;
mod legacy;
pub mod rules;
pub mod state;
pub mod store;
pub mod tables;
mod txn;

pub use calls::{DueCall, DueValue, Room};
pub use commit::GroupCommit;
pub use crashes::{CrashCount, StartMark};
pub use history::Acceptance;
pub use store::QueueStore;
pub use txn::Txn;

impl QueueError {
    /// Whether another process holds the database's lock (a running cage, or an operator's
    /// command on a stopped one).
    pub fn is_locked(&self) -> bool {
        matches!(self, QueueError::Storage { source: sled::Error::Io(e), .. }
            if e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock"))
    }
}

/// Why the queue could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The sled database failed.
    #[error("queue database {path}: {source}")]
    Storage {
        /// The database directory.
        path: String,
        /// The sled error.
        source: sled::Error,
    },
    /// The database directory held data, but sled opened it without this cage's marker record:
    /// the files were corrupted or replaced, and starting would look like an empty queue.
    #[error(
        "queue database {path} exists but holds no cages marker record: its files are corrupt or \
         were replaced (sled opened what it could read). Nothing was changed; move the directory \
         aside (or restore it from a backup) to start this cage with an empty queue"
    )]
    Unrecognised {
        /// The database directory.
        path: String,
    },
    /// The ledger of finished calls is not one this cage wrote, or is damaged.
    #[error(
        "call ledger {path}: {why}. Nothing was changed; move the file aside to start without \
         the record of finished calls (calls offered again within their retention would run again)"
    )]
    Ledger {
        /// The ledger file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// Reading or writing the ledger of finished calls failed.
    #[error("call ledger: cannot {what} {path}: {source}")]
    LedgerIo {
        /// What was being done ("read", "write", "rebuild", …).
        what: &'static str,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A stored record does not decode (corruption or an incompatible version).
    #[error("queue record {key} does not decode: {source}")]
    Corrupt {
        /// The record's key, printable.
        key: String,
        /// The decode error.
        source: postcard::Error,
    },
    /// A stored record was written in a format this cage does not read.
    #[error("queue record {key} has format {found}, this cage reads format {expected}")]
    Format {
        /// The record's key, printable.
        key: String,
        /// Format byte found.
        found: u8,
        /// Format this cage reads.
        expected: u8,
    },
    /// A journal file could not be read, written or synced.
    #[error("queue journal: cannot {action} {path}: {source}")]
    Journal {
        /// What was being done ("append to", "fdatasync", …).
        action: &'static str,
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Flushing to disk failed: nothing written since the last good flush is durable.
    #[error("cannot make the queue durable: {0}")]
    Flush(String),
    /// A change failed after its journal entry was written, and was taken back whole before
    /// this error was given: it never takes effect, not even after a crash and a replay.
    #[error("not stored (the change was taken back whole): {0}")]
    TakenBack(Box<QueueError>),
    /// A change failed, and so did taking it back: a crash and a replay may still bring it
    /// back, so whether it takes effect is unknown. The queue takes no more writes.
    #[error(
        "outcome unknown: {failed}; taking the change back failed too ({undo}), so a restart \
         may still apply it. The queue takes no more writes until the cage restarts"
    )]
    Unknown {
        /// Why the change failed.
        failed: Box<QueueError>,
        /// Why taking it back failed.
        undo: Box<QueueError>,
    },
    /// The queue takes no more writes: an earlier change failed in a way only a restart (which
    /// replays the journal) repairs.
    #[error(
        "the queue takes no more writes until the cage restarts (its journal then restores a \
         consistent queue), since {0}"
    )]
    Stopped(String),
}

impl QueueError {
    /// Whether the change that gave this error is known never to take effect, so its caller
    /// may be told it was refused: it was taken back, or a stopped queue never wrote it.
    pub fn is_refusal(&self) -> bool {
        matches!(self, QueueError::TakenBack(_) | QueueError::Stopped(_))
    }
}
