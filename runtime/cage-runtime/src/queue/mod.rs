//! The durable queue of one cage: calls held until accepted (source side) or executed (target
//! side), in sled, with a due-time index, dead letters and the history used to deduplicate.
//!
//! - [`record`]: what is stored (call, stage, attempts).
//! - [`keys`]: the byte layout of the one sled tree (prefix per kind, big-endian times).
//! - [`store`]: operations on it; every multi-key change is one atomic batch.
//! - [`journal`]: each batch appended (length, CRC) before it reaches sled; replayed on open.
//! - [`txn`]: one atomic change of several records (a step's end with its chain's advance).
//! - [`commit`]: group commit: one `fdatasync` of the journal shared by every waiting writer,
//!   and checkpoints (sled flushed, old journal segments dropped).
//!
//! The queue knows nothing of modules or the network: the scheduler asks it for due calls and
//! tells it how attempts ended.

pub mod commit;
pub mod journal;
mod keys;
pub mod record;
pub mod store;
mod txn;

pub use commit::GroupCommit;
pub use record::{Attempt, CallRecord, ChainLink, QueuedCall, Stage};
pub use store::{Acceptance, DueCall, QueueStore};
pub use txn::Txn;

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
}
