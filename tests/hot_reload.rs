//! Hot reload: a rebuilt module dropped into modules/ serves the next call, without a restart,
//! while calls already running finish on the code they started on.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

fn shout(site: &Site) -> String {
    site.call("front", "echo.shout", r#""hi""#)
        .stdout
        .trim()
        .to_owned()
}

fn loaded_copies(site: &Site) -> usize {
    std::fs::read_dir(site.path().join("data/front/loaded-modules"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn copy_in_place_swaps_and_in_flight_call_finishes_on_old_code() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let v2 = module_so("echo", &["v2"]);
    let cage = site.start("front");
    assert_eq!(shout(&site), r#""HI""#);

    let in_flight = site.call_in_background("front", "echo.sleep", r#"{"ms": 2500}"#);
    std::thread::sleep(Duration::from_millis(300));

    site.install("echo", &v2);
    eventually(Duration::from_secs(20), "the new build answers", || {
        (shout(&site) == r#""HI!""#).then_some(())
    });
    assert!(
        !in_flight.is_finished(),
        "the swap should have happened while the slow call still ran"
    );
    // Old and new versions are both mapped while the old one still runs a call.
    assert_eq!(loaded_copies(&site), 2);

    let out = in_flight.join().unwrap();
    assert_eq!(out.code, 0, "{out:?}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["build"], "v1",
        "the in-flight call must finish on the code it started on"
    );

    // Once the last call on the old version ended, its private copy is unloaded and deleted.
    eventually(Duration::from_secs(5), "the old copy is deleted", || {
        (loaded_copies(&site) == 1).then_some(())
    });
    let modules = site.cage_cmd(&["modules", "front", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&modules.stdout).unwrap();
    assert_eq!(list[0]["version"], "1.0.0+v2");
    assert_eq!(list[0]["loads"], 2);
    assert!(
        cage.log().contains("swapped in version 1.0.0+v2"),
        "{}",
        cage.log()
    );
}

#[test]
fn atomic_rename_swaps_both_ways() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    let (v1, v2) = (module_so("echo", &[]), module_so("echo", &["v2"]));
    site.install_atomic("echo", &v1);
    let _cage = site.start("front");
    assert_eq!(shout(&site), r#""HI""#);

    site.install_atomic("echo", &v2);
    eventually(Duration::from_secs(20), "v2 answers after rename", || {
        (shout(&site) == r#""HI!""#).then_some(())
    });
    site.install_atomic("echo", &v1);
    eventually(
        Duration::from_secs(20),
        "v1 answers after rename back",
        || (shout(&site) == r#""HI""#).then_some(()),
    );
}

#[test]
fn a_fixed_module_applies_to_the_next_call() {
    let mut site = Site::new();
    site.cage("front", &["billing"], "");
    site.install("billing", &module_so("billing", &[]));
    let _cage = site.start("front");
    let charge = r#"{"customer":"ann","cents":500}"#;

    let run = site.call("front", "billing.charge", charge);
    assert_eq!(
        run.code, 10,
        "the shipped build has the rounding bug: {run:?}"
    );

    site.install("billing", &module_so("billing", &["no-default"]));
    let fixed = eventually(Duration::from_secs(20), "the fixed build answers", || {
        let run = site.call("front", "billing.charge", charge);
        (run.code == 0).then_some(run)
    });
    assert!(fixed.stdout.contains("\"cents\": 500"), "{fixed:?}");
}

#[test]
fn a_module_missing_at_start_is_served_once_it_arrives() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    let _cage = site.start("front");

    let run = site.call("front", "echo.shout", r#""hi""#);
    assert_eq!(run.code, 13, "{run:?}");
    assert!(
        run.stderr.contains("module echo is not loaded") && run.stderr.contains("file not found"),
        "{}",
        run.stderr
    );

    site.install("echo", &module_so("echo", &[]));
    eventually(
        Duration::from_secs(20),
        "echo answers once dropped in",
        || (shout(&site) == r#""HI""#).then_some(()),
    );
}
