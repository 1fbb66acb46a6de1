//! A key on every door: a cage's plain TCP port serves only a client that proves it holds the
//! site credential (`config/keys/site.secret`). A client without it, or with another site's,
//! is refused before any request is read, told why, and logged with its address; a site
//! without the file makes it on first use; sites whose cages call each other share it.

mod support;
use cages::runtime::transport::credential::{self, HandshakeError, SiteSecret, SITE_SECRET};
use cages::runtime::transport::frame;
use cages::runtime::transport::protocol::{Request, RequestFrame};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use support::{echo_call, eventually, module_so, Site};

fn echo_site() -> Site {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    site
}

/// What the peer sent until it closed.
fn everything_said(mut s: TcpStream) -> String {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_client_without_the_credential_is_refused_before_any_request_is_read() {
    let site = echo_site();
    let front = site.start("front");
    let effects = site.path().join("effects.txt");

    // A raw client that opens with an enqueue instead of answering the challenge.
    let mut raw = TcpStream::connect(site.addr("front")).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = raw.local_addr().unwrap();
    let enqueue = RequestFrame {
        id: 1,
        body: Request::Enqueue(echo_call(
            "front",
            "append",
            serde_json::json!({ "file": effects.display().to_string() }),
            None,
        )),
    };
    raw.write_all(&frame::encode(&enqueue).unwrap()).unwrap();
    let said = everything_said(raw);
    assert!(
        said.contains("no site credential") && said.contains(SITE_SECRET),
        "the client is told why: {said:?}"
    );
    eventually(Duration::from_secs(10), "the refusal is logged", || {
        front
            .log()
            .lines()
            .find(|l| {
                l.contains(&format!(
                    "refusing connection from {local}: no site credential"
                ))
            })
            .map(str::to_owned)
    });
    assert!(
        site.listing("pending", Some("front")).is_empty(),
        "the refused enqueue never became pending"
    );

    // One that answers the challenge with another site's secret is refused at once.
    let mut wrong = TcpStream::connect(site.addr("front")).unwrap();
    wrong
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let local = wrong.local_addr().unwrap();
    let other = SiteSecret::given("another-site-entirely-0123456789abcdef");
    match credential::prove(&mut wrong, &other) {
        Err(HandshakeError::Refused(why)) => {
            assert!(why.contains("wrong site credential"), "{why}")
        }
        other => panic!("a wrong secret was not refused: {other:?}"),
    }
    eventually(
        Duration::from_secs(10),
        "the wrong secret is logged",
        || {
            front
                .log()
                .lines()
                .find(|l| {
                    l.contains(&format!(
                        "refusing connection from {local}: wrong site credential"
                    ))
                })
                .map(str::to_owned)
        },
    );

    // The CLI of a copy of the site holding another secret: refused, exit code 18, named.
    let copy = Site::new();
    copy.write(
        "cages/front.toml",
        &std::fs::read_to_string(site.path().join("cages/front.toml")).unwrap(),
    );
    copy.write(
        &format!("config/keys/{SITE_SECRET}"),
        "another-site-entirely-0123456789abcdef",
    );
    let run = copy.cage_cmd(&[
        "enqueue",
        "front",
        "echo.append",
        &format!(r#"{{"file": {:?}}}"#, effects.display().to_string()),
    ]);
    assert_eq!(run.code, 18, "{run:?}");
    assert!(
        run.stderr.contains("cage front") && run.stderr.contains("wrong site credential"),
        "{run:?}"
    );
    let run = copy.cage_cmd(&["cancel", "--all", "--cage", "front"]);
    assert_ne!(run.code, 0, "{run:?}");

    // The cage stays up and serves holders of the credential; nothing refused ran.
    assert_eq!(site.listing("pending", Some("front")).len(), 0);
    assert!(!effects.exists(), "a refused request ran");
    let run = site.call("front", "echo.shout", r#""still here""#);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, r#""STILL HERE""#),
        "{run:?}"
    );
}

#[test]
fn a_site_without_the_credential_makes_it_on_first_use() {
    let site = echo_site();
    let path = site.path().join(format!("config/keys/{SITE_SECRET}"));
    std::fs::remove_file(&path).unwrap();
    let _front = site.start("front");
    let secret = std::fs::read_to_string(&path).unwrap();
    assert_eq!(secret.trim().len(), 64, "{secret:?}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // The CLI of the site reads the same file.
    let run = site.call("front", "echo.shout", r#""made""#);
    assert_eq!((run.code, run.stdout.trim()), (0, r#""MADE""#), "{run:?}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), secret, "kept");
}

#[test]
fn sites_whose_cages_call_each_other_share_the_credential() {
    let echo = module_so("echo", &[]);
    let mut site_b = Site::new();
    site_b.cage("b", &["echo"], "");
    site_b.install("echo", &echo);
    let b_secret = site_b.path().join(format!("config/keys/{SITE_SECRET}"));
    std::fs::write(&b_secret, "site-b-has-a-secret-of-its-own-0123456789").unwrap();
    let b = site_b.start("b");

    let mut site_a = Site::new();
    site_a.cage("a", &["echo"], "");
    site_a.install("echo", &echo);
    site_a.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.b]\naddresses = [\"{}\"]\n\n[queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n",
            site_b.addr("b")
        ),
    );
    let _a = site_a.start("a");
    let effects = site_a.path().join("effects.txt");
    let append = format!(r#"{{"file": {:?}}}"#, effects.display().to_string());
    let id = site_a.enqueue("b", "echo.append", &append, &["--from", "a"]);
    let error = eventually(Duration::from_secs(20), "the delivery is refused", || {
        let pending = site_a.listing("pending", Some("a"));
        let held = pending.iter().find(|c| c.to_string().contains(&id))?;
        let error = held["record"]["attempts"].as_array()?.last()?["error"]
            .as_str()?
            .to_owned();
        Some(error)
    });
    assert!(
        error.contains("cage b") && error.contains("wrong site credential"),
        "{error}"
    );
    assert!(b.log().contains("wrong site credential"), "{}", b.log());
    assert!(
        !effects.exists(),
        "the call reached b without the credential"
    );

    // Copy site A's file to site B (as the cluster CA is copied) and restart b: delivered.
    drop(b);
    std::fs::copy(
        site_a.path().join(format!("config/keys/{SITE_SECRET}")),
        &b_secret,
    )
    .unwrap();
    let _b = site_b.start("b");
    eventually(Duration::from_secs(20), "the queued call ran on b", || {
        std::fs::read_to_string(&effects)
            .ok()
            .filter(|t| t.contains(&id))
    });
}
