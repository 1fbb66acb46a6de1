//! Three cages on three loopback addresses, all speaking mutual TLS against one cluster CA,
//! call each other by sync RPC and by queued calls; the third runs in another site (as on
//! another host) and is found only by discovery. A client without a certificate, one
//! whose certificate comes from another CA, and a cage certified by another CA are refused,
//! and the refusal is logged with the peer's address.

mod support;
use cages::runtime::transport::frame;
use cages::runtime::transport::protocol::{CallRequest, Request, RequestFrame};
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use support::{eventually, module_so, Site};

const CAGES: [(&str, &str); 3] = [("a", "127.0.0.1"), ("b", "127.0.0.2"), ("c", "127.0.0.3")];

/// One site with cage `a` serving mutual TLS.
fn tls_site() -> Site {
    let mut site = Site::new();
    site.keys_init();
    site.tls_cage("a", "127.0.0.1", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    site.write(
        "config/config_execute_on.toml",
        "[tls]\nenabled = true\n\n[queues.retry]\nfirst_retry = \"200ms\"\nmax_delay = \"1s\"\ngive_up_after = \"10m\"\n",
    );
    site
}

/// Copies the files a host running cage `name` needs from the site holding the CA: the CA's
/// certificate and the cage's key pair (and the CLI's, for the operator there).
fn copy_keys(from: &Site, to: &Site, name: &str) {
    let (src, dst) = (
        from.path().join("config/keys"),
        to.path().join("config/keys"),
    );
    std::fs::create_dir_all(&dst).unwrap();
    for file in [
        "ca.crt".to_owned(),
        format!("{name}.crt"),
        format!("{name}.key"),
        "cli.crt".to_owned(),
        "cli.key".to_owned(),
    ] {
        std::fs::copy(src.join(&file), dst.join(&file)).unwrap();
    }
}

#[test]
fn three_cages_call_each_other_over_mutual_tls_one_found_by_discovery() {
    // Host 1 (site A) runs `a` and `b` and holds the CA; host 2 (site C) runs `c` on
    // 127.0.0.3. Neither site lists the other's cages: they find each other by discovery.
    let settings = format!(
        "[tls]\nenabled = true\n\n{}",
        support::discovery_settings("multicast")
    );
    let echo = module_so("echo", &[]);
    let mut site_a = Site::new();
    site_a.keys_init();
    site_a.tls_cage("a", "127.0.0.1", &["echo"], "");
    site_a.tls_cage("b", "127.0.0.2", &["echo"], "");
    site_a.install("echo", &echo);
    site_a.write("config/config_execute_on.toml", &settings);
    let mut site_c = Site::new();
    let issued = site_a.cage_cmd(&["keys", "issue", "c"]);
    assert_eq!(issued.code, 0, "{issued:?}");
    copy_keys(&site_a, &site_c, "c");
    site_c.cage_at(
        "c",
        std::net::SocketAddr::new([127, 0, 0, 3].into(), support::free_port()),
        &["echo"],
        "tls = true\n",
    );
    site_c.mark_tls("c");
    site_c.install("echo", &echo);
    site_c.write("config/config_execute_on.toml", &settings);

    let running = [site_a.start("a"), site_a.start("b"), site_c.start("c")];
    for cage in &running {
        assert!(cage.log().contains("(mutual TLS)"), "{}", cage.log());
    }
    assert!(!site_a.path().join("cages/c.toml").exists());
    let site_of = |cage: &str| if cage == "c" { &site_c } else { &site_a };

    // The CLI speaks TLS as `cli`, to a listed cage and to a discovered one.
    for cage in CAGES.map(|(name, _)| name) {
        let run = site_a.call(cage, "echo.shout", r#""over tls""#);
        assert_eq!(
            (run.code, run.stdout.trim()),
            (0, r#""OVER TLS""#),
            "{cage}: {run:?}"
        );
    }

    let effects = site_a.path().join("effects.txt");
    for (from, _) in CAGES {
        let site = site_of(from);
        for (to, _) in CAGES.iter().filter(|(to, _)| *to != from) {
            // Sync, module to cage, through the calling cage's connection pool.
            let args =
                format!(r#"{{"cage": "{to}", "target": "echo.shout", "args": "{from} to {to}"}}"#);
            let run = site.call(from, "echo.forward", &args);
            assert_eq!(
                (run.code, run.stdout.trim().to_owned()),
                (
                    0,
                    format!("\"{} TO {}\"", from.to_uppercase(), to.to_uppercase())
                ),
                "{from} -> {to}: {run:?}"
            );
            // Queued: held by `from`, delivered to `to` over TLS, run there.
            let append = format!(
                r#"{{"file": {:?}, "tag": "{from}-{to}"}}"#,
                effects.display().to_string()
            );
            site.enqueue(to, "echo.append", &append, &["--from", from]);
            // Queued by a module: `from` enqueues through its own (TLS) listener.
            let relay = format!(
                r#"{{"cage": "{to}", "target": "echo.append", "args": {{"file": {:?}, "tag": "relay-{from}-{to}"}}}}"#,
                effects.display().to_string()
            );
            let run = site.call(from, "echo.relay", &relay);
            assert_eq!(run.code, 0, "relay {from} -> {to}: {run:?}");
        }
    }
    let lines = eventually(Duration::from_secs(30), "every queued call ran", || {
        let text = std::fs::read_to_string(&effects).ok()?;
        (text.lines().count() >= 12).then_some(text)
    });
    for (from, _) in CAGES {
        for (to, _) in CAGES.iter().filter(|(to, _)| *to != from) {
            for tag in [format!(" {from}-{to}"), format!(" relay-{from}-{to}")] {
                let runs = lines.lines().filter(|l| l.ends_with(&tag)).count();
                assert_eq!(runs, 1, "{tag:?} ran once:\n{lines}");
            }
        }
    }
    assert_eq!(lines.lines().count(), 12, "{lines}");

    // `cage status` on host 1 shows the discovered cage, reached over TLS.
    let run = site_a.cage_cmd(&["status", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let c = status
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["cage"] == "c")
        .unwrap_or_else(|| panic!("c is listed: {status}"));
    assert_eq!(
        (&c["known"], &c["reachable"]),
        (&"discovered".into(), &true.into()),
        "{c}"
    );
    for cage in &running {
        assert!(
            !cage.log().contains("refusing connection"),
            "{}",
            cage.log()
        );
    }
}

#[test]
fn peers_without_a_certificate_from_the_cluster_ca_are_refused() {
    let site = tls_site();
    let a = site.start("a");
    let effects = site.path().join("effects.txt");

    // A TLS client that trusts the cluster CA but shows no certificate of its own: the
    // handshake fails on the cage's side, and the request it sends is never read.
    let roots = {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let ca = site.path().join("config/keys/ca.crt");
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = std::net::TcpStream::connect(site.addr("a")).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let local = tcp.local_addr().unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), "a".try_into().unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = RequestFrame {
        id: 1,
        body: Request::Call(CallRequest {
            call_id: "no-cert".to_owned(),
            module: "echo".to_owned(),
            method: "append".to_owned(),
            args: format!(r#"{{"file": {:?}}}"#, effects.display().to_string()).into_bytes(),
            timeout_ms: 5000,
        }),
    };
    let sent = tls
        .write_all(&frame::encode(&request).unwrap())
        .and_then(|()| tls.flush());
    let mut answer = Vec::new();
    let read = sent.and_then(|()| tls.read_to_end(&mut answer));
    assert!(
        read.is_err() || answer.is_empty(),
        "a client without a certificate got an answer: {answer:?}"
    );
    eventually(Duration::from_secs(10), "the refusal is logged", || {
        let log = a.log();
        log.lines()
            .find(|l| l.contains("refusing connection") && l.contains(&local.to_string()))
            .map(str::to_owned)
    });
    assert!(!effects.exists(), "the refused request ran");

    // A plain TCP client: refused the same way.
    let run = {
        let plain = Site::new();
        plain.write(
            "cages/a.toml",
            &std::fs::read_to_string(site.path().join("cages/a.toml"))
                .unwrap()
                .replace("tls = true\n", ""),
        );
        plain.call("a", "echo.shout", r#""plain""#)
    };
    assert_ne!(run.code, 0, "{run:?}");
    assert!(run.stderr.contains("cage a"), "{run:?}");

    // A CLI whose key pair comes from another CA (it trusts ours, so the cage is the one who
    // refuses).
    let foreign = Site::new();
    foreign.keys_init();
    std::fs::copy(
        site.path().join("config/keys/ca.crt"),
        foreign.path().join("config/keys/ca.crt"),
    )
    .unwrap();
    for file in ["cages/a.toml", "config/config_execute_on.toml"] {
        std::fs::copy(site.path().join(file), foreign.path().join(file)).unwrap();
    }
    let run = foreign.call("a", "echo.shout", r#""foreign""#);
    assert_ne!(run.code, 0, "a foreign client was served: {run:?}");
    assert!(run.stderr.contains("cage a"), "{run:?}");
    eventually(
        Duration::from_secs(10),
        "the foreign certificate is refused",
        || {
            a.log()
                .lines()
                .find(|l| {
                    l.contains("refusing connection") && l.contains("invalid peer certificate")
                })
                .map(str::to_owned)
        },
    );

    // A cage certified by another CA: our side will not talk to it, sync or queued.
    let mut impostor_site = Site::new();
    impostor_site.keys_init();
    impostor_site.tls_cage("impostor", "127.0.0.3", &["echo"], "");
    impostor_site.install("echo", &module_so("echo", &[]));
    let _impostor = impostor_site.start("impostor");
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[tls]\nenabled = true\n\n[cages.impostor]\naddresses = [\"{}\"]\n\n[queues.retry]\nfirst_retry = \"200ms\"\nmax_delay = \"1s\"\ngive_up_after = \"10m\"\n",
            impostor_site.addr("impostor")
        ),
    );
    let run = site.call("impostor", "echo.shout", r#""hello?""#);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("impostor") && run.stderr.contains("invalid peer certificate"),
        "the error names the cage and the certificate problem: {run:?}"
    );
    // Once cage `a` has re-read the cluster map, it takes the call and cannot deliver it.
    let append = format!(r#"{{"file": {:?}}}"#, effects.display().to_string());
    let id = eventually(Duration::from_secs(10), "cage a knows the impostor", || {
        let run = site.cage_cmd(&["enqueue", "impostor", "echo.append", &append, "--from", "a"]);
        (run.code == 0).then(|| run.stdout.trim().to_owned())
    });
    let shown = eventually(Duration::from_secs(20), "the delivery failed", || {
        let pending = site.listing("pending", Some("a"));
        let held = pending.iter().find(|c| c.to_string().contains(&id))?;
        let error = held["record"]["attempts"].as_array()?.last()?["error"]
            .as_str()?
            .to_owned();
        error.contains("invalid peer certificate").then_some(error)
    });
    assert!(shown.contains("impostor"), "{shown}");
    assert!(!effects.exists(), "a call reached the impostor");
}

#[test]
fn a_tls_cage_at_its_connection_limit_says_so() {
    let mut site = Site::new();
    site.keys_init();
    site.tls_cage("a", "127.0.0.1", &["echo"], "max_connections = 1\n");
    site.install("echo", &module_so("echo", &[]));
    site.write("config/config_execute_on.toml", "[tls]\nenabled = true\n");
    let a = site.start("a");
    let slow = site.call_in_background("a", "echo.sleep", r#"{"ms": 4000}"#);
    eventually(
        Duration::from_secs(10),
        "the slow call holds the one connection",
        || a.log().contains("sleeping 4000 ms").then_some(()),
    );
    let run = site.call("a", "echo.shout", r#""over""#);
    assert_eq!(run.code, 18, "refused, not internal: {run:?}");
    assert!(
        run.stderr.contains("cage a") && run.stderr.contains("connection limit reached"),
        "{run:?}"
    );
    assert_eq!(
        slow.join().unwrap().code,
        0,
        "the call under way is not disturbed"
    );
}
