//! [`LoadError`]: why a module library was not loaded.

/// Why a module file was rejected; each variant is one cause.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read or the private copy written.
    #[error("cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not exist.
    #[error("file not found")]
    Missing,
    /// A new version lacks methods that pending calls target, and the cage is strict about it.
    #[error("version {version} lacks method(s) that pending calls target: {missing} (strict_methods = true keeps the version loaded now)")]
    MissingMethods {
        /// The refused version.
        version: String,
        /// The methods, each with its pending calls.
        missing: String,
    },
    /// The path names a FIFO, device, socket or directory (perhaps behind a symlink).
    #[error("not a regular file ({kind})")]
    NotRegular {
        /// What it is.
        kind: super::module_file::FileKind,
    },
    /// The file is larger than the cage's `max_module_bytes`.
    #[error(
        "{} ({size} bytes) is over max_module_bytes = {} ({limit} bytes)",
        bytesize::ByteSize(*.size),
        bytesize::ByteSize(*.limit)
    )]
    TooLarge {
        /// Its length.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The file grew past the limit while it was being read.
    #[error(
        "grew past max_module_bytes = {} ({limit} bytes) while being read",
        bytesize::ByteSize(*.limit)
    )]
    GrewTooLarge {
        /// The limit.
        limit: u64,
    },
    /// The file kept changing for longer than the settle limit.
    #[error("file still changing after {waited:?} (still being written?)")]
    Unsettled {
        /// How long it was watched.
        waited: std::time::Duration,
    },
    /// Examining the file did not finish (a hung filesystem?); given up.
    #[error("examining the file did not finish after {} (a hung filesystem?); given up until the file changes", humantime::format_duration(std::time::Duration::from_secs(.waited.as_secs())))]
    Stuck {
        /// How long it had run.
        waited: std::time::Duration,
    },
    /// The bytes are not a usable ELF shared object.
    #[error("not an ELF shared library: {0}")]
    NotElf(String),
    /// Part of the ELF image lies past the end of the file.
    #[error(
        "ELF {what} past end of file ({end} > {len} bytes; file still being written or truncated?)"
    )]
    Truncated {
        /// Which part.
        what: String,
        /// Where that part ends.
        end: u64,
        /// The file's length.
        len: u64,
    },
    /// The library is for another machine.
    #[error("built for ELF machine {found}, this cage runs on {expected}")]
    WrongMachine {
        /// Machine in the file.
        found: u16,
        /// Machine of this process.
        expected: u16,
    },
    /// The library exports no entry symbol of any ABI version.
    #[error("no entry symbol `{expected}` (not a cages module, or built without cage_sdk::export_module!)")]
    MissingEntry {
        /// The symbol looked for.
        expected: &'static str,
    },
    /// The library was built for another ABI version.
    #[error("built for another module ABI: exports {found}, this cage speaks ABI {expected} (`{symbol}`); rebuild it against this cage's cage-sdk")]
    AbiMismatch {
        /// What the library exports (symbol or descriptor version).
        found: String,
        /// ABI version of this cage.
        expected: u32,
        /// Entry symbol of this cage's ABI.
        symbol: &'static str,
    },
    /// `dlopen` or symbol lookup failed.
    #[error("dlopen failed: {0}")]
    Dlopen(String),
    /// The descriptor is malformed.
    #[error("bad module descriptor: {0}")]
    BadDescriptor(String),
    /// A worker process started on the copy did not load it (or died trying).
    #[error("{0}")]
    Worker(String),
    /// The library is a different module than the file name says.
    #[error("library calls itself module {found:?}, but it was loaded as {expected:?}")]
    NameMismatch {
        /// The module the cage serves under this file.
        expected: String,
        /// The name in the descriptor.
        found: String,
    },
}
