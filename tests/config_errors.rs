//! A bad cage file or site config stops `cage run` with a non-zero exit naming file, line and
//! reason.

mod support;
use cages::runtime::transport::client::Client;
use cages::runtime::transport::protocol::QueueQuery;
use std::time::Duration;
use support::Site;

fn run_with_cage_file(body: &str) -> support::Run {
    let site = Site::new();
    site.write("cages/bad.toml", body);
    site.cage_cmd(&["run", "bad"])
}

#[test]
fn bad_cage_files_name_file_line_and_reason() {
    let cases = [
        (
            "listen = \"127.0.0.1:7999\"\nexecutor_threads = \"lots\"\n",
            "bad.toml:2:20: invalid type: string \"lots\", expected usize",
        ),
        (
            "listen = \"127.0.0.1:7999\"\nmodules = [\"echo\"\n",
            "bad.toml:3:1: invalid array; expected `]`",
        ),
        (
            "listen = \"127.0.0.1:7999\"\nmodule = [\"echo\"]\n",
            "bad.toml:2:1: unknown field `module`",
        ),
        (
            "listen = \"0.0.0.0:7999\"\n",
            "bad.toml:1:10: listen: 0.0.0.0:7999 is not a loopback address",
        ),
        (
            "listen = \"my-host\"\n",
            "bad.toml:1:10: listen: expected an address",
        ),
        (
            "listen = \"127.0.0.1:7999\"\ncall_timeout = \"forever\"\n",
            "bad.toml:2:16:",
        ),
        ("modules = [\"echo\"]\n", "missing field `listen`"),
    ];
    for (body, expected) in cases {
        let run = run_with_cage_file(body);
        assert_eq!(run.code, 3, "{body}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{body}\nexpected {expected:?} in: {}",
            run.stderr
        );
        assert!(run.stderr.contains("cages/bad.toml"), "{}", run.stderr);
    }
}

