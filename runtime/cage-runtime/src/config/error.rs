//! [`ConfigError`]: a configuration problem, located to file, line and column.

use std::path::PathBuf;

/// A configuration file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file was read but its content is wrong at a known place.
    #[error("{}:{line}:{column}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong and what was expected.
        reason: String,
    },
    /// A command-line override of a cage file setting is not usable.
    #[error("{flag} {value}: {reason}")]
    Override {
        /// The option, such as `--listen`.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A name that cannot name a cage (such as `../x`): refused as a name, never looked up.
    #[error("{0}")]
    BadName(#[from] crate::names::BadName),
    /// No cage file exists for the requested cage.
    #[error("no cage named {name:?}: {} does not exist (each cage is defined by cages/NAME.toml in the site {})", path.display(), site.display())]
    NoSuchCage {
        /// The cage asked for.
        name: String,
        /// Where its file was looked for.
        path: PathBuf,
        /// The site directory.
        site: PathBuf,
    },
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] at byte `offset` of `source`.
    pub(crate) fn at(
        path: &std::path::Path,
        source: &str,
        offset: usize,
        reason: impl Into<String>,
    ) -> Self {
        let (line, column) = line_column(source, offset);
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            reason: reason.into(),
        }
    }

    /// Converts a TOML parse or type error into a located error.
    pub(crate) fn from_toml(path: &std::path::Path, source: &str, err: &toml::de::Error) -> Self {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        Self::at(
            path,
            source,
            offset,
            err.message().trim().replace('\n', "; "),
        )
    }
}

/// 1-based line and column of byte `offset` in `source`.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map(|l| l.chars().count())
        .unwrap_or(0)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 11), (2, 6));
        assert_eq!(line_column(src, 999), (3, 1));
    }
}
