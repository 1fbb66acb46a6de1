//! Flow control: a queue's rate limit holds the starts its module records to the rate plus the
//! burst, a held call says why in `cage pending`, and an edited limit applies from the next
//! start. The checks read the start times the module records, not the wall clock of the test.

mod support;
use cages::runtime::transport::client::Client;
use cages::runtime::transport::protocol::{EnqueueRequest, Request, Response};
use std::time::{Duration, Instant};
use support::{eventually, module_so, Site};

/// Cage `back` serving echo (`extra` added to its cage file), with `config` as the site's
/// execute-on file.
fn site_with(config: &str, extra: &str) -> (Site, support::RunningCage) {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", config);
    site.cage("back", &["echo"], extra);
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    (site, cage)
}

/// Enqueues `n` calls of `echo.stamp` on `queue` of `back`, tagged `0..n`, all due at once.
fn stamp_calls(site: &Site, queue: &str, out: &std::path::Path, n: usize) {
    let request = |i: usize| {
        Request::Enqueue(EnqueueRequest {
            target: "back".into(),
            module: "echo".into(),
            method: "stamp".into(),
            args: serde_json::to_vec(&serde_json::json!({ "file": out, "tag": i.to_string() }))
                .unwrap(),
            queue: queue.into(),
            priority: 0,
            key: None,
            delay_ms: 0,
            group: None,
        })
    };
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let answers = client
        .pipeline((0..n).map(request).collect(), Duration::from_secs(30))
        .unwrap();
    assert!(answers
        .iter()
        .all(|a| matches!(a, Response::Enqueued { .. })));
}

/// The (tag, start time in µs) lines the calls wrote, once there are `n`.
fn stamps(out: &std::path::Path, n: usize, within: Duration) -> Vec<(String, u64)> {
    let text = eventually(within, &format!("{n} calls started"), || {
        std::fs::read_to_string(out)
            .ok()
            .filter(|t| t.lines().count() >= n && t.ends_with('\n'))
    });
    text.lines()
        .map(|l| {
            let (tag, us) = l.split_once(' ').unwrap();
            (tag.to_owned(), us.parse().unwrap())
        })
        .collect()
}

/// The value of gauge `name` of `queue` on cage `back`'s `/metrics` at port `http`.
fn gauge(http: u16, name: &str, queue: &str) -> f64 {
    let metrics = ureq::get(&format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let line = format!("{name}{{cage=\"back\",queue=\"{queue}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()))
        .unwrap_or_else(|| panic!("no {name} of {queue} in\n{metrics}"))
        .parse()
        .unwrap()
}

/// The most starts in any one-second window of `times` (µs).
fn most_in_a_second(times: &[u64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t < sorted[i] + 1_000_000)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_rate_limit_holds_the_starts_to_the_rate_plus_the_burst_and_each_call_runs_once() {
    let http = support::free_port();
    let (site, _cage) = site_with(
        "[queues.paced]\nrate_limit = \"20/s\"\nburst = 1\n",
        &format!("http_listen = \"127.0.0.1:{http}\"\n"),
    );
    // A first call starts echo's worker process: the first calls to a module whose worker is
    // still starting reach it together, however far apart the cage released them.
    assert_eq!(site.call("back", "echo.version", "null").code, 0);
    let out = site.path().join("starts.txt");
    stamp_calls(&site, "paced", &out, 60);
    // While they drain (about three seconds), a due call that waits says why, and /metrics
    // counts the calls held.
    let listed = site.listing("pending", Some("back"));
    assert!(
        listed.iter().any(|c| c["waiting"]
            .as_str()
            .is_some_and(|w| w.starts_with("waiting: rate limit 20/s (next start in "))),
        "{listed:?}"
    );
    let held = gauge(http, "cage_calls_held_by_rate_limit", "paced");
    assert!(held >= 1.0, "{held} held");
    let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token")).unwrap();
    let page = ureq::get(&format!("http://127.0.0.1:{http}/ui/queue/back/paced"))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        page.contains("waiting: rate limit 20/s (next start in "),
        "the dashboard's queue page says why: {page}"
    );
    let started = stamps(&out, 60, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    let started_after = stamps(&out, 60, Duration::from_secs(1));
    assert_eq!(started_after.len(), 60, "no call ran twice");
    let mut tags: Vec<usize> = started.iter().map(|(t, _)| t.parse().unwrap()).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..60).collect::<Vec<_>>(), "each call ran once");
    let times: Vec<u64> = started.iter().map(|(_, t)| *t).collect();
    let most = most_in_a_second(&times);
    let mut sorted = times.clone();
    sorted.sort_unstable();
    let gaps: Vec<u64> = sorted.windows(2).map(|w| (w[1] - w[0]) / 1000).collect();
    assert!(
        most <= 21,
        "{most} starts in one second at 20/s, burst 1; gaps in ms: {gaps:?}"
    );
}

#[test]
fn a_limit_edited_while_calls_wait_applies_from_the_next_start() {
    let (site, _cage) = site_with("[queues.paced]\nrate_limit = \"4/s\"\n", "");
    let out = site.path().join("starts.txt");
    stamp_calls(&site, "paced", &out, 40);
    stamps(&out, 2, Duration::from_secs(30));
    site.write(
        "config/config_execute_on.toml",
        "[queues.paced]\nrate_limit = \"1/h\"\n",
    );
    // The cage has read the edit once a waiting call names the new limit.
    eventually(Duration::from_secs(30), "the edited limit in force", || {
        site.listing("pending", Some("back"))
            .iter()
            .any(|c| {
                c["waiting"]
                    .as_str()
                    .is_some_and(|w| w.starts_with("waiting: rate limit 1/h"))
            })
            .then_some(())
    });
    let seen = Instant::now();
    let at_edit = stamps(&out, 1, Duration::from_secs(1)).len();
    std::thread::sleep(Duration::from_secs(2));
    let later = stamps(&out, 1, Duration::from_secs(1));
    // At 4/s about eight more would have started; under 1/h at most the one already let
    // through as the edit landed.
    assert!(
        later.len() <= at_edit + 1,
        "{} started in the {:?} after the edit (had {at_edit})",
        later.len() - at_edit,
        seen.elapsed()
    );
    assert!(later.len() < 40);
    // Lifted again: every call still waiting runs, none lost.
    site.write(
        "config/config_execute_on.toml",
        "[queues.paced]\nrate_limit = \"1000/s\"\n",
    );
    let all = stamps(&out, 40, Duration::from_secs(60));
    assert_eq!(all.len(), 40);
}

/// Enqueues on `queue` of `back` one `echo.span` call of `ms` for each (tag, group), in order.
fn span_calls(site: &Site, queue: &str, out: &std::path::Path, ms: u64, calls: &[(String, &str)]) {
    let request = |(tag, group): &(String, &str)| {
        Request::Enqueue(EnqueueRequest {
            target: "back".into(),
            module: "echo".into(),
            method: "span".into(),
            args: serde_json::to_vec(&serde_json::json!({ "file": out, "tag": tag, "ms": ms }))
                .unwrap(),
            queue: queue.into(),
            priority: 0,
            key: None,
            delay_ms: 0,
            group: Some((*group).to_owned()),
        })
    };
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let answers = client
        .pipeline(calls.iter().map(request).collect(), Duration::from_secs(60))
        .unwrap();
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Response::Enqueued { .. })),
        "{answers:?}"
    );
}

