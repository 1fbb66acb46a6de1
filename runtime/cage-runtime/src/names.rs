//! Names of cages, modules, methods, queues, jobs and clusters: one check for all of them.
//!
//! A name becomes part of a file path (`cages/NAME.toml`, `modules/libNAME.so`, `data/NAME`),
//! a TOML key (`[queues.NAME]`), a storage key and a log line, so the check is strict: ASCII
//! letters, digits, `-` and `_`, bounded in length; a method name may also hold `.` between
//! other characters (never a path component such as `..`). Pure, so every caller (CLI, cage,
//! config) gives the same answer.

use std::fmt;

/// Longest cage, module, queue, job or cluster name, in bytes.
pub const MAX_NAME: usize = 64;
/// Longest method name, in bytes.
pub const MAX_METHOD: usize = 128;
/// How much of a bad name an error message quotes.
const QUOTED: usize = 48;

/// What a name names; each kind has its own words in errors and its own rule for `.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// A cage (`cages/NAME.toml`).
    Cage,
    /// A module (`modules/libNAME.so`).
    Module,
    /// A method of a module.
    Method,
    /// A queue (`[queues.NAME]`).
    Queue,
    /// A job declared in a cage file.
    Job,
    /// A discovery cluster.
    Cluster,
    /// The group of a queued call (a customer, a tenant): never a path or a TOML key, so it
    /// may hold any printable ASCII character but space.
    Group,
}

impl NameKind {
    fn word(self) -> &'static str {
        match self {
            NameKind::Cage => "cage",
            NameKind::Module => "module",
            NameKind::Method => "method",
            NameKind::Queue => "queue",
            NameKind::Job => "job",
            NameKind::Cluster => "cluster",
            NameKind::Group => "group",
        }
    }

    fn max_len(self) -> usize {
        match self {
            NameKind::Method | NameKind::Group => MAX_METHOD,
            _ => MAX_NAME,
        }
    }

    fn rule(self) -> String {
        if self == NameKind::Group {
            return format!(
                "1 to {} printable ASCII characters other than space",
                self.max_len()
            );
        }
        let dots = if self == NameKind::Method {
            ", and '.' between them"
        } else {
            ""
        };
        format!(
            "1 to {} ASCII letters, digits, '-' and '_'{dots}",
            self.max_len()
        )
    }
}

/// A name that breaks the rule of its kind, and how.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{quoted} is not a {} name: {why} (a {} name is {})", kind.word(), kind.word(), kind.rule())]
pub struct BadName {
    /// What it was meant to name.
    pub kind: NameKind,
    /// The name as shown: escaped, and cut short when long.
    pub quoted: String,
    /// The first thing wrong with it.
    pub why: String,
}

/// Checks `name` as a name of `kind`.
pub fn check(kind: NameKind, name: &str) -> Result<(), BadName> {
    let bad = |why: String| BadName {
        kind,
        quoted: quote(name),
        why,
    };
    if name.is_empty() {
        return Err(bad("it is empty".into()));
    }
    if name.len() > kind.max_len() {
        return Err(bad(format!(
            "it is {} bytes long, more than {}",
            name.len(),
            kind.max_len()
        )));
    }
    if kind == NameKind::Group {
        return match name.chars().find(|c| !c.is_ascii_graphic()) {
            Some(c) => Err(bad(format!("it holds {}", describe(c)))),
            None => Ok(()),
        };
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
    {
        return Err(bad(format!("it holds {}", describe(c))));
    }
    if name.contains('.') {
        if kind != NameKind::Method {
            return Err(bad("it holds '.'".into()));
        }
        // No empty piece between dots, so no `.`, `..`, leading or trailing dot.
        if name.split('.').any(str::is_empty) {
            return Err(bad(
                "a '.' must stand between other characters (no '..', none first or last)".into(),
            ));
        }
    }
    Ok(())
}

/// Whether `name` is a good name of `kind`.
pub fn is_valid(kind: NameKind, name: &str) -> bool {
    check(kind, name).is_ok()
}

/// A `MODULE.METHOD` target that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    /// No dot, or nothing on one side of it.
    #[error("target {0:?} is not MODULE.METHOD (e.g. echo.shout)")]
    Shape(String),
    /// One of the two names is not a valid name.
    #[error("target {target:?}: {name}")]
    Name {
        /// The target as given.
        target: String,
        /// What is wrong with the name.
        name: BadName,
    },
}

/// Splits `MODULE.METHOD` and checks both names.
pub fn split_target(target: &str) -> Result<(&str, &str), BadTarget> {
    let (module, method) = target
        .split_once('.')
        .filter(|(m, f)| !m.is_empty() && !f.is_empty())
        .ok_or_else(|| BadTarget::Shape(target.to_owned()))?;
    check(NameKind::Module, module)
        .and_then(|()| check(NameKind::Method, method))
        .map_err(|name| BadTarget::Name {
            target: target.to_owned(),
            name,
        })?;
    Ok((module, method))
}

/// `name` as an error message shows it: Debug-escaped, cut to [`QUOTED`] characters.
fn quote(name: &str) -> String {
    let count = name.chars().count();
    if count <= QUOTED {
        return format!("{name:?}");
    }
    let head: String = name.chars().take(QUOTED).collect();
    format!("{head:?}… ({} bytes)", name.len())
}

