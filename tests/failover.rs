//! Two instances of one cage (`cage run back --listen … --data-dir …`), both listed under
//! `[cages.back]`: sync calls, from the command line and from a module on another cage, go on
//! being answered when one instance is killed, and queued calls go to the one still up.

mod support;
use support::{free_port, log_mentioning, module_so, Site};

#[test]
fn sync_and_queued_calls_go_to_the_instance_still_up() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "")
        .cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let first = site.addr("back");
    let second = free_port();
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.back]\naddresses = [\"{first}\", \"127.0.0.1:{second}\"]\nconnect_timeout = \"500ms\"\n\n\
             [queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n"
        ),
    );
    let _front = site.start("front");
    let mut one = site.start("back");
    let two = site.start_instance("back", second);

    let shout = |site: &Site| site.call("back", "echo.shout", r#""hi""#);
    let forwarded = |site: &Site| {
        site.call(
            "front",
            "echo.forward",
            r#"{"cage": "back", "target": "echo.shout", "args": "via front"}"#,
        )
    };
    for _ in 0..3 {
        let run = shout(&site);
        assert_eq!((run.code, run.stdout.trim()), (0, r#""HI""#), "{run:?}");
        let run = forwarded(&site);
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, r#""VIA FRONT""#),
            "{run:?}"
        );
    }

    // The first listed instance dies; front still holds pooled connections to it.
    one.kill9();
    for i in 0..10 {
        let run = shout(&site);
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, r#""HI""#),
            "call {i} after the kill: {run:?}"
        );
        let run = forwarded(&site);
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, r#""VIA FRONT""#),
            "forwarded call {i} after the kill: {run:?}"
        );
    }

    // A queued call is accepted by the instance still up, which runs it.
    let id = site.queued_append_runs("back", "front");
    assert!(
        log_mentioning(&two, &id).contains(&id),
        "the second instance ran it"
    );
    assert!(!two.log().contains("panicked"));
}
