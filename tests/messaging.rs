//! Messages between running invocations: a parent and two children (on two cages) talk through
//! ports; every failure has its own error.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

fn site() -> Site {
    let mut site = Site::new();
    site.cage(
        "front",
        &["echo"],
        "port_wait = \"400ms\"\nexecutor_threads = 8\n",
    );
    site.cage(
        "back",
        &["echo"],
        "port_wait = \"400ms\"\nexecutor_threads = 8\n",
    );
    site.install("echo", &module_so("echo", &[]));
    site
}

#[test]
fn a_parent_and_two_children_on_two_cages_exchange_messages() {
    let site = site();
    let _front = site.start("front");
    let _back = site.start("back");

    let run = site.cage_cmd(&[
        "call",
        "front",
        "echo.orchestrate",
        r#"{"cage_a": "front", "cage_b": "back"}"#,
        "--timeout",
        "60s",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let (a, b) = (v["a"].as_str().unwrap(), v["b"].as_str().unwrap());
    // a got b's pong, which quotes a's ping; b got a's ping.
    assert!(
        a.starts_with("pong from back/") && a.contains("to ping from front/"),
        "{v}"
    );
    assert!(b.starts_with("ping from front/"), "{v}");
}

#[test]
fn each_message_failure_has_its_own_error() {
    let site = site();
    let _front = site.start("front");
    let _back = site.start("back");
    let send = |target: &str, port: &str| {
        site.call(
            "front",
            "echo.send_to",
            &format!(r#"{{"target": "{target}", "port": "{port}", "message": "hi"}}"#),
        )
    };

    // The target runs but never opens the port: a timeout after port_wait.
    let file = site.path().join("idle.id");
    let idle = site.call_in_background(
        "back",
        "echo.idle",
        &format!(
            r#"{{"file": {:?}, "ms": 3000}}"#,
            file.display().to_string()
        ),
    );
    let idle_id = eventually(Duration::from_secs(10), "the idle invocation's id", || {
        std::fs::read_to_string(&file)
            .ok()
            .filter(|s| !s.is_empty())
    });
    let run = send(&idle_id, "never");
    assert_eq!(run.code, 16, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "no receiver on port \"never\" of invocation {idle_id} within 400ms"
        )),
        "{}",
        run.stderr
    );

    // The target has finished.
    let done: String =
        serde_json::from_str(&site.call("back", "echo.whoami", "null").stdout).unwrap();
    let run = send(&done, "any");
    assert_eq!(run.code, 21, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("invocation {done} has already finished")),
        "{}",
        run.stderr
    );

    // The target never existed (and one from before the cage started).
    let run = send("back/99999999999999999", "any");
    assert_eq!(run.code, 22, "{run:?}");
    assert!(run.stderr.contains("never existed"), "{}", run.stderr);
    let run = send("back/1", "any");
    assert_eq!(run.code, 22, "{run:?}");
    assert!(
        run.stderr.contains("unknown to this run of cage back"),
        "{}",
        run.stderr
    );

    // Nobody sends: the receiver times out with an error of its own.
    let run = site.call(
        "front",
        "echo.receive",
        r#"{"port": "quiet", "timeout_ms": 200}"#,
    );
    assert_eq!(run.code, 23, "{run:?}");
    assert!(
        run.stderr
            .contains("receive timeout: no message on port(s) quiet of invocation front/"),
        "{}",
        run.stderr
    );
    assert_eq!(idle.join().unwrap().code, 0);
}