fn describe(c: char) -> String {
    match c {
        '/' | '\\' => format!("a path separator {c:?}"),
        '\0' => "a NUL byte".into(),
        c if c.is_control() => format!("a control character {}", c.escape_default()),
        c if c.is_whitespace() => format!("white space {c:?}"),
        c => format!("{c:?}"),
    }
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_and_their_names_are_checked() {
        assert_eq!(split_target("echo.shout"), Ok(("echo", "shout")));
        assert_eq!(split_target("echo.v2.shout"), Ok(("echo", "v2.shout")));
        for bad in ["echo", ".shout", "echo.", "../evil.x", "echo.../x", "e\0.x"] {
            assert!(split_target(bad).is_err(), "{bad}");
        }
        let e = split_target("../evil.x").unwrap_err().to_string();
        assert!(
            e.contains("\"..\" is not a module name") || e.contains("is not MODULE.METHOD"),
            "{e}"
        );
        let e = split_target("echo.sh/out").unwrap_err().to_string();
        assert!(e.contains("\"sh/out\" is not a method name"), "{e}");
    }

    #[test]
    fn good_names_pass() {
        for kind in [
            NameKind::Cage,
            NameKind::Module,
            NameKind::Queue,
            NameKind::Job,
            NameKind::Cluster,
            NameKind::Method,
        ] {
            for name in ["a", "echo", "billing-2", "retry_fast", "A9"] {
                assert_eq!(check(kind, name), Ok(()), "{kind} {name}");
            }
            assert!(is_valid(kind, &"x".repeat(MAX_NAME)));
        }
        assert!(is_valid(NameKind::Method, "v2.shout"));
        assert!(is_valid(NameKind::Method, &"m".repeat(MAX_METHOD)));
    }

    #[test]
    fn groups_take_printable_ascii_but_not_space_or_control_characters() {
        for good in ["customer-42", "acme.com", "tenant:7/eu", "a"] {
            assert_eq!(check(NameKind::Group, good), Ok(()), "{good}");
        }
        assert!(is_valid(NameKind::Group, &"g".repeat(MAX_METHOD)));
        for (bad, why) in [
            ("", "it is empty"),
            ("a b", "white space ' '"),
            ("a\0b", "a NUL byte"),
            ("kunde-ä", "'ä'"),
        ] {
            let e = check(NameKind::Group, bad).unwrap_err().to_string();
            assert!(
                e.contains(why) && e.contains("is not a group name"),
                "{bad}: {e}"
            );
            assert!(
                e.contains("printable ASCII characters other than space"),
                "{e}"
            );
        }
        let long = check(NameKind::Group, &"g".repeat(MAX_METHOD + 1)).unwrap_err();
        assert!(long.to_string().contains("more than 128"), "{long}");
    }

    #[test]
    fn path_pieces_and_separators_are_refused() {
        for name in ["../evil", "..", ".", "a/b", "a\\b", "/etc", "x/../y"] {
            for kind in [NameKind::Cage, NameKind::Module, NameKind::Queue] {
                let e = check(kind, name).unwrap_err();
                assert!(
                    e.to_string().contains(&format!("is not a {kind} name")),
                    "{e}"
                );
            }
        }
        for name in ["..", ".", ".x", "x.", "a..b", "../evil", "a/b"] {
            assert!(!is_valid(NameKind::Method, name), "{name}");
        }
        assert_eq!(
            check(NameKind::Queue, "../../x").unwrap_err().why,
            "it holds a path separator '/'"
        );
    }

    #[test]
    fn empty_long_nul_and_control_are_refused_and_shown_escaped() {
        assert_eq!(check(NameKind::Module, "").unwrap_err().why, "it is empty");
        let long = "a".repeat(10 * 1024);
        let e = check(NameKind::Module, &long).unwrap_err();
        assert!(e.why.contains("10240 bytes long, more than 64"), "{e}");
        assert!(
            e.to_string().len() < 300,
            "a long name is cut short: {}",
            e.to_string().len()
        );
        assert!(e.quoted.ends_with("… (10240 bytes)"), "{}", e.quoted);
        assert!(!is_valid(NameKind::Method, &"m".repeat(MAX_METHOD + 1)));

        let e = check(NameKind::Module, "ev\0il").unwrap_err();
        assert_eq!(e.why, "it holds a NUL byte");
        assert_eq!(e.quoted, "\"ev\\0il\"");
        let e = check(NameKind::Method, "a\nb").unwrap_err();
        assert!(e.why.contains("control character \\n"), "{e}");
        assert!(!is_valid(NameKind::Cage, "a b"));
        assert!(!is_valid(NameKind::Cage, "café"));
        assert!(!is_valid(NameKind::Module, "$chain"));
    }

    #[test]
    fn the_message_names_kind_name_and_rule() {
        let e = check(NameKind::Queue, "../../x").unwrap_err().to_string();
        assert_eq!(
            e,
            "\"../../x\" is not a queue name: it holds a path separator '/' (a queue name is 1 to 64 ASCII letters, digits, '-' and '_')"
        );
    }
}
