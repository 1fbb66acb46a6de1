//! The wire: malformed, oversized and truncated frames close that connection with a logged
//! reason and never disturb the cage; a stopping cage finishes the calls it has.

mod support;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{eventually, module_so, Site};

/// A connection to `cage` that has shown the site credential.
fn connect(site: &Site, cage: &str) -> TcpStream {
    support::raw_connection(site.addr(cage))
}

/// Reads until the peer closes; true if it closed (rather than the read timing out).
fn closed_by_peer(mut s: TcpStream) -> bool {
    match s.read_to_end(&mut Vec::new()) {
        Ok(_) => true,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn bad_frames_close_only_their_connection() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "max_frame_bytes = 4096\n");
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("front");

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversized",
            vec![0x7f, 0xff, 0xff, 0xff],
            "exceeds the limit of 4096 bytes",
        ),
        (
            "garbage body",
            [&[0u8, 0, 0, 5][..], &[0xff; 5]].concat(),
            "malformed frame",
        ),
        (
            "truncated",
            [&[0u8, 0, 0, 50][..], &[1; 10]].concat(),
            "connection closed mid-frame",
        ),
    ];
    for (what, bytes, reason) in cases {
        let mut s = connect(&site, "front");
        s.write_all(&bytes).unwrap();
        if what == "truncated" {
            s.shutdown(std::net::Shutdown::Write).unwrap();
        }
        assert!(
            closed_by_peer(s),
            "{what}: the cage should close the connection"
        );
        eventually(
            Duration::from_secs(10),
            &format!("{what} is logged"),
            || {
                cage.log()
                    .lines()
                    .any(|l| l.contains("closing connection") && l.contains(reason))
                    .then_some(())
            },
        );
    }
    assert!(cage.alive());
    assert_eq!(
        site.call("front", "echo.shout", r#""ok""#).stdout.trim(),
        r#""OK""#
    );
}

#[test]
fn a_stopping_cage_finishes_calls_under_way() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "shutdown_grace = \"20s\"\n");
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("front");

    let slow = site.call_in_background("front", "echo.sleep", r#"{"ms": 1500}"#);
    eventually(Duration::from_secs(10), "the slow call is running", || {
        cage.log().contains("sleeping 1500 ms").then_some(())
    });
    assert_eq!(cage.terminate(), Some(0));
    let out = slow.join().unwrap();
    assert_eq!(
        out.code, 0,
        "the call under way completes during shutdown: {out:?}"
    );
    let log = cage.log();
    assert!(
        log.contains("stopping: no new calls are taken") && log.contains("stopped"),
        "{log}"
    );
}