#[test]
fn bad_site_config_names_file_line_and_reason() {
    let mut site = Site::new();
    site.cage("front", &[], "");
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"1m\"\ngrowth = 0.2\n",
    );
    let run = site.cage_cmd(&["run", "front"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("config/config_execute_on.toml:3:10: queues.retry.growth: expected a factor from 1 to 100"), "{}", run.stderr);

    site.write(
        "config/config_execute_on.toml",
        "[cages.back]\naddresses = [\"127.0.0.1:1\"]\nconnect_timeout = \"2 parsecs\"\n",
    );
    let run = site.cage_cmd(&["run", "front"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("config/config_execute_on.toml:3:"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unknown_cage_is_named() {
    let site = Site::new();
    let run = site.cage_cmd(&["run", "ghost"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("no cage named \"ghost\"")
            && run.stderr.contains("cages/ghost.toml does not exist"),
        "{}",
        run.stderr
    );
}

#[test]
fn harmful_cage_file_values_stop_the_cage_at_their_place() {
    let cases = [
        (
            "executor_threads = 100000000",
            "bad.toml:2:20: executor_threads: 100000000 is out of range (allowed: 1 to 1024)",
        ),
        (
            "queue_cache_mb = 17592186044416",
            "bad.toml:2:18: queue_cache_mb: 17592186044416 is out of range (allowed: 1 to 65536)",
        ),
        (
            "idle_timeout = \"0s\"",
            "bad.toml:2:16: idle_timeout: 0s is out of range (allowed: 1s to 1day)",
        ),
        (
            "rescan_interval = \"0s\"",
            "bad.toml:2:19: rescan_interval: 0s is out of range (allowed: 100ms to 1h)",
        ),
        (
            "max_frame_bytes = 1",
            "bad.toml:2:19: max_frame_bytes: 1 is out of range (allowed: 4096 to 1073741824)",
        ),
        (
            "modules = [\"../evil\"]",
            "bad.toml:2:12: modules: \"../evil\" is not a module name: it holds a path separator '/'",
        ),
    ];
    for (line, expected) in cases {
        let body = format!("listen = \"127.0.0.1:7999\"\n{line}\n");
        let run = run_with_cage_file(&body);
        assert_eq!(run.code, 3, "{line}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{line}\nexpected {expected:?} in: {}",
            run.stderr
        );
    }
}

#[test]
fn harmful_queue_settings_stop_the_cage_and_cage_schedule_at_their_place() {
    let mut site = Site::new();
    site.cage("front", &[], "");
    let cases = [
        (
            "[queues.retry]\nfirst_retry = \"0s\"\n",
            "config/config_execute_on.toml:2:15: queues.retry.first_retry: 0s is out of range (allowed: 10ms to 1day)",
        ),
        (
            "[queues.retry]\ntime_limit = \"0s\"\n",
            "config/config_execute_on.toml:2:14: queues.retry.time_limit: 0s is out of range (allowed: 100ms to 1day)",
        ),
        // Every 100 ms to 500 ms for three days: hundreds of thousands of attempts.
        (
            "[queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\n",
            "config/config_execute_on.toml:1:1: queues.retry: this schedule makes more than 1000 attempts (the most a call makes)",
        ),
        (
            "[queues.api]\nrate_limit = \"fast\"\n",
            "config/config_execute_on.toml:2:14: queues.api.rate_limit: expected a rate such as \"50/s\", \"300/m\" or \"1000/h\"",
        ),
        (
            "[queues.api]\nrate_limit = \"0/s\"\n",
            "config/config_execute_on.toml:2:14: queues.api.rate_limit: expected a rate such as",
        ),
        (
            "[queues.api]\ngroup_concurrency = 0\n",
            "config/config_execute_on.toml:2:21: queues.api.group_concurrency: 0 is out of range (allowed: 1 to 10000)",
        ),
        (
            "[queues.api]\ngroup_rate_limit = \"fast\"\n",
            "config/config_execute_on.toml:2:20: queues.api.group_rate_limit: expected a rate such as",
        ),
        (
            "[queues.api]\nfairness = \"fair\"\n",
            "config/config_execute_on.toml:2:12: queues.api.fairness: expected \"fifo\" or \"round_robin\", found \"fair\"",
        ),
        (
            "[queues.\"../x\"]\nconcurrency = 2\n",
            "config/config_execute_on.toml:1:1: queues.../x: \"../x\" is not a queue name",
        ),
        (
            "[cages.back]\naddresses = [\"127.0.0.1:1\"]\nconnect_timeout = \"0s\"\n",
            "config/config_execute_on.toml:3:19: cages.back.connect_timeout: 0s is out of range (allowed: 10ms to 5m)",
        ),
    ];
    for (body, expected) in cases {
        site.write("config/config_execute_on.toml", body);
        for args in [&["run", "front"][..], &["schedule"]] {
            let run = site.cage_cmd(args);
            assert_eq!(run.code, 3, "{args:?} {body}: {run:?}");
            assert!(
                run.stderr.contains(expected),
                "{args:?} {body}\nexpected {expected:?} in: {}",
                run.stderr
            );
        }
    }
}

#[test]
fn a_running_cage_keeps_its_queue_settings_when_an_edit_is_out_of_range() {
    let mut site = Site::new();
    let hourly =
        "[queues.retry]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n";
    site.write("config/config_execute_on.toml", hourly);
    site.cage("back", &["billing"], "");
    site.install("billing", &support::module_so("billing", &[]));
    let cage = site.start("back");

    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"0s\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n",
    );
    support::eventually(Duration::from_secs(10), "the bad edit is logged", || {
        cage.log()
            .lines()
            .any(|l| {
                l.contains(
                    "config_execute_on.toml:2:15: queues.retry.first_retry: 0s is out of range",
                ) && l.contains("edit rejected, the settings in force stay")
            })
            .then_some(())
    });

    // A call failing now is retried by the hourly policy still in force, not at once. (The
    // CLI reads the same file and refuses it, so this client talks to the cage directly.)
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let mut request = support::echo_call(
        "back",
        "charge",
        serde_json::json!({"customer": "ann", "cents": 500}),
        None,
    );
    request.module = "billing".into();
    let (id, _) = client.enqueue(request, Duration::from_secs(10)).unwrap();
    let record = support::eventually(Duration::from_secs(10), "the first attempt failed", || {
        client
            .calls(QueueQuery::Show(id.clone()), Duration::from_secs(10))
            .ok()?
            .into_iter()
            .map(|v| v.record)
            .find(|r| r.attempts.len() == 1)
    });
    let started = record.attempts[0].started_ms;
    assert!(
        record.next_at_ms >= started + 3_500_000,
        "the next attempt is about an hour away: {record:?}"
    );
}
