//! Opening and reading one module file safely: only a regular file (also behind a symlink),
//! opened so that opening cannot block, its size checked against the limit and its ELF magic
//! checked before the rest is read, and the read bounded even if the file grows meanwhile.
//!
//! The decisions ([`check_kind`], [`check_size`], [`elf_check::check_magic`]) are plain
//! functions; [`read`] applies them to what was actually opened (its `fstat`), so a file
//! swapped for a FIFO or a device between a `stat` and the `open` is still refused.

use super::file_watch::FileStamp;
use super::{elf_check, LoadError};
use std::fs::{File, FileType, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// What kind of file a path names (after following symlinks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file: the only kind a module is read from.
    Regular,
    /// A directory.
    Directory,
    /// A named pipe: opening it for reading waits for a writer, reading it never ends.
    Fifo,
    /// A character device such as `/dev/zero`, which never ends.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A Unix socket.
    Socket,
    /// A symbolic link (seen only when links are not followed).
    Symlink,
    /// Anything else the system may have.
    Other,
}

impl FileKind {
    /// The kind of `t`.
    pub fn of(t: &FileType) -> FileKind {
        if t.is_file() {
            FileKind::Regular
        } else if t.is_dir() {
            FileKind::Directory
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_socket() {
            FileKind::Socket
        } else if t.is_symlink() {
            FileKind::Symlink
        } else {
            FileKind::Other
        }
    }
}

impl std::fmt::Display for FileKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FileKind::Regular => "a regular file",
            FileKind::Directory => "a directory",
            FileKind::Fifo => "a FIFO",
            FileKind::CharDevice => "a character device",
            FileKind::BlockDevice => "a block device",
            FileKind::Socket => "a socket",
            FileKind::Symlink => "a symbolic link",
            FileKind::Other => "an unknown kind of file",
        })
    }
}

/// Refuses anything but a regular file.
pub fn check_kind(kind: FileKind) -> Result<(), LoadError> {
    match kind {
        FileKind::Regular => Ok(()),
        kind => Err(LoadError::NotRegular { kind }),
    }
}

/// Refuses a file of `size` bytes when the limit is `limit` bytes.
pub fn check_size(size: u64, limit: u64) -> Result<(), LoadError> {
    if size > limit {
        Err(LoadError::TooLarge { size, limit })
    } else {
        Ok(())
    }
}

/// Refuses, before anything is read, what `stat` says can never load: the wrong kind of file
/// or one over the limit. Waiting for such a file to settle would only delay the refusal.
pub fn check_stamp(stamp: &FileStamp, limit: u64) -> Result<(), LoadError> {
    check_kind(stamp.kind)?;
    check_size(stamp.size, limit)
}

/// Opens `path` for reading without blocking: a FIFO put there between a `stat` and this
/// `open` does not wait for a writer, and a terminal device does not become ours.
fn open(path: &Path) -> Result<File, LoadError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => LoadError::Missing,
            _ => LoadError::Io {
                action: format!("open {}", path.display()),
                source: e,
            },
        })
}

