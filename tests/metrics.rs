//! `/metrics` in the Prometheus text format, counting exactly the calls made; the dashboard's
//! actions refused without the token or with a bad CSRF value; one log span per attempt.

mod support;

use std::collections::HashMap;
use std::time::Duration;
use support::{eventually, free_port, module_so, Site};

fn get(url: &str) -> (u16, String) {
    match ureq::get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Samples by (metric name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Samples of `text` as (name, labels) → value, parsed by a Prometheus text-format parser.
fn samples(text: &str) -> Samples {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
    scrape
        .samples
        .into_iter()
        .filter_map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => return None,
            };
            let mut labels: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            Some(((s.metric, labels), value))
        })
        .collect()
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    *samples
        .get(&(name.to_owned(), labels.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"))
}

/// A site with cage `front` serving echo, its HTTP API on a known port.
fn site_with_http_port() -> (Site, u16) {
    let mut site = Site::new();
    let http = free_port();
    site.cage(
        "front",
        &["echo"],
        &format!("http_listen = \"127.0.0.1:{http}\"\n"),
    );
    (site, http)
}

#[test]
fn metrics_count_the_calls_made_and_parse_as_prometheus_text() {
    let (site, http) = site_with_http_port();
    site.write(
        "config/config_execute_on.toml",
        "[queues.fast]\nfirst_retry = \"50ms\"\ngrowth = 1.0\nmax_delay = \"50ms\"\ngive_up_after = \"30s\"\n",
    );
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start_with("front", &[("RUST_LOG", "info")], &["--log-format", "json"]);

    for i in 0..5 {
        assert_eq!(site.call("front", "echo.echo", &i.to_string()).code, 0);
    }
    for _ in 0..2 {
        assert_ne!(site.call("front", "echo.boom", "\"on purpose\"").code, 0);
    }
    for i in 0..3 {
        site.enqueue("front", "echo.echo", &i.to_string(), &["--queue", "fast"]);
    }
    let refused = site.enqueue(
        "front",
        "echo.refuse",
        "\"not today\"",
        &["--queue", "fast"],
    );
    eventually(
        Duration::from_secs(20),
        "the refused call is a dead letter",
        || {
            site.listing("dead", Some("front"))
                .iter()
                .any(|c| c["record"]["call"]["id"] == refused)
                .then_some(())
        },
    );
    eventually(Duration::from_secs(20), "nothing pending", || {
        site.listing("pending", Some("front"))
            .is_empty()
            .then_some(())
    });

    let (status, text) = get(&format!("http://127.0.0.1:{http}/metrics"));
    assert_eq!(status, 200, "{text}");
    let s = samples(&text);
    let q = [("cage", "front"), ("queue", "fast")];
    assert_eq!(value(&s, "cage_calls_enqueued_total", &q), 4.0, "{text}");
    assert_eq!(value(&s, "cage_attempts_total", &q), 4.0);
    assert_eq!(value(&s, "cage_attempt_successes_total", &q), 3.0);
    assert_eq!(value(&s, "cage_attempt_failures_total", &q), 1.0);
    assert_eq!(value(&s, "cage_calls_dead_total", &q), 1.0);
    assert_eq!(value(&s, "cage_pending_calls", &q), 0.0);
    assert_eq!(value(&s, "cage_dead_calls", &q), 1.0);
    let echo = [("cage", "front"), ("module", "echo"), ("method", "echo")];
    assert_eq!(
        value(&s, "cage_method_calls_total", &echo),
        8.0,
        "5 sync + 3 queued"
    );
    assert_eq!(value(&s, "cage_method_errors_total", &echo), 0.0);
    let boom = [("cage", "front"), ("module", "echo"), ("method", "boom")];
    assert_eq!(value(&s, "cage_method_errors_total", &boom), 2.0);
    assert_eq!(
        value(
            &s,
            "cage_module_loads_total",
            &[("cage", "front"), ("module", "echo")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "cage_module_rejected_loads_total",
            &[("cage", "front"), ("module", "echo")]
        ),
        0.0
    );
    // The histogram: as many observations as runs, and its +Inf bucket holds them all.
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap();
    let histogram = scrape
        .samples
        .iter()
        .find(|x| {
            x.metric == "cage_attempt_duration_seconds" && x.labels.get("method") == Some("echo")
        })
        .expect("a duration histogram for echo.echo");
    match &histogram.value {
        prometheus_parse::Value::Histogram(buckets) => {
            let last = buckets.last().expect("buckets");
            assert!(
                last.less_than.is_infinite() && last.count == 8.0,
                "{buckets:?}"
            );
        }
        other => panic!("not a histogram: {other:?}"),
    }

    // A rejected module file is counted.
    site.install_bytes("echo", b"not an ELF file at all");
    eventually(
        Duration::from_secs(20),
        "the garbage file is counted as rejected",
        || {
            let s = samples(&get(&format!("http://127.0.0.1:{http}/metrics")).1);
            (value(
                &s,
                "cage_module_rejected_loads_total",
                &[("cage", "front"), ("module", "echo")],
            ) >= 1.0)
                .then_some(())
        },
    );

    // Logs: every line a JSON object; attempts carry their call id, cage, module, method and
    // attempt number in their span.
    let log = cage.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let attempt = lines
        .iter()
        .find(|l| {
            l["span"]["method"] == "refuse"
                && l["span"]["attempt"] == 1
                && l["span"]["cage"] == "front"
        })
        .unwrap_or_else(|| panic!("no log line in the span of the refused call's attempt:\n{log}"));
    assert_eq!(attempt["span"]["call_id"], refused.as_str());
    assert_eq!(attempt["span"]["module"], "echo");
    cage.terminate();
}

#[test]
fn dashboard_actions_need_the_token_and_the_csrf_value() {
    let (site, http) = site_with_http_port();
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("front");
    let id = site.enqueue("front", "echo.echo", "1", &["--delay", "1h"]);
    let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(site.path().join("config/keys/dashboard.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    let base = format!("http://127.0.0.1:{http}/ui");
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let post = |auth: Option<&str>, csrf: Option<&str>, origin: Option<&str>| -> (u16, String) {
        let mut req = agent.post(&format!("{base}/action"));
        if let Some(t) = auth {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        if let Some(o) = origin {
            req = req.set("Origin", o);
        }
        let mut form = vec![
            ("cage", "front"),
            ("id", id.as_str()),
            ("action", "cancel"),
            ("back", "/ui/"),
        ];
        if let Some(c) = csrf {
            form.push(("csrf", c));
        }
        match req.send_form(&form) {
            Ok(r) => (
                r.status(),
                r.header("location").unwrap_or_default().to_owned(),
            ),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
            Err(e) => panic!("POST: {e}"),
        }
    };
    // Pages need the token too.
    assert_eq!(get(&format!("{base}/")).0, 401);
    // The CSRF value is only in pages served to a holder of the token.
    let page = agent
        .get(&format!("{base}/dead"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .map(str::to_owned)
        .unwrap_or_default();
    let pending = agent
        .get(&format!("{base}/queue/front/retry"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(pending.contains(&id), "the queue page lists the call");
    let csrf = if csrf.is_empty() {
        pending
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap()
            .to_owned()
    } else {
        csrf
    };

    let (code, body) = post(None, Some(&csrf), None);
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = post(Some("a-wrong-token-of-some-length"), Some(&csrf), None);
    assert_eq!(code, 401, "wrong token: {body}");
    let (code, body) = post(Some(&token), None, None);
    assert_eq!(code, 403, "no CSRF value: {body}");
    let (code, body) = post(Some(&token), Some("0123abcd"), None);
    assert_eq!(code, 403, "bad CSRF value: {body}");
    let (code, body) = post(Some(&token), Some(&csrf), Some("http://evil.example"));
    assert_eq!(code, 403, "another origin: {body}");
    assert_eq!(
        site.listing("pending", Some("front")).len(),
        1,
        "nothing refused was done"
    );
    let (code, location) = post(
        Some(&token),
        Some(&csrf),
        Some(&format!("http://127.0.0.1:{http}")),
    );
    assert_eq!(code, 303, "{location}");
    assert!(location.starts_with("/ui/?notice=cancel"), "{location}");
    assert!(
        site.listing("pending", Some("front")).is_empty(),
        "the call was cancelled"
    );
}

#[test]
fn dashboard_beyond_loopback_needs_tls() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("front");
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");

    let refused = site.cage_cmd(&["dashboard", "--listen", &listen]);
    assert_eq!(refused.code, 3, "{refused:?}");
    assert!(refused.stderr.contains("--tls-cert"), "{}", refused.stderr);

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&key, "not a key").unwrap();
    std::fs::write(&cert, "not a cert").unwrap();
    let bad = site.cage_cmd(&[
        "dashboard",
        "--listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(bad.code, 3, "{bad:?}");
    assert!(
        bad.stderr.contains("cert.pem"),
        "the error names the file: {}",
        bad.stderr
    );

    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let mut served = std::process::Command::new(support::cage_bin())
        .args(["dashboard", "--listen", &listen, "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--site")
        .arg(site.path())
        .env("CAGE_DASHBOARD_TOKEN", "tls-test-token-0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(Duration::from_secs(20), "the dashboard listens", || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
    // A client that trusts the certificate gets the pages over HTTPS: without the token the
    // login page (401), with it the cages page.
    let script = r#"
import ssl, sys, urllib.request, urllib.error
ctx = ssl.create_default_context(cafile=sys.argv[1])
url = "https://localhost:%s/" % sys.argv[2]
try:
    urllib.request.urlopen(url, context=ctx)
    print("no-token 200")
except urllib.error.HTTPError as e:
    print("no-token", e.code)
req = urllib.request.Request(url, headers={"Authorization": "Bearer tls-test-token-0123456789"})
body = urllib.request.urlopen(req, context=ctx).read().decode()
print("token", "front" in body and "Cages" in body)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&cert)
        .arg(port.to_string())
        .output()
        .unwrap();
    let _ = served.kill();
    let _ = served.wait();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "no-token 401\ntoken True");
}
