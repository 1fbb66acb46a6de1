//! When a module file may have changed, and whether it has settled enough to be read.

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
    /// Length in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// Inode (changes on atomic rename).
    pub inode: u64,
}

impl FileStamp {
    /// The stamp of `path` now, or `None` if it does not exist.
    pub fn of(path: &Path) -> Result<Option<FileStamp>, LoadError> {
        match std::fs::metadata(path) {
            Ok(m) => Ok(Some(FileStamp {
                size: m.len(),
                mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
                inode: m.ino(),
            })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(LoadError::Io {
                action: format!("stat {}", path.display()),
                source,
            }),
        }
    }
}

/// Waits until `path` keeps the same stamp over `debounce`, then reads it; gives up after
/// `limit`. The read is checked against the stamp, so the bytes are one settled version.
pub fn settle_and_read(
    path: &Path,
    debounce: Duration,
    limit: Duration,
) -> Result<(Vec<u8>, FileStamp), LoadError> {
    let started = Instant::now();
    let mut before = FileStamp::of(path)?.ok_or(LoadError::Missing)?;
    loop {
        std::thread::sleep(debounce);
        let now = FileStamp::of(path)?.ok_or(LoadError::Missing)?;
        if now == before {
            let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
                action: format!("read {}", path.display()),
                source,
            })?;
            let after = FileStamp::of(path)?.ok_or(LoadError::Missing)?;
            if after == now && bytes.len() as u64 == now.size {
                return Ok((bytes, now));
            }
            before = after;
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
        std::fs::write(&p, b"hello").unwrap();
        let (bytes, stamp) =
            settle_and_read(&p, Duration::from_millis(5), Duration::from_secs(5)).unwrap();
        assert_eq!(bytes, b"hello");
        assert_eq!(stamp.size, 5);
    }

    #[test]
    fn missing_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let r = settle_and_read(
            &dir.path().join("libnone.so"),
            Duration::from_millis(1),
            Duration::from_secs(1),
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
        let r = settle_and_read(&p, Duration::from_millis(20), Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(matches!(r, Err(LoadError::Unsettled { .. })), "{r:?}");
    }
}
