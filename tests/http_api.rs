//! The HTTP API and the Python client: a script started by a module talks to another invocation
//! through `cage_connection`; requests without a valid token, with malformed JSON or with
//! oversized bodies get a 4xx and a clear message.

mod support;
use std::io::{Read, Write};
use std::time::Duration;
use support::{eventually, module_so, Site};

/// One HTTP/1.1 request over a fresh connection; returns (status, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

fn site(http_port: u16) -> Site {
    let mut site = Site::new();
    site.cage(
        "back",
        &["echo"],
        &format!(
            "http_listen = \"127.0.0.1:{http_port}\"\nhttp_max_body = 2048\nport_wait = \"1s\"\n"
        ),
    );
    site.install("echo", &module_so("echo", &[]));
    site
}

#[test]
fn a_python_script_started_by_a_module_talks_to_another_invocation() {
    let site = site(support::free_port());
    let _cage = site.start("back");
    let id_file = site.path().join("peer.id");
    let peer = site.call_in_background(
        "back",
        "echo.respond",
        &format!(
            r#"{{"file": {:?}, "port_in": "q-in", "port_out": "p-in"}}"#,
            id_file.display().to_string()
        ),
    );
    let peer_id = eventually(Duration::from_secs(10), "the peer's id", || {
        std::fs::read_to_string(&id_file)
            .ok()
            .filter(|s| !s.is_empty())
    });

    let script = site.path().join("talk.py");
    std::fs::write(
        &script,
        r#"import json, sys
import cage_connection as cc

peer = sys.argv[1]
cc.message_to_invocation_send(peer, "q-in", json.dumps({"from": cc.invocation_id(), "text": "hello from python"}))
print(cc.message_to_invocation_receive("p-in", timeout=20))
try:
    cc.message_to_invocation_receive("silent", timeout=0.2)
except cc.MessageReceiveTimeout as e:
    print("timeout:", e.reason)
try:
    cc.message_to_invocation_send("back/1", "x", "y")
except cc.MessageSendError as e:
    print("send error:", e.kind, e.reason)
print("call:", cc.call("back", "echo.shout", "py"))
print("enqueued:", cc.enqueue("back", "echo.version").startswith("back-"))
print("job:", cc.job_add("echo.version", every_secs=3600)["id"].startswith("job-"))
print("grouped:", cc.enqueue("back", "echo.version", queue="tenants", group="customer-42", delay=3600))
"#,
    )
    .unwrap();
    let run = site.call(
        "back",
        "echo.run_python",
        &format!(
            r#"{{"script": {:?}, "args": [{peer_id:?}]}}"#,
            script.display().to_string()
        ),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let out: String = serde_json::from_str(&run.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "echo: hello from python", "{out}");
    assert!(
        lines[1].starts_with("timeout: no message on port(s) silent of invocation back/"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("send error: unknown_invocation invocation back/1 is not running"),
        "{out}"
    );
    assert_eq!(lines[3], "call: PY");
    assert_eq!(lines[4], "enqueued: True");
    assert_eq!(lines[5], "job: True");
    // A group given by the Python client is the call's group.
    let grouped = lines[6].strip_prefix("grouped: ").unwrap();
    let listed = site.listing("pending", Some("back"));
    let call = listed
        .iter()
        .find(|c| c["record"]["call"]["id"] == grouped)
        .unwrap_or_else(|| panic!("{grouped} not pending: {listed:?}"));
    assert_eq!(call["record"]["call"]["group"], "customer-42");
    assert_eq!(call["record"]["call"]["queue"], "tenants");
    assert_eq!(peer.join().unwrap().code, 0);
}

#[test]
fn the_api_refuses_bad_tokens_malformed_json_and_oversized_bodies() {
    let port = support::free_port();
    let site = site(port);
    let _cage = site.start("back");
    let json = ("Content-Type", "application/json");
    let body = br#"{"target": "back/1", "port": "x", "message": "hi"}"#;

    let (status, text) = http(port, "POST", "/v1/messages/send", &[json], body);
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("missing token"), "{text}");
    let (status, text) = http(
        port,
        "POST",
        "/v1/messages/send",
        &[json, ("Authorization", "Bearer 0123456789abcdef")],
        body,
    );
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("token not valid"), "{text}");

    // With a real token (held by a script a module started), malformed and oversized bodies.
    let script = site.path().join("bad.py");
    std::fs::write(
        &script,
        r#"import os, urllib.request, urllib.error
def post(path, data):
    req = urllib.request.Request(os.environ["CAGE_API"] + path, data=data, method="POST")
    req.add_header("Authorization", "Bearer " + os.environ["CAGE_TOKEN"])
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
print(*post("/v1/messages/send", b"{not json"))
print(*post("/v1/messages/send", b'{"target": "back/1", "port": "x", "message": "' + b"x" * 5000 + b'"}'))
print(*post("/v1/nowhere", b"{}"))
"#,
    )
    .unwrap();
    let run = site.call(
        "back",
        "echo.run_python",
        &format!(r#"{{"script": {:?}}}"#, script.display().to_string()),
    );
    assert_eq!(run.code, 0, "{run:?}");
    let out: String = serde_json::from_str(&run.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("400 ") && lines[0].contains("malformed JSON body"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("413 ") && lines[1].contains("exceeds the limit of 2048 bytes"),
        "{out}"
    );
    assert!(lines[2].starts_with("404 "), "{out}");
}
