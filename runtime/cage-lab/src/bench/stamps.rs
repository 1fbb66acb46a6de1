//! When queued calls started executing, learnt without hooks in the runtime: the calls are of
//! `echo.stamp`, which appends `TAG MICROSECONDS` (the wall clock as it starts) to a file
//! named in its arguments; the benchmark reads the file back once the calls are done. The
//! cages and the benchmark share this machine's clock, so the stamps compare with times the
//! benchmark takes itself ([`now_us`]).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// This machine's wall clock, in microseconds since 1970.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// A file the calls of one run stamp; removed when dropped.
pub struct StampFile {
    path: PathBuf,
}

impl StampFile {
    /// A new, empty stamp file in `dir` (which the target cage must be able to write),
    /// named for `purpose`.
    pub fn new(dir: &Path, purpose: &str) -> Result<StampFile, String> {
        let path = dir.join(format!(
            "cage-bench-{purpose}-{}-{}.stamps",
            std::process::id(),
            now_us()
        ));
        std::fs::write(&path, "").map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(StampFile { path })
    }

    /// The JSON arguments of an `echo.stamp` call that stamps this file with `tag`.
    pub fn args(&self, tag: &str) -> Vec<u8> {
        serde_json::json!({ "file": self.path, "tag": tag })
            .to_string()
            .into_bytes()
    }

    /// Every stamp so far, as (tag, microseconds), in the order they were written.
    pub fn read(&self) -> Result<Vec<(String, u64)>, String> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        text.lines()
            .map(|line| {
                line.split_once(' ')
                    .and_then(|(tag, us)| Some((tag.to_owned(), us.parse().ok()?)))
                    .ok_or_else(|| format!("{}: not a stamp: {line:?}", self.path.display()))
            })
            .collect()
    }
}

impl Drop for StampFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_read_back_as_written_and_the_file_goes_with_it() {
        let stamps = StampFile::new(&std::env::temp_dir(), "test").unwrap();
        let args: serde_json::Value = serde_json::from_slice(&stamps.args("7")).unwrap();
        let file = PathBuf::from(args["file"].as_str().unwrap());
        assert_eq!(args["tag"], "7");
        std::fs::write(&file, "7 1700000000000001\n8 1700000000000002\n").unwrap();
        assert_eq!(
            stamps.read().unwrap(),
            [
                ("7".to_owned(), 1_700_000_000_000_001),
                ("8".to_owned(), 1_700_000_000_000_002)
            ]
        );
        std::fs::write(&file, "7 soon\n").unwrap();
        assert!(stamps.read().is_err());
        drop(stamps);
        assert!(!file.exists());
    }
}
