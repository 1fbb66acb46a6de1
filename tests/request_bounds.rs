//! Every request is bounded: waits cost no thread and are capped per connection and per cage,
//! a wait naming no chain is refused, a wait longer than `max_wait` is shortened, a closed
//! connection's waits end; large frames pipelined on one connection are read only as the
//! connection's memory budget allows. Under all of it the cage keeps answering, reloading
//! modules and stopping on SIGTERM.

mod support;
use cages::runtime::transport::client::{Client, ClientError};
use cages::runtime::transport::frame;
use cages::runtime::transport::protocol::{
    CallRequest, ChainRequest, Request, RequestFrame, Response, ResponseFrame,
};
use cages::sdk::ErrorKind;
use std::io::Write;
use std::time::Duration;
use support::{eventually, free_port, module_so, Site};

const FAST_RETRY: &str = "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n";

/// A site whose cage `front` serves echo with `extra` settings, and whose cage `depot` is
/// listed but never started: a queued chain with a step on depot stays running.
fn site_with(extra: &str) -> Site {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", FAST_RETRY);
    site.cage("front", &["echo"], extra)
        .cage("depot", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    site
}

/// Starts a chain on front that cannot finish (its step is for depot, which is down).
fn running_chain(site: &Site) -> String {
    let run = site.cage_cmd(&[
        "chain",
        "front",
        "depot:echo.echo",
        "{}",
        "--queue",
        "retry",
        "--async",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    run.stdout.trim().to_owned()
}

fn wait_on(ids: &[&str], timeout_ms: u64) -> Request {
    Request::Chain(ChainRequest::Wait {
        ids: ids.iter().map(|s| s.to_string()).collect(),
        any: false,
        timeout_ms,
    })
}

fn connect(site: &Site) -> Client {
    Client::connect("front", &site.route("front")).unwrap()
}

/// The error a wait was answered with.
fn wait_error(response: &Response) -> (ErrorKind, String) {
    match response {
        Response::Failed(f) => (f.error.kind, f.error.message.clone()),
        other => panic!("a wait answered {other:?}"),
    }
}

/// A line of `/proc/PID/status`, as a number (`Threads:`, `VmRSS:` in kB).
fn status_of(pid: u32, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

/// Sends every request of `bodies` on `client` at once and leaves them waiting: the cage
/// answers none of them within `patience`.
fn leave_waiting(client: &mut Client, bodies: Vec<Request>, patience: Duration) {
    match client.pipeline(bodies, patience) {
        Err(ClientError::Timeout { .. }) => {}
        other => panic!("these waits should still be waiting, got {other:?}"),
    }
}

#[test]
fn waits_cost_no_thread_and_leave_the_cage_serving_reloading_and_stopping() {
    let http = free_port();
    let site = site_with(&format!("http_listen = \"127.0.0.1:{http}\"\n"));
    let mut cage = site.start("front");
    let chain = running_chain(&site);
    let threads_before = status_of(cage.pid(), "Threads:");

    // 600 waits naming no chain, with the longest timeout a client can ask, on a few
    // connections: each is refused as bad arguments, none waits.
    let mut clients: Vec<Client> = (0..4).map(|_| connect(&site)).collect();
    for client in &mut clients {
        let answers = client
            .pipeline(
                (0..150).map(|_| wait_on(&[], u64::MAX)).collect(),
                Duration::from_secs(60),
            )
            .unwrap();
        assert_eq!(answers.len(), 150);
        for a in &answers {
            let (kind, message) = wait_error(a);
            assert_eq!(kind, ErrorKind::BadArguments, "{message}");
            assert!(message.contains("names no chain"), "{message}");
        }
    }
    // Real waits with the longest timeout: 16 per connection wait, the next is refused.
    for client in &mut clients {
        leave_waiting(
            client,
            (0..16).map(|_| wait_on(&[&chain], u64::MAX)).collect(),
            Duration::from_millis(500),
        );
        let refused = client
            .request(wait_on(&[&chain], u64::MAX), Duration::from_secs(30))
            .unwrap();
        let (kind, message) = wait_error(&refused);
        assert_eq!(kind, ErrorKind::Refused, "{message}");
        assert!(message.contains("max_waits_per_connection"), "{message}");
    }
    // 64 waits in progress hold no thread each (they used to hold one of the blocking pool).
    let threads_now = status_of(cage.pid(), "Threads:");
    assert!(
        threads_now < threads_before + 16,
        "64 waits should not take threads: {threads_before} before, {threads_now} now"
    );

    // While they wait: metrics, a listing, a sync call and module reloads all work.
    let metrics = ureq::get(&format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let listed = site.cage_cmd(&["chains", "front"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(listed.stdout.contains(&chain), "{listed:?}");
    let shout = site.call("front", "echo.shout", r#""hi""#);
    assert_eq!(shout.stdout.trim(), r#""HI""#, "{shout:?}");
    site.install_bytes("echo", &b"not a library\n".repeat(64));
    eventually(
        Duration::from_secs(60),
        "the bad module file is rejected",
        || {
            cage.log()
                .lines()
                .any(|l| l.contains("rejected") && l.contains("libecho.so"))
                .then_some(())
        },
    );
    site.install("echo", &module_so("echo", &["v2"]));
    eventually(Duration::from_secs(60), "the new build answers", || {
        (site.call("front", "echo.shout", r#""hi""#).stdout.trim() == r#""HI!""#).then_some(())
    });

    // SIGTERM stops the cage although its clients' waits are still open.
    let kill = std::process::Command::new("kill")
        .arg(cage.pid().to_string())
        .status()
        .unwrap();
    assert!(kill.success());
    eventually(Duration::from_secs(60), "the cage exits on SIGTERM", || {
        (!cage.alive()).then_some(())
    });
    assert!(cage.log().contains("stopped"), "{}", cage.log());
    drop(clients);
}

#[test]
fn closing_a_connection_ends_its_waits_and_frees_the_cages_share() {
    let site = site_with("max_waits = 8\n");
    let mut cage = site.start("front");
    let chain = running_chain(&site);

    let mut holder = connect(&site);
    leave_waiting(
        &mut holder,
        (0..8).map(|_| wait_on(&[&chain], u64::MAX)).collect(),
        Duration::from_millis(500),
    );
    let mut other = connect(&site);
    let refused = other
        .request(wait_on(&[&chain], 1), Duration::from_secs(30))
        .unwrap();
    let (kind, message) = wait_error(&refused);
    assert_eq!(kind, ErrorKind::Refused, "{message}");
    assert!(
        message.contains("cage front") && message.contains("(max_waits)"),
        "{message}"
    );

    // The holder goes away: its eight waits end, and the cage has room for another.
    drop(holder);
    eventually(
        Duration::from_secs(30),
        "a wait is taken once the holder's connection closed",
        || {
            let answer = other
                .request(wait_on(&[&chain], 1), Duration::from_secs(30))
                .unwrap();
            (wait_error(&answer).0 == ErrorKind::Timeout).then_some(())
        },
    );
    assert!(cage.alive());
}

#[test]
fn a_wait_longer_than_max_wait_is_shortened_and_says_so() {
    let site = site_with("max_wait = \"300ms\"\n");
    let _cage = site.start("front");
    let chain = running_chain(&site);
    let mut client = connect(&site);
    let answer = client
        .request(wait_on(&[&chain], u64::MAX), Duration::from_secs(60))
        .unwrap();
    let (kind, message) = wait_error(&answer);
    assert_eq!(kind, ErrorKind::Timeout, "{message}");
    assert!(
        message.contains("within 300ms") && message.contains("max_wait"),
        "{message}"
    );
    let too_many: Vec<&str> = std::iter::repeat_n(chain.as_str(), 17).collect();
    let answer = client
        .request(wait_on(&too_many, 1), Duration::from_secs(60))
        .unwrap();
    assert_eq!(wait_error(&answer).0, ErrorKind::BadArguments);
}

#[test]
fn pipelined_large_frames_are_read_only_as_the_memory_budget_allows() {
    const FRAMES: u8 = 60;
    // One executor thread, held by a sleeping call: every call read after it must wait for
    // the thread, holding its arguments, so reading more frames means holding more memory.
    let site = site_with("executor_threads = 1\n");
    let mut cage = site.start("front");
    let baseline_kb = status_of(cage.pid(), "VmRSS:");

    let call = |args: Vec<u8>| {
        frame::encode(&RequestFrame {
            id: 0,
            body: Request::Call(CallRequest {
                call_id: String::new(),
                module: "echo".into(),
                method: "sleep".into(),
                args,
                timeout_ms: 600_000,
            }),
        })
        .unwrap()
    };
    let sleeper = call(br#"{"ms": 8000}"#.to_vec());
    // Almost 16 MiB (the default max_frame_bytes) of arguments that are not JSON: once it
    // has a thread, the call fails at once. Encoded once; each copy gets its own request id
    // (a one-byte varint right after the length prefix).
    let mut big = call(vec![b'x'; 16 * 1024 * 1024 - 4096]);
    let stream = support::raw_connection(site.addr("front"));
    let mut writing = stream.try_clone().unwrap();
    let mut reading = stream;
    reading
        .set_read_timeout(Some(Duration::from_secs(300)))
        .unwrap();
    let writer = std::thread::spawn(move || {
        writing.write_all(&sleeper).unwrap();
        for id in 1..FRAMES {
            big[frame::HEADER_LEN] = id;
            writing.write_all(&big).unwrap();
        }
    });
    let reader = std::thread::spawn(move || {
        let (mut slept, mut refused) = (0, 0);
        for _ in 0..FRAMES {
            let body = frame::read_blocking(&mut reading, 1 << 20).unwrap();
            let response: ResponseFrame = frame::decode(&body).unwrap();
            match response.body {
                Response::Result(_) if response.id == 0 => slept += 1,
                Response::Failed(f) if f.error.kind == ErrorKind::BadArguments => refused += 1,
                other => panic!("call {} answered {other:?}", response.id),
            }
        }
        (slept, refused)
    });

    let (mut most_kb, mut pinged) = (0, false);
    while !reader.is_finished() {
        let now_kb = status_of(cage.pid(), "VmRSS:");
        most_kb = most_kb.max(now_kb);
        if !pinged && now_kb > baseline_kb + 48 * 1024 {
            // Frames are held: another connection is still served.
            let info = connect(&site).ping(Duration::from_secs(30)).unwrap();
            assert_eq!(info.pid, cage.pid());
            pinged = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    assert_eq!(
        reader.join().unwrap(),
        (1, u32::from(FRAMES) - 1),
        "every call is answered"
    );
    assert!(cage.alive());
    let shout = site.call("front", "echo.shout", r#""hi""#);
    assert_eq!(shout.stdout.trim(), r#""HI""#, "{shout:?}");
    // Unbounded, the cage read frames as fast as they came while the sleeper held the thread
    // (up to a GB); with the default 64 MiB per connection only four are held at a time.
    let grown_mb = most_kb.saturating_sub(baseline_kb) / 1024;
    assert!(
        grown_mb < 400,
        "the cage grew by {grown_mb} MB for one connection's frames (from {} MB)",
        baseline_kb / 1024
    );
}
