//! Sync calls through `cage call`: results, and every kind of failure with its own exit code.

mod support;
use support::{module_so, Site};

#[test]
fn a_call_reaches_the_module_and_returns_its_result() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _front = site.start("front");

    let run = site.call("front", "echo.shout", r#""hello""#);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(run.stdout.trim(), r#""HELLO""#);

    let run = site.call("front", "echo.echo", r#"{"n": 1}"#);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["echo"]["n"], 1);
    assert_eq!(v["cage"], "front");
    assert!(v["call_id"].as_str().unwrap().starts_with("cli-"), "{v}");
}

#[test]
fn failures_name_cage_module_method_and_call_with_distinct_exit_codes() {
    let mut site = Site::new();
    site.cage("front", &["echo", "billing"], "");
    site.install("echo", &module_so("echo", &[]));
    site.install("billing", &module_so("billing", &[]));
    let _front = site.start("front");

    let cases = [
        (
            "nope.x",
            "null",
            13,
            "unknown module: cage front serves no module \"nope\"",
        ),
        (
            "echo.nope",
            "null",
            12,
            "unknown method: module echo 1.0.0 has no method \"nope\"",
        ),
        (
            "echo.shout",
            "5",
            11,
            "bad arguments: echo.shout: invalid type: integer `5`",
        ),
        ("echo.shout", "{not json", 11, "are not JSON"),
        (
            "billing.charge",
            r#"{"customer":"ann","cents":500}"#,
            10,
            "module error: cannot round 500 cents",
        ),
        ("echo", "null", 11, "is not MODULE.METHOD"),
    ];
    for (target, args, code, text) in cases {
        let run = site.call("front", target, args);
        assert_eq!(run.code, code, "{target} {args}: {run:?}");
        assert!(run.stderr.contains(text), "{target} {args}: {}", run.stderr);
        if code != 11 || args == "5" {
            let (module, method) = target.split_once('.').unwrap();
            assert!(
                run.stderr
                    .contains(&format!("cage front {module}.{method} (call cli-")),
                "{}",
                run.stderr
            );
        }
    }

    let run = site.cage_cmd(&[
        "call",
        "front",
        "echo.sleep",
        r#"{"ms": 3000}"#,
        "--timeout",
        "300ms",
    ]);
    assert_eq!(run.code, 16, "{run:?}");
    assert!(
        run.stderr.contains("timeout: did not finish within 300ms"),
        "{}",
        run.stderr
    );

    let run = site.call("nobody", "echo.shout", r#""x""#);
    assert_eq!(run.code, 14, "{run:?}");
    assert!(
        run.stderr.contains("no cage named \"nobody\""),
        "{}",
        run.stderr
    );

    // A cage that is configured but not running.
    site.cage("down", &["echo"], "");
    let run = site.call("down", "echo.shout", r#""x""#);
    assert_eq!(run.code, 17, "{run:?}");
    assert!(
        run.stderr.contains("cage down echo.shout (call cli-")
            && run.stderr.contains("unreachable"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_slow_call_does_not_block_others() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "executor_threads = 2\n");
    site.install("echo", &module_so("echo", &[]));
    let _front = site.start("front");

    let slow = site.call_in_background("front", "echo.sleep", r#"{"ms": 4000}"#);
    std::thread::sleep(std::time::Duration::from_millis(300));
    // While the slow call occupies one executor thread, quick calls keep being answered.
    for _ in 0..5 {
        let run = site.call("front", "echo.shout", r#""quick""#);
        assert_eq!(run.stdout.trim(), r#""QUICK""#, "{run:?}");
    }
    assert!(
        !slow.is_finished(),
        "the quick calls should have finished while the slow one still ran"
    );
    assert_eq!(slow.join().unwrap().code, 0);
}

#[test]
fn a_module_calls_another_cage_through_the_host() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "")
        .cage("back", &["billing"], "");
    site.install("echo", &module_so("echo", &[]));
    site.install("billing", &module_so("billing", &[]));
    let _front = site.start("front");
    let _back = site.start("back");

    let run = site.call(
        "front",
        "echo.forward",
        r#"{"cage":"back","target":"billing.charge","args":{"customer":"bo","cents":250}}"#,
    );
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["cents"], 250);
    assert!(
        v["receipt"].as_str().unwrap().starts_with("R-front-"),
        "the child call id comes from the calling cage: {v}"
    );

    // The callee's failure reaches the caller with the callee's identity in it.
    let run = site.call(
        "front",
        "echo.forward",
        r#"{"cage":"back","target":"billing.charge","args":{"customer":"bo","cents":300}}"#,
    );
    assert_eq!(run.code, 10, "{run:?}");
    assert!(
        run.stderr.contains("cage back billing.charge (call front-"),
        "{}",
        run.stderr
    );
}
