//! A new module version that lacks methods pending calls target: the load says how many calls
//! target which missing methods (log and `cage modules`), and a cage with `strict_methods`
//! refuses the version and keeps the one it had.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

/// Cage `back` serving echo (`extra` added to its cage file) with three `echo.sleep` calls and
/// one `echo.stamp` call due in an hour, waiting for the methods the lean build lacks.
fn site_with_pending(extra: &str) -> (Site, support::RunningCage) {
    let mut site = Site::new();
    site.cage("back", &["echo"], extra);
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    for _ in 0..3 {
        site.enqueue("back", "echo.sleep", r#"{"ms": 1}"#, &["--delay", "1h"]);
    }
    site.enqueue("back", "echo.stamp", "null", &["--delay", "1h"]);
    site.enqueue("back", "echo.shout", "\"kept\"", &["--delay", "1h"]);
    (site, cage)
}

/// What `cage modules back --json` says of echo.
fn echo_module(site: &Site) -> serde_json::Value {
    let run = site.cage_cmd(&["modules", "back", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    list.into_iter().find(|m| m["name"] == "echo").unwrap()
}

#[test]
fn a_version_lacking_methods_with_pending_calls_loads_and_says_which() {
    let (site, cage) = site_with_pending("");
    site.install_atomic("echo", &module_so("echo", &["lean"]));
    let echo = eventually(Duration::from_secs(30), "the lean build loaded", || {
        let m = echo_module(&site);
        (m["version"] == "1.0.0+lean").then_some(m)
    });
    assert_eq!(
        echo["missing_methods"],
        serde_json::json!([["sleep", 3], ["stamp", 1]]),
        "{echo}"
    );
    let table = site.cage_cmd(&["modules", "back"]);
    assert!(
        table
            .stdout
            .contains("lacks, with calls pending: sleep (3), stamp (1)"),
        "{table:?}"
    );
    let log = cage.log();
    assert!(
        log.contains("version 1.0.0+lean lacks method(s) that pending calls target: sleep (3 calls), stamp (1 call)"),
        "{log}"
    );
}

#[test]
fn a_strict_cage_refuses_such_a_version_and_keeps_the_one_it_had() {
    let (site, _cage) = site_with_pending("strict_methods = true\n");
    site.install_atomic("echo", &module_so("echo", &["lean"]));
    let echo = eventually(Duration::from_secs(30), "the lean build refused", || {
        let m = echo_module(&site);
        m["last_error"].as_str().is_some().then_some(m)
    });
    assert_eq!(echo["version"], "1.0.0", "the version loaded stays: {echo}");
    let error = echo["last_error"].as_str().unwrap();
    assert!(
        error.contains(
            "version 1.0.0+lean lacks method(s) that pending calls target: sleep (3 calls), stamp (1 call) (strict_methods = true keeps the version loaded now)"
        ),
        "{error}"
    );
    // The version in place still serves what the calls need.
    assert_eq!(site.call("back", "echo.sleep", r#"{"ms": 1}"#).code, 0);
}
