//! A module that panics returns `panic: …` to its caller; the cage goes on serving.

mod support;
use support::{module_so, Site};

#[test]
fn a_panicking_module_returns_panic_and_the_cage_goes_on() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "executor_threads = 2\n");
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("front");

    for i in 0..5 {
        let run = site.call("front", "echo.boom", &format!(r#""kaboom {i}""#));
        assert_eq!(run.code, 15, "{run:?}");
        assert!(
            run.stderr.contains("cage front echo.boom (call cli-"),
            "{}",
            run.stderr
        );
        assert!(
            run.stderr.contains(&format!("): panic: kaboom {i}")),
            "{}",
            run.stderr
        );
    }
    assert!(cage.alive());
    let run = site.call("front", "echo.shout", r#""still here""#);
    assert_eq!(run.stdout.trim(), r#""STILL HERE""#, "{run:?}");
    assert!(
        cage.log().contains("call failed: panic: kaboom 4"),
        "{}",
        cage.log()
    );
}

#[test]
fn a_module_that_panicked_is_still_unmapped_after_a_swap() {
    let mut site = Site::new();
    // Mapped in the cage itself: a module run in worker processes is never mapped there.
    site.cage("front", &["echo"], "isolation = \"in_process\"\n");
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("front");
    let before = cage.mapped_module_copies();
    assert_eq!(before.len(), 1, "{before:?}");

    let run = site.call("front", "echo.boom", r#""once""#);
    assert!(
        run.stderr
            .contains("panic: once (at modules/echo/src/lib.rs:"),
        "{}",
        run.stderr
    );

    site.install_atomic("echo", &module_so("echo", &["v2"]));
    let after = support::eventually(
        std::time::Duration::from_secs(20),
        "only the new copy stays mapped",
        || {
            let now = cage.mapped_module_copies();
            (now.len() == 1 && now != before).then_some(now)
        },
    );
    assert!(!after.contains(&before[0]), "{after:?}");
}
