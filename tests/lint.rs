//! The workspace is formatted and clippy-clean (`-D warnings`), checked by the test suite so
//! CI enforces it.

mod support;
use std::process::Command;

fn cargo(args: &[&str]) -> std::process::Output {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(support::workspace())
        .output()
        .expect("run cargo")
}

#[test]
fn code_is_formatted() {
    let out = cargo(&["fmt", "--all", "--", "--check"]);
    assert!(
        out.status.success(),
        "cargo fmt --check found unformatted code:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn clippy_is_clean() {
    let out = cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    assert!(
        out.status.success(),
        "cargo clippy --all-targets -- -D warnings failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
