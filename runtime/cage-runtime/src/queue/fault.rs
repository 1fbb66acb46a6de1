//! Storage fault injection for the test suites: while the file named by
//! `CAGE_FAULT_JOURNAL_FILE` exists, the journal fails the steps the file lists, so a test can
//! break a change at each step after its journal entry is written and check that the refusal is
//! final (see [`super::journal`]).
//!
//! The file holds steps separated by commas or white space:
//! - `write`: writing an entry reports an error after the entry was written whole (the worst
//!   case for a take-back: every byte of the refused change is in the file);
//! - `apply:N`: applying an entry of more than N keys to sled fails at key N (0 is the first);
//! - `sync`: the journal's `fdatasync` fails;
//! - `takeback`: every step of taking a failed change back fails too, so its outcome is unknown.
//!
//! Without the variable (as in production) the journal never looks for the file.

use std::path::PathBuf;

/// The variable naming the fault file.
pub const ENV: &str = "CAGE_FAULT_JOURNAL_FILE";

/// Which steps fail now.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub(super) struct Steps {
    /// Writing an entry.
    pub write: bool,
    /// Applying key N of an entry to sled.
    pub apply_key: Option<usize>,
    /// Syncing the journal.
    pub sync: bool,
    /// Every step of a take-back.
    pub take_back: bool,
}

/// Where a journal looks for injected faults.
#[derive(Debug, Default)]
pub(super) struct Faults {
    file: Option<PathBuf>,
}

impl Faults {
    /// The faults the environment asks for (none unless [`ENV`] is set).
    pub fn from_env() -> Faults {
        Faults {
            file: std::env::var_os(ENV).map(PathBuf::from),
        }
    }

    /// Faults listed in `file` while it exists.
    #[cfg(test)]
    pub fn at(file: PathBuf) -> Faults {
        Faults { file: Some(file) }
    }

    /// The steps that fail now.
    pub fn steps(&self) -> Steps {
        match &self.file {
            None => Steps::default(),
            Some(f) => std::fs::read_to_string(f)
                .map(|t| parse(&t))
                .unwrap_or_default(),
        }
    }
}

/// Reads a fault file's steps; words it does not know are ignored.
fn parse(text: &str) -> Steps {
    let mut steps = Steps::default();
    for word in text.split(|c: char| c == ',' || c.is_whitespace()) {
        match word {
            "write" => steps.write = true,
            "sync" => steps.sync = true,
            "takeback" => steps.take_back = true,
            w => {
                if let Some(n) = w.strip_prefix("apply:").and_then(|n| n.parse().ok()) {
                    steps.apply_key = Some(n);
                }
            }
        }
    }
    steps
}

/// The error an injected fault gives.
pub(super) fn injected(step: &str) -> std::io::Error {
    std::io::Error::other(format!("injected fault ({step})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_read_from_the_file_while_it_exists() {
        assert_eq!(parse(""), Steps::default());
        assert_eq!(
            parse("apply:2, takeback\nsync write bogus apply:x"),
            Steps {
                write: true,
                apply_key: Some(2),
                sync: true,
                take_back: true
            }
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("fault");
        let faults = Faults::at(file.clone());
        assert_eq!(faults.steps(), Steps::default());
        std::fs::write(&file, "write").unwrap();
        assert!(faults.steps().write);
        assert_eq!(Faults::default().steps(), Steps::default());
    }
}
