//! Errors say what happened: a connection the cage turns away or closes is reported with the
//! reason the cage gave (connection limit, frame too big) or, when it gave none, as closed by
//! that cage, with the exit code of its kind; a listing that could not read a cage says so
//! and exits non-zero; a listing of calls with huge arguments still lists them.

mod support;
use cages::runtime::transport::client::Client;
use cages::runtime::transport::credential::{self, SiteSecret};
use std::time::Duration;
use support::{echo_call, eventually, module_so, Site};

fn front(extra: &str) -> Site {
    let mut site = Site::new();
    site.cage("front", &["echo"], extra);
    site.install("echo", &module_so("echo", &[]));
    site
}

#[test]
fn a_cage_at_its_connection_limit_says_so() {
    let site = front("max_connections = 1\n");
    let cage = site.start("front");
    // The one connection allowed, held open (once the start-up check's has closed).
    let held = eventually(Duration::from_secs(10), "the one connection", || {
        let mut s = std::net::TcpStream::connect(site.addr("front")).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        let secret = SiteSecret::given(support::test_secret());
        credential::prove(&mut s, &secret).ok().map(|()| s)
    });
    let run = site.call("front", "echo.shout", r#""over""#);
    assert_eq!(run.code, 18, "refused, not internal: {run:?}");
    assert!(
        run.stderr.contains("cage front")
            && run.stderr.contains("connection limit reached")
            && run.stderr.contains("max_connections"),
        "{run:?}"
    );
    eventually(Duration::from_secs(10), "the refusal is logged", || {
        cage.log()
            .contains("connections already open (max_connections)")
            .then_some(())
    });
    drop(held);
    eventually(Duration::from_secs(10), "a call fits again", || {
        let run = site.call("front", "echo.shout", r#""again""#);
        (run.code == 0).then_some(())
    });
}

#[test]
fn a_request_over_the_frame_limit_is_told_so() {
    let site = front("max_frame_bytes = 4096\n");
    let mut cage = site.start("front");
    let big = format!("\"{}\"", "x".repeat(20_000));
    let run = site.call("front", "echo.shout", &big);
    assert_eq!(run.code, 18, "{run:?}");
    assert!(
        run.stderr.contains("cage front closed the connection")
            && run.stderr.contains("max_frame_bytes (4096 bytes)"),
        "{run:?}"
    );
    let run = site.cage_cmd(&["enqueue", "front", "echo.shout", &big]);
    assert_eq!(run.code, 18, "{run:?}");
    assert!(run.stderr.contains("max_frame_bytes"), "{run:?}");
    assert!(cage.alive());
    assert!(site.listing("pending", Some("front")).is_empty());
    let run = site.call("front", "echo.shout", r#""small""#);
    assert_eq!((run.code, run.stdout.trim()), (0, r#""SMALL""#), "{run:?}");
}

#[test]
fn a_cage_that_dies_mid_call_is_named_not_an_internal_error() {
    let site = front("");
    let mut cage = site.start("front");
    let slow = site.call_in_background("front", "echo.sleep", r#"{"ms": 20000}"#);
    eventually(Duration::from_secs(10), "the slow call is running", || {
        cage.log().contains("sleeping 20000 ms").then_some(())
    });
    cage.kill9();
    let run = slow.join().unwrap();
    assert_eq!(run.code, 17, "unreachable, not internal: {run:?}");
    assert!(
        run.stderr
            .contains("connection closed by cage front (see its log)"),
        "{run:?}"
    );
}

#[test]
fn listings_that_could_not_read_a_cage_say_so_and_fail() {
    let mut site = front("");
    site.cage("down", &["echo"], "");
    let _front = site.start("front");
    site.enqueue("front", "echo.shout", r#""held""#, &["--delay", "1h"]);
    // Cage `down` does not answer, and its queue cannot be opened in its place either: a
    // process holds it (as a cage that hangs would).
    let _held =
        cages::runtime::queue::QueueStore::open(&site.path().join("data/down/queue")).unwrap();

    let run = site.cage_cmd(&["pending"]);
    assert_eq!(run.code, 17, "{run:?}");
    assert!(
        run.stdout.contains("1 pending call(s)") && run.stdout.contains("could not read cage down"),
        "the rows read and the cage not read: {run:?}"
    );
    assert!(run.stderr.contains("listing is incomplete"), "{run:?}");

    let run = site.cage_cmd(&["pending", "--json"]);
    assert_eq!(run.code, 17, "{run:?}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(rows.len(), 1, "what was read is still printed: {run:?}");
    assert!(run.stderr.contains("cage down did not answer"), "{run:?}");

    for cmd in [
        &["dead"][..],
        &["dead", "--json"],
        &["jobs"],
        &["jobs", "--json"],
        &["chains"],
        &["chains", "--json"],
        &["pending", "down"],
        &["modules", "down"],
        &["status"],
        &["status", "--json"],
        &["cancel", "--all"],
        // Looking up one call: "not found" would be a guess while a cage is unread.
        &["show", "front-no-such-call"],
        &["cancel", "front-no-such-call"],
    ] {
        let run = site.cage_cmd(cmd);
        assert_eq!(run.code, 17, "{cmd:?}: {run:?}");
        assert!(
            run.stderr.contains("down"),
            "{cmd:?} names the cage: {run:?}"
        );
        assert!(
            !run.stdout.contains("no dead calls\n")
                && !run.stdout.contains("no jobs\n")
                && !run.stdout.contains("no running chains\n"),
            "{cmd:?} does not claim there is nothing: {run:?}"
        );
    }
}

#[test]
fn six_pending_calls_with_15_mib_arguments_are_listed() {
    let site = front("");
    let _front = site.start("front");
    let mut client = Client::connect("front", &site.route("front")).unwrap();
    let huge = "x".repeat(15 << 20);
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut request = echo_call("front", "shout", serde_json::json!(huge), None);
        request.delay_ms = 3_600_000;
        let (id, _) = client.enqueue(request, Duration::from_secs(60)).unwrap();
        ids.push(id);
    }
    drop(huge);

    let run = site.cage_cmd(&["pending", "front"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("6 pending call(s)"), "{run:?}");
    let rows = site.listing("pending", Some("front"));
    assert_eq!(rows.len(), 6);
    for row in &rows {
        let args: Vec<u8> = serde_json::from_value(row["record"]["call"]["args"].clone()).unwrap();
        let note: String = serde_json::from_slice(&args).unwrap();
        assert!(
            note.contains(&format!("{} bytes of arguments", (15 << 20) + 2))
                && note.contains("cage show"),
            "{note}"
        );
    }

    // An answer over this client's own limit is named as such, with how to get it anyway.
    let run = std::process::Command::new(support::cage_bin())
        .args(["pending", "front", "--site"])
        .arg(site.path())
        .env(cages::runtime::transport::client::MAX_RESPONSE_ENV, "500")
        .output()
        .unwrap();
    let run = support::Run::from(run);
    assert_eq!(run.code, 18, "{run:?}");
    assert!(
        run.stderr.contains("over this client's limit of 500 bytes")
            && run.stderr.contains("--limit")
            && run.stderr.contains("CAGE_MAX_RESPONSE_BYTES"),
        "{run:?}"
    );
}