/// Reads the version of `path` that `expected` describes, at most `limit` bytes of it.
///
/// `Ok(None)`: the file opened, or its length, is not that version any more (replaced or
/// still being written); look again. Errors are refusals of what was opened: not a regular
/// file, over the limit, no ELF magic in its first bytes (the rest then stays unread).
pub fn read(path: &Path, expected: &FileStamp, limit: u64) -> Result<Option<Vec<u8>>, LoadError> {
    let file = open(path)?;
    let io = |action: &str, source| LoadError::Io {
        action: format!("{action} {}", path.display()),
        source,
    };
    let opened = FileStamp::from_metadata(&file.metadata().map_err(|e| io("fstat", e))?);
    check_stamp(&opened, limit)?;
    if opened != *expected {
        return Ok(None);
    }
    let bytes = read_bounded(&file, opened.size, limit).map_err(|e| match e {
        Bounded::Refused(e) => e,
        Bounded::Io(e) => io("read", e),
    })?;
    let after = FileStamp::from_metadata(&file.metadata().map_err(|e| io("fstat", e))?);
    if after != opened || bytes.len() as u64 != opened.size {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Why [`read_bounded`] stopped.
#[derive(Debug)]
enum Bounded {
    Refused(LoadError),
    Io(std::io::Error),
}

/// Reads what `from` holds, expected to be `size` bytes: its first bytes must be ELF magic,
/// or nothing more is read; never more than `limit` bytes are kept, however much it holds.
fn read_bounded(mut from: impl Read, size: u64, limit: u64) -> Result<Vec<u8>, Bounded> {
    let mut bytes = Vec::new();
    (&mut from)
        .take(elf_check::MAGIC.len() as u64)
        .read_to_end(&mut bytes)
        .map_err(Bounded::Io)?;
    elf_check::check_magic(&bytes).map_err(Bounded::Refused)?;
    // `size` is what the caller checked against the limit, so reserving it is bounded; one
    // byte read past the limit tells a file that grew over it from one exactly at it.
    bytes.reserve_exact(usize::try_from(size.min(limit)).unwrap_or(0));
    from.take(limit.saturating_add(1).saturating_sub(bytes.len() as u64))
        .read_to_end(&mut bytes)
        .map_err(Bounded::Io)?;
    if bytes.len() as u64 > limit {
        return Err(Bounded::Refused(LoadError::GrewTooLarge { limit }));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const LIMIT: u64 = 1024 * 1024;

    fn stamp(path: &Path) -> FileStamp {
        FileStamp::of(path).unwrap().unwrap()
    }

    #[test]
    fn only_regular_files_pass() {
        assert!(check_kind(FileKind::Regular).is_ok());
        for kind in [
            FileKind::Directory,
            FileKind::Fifo,
            FileKind::CharDevice,
            FileKind::BlockDevice,
            FileKind::Socket,
            FileKind::Symlink,
            FileKind::Other,
        ] {
            let e = check_kind(kind).unwrap_err().to_string();
            assert_eq!(e, format!("not a regular file ({kind})"));
        }
        assert_eq!(
            check_kind(FileKind::Fifo).unwrap_err().to_string(),
            "not a regular file (a FIFO)"
        );
    }

    #[test]
    fn size_at_the_limit_passes_and_over_it_names_both() {
        assert!(check_size(0, 10).is_ok());
        assert!(check_size(10, 10).is_ok());
        let e = check_size(3 * 1024 * 1024 * 1024, 512 * 1024 * 1024)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "3.0 GiB (3221225472 bytes) is over max_module_bytes = 512.0 MiB (536870912 bytes)"
        );
    }

    #[test]
    fn kinds_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let kind = |p: &Path| FileKind::of(&std::fs::symlink_metadata(p).unwrap().file_type());
        assert_eq!(kind(&file), FileKind::Regular);
        assert_eq!(kind(dir.path()), FileKind::Directory);
        assert_eq!(kind(&sock), FileKind::Socket);
        assert_eq!(kind(Path::new("/dev/null")), FileKind::CharDevice);
        let link = dir.path().join("l");
        symlink("/dev/zero", &link).unwrap();
        assert_eq!(kind(&link), FileKind::Symlink);
        // Stamps follow links: a link to a device is a device.
        assert_eq!(stamp(&link).kind, FileKind::CharDevice);
    }

    #[test]
    fn a_device_behind_a_symlink_is_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("libx.so");
        symlink("/dev/zero", &link).unwrap();
        let s = stamp(&link);
        assert!(matches!(
            check_stamp(&s, LIMIT),
            Err(LoadError::NotRegular {
                kind: FileKind::CharDevice
            })
        ));
        // Also when the caller skipped the stat: the opened file's own fstat decides.
        let r = read(&link, &s, LIMIT);
        assert!(
            matches!(
                r,
                Err(LoadError::NotRegular {
                    kind: FileKind::CharDevice
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn a_fifo_is_opened_without_blocking_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libx.so");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // Pretend an earlier stat saw a regular file there: the open must still not block.
        let pretend = FileStamp {
            kind: FileKind::Regular,
            ..stamp(&fifo)
        };
        let r = read(&fifo, &pretend, LIMIT);
        assert!(
            matches!(
                r,
                Err(LoadError::NotRegular {
                    kind: FileKind::Fifo
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn an_oversized_sparse_file_is_refused_from_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libbig.so");
        let f = File::create(&p).unwrap();
        f.set_len(LIMIT + 1).unwrap();
        let s = stamp(&p);
        assert!(matches!(
            check_stamp(&s, LIMIT),
            Err(LoadError::TooLarge { size, limit }) if size == LIMIT + 1 && limit == LIMIT
        ));
        assert!(matches!(
            read(&p, &s, LIMIT),
            Err(LoadError::TooLarge { .. })
        ));
    }

    #[test]
    fn a_file_without_magic_is_refused_from_its_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        std::fs::write(&p, b"#!/bin/sh\necho not a library\n").unwrap();
        let r = read(&p, &stamp(&p), LIMIT);
        assert!(
            matches!(&r, Err(LoadError::NotElf(m)) if m.contains("no ELF magic")),
            "{r:?}"
        );
        std::fs::write(&p, b"").unwrap();
        let r = read(&p, &stamp(&p), LIMIT);
        assert!(
            matches!(&r, Err(LoadError::NotElf(m)) if m.contains("empty")),
            "{r:?}"
        );
    }

    #[test]
    fn reading_stops_at_the_limit_however_much_there_is() {
        // An endless source that starts like an ELF file: a file growing while read.
        let endless = std::io::Cursor::new(elf_check::MAGIC).chain(std::io::repeat(0));
        let r = read_bounded(endless, 100, 4096);
        assert!(
            matches!(
                r,
                Err(Bounded::Refused(LoadError::GrewTooLarge { limit: 4096 }))
            ),
            "{r:?}"
        );
        assert_eq!(
            LoadError::GrewTooLarge { limit: 4096 }.to_string(),
            "grew past max_module_bytes = 4.0 KiB (4096 bytes) while being read"
        );
        // An endless source that does not: only its first bytes are taken.
        let mut counted = Counting(std::io::repeat(b'#'), 0);
        let r = read_bounded(&mut counted, 100, 4096);
        assert!(
            matches!(r, Err(Bounded::Refused(LoadError::NotElf(_)))),
            "{r:?}"
        );
        assert_eq!(counted.1, elf_check::MAGIC.len());
        // Exactly at the limit is whole.
        let exact = [elf_check::MAGIC.as_slice(), &[1u8; 60]].concat();
        assert_eq!(read_bounded(&exact[..], 64, 64).unwrap(), exact);
    }

    /// Counts the bytes read through it.
    struct Counting<R>(R, usize);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1 += n;
            Ok(n)
        }
    }

    #[test]
    fn a_settled_file_is_read_whole_and_a_changed_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        let body = [elf_check::MAGIC.as_slice(), &[7u8; 100]].concat();
        std::fs::write(&p, &body).unwrap();
        let s = stamp(&p);
        assert_eq!(read(&p, &s, LIMIT).unwrap().unwrap(), body);
        // Exactly at the limit is still read.
        assert_eq!(read(&p, &s, body.len() as u64).unwrap().unwrap(), body);
        let older = FileStamp { size: 3, ..s };
        assert!(read(&p, &older, LIMIT).unwrap().is_none());
        assert!(matches!(
            read(&dir.path().join("libnone.so"), &s, LIMIT),
            Err(LoadError::Missing)
        ));
    }
}
