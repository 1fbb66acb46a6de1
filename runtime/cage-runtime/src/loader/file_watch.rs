//! When a module file may have changed, and whether it has settled enough to be read.

use super::module_file::{self, FileKind};
use super::LoadError;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file that serves module `name` in `modules_dir`: `lib<name>.so`, as cargo names a cdylib.
pub fn module_file(modules_dir: &Path, name: &str) -> PathBuf {
    modules_dir.join(format!("lib{name}.so"))
}

/// The module a file in the modules directory would serve, if its name fits `lib<name>.so`.
pub fn module_of_file(path: &Path) -> Option<&str> {
    path.file_name()?
        .to_str()?
        .strip_prefix("lib")?
        .strip_suffix(".so")
}

/// What identifies one version of a file on disk without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// What kind of file the path names, after following symlinks.
    pub kind: FileKind,
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode change time, nanoseconds since the epoch (moves on chmod and chown too, so a
    /// file made readable is looked at again).
    pub ctime_ns: i128,
    /// Device holding the inode.
    pub device: u64,
    /// Inode (changes on atomic rename).
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of `path` now (following symlinks), or `None` if it does not exist.
    pub fn of(path: &Path) -> Result<Option<FileStamp>, LoadError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileStamp::from_metadata(&m))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LoadError::Io {
                action: format!("stat {}", path.display()),
                source,
            }),
        }
    }

    /// The stamp of a file whose metadata is `m` (from `stat`, or `fstat` of an open file).
    pub fn from_metadata(m: &std::fs::Metadata) -> FileStamp {
        let kind = FileKind::of(&m.file_type());
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        // Only a regular file is ever read, so for anything else only *which* file it is
        // matters: a FIFO written to or a terminal in use changes its times, and must not be
        // examined (and refused, and logged) again for that.
        let (size, mtime_ns, ctime_ns) = match kind {
            FileKind::Regular => (
                m.len(),
                ns(m.mtime(), m.mtime_nsec()),
                ns(m.ctime(), m.ctime_nsec()),
            ),
            _ => (0, 0, 0),
        };
        FileStamp {
            kind,
            size,
            mtime_ns,
            ctime_ns,
            device: m.dev(),
            inode: m.ino(),
        }
    }
}

/// Waits until `path` keeps the same stamp over `debounce`, then reads it; gives up after
/// `limit`. What can never load (not a regular file, over `max_bytes`) is refused at once,
/// before any wait or read. The read is checked against the stamp, so the bytes are one
/// settled version.
pub fn settle_and_read(
    path: &Path,
    debounce: Duration,
    limit: Duration,
    max_bytes: u64,
) -> Result<(Vec<u8>, FileStamp), LoadError> {
    let started = Instant::now();
    let stamp = || FileStamp::of(path)?.ok_or(LoadError::Missing);
    let mut before = stamp()?;
    loop {
        module_file::check_stamp(&before, max_bytes)?;
        std::thread::sleep(debounce);
        let now = stamp()?;
        if now == before {
            if let Some(bytes) = module_file::read(path, &now, max_bytes)? {
                return Ok((bytes, now));
            }
            before = stamp()?;
        } else {
            before = now;
        }
        if started.elapsed() > limit {
            return Err(LoadError::Unsettled {
                waited: started.elapsed(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: u64 = 1024 * 1024;

    #[test]
    fn names_map_both_ways() {
        let dir = Path::new("/site/modules");
        assert_eq!(
            module_file(dir, "echo"),
            PathBuf::from("/site/modules/libecho.so")
        );
        assert_eq!(module_of_file(Path::new("/x/libecho.so")), Some("echo"));
        assert_eq!(module_of_file(Path::new("/x/echo.so")), None);
        assert_eq!(module_of_file(Path::new("/x/libecho.so.tmp")), None);
    }

    #[test]
    fn settled_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libx.so");
        std::fs::write(&p, b"\x7fELF hello").unwrap();
        let (bytes, stamp) =
            settle_and_read(&p, Duration::from_millis(5), Duration::from_secs(5), LIMIT).unwrap();
        assert_eq!(bytes, b"\x7fELF hello");
        assert_eq!(stamp.size, 10);
        assert_eq!(stamp.kind, FileKind::Regular);
    }

    #[test]
    fn what_can_never_load_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("libfifo.so");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        // A settle limit of zero: a refusal that waited for the file to settle would report
        // it unsettled instead.
        let r = settle_and_read(&fifo, Duration::ZERO, Duration::ZERO, LIMIT);
        assert!(
            matches!(
                r,
                Err(LoadError::NotRegular {
                    kind: FileKind::Fifo
                })
            ),
            "{r:?}"
        );
        let big = dir.path().join("libbig.so");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(LIMIT + 1)
            .unwrap();
        let r = settle_and_read(&big, Duration::ZERO, Duration::ZERO, LIMIT);
        assert!(matches!(r, Err(LoadError::TooLarge { .. })), "{r:?}");
        let r = settle_and_read(dir.path(), Duration::ZERO, Duration::ZERO, LIMIT);
        assert!(
            matches!(
                r,
                Err(LoadError::NotRegular {
                    kind: FileKind::Directory
                })
            ),
            "{r:?}"
        );
    }

    #[test]
    fn stamps_of_other_kinds_ignore_times() {
        // /dev/null's times move whenever anyone writes to it; its stamp must not.
        let s = FileStamp::of(Path::new("/dev/null")).unwrap().unwrap();
        assert_eq!(s.kind, FileKind::CharDevice);
        assert_eq!((s.size, s.mtime_ns, s.ctime_ns), (0, 0, 0));
    }

    #[test]
    fn missing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let r = settle_and_read(
            &dir.path().join("libnone.so"),
            Duration::from_millis(1),
            Duration::from_secs(1),
            LIMIT,
        );
        assert!(matches!(r, Err(LoadError::Missing)));
    }

    #[test]
    fn file_that_keeps_growing_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("libgrow.so");
        std::fs::write(&p, b"x").unwrap();
        let writer_path = p.clone();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(writer_path)
                .unwrap();
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                f.write_all(b"more").unwrap();
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        let r = settle_and_read(
            &p,
            Duration::from_millis(20),
            Duration::from_millis(200),
            LIMIT,
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(matches!(r, Err(LoadError::Unsettled { .. })), "{r:?}");
    }
}
