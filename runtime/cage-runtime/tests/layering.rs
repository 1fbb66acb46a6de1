//! Arrows point down: every module of the library imports only modules listed below it in the
//! map at the top of `src/lib.rs`, and the map names every module the library has.
//!
//! Test code (a `#[cfg(test)]` module) may reach anywhere; comments and doc links are not
//! imports.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Top-level module names in map order (top first), read from the `//! - [`name`]` lines.
fn map_order(lib_rs: &str) -> Vec<String> {
    lib_rs
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .filter_map(|l| l.strip_prefix("//! - [`"))
        .filter_map(|rest| rest.split_once("`]").map(|(name, _)| name.to_owned()))
        .collect()
}

/// Modules the library declares (`pub mod name;` / `mod name;` in lib.rs).
fn declared(lib_rs: &str) -> BTreeSet<String> {
    lib_rs
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l.strip_prefix("pub ").unwrap_or(l);
            l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
        })
        .collect()
}

/// `source` without comments and without `#[cfg(test)]` modules (rustfmt puts their closing
/// brace alone at the start of a line at the same indentation as the `mod`).
fn product_code(source: &str) -> String {
    let mut out = String::new();
    let mut lines = source.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let next_trim = next.trim_start();
                if (next_trim.starts_with("mod ") || next_trim.starts_with("pub mod "))
                    && next_trim.ends_with('{')
                {
                    let indent = &next[..next.len() - next_trim.len()];
                    let close = format!("{indent}}}");
                    for skipped in lines.by_ref() {
                        if skipped == close {
                            break;
                        }
                    }
                    continue;
                }
            }
        }
        let code = match trimmed.find("//") {
            Some(0) => "",
            Some(at) if !trimmed[..at].contains('"') => &trimmed[..at],
            _ => trimmed,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// Top-level modules `code` refers to through `crate::`.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

/// Every upward import: `(file, importer, imported)` where `imported` stands above `importer`
/// in `order`. `files` pairs each file's path (relative to `src/`) with its text.
fn upward_imports(order: &[String], files: &[(String, String)]) -> Vec<String> {
    let rank = |name: &str| order.iter().position(|m| m == name);
    let mut found = Vec::new();
    for (path, text) in files {
        let top = path
            .split('/')
            .next()
            .unwrap_or(path)
            .trim_end_matches(".rs");
        let Some(own) = rank(top) else { continue };
        for imported in imports(&product_code(text)) {
            if imported == top {
                continue;
            }
            match rank(&imported) {
                Some(r) if r < own => found.push(format!(
                    "src/{path}: `{top}` imports `{imported}`, which the map in lib.rs puts above it"
                )),
                _ => {}
            }
        }
    }
    found
}

fn rust_files(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path: PathBuf = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.push((rel, std::fs::read_to_string(&path).expect("read file")));
        }
    }
}

#[test]
fn every_import_points_down_the_map_in_lib_rs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = map_order(&lib_rs);
    let declared = declared(&lib_rs);
    let mapped: BTreeSet<String> = order.iter().cloned().collect();
    assert_eq!(
        mapped, declared,
        "the map at the top of lib.rs must list exactly the modules lib.rs declares"
    );
    let mut files = Vec::new();
    rust_files(&src, &src, &mut files);
    // The binary's own modules (`main.rs`, `cli/`) sit above the library.
    files.retain(|(path, _)| path != "main.rs" && !path.starts_with("cli/") && path != "lib.rs");
    let upward = upward_imports(&order, &files);
    assert!(
        upward.is_empty(),
        "imports pointing up:\n{}",
        upward.join("\n")
    );
}

#[test]
fn an_upward_import_is_caught() {
    let order: Vec<String> = ["dispatch", "transport", "model"]
        .map(String::from)
        .to_vec();
    let files = vec![
        (
            "transport/server.rs".to_owned(),
            "//! Hands calls to [`crate::dispatch`] (a doc link is not an import).\n\
             use crate::dispatch::Dispatcher;\nuse crate::model::clock;\n"
                .to_owned(),
        ),
        (
            "model/clock.rs".to_owned(),
            "pub fn now() {}\n#[cfg(test)]\nmod tests {\n    use crate::{dispatch, transport};\n}\n"
                .to_owned(),
        ),
        (
            "dispatch.rs".to_owned(),
            "use crate::{model::clock, transport::client};\n".to_owned(),
        ),
    ];
    assert_eq!(
        upward_imports(&order, &files),
        vec!["src/transport/server.rs: `transport` imports `dispatch`, which the map in lib.rs puts above it"]
    );
    let grouped = vec![(
        "model.rs".to_owned(),
        "use crate::{names, transport::frame};\n".to_owned(),
    )];
    assert_eq!(upward_imports(&order, &grouped).len(), 1);
}