/// The (tag, start µs, end µs) lines of the spans written, once there are `n`.
fn spans(out: &std::path::Path, n: usize, within: Duration) -> Vec<(String, u64, u64)> {
    let text = eventually(within, &format!("{n} spans written"), || {
        std::fs::read_to_string(out)
            .ok()
            .filter(|t| t.lines().count() >= n && t.ends_with('\n'))
    });
    text.lines()
        .map(|l| {
            let mut parts = l.split(' ');
            let tag = parts.next().unwrap().to_owned();
            let start = parts.next().unwrap().parse().unwrap();
            let end = parts.next().unwrap().parse().unwrap();
            (tag, start, end)
        })
        .collect()
}

/// The most of `spans` running at one instant.
fn most_at_once(spans: &[(u64, u64)]) -> usize {
    spans
        .iter()
        .map(|(start, _)| {
            spans
                .iter()
                .filter(|(s, e)| s <= start && start < e)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[test]
fn a_group_runs_one_call_at_a_time_while_other_groups_run_beside_it() {
    let http = support::free_port();
    let (site, _cage) = site_with(
        "[queues.tenants]\nconcurrency = 8\ngroup_concurrency = 1\n",
        &format!("http_listen = \"127.0.0.1:{http}\"\n"),
    );
    assert_eq!(site.call("back", "echo.version", "null").code, 0);
    let out = site.path().join("spans.txt");
    let groups = ["customer-1", "customer-2", "customer-3", "customer-4"];
    let calls: Vec<(String, &str)> = (0..24)
        .map(|i| (format!("{}/{i}", groups[i % 4]), groups[i % 4]))
        .collect();
    span_calls(&site, "tenants", &out, 150, &calls);
    // While they run, a due call of a busy group says why, and /metrics counts them.
    eventually(
        Duration::from_secs(30),
        "a call waiting for its group",
        || {
            site.listing("pending", Some("back")).iter().find_map(|c| {
                let waiting = c["waiting"].as_str()?;
                let group = c["record"]["call"]["group"].as_str()?;
                (waiting == format!("waiting: group {group} has 1 of 1 running")).then_some(())
            })
        },
    );
    let held = gauge(http, "cage_calls_held_by_group", "tenants");
    assert!(held >= 1.0, "{held} held by their group");

    let ran = spans(&out, 24, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        spans(&out, 24, Duration::from_secs(1)).len(),
        24,
        "none ran twice"
    );
    let mut tags: Vec<&str> = ran.iter().map(|(t, _, _)| t.as_str()).collect();
    tags.sort_unstable();
    tags.dedup();
    assert_eq!(tags.len(), 24, "each call ran once");
    for group in groups {
        let of_group: Vec<(u64, u64)> = ran
            .iter()
            .filter(|(t, _, _)| t.starts_with(&format!("{group}/")))
            .map(|(_, s, e)| (*s, *e))
            .collect();
        assert_eq!(of_group.len(), 6);
        assert_eq!(
            most_at_once(&of_group),
            1,
            "{group} ran two at once: {of_group:?}"
        );
    }
    let all: Vec<(u64, u64)> = ran.iter().map(|(_, s, e)| (*s, *e)).collect();
    assert!(
        most_at_once(&all) >= 2,
        "groups did not run beside each other: {all:?}"
    );
}

#[test]
fn a_queue_in_turn_starts_a_small_group_before_a_large_backlog_queued_ahead_of_it() {
    let (site, _cage) = site_with(
        "[queues.fair]\nconcurrency = 1\nfairness = \"round_robin\"\n",
        "",
    );
    assert_eq!(site.call("back", "echo.version", "null").code, 0);
    let out = site.path().join("spans.txt");
    let a: Vec<(String, &str)> = (0..1000).map(|i| (format!("A/{i}"), "A")).collect();
    span_calls(&site, "fair", &out, 10, &a);
    let b: Vec<(String, &str)> = (0..10).map(|i| (format!("B/{i}"), "B")).collect();
    span_calls(&site, "fair", &out, 10, &b);
    // In the order they started: every B before the 100th A.
    let ran = eventually(Duration::from_secs(60), "B's ten calls", || {
        let ran = spans(&out, 1, Duration::from_secs(10));
        (ran.iter().filter(|(t, _, _)| t.starts_with("B/")).count() == 10).then_some(ran)
    });
    let mut by_start: Vec<&(String, u64, u64)> = ran.iter().collect();
    by_start.sort_by_key(|(_, start, _)| *start);
    let last_b = by_start
        .iter()
        .rposition(|(tag, _, _)| tag.starts_with("B/"))
        .unwrap();
    let a_before_last_b = by_start[..last_b]
        .iter()
        .filter(|(tag, _, _)| tag.starts_with("A/"))
        .count();
    assert!(
        a_before_last_b < 100,
        "{a_before_last_b} of A's calls started before B's last"
    );
}

#[test]
fn a_group_travels_with_its_call_to_the_cage_that_runs_it() {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.tenants]\nconcurrency = 4\ngroup_concurrency = 1\n",
    );
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let (_front, _back) = (site.start("front"), site.start("back"));
    assert_eq!(site.call("back", "echo.version", "null").code, 0);
    let out = site.path().join("spans.txt");
    // Queued on front, delivered to back: back runs customer-7's calls one at a time.
    for i in 0..6 {
        let group = if i < 4 { "customer-7" } else { "customer-8" };
        let args = serde_json::json!({ "file": out, "tag": format!("{group}/{i}"), "ms": 300 });
        site.enqueue(
            "back",
            "echo.span",
            &args.to_string(),
            &["--queue", "tenants", "--group", group, "--from", "front"],
        );
    }
    eventually(
        Duration::from_secs(30),
        "back holding customer-7's calls",
        || {
            site.listing("pending", Some("back")).iter().find_map(|c| {
                (c["record"]["call"]["group"] == "customer-7"
                    && c["waiting"] == "waiting: group customer-7 has 1 of 1 running")
                    .then_some(())
            })
        },
    );
    let ran = spans(&out, 6, Duration::from_secs(60));
    let of_7: Vec<(u64, u64)> = ran
        .iter()
        .filter(|(t, _, _)| t.starts_with("customer-7/"))
        .map(|(_, s, e)| (*s, *e))
        .collect();
    assert_eq!(of_7.len(), 4);
    assert_eq!(
        most_at_once(&of_7),
        1,
        "customer-7 ran two at once: {of_7:?}"
    );

    // A module queues in a group through the SDK (EnqueueOptions { group }): the call that
    // dies keeps its group in the dead letters.
    let queued = site.call(
        "back",
        "echo.queue_in",
        r#"{"cage": "back", "target": "echo.refuse", "args": "no", "queue": "tenants", "group": "sdk-group"}"#,
    );
    assert_eq!(queued.code, 0, "{queued:?}");
    let id: String = serde_json::from_str(&queued.stdout).unwrap();
    eventually(Duration::from_secs(30), "the refused call dead", || {
        site.listing("dead", Some("back")).iter().find_map(|c| {
            (c["record"]["call"]["id"] == id.as_str()).then(|| {
                assert_eq!(c["record"]["call"]["group"], "sdk-group", "{c}");
            })
        })
    });

    // A group that is no group name is refused before anything is queued.
    let refused = site.cage_cmd(&[
        "enqueue",
        "back",
        "echo.echo",
        "null",
        "--group",
        "two words",
    ]);
    assert_eq!(refused.code, 11, "bad arguments: {refused:?}");
    assert!(
        refused
            .stderr
            .contains("\"two words\" is not a group name: it holds white space ' '"),
        "{refused:?}"
    );
}
