//! Durable queued calls: retried on the configured schedule until a fixed module completes
//! them, delivered to a target that was down, expired to dead letters and steered by operators.

mod support;
use serde_json::Value;
use std::time::Duration;
use support::{eventually, module_so, Site};

const FAST_RETRY: &str = "[queues.retry]\nfirst_retry = \"300ms\"\ngrowth = 2.0\nmax_delay = \"2s\"\ngive_up_after = \"1m\"\njitter = 0.1\n";

fn attempts(record: &Value) -> Vec<Value> {
    record["record"]["attempts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn attempts_of(site: &Site, id: &str) -> Vec<Value> {
    site.show(id).first().map(attempts).unwrap_or_default()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap()
}

#[test]
fn a_failing_call_is_retried_on_schedule_and_the_fixed_module_completes_it() {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", FAST_RETRY);
    site.cage("back", &["billing"], "");
    site.install("billing", &module_so("billing", &[]));
    let cage = site.start("back");

    let id = site.enqueue(
        "back",
        "billing.charge",
        r#"{"customer":"ann","cents":500}"#,
        &[],
    );
    let tries = eventually(Duration::from_secs(30), "three failed attempts", || {
        let a = attempts_of(&site, &id);
        (a.len() >= 3).then_some(a)
    });
    for (i, a) in tries.iter().enumerate() {
        assert_eq!(u(&a["number"]), i as u64 + 1);
        assert_eq!(a["module_version"], "0.9.0");
        assert!(a["error"].as_str().unwrap().contains("rounding bug"), "{a}");
    }
    // Each retry waits the policy's delay (300 ms, then 600 ms) within ±10 % jitter after the
    // previous attempt ended; the upper side allows for a busy machine.
    for (k, delay) in [(1usize, 300u64), (2, 600)] {
        let prev_end = u(&tries[k - 1]["started_ms"]) + u(&tries[k - 1]["duration_us"]) / 1000;
        let gap = u(&tries[k]["started_ms"]) - prev_end;
        assert!(
            gap + 2 >= delay * 9 / 10,
            "attempt {} came {gap} ms after the previous one, policy says {delay} ms ±10%",
            k + 1
        );
        assert!(
            gap <= delay * 11 / 10 + 1000,
            "attempt {} came {gap} ms after the previous one, policy says {delay} ms ±10%",
            k + 1
        );
    }
    let pending = site.listing("pending", Some("back"));
    assert_eq!(pending.len(), 1);
    assert!(pending[0]["record"]["attempts"].as_array().unwrap().len() >= 3);

    site.install("billing", &module_so("billing", &["no-default"]));
    eventually(
        Duration::from_secs(30),
        "the fixed module completes the call",
        || {
            cage.log()
                .lines()
                .any(|l| l.contains(&id) && l.contains("done after"))
                .then_some(())
        },
    );
    assert!(
        site.show(&id).is_empty(),
        "a completed call leaves the queue"
    );
    assert!(site.listing("pending", Some("back")).is_empty());
}

#[test]
fn a_target_that_was_down_receives_every_call_once_back() {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", FAST_RETRY);
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let out = site.path().join("effects.txt");
    let _front = site.start("front");

    let args = format!(r#"{{"file": {:?}}}"#, out.display().to_string());
    let mut ids: Vec<String> = (0..20)
        .map(|_| site.enqueue("back", "echo.append", &args, &["--from", "front"]))
        .collect();
    // Two calls with one idempotency key: the source holds both (keys are the target's to
    // judge); offered together once back is up, the target runs the first it takes and answers
    // the other as its duplicate.
    let keyed: Vec<String> = (0..2)
        .map(|_| {
            site.enqueue(
                "back",
                "echo.append",
                &args,
                &["--from", "front", "--key", "order-7"],
            )
        })
        .collect();
    let held = eventually(
        Duration::from_secs(20),
        "the source holds every call and has tried them",
        || {
            let p = site.listing("pending", Some("front"));
            (p.len() == 22 && p.iter().all(|v| !attempts(v).is_empty())).then_some(p)
        },
    );
    assert!(held.iter().all(|v| v["record"]["stage"] == "Deliver"));
    assert!(
        held[0]["record"]["attempts"][0]["error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{}",
        held[0]
    );

    let _back = site.start("back");
    eventually(
        Duration::from_secs(30),
        "every call ran on the target",
        || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            (text.lines().count() >= 21 && text.ends_with('\n')).then_some(())
        },
    );
    // Both queues empty: nothing accepted is still to run, so the file holds every run.
    eventually(Duration::from_secs(10), "both queues are empty", || {
        (site.listing("pending", Some("front")).is_empty()
            && site.listing("pending", Some("back")).is_empty())
        .then_some(())
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let mut ran: Vec<&str> = text.lines().map(|l| l.split(' ').next().unwrap()).collect();
    ran.sort();
    let keyed_runs: Vec<&str> = ran
        .iter()
        .copied()
        .filter(|id| keyed.iter().any(|k| k == id))
        .collect();
    assert_eq!(keyed_runs.len(), 1, "one run for one key: {keyed_runs:?}");
    ids.push(keyed_runs[0].to_owned());
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(ran, expected, "each call ran exactly once");
}

#[test]
fn expiry_dead_letters_revive_retry_now_and_cancel() {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.0\nmax_delay = \"100ms\"\ngive_up_after = \"600ms\"\n\n\
         [queues.slow]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n",
    );
    site.cage("back", &["billing", "echo"], "");
    site.install("billing", &module_so("billing", &[]));
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    let charge = r#"{"customer":"ann","cents":500}"#;

    // Expiry: a call still failing after give_up_after moves to dead letters with the reason.
    let expiring = site.enqueue("back", "billing.charge", charge, &[]);
    let dead = eventually(Duration::from_secs(20), "the call is dead", || {
        site.listing("dead", Some("back"))
            .into_iter()
            .find(|v| v["record"]["call"]["id"] == expiring.as_str())
    });
    let reason = dead["record"]["dead_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("gave up after") && reason.contains("rounding bug"),
        "{reason}"
    );

    // A permanent rejection goes straight to dead letters.
    let refused = site.enqueue("back", "echo.refuse", r#""not for us""#, &[]);
    eventually(Duration::from_secs(10), "the refused call is dead", || {
        site.listing("dead", Some("back")).into_iter().find(|v| {
            v["record"]["call"]["id"] == refused.as_str()
                && v["record"]["dead_reason"] == "permanent rejection: not for us"
        })
    });

    // retry-now: a call whose next attempt is an hour away runs again at once.
    let slow = site.enqueue("back", "billing.charge", charge, &["--queue", "slow"]);
    eventually(
        Duration::from_secs(10),
        "first attempt of the slow call",
        || (attempts_of(&site, &slow).len() == 1).then_some(()),
    );
    assert_eq!(site.cage_cmd(&["retry-now", &slow]).code, 0);
    eventually(Duration::from_secs(10), "retry-now ran it again", || {
        (attempts_of(&site, &slow).len() == 2).then_some(())
    });

    // cancel removes it.
    assert_eq!(site.cage_cmd(&["cancel", &slow]).code, 0);
    assert!(site.show(&slow).is_empty());
    assert_eq!(
        site.cage_cmd(&["cancel", &slow]).code,
        4,
        "a second cancel finds nothing"
    );

    // revive: with the module fixed, the revived call completes.
    site.install("billing", &module_so("billing", &["no-default"]));
    eventually(
        Duration::from_secs(20),
        "the fixed billing is loaded",
        || (site.call("back", "billing.charge", charge).code == 0).then_some(()),
    );
    assert_eq!(site.cage_cmd(&["revive", &expiring]).code, 0);
    eventually(
        Duration::from_secs(20),
        "the revived call completes",
        || {
            cage.log()
                .lines()
                .any(|l| l.contains(&expiring) && l.contains("done after"))
                .then_some(())
        },
    );
    assert!(site
        .listing("dead", Some("back"))
        .iter()
        .all(|v| v["record"]["call"]["id"] != expiring.as_str()));
}

#[test]
fn editing_the_config_changes_the_delays_of_pending_calls() {
    let mut site = Site::new();
    let slow = "[queues.retry]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n";
    site.write("config/config_execute_on.toml", slow);
    site.cage("back", &["billing"], "");
    site.install("billing", &module_so("billing", &[]));
    let cage = site.start("back");

    let id = site.enqueue(
        "back",
        "billing.charge",
        r#"{"customer":"ann","cents":500}"#,
        &[],
    );
    eventually(Duration::from_secs(10), "the first attempt failed", || {
        (attempts_of(&site, &id).len() == 1).then_some(())
    });
    let next = u(&site.show(&id)[0]["record"]["next_at_ms"]);
    let first_end = u(&attempts_of(&site, &id)[0]["started_ms"]);
    assert!(
        next >= first_end + 3_500_000,
        "next attempt about an hour away"
    );

    // A broken edit is rejected with file and line, and the settings in force stay.
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"soon\"\n",
    );
    eventually(Duration::from_secs(10), "the bad edit is logged", || {
        cage.log()
            .lines()
            .any(|l| l.contains("config_execute_on.toml:2:") && l.contains("edit rejected"))
            .then_some(())
    });

    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"200ms\"\nmax_delay = \"200ms\"\ngive_up_after = \"2m\"\n",
    );
    eventually(
        Duration::from_secs(15),
        "the pending call follows the new delays",
        || (attempts_of(&site, &id).len() >= 3).then_some(()),
    );
}

#[test]
fn a_module_queues_a_call_through_its_context() {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", FAST_RETRY);
    site.cage("front", &["echo"], "")
        .cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _front = site.start("front");
    let _back = site.start("back");
    let out = site.path().join("relayed.txt");

    let args = format!(
        r#"{{"cage":"back","target":"echo.append","args":{{"file":{:?}}}}}"#,
        out.display().to_string()
    );
    let run = site.call("front", "echo.relay", &args);
    assert_eq!(run.code, 0, "{run:?}");
    let id: String = serde_json::from_str(&run.stdout).unwrap();
    assert!(id.starts_with("front-"), "{id}");
    let text = eventually(
        Duration::from_secs(20),
        "the relayed call ran on back",
        || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|t| t.ends_with('\n'))
        },
    );
    assert_eq!(text.trim(), format!("{id} 1"));
}

#[test]
fn keep_order_makes_a_call_wait_for_the_one_before_it() {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.ordered]\nfirst_retry = \"100ms\"\nmax_delay = \"100ms\"\ngive_up_after = \"1m\"\nkeep_order = true\n",
    );
    site.cage("back", &["billing", "echo"], "");
    site.install("billing", &module_so("billing", &[]));
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("back");
    let out = site.path().join("ordered.txt");

    let first = site.enqueue(
        "back",
        "billing.charge",
        r#"{"customer":"ann","cents":500}"#,
        &["--queue", "ordered"],
    );
    let args = format!(r#"{{"file": {:?}}}"#, out.display().to_string());
    let second = site.enqueue("back", "echo.append", &args, &["--queue", "ordered"]);
    eventually(
        Duration::from_secs(10),
        "the first call keeps failing",
        || (attempts_of(&site, &first).len() >= 3).then_some(()),
    );
    assert!(
        attempts_of(&site, &second).is_empty(),
        "the second call waits for the first"
    );
    assert!(!out.exists());

    // Once the first call is out of the way (here: cancelled), the second one runs.
    assert_eq!(site.cage_cmd(&["cancel", &first]).code, 0);
    let text = eventually(Duration::from_secs(10), "the second call ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    assert!(text.starts_with(&format!("{second} 1")), "{text}");
}

#[test]
fn an_idempotency_key_makes_a_second_enqueue_the_first_call() {
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("back");
    let out = site.path().join("once.txt");
    let args = format!(r#"{{"file": {:?}}}"#, out.display().to_string());

    let first = site.cage_cmd(&[
        "enqueue",
        "back",
        "echo.append",
        &args,
        "--key",
        "order-42",
        "--json",
    ]);
    let second = site.cage_cmd(&[
        "enqueue",
        "back",
        "echo.append",
        &args,
        "--key",
        "order-42",
        "--json",
    ]);
    let (a, b): (Value, Value) = (
        serde_json::from_str(&first.stdout).unwrap(),
        serde_json::from_str(&second.stdout).unwrap(),
    );
    assert_eq!(a["duplicate_of"], Value::Null);
    assert_eq!(b["duplicate_of"], a["id"]);
    std::thread::sleep(Duration::from_millis(500));
    let text = eventually(Duration::from_secs(10), "the call ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.ends_with('\n'))
    });
    assert_eq!(text.lines().count(), 1, "{text}");
}

/// Cage `back` serving echo, with queue `queue` of one slot; answers the site, the running
/// cage, and the file that `echo.append` calls made by [`append_args`] write to.
fn one_slot_site(queue: &str) -> (Site, support::RunningCage, std::path::PathBuf) {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        &format!("[queues.{queue}]\nconcurrency = 1\n"),
    );
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    let out = site.path().join("order.txt");
    (site, cage, out)
}

/// Arguments of an `echo.append` call that sleeps `sleep_ms`, then writes `tag` to `out`.
fn append_args(out: &std::path::Path, tag: &str, sleep_ms: u64) -> String {
    format!(
        r#"{{"file": {:?}, "tag": "{tag}", "sleep_ms": {sleep_ms}}}"#,
        out.display().to_string()
    )
}

#[test]
fn due_calls_of_higher_priority_run_first() {
    let (site, _cage, out) = one_slot_site("single");
    let args = |tag: &str, sleep_ms: u64| append_args(&out, tag, sleep_ms);

    // The first call holds the queue's only slot while the other two become due.
    site.enqueue(
        "back",
        "echo.append",
        &args("blocker", 800),
        &["--queue", "single"],
    );
    site.enqueue(
        "back",
        "echo.append",
        &args("low", 0),
        &["--queue", "single", "--priority", "-3"],
    );
    site.enqueue(
        "back",
        "echo.append",
        &args("high", 0),
        &["--queue", "single", "--priority", "7"],
    );
    let text = eventually(Duration::from_secs(20), "all three ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.lines().count() == 3 && t.ends_with('\n'))
    });
    let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(tags, vec!["blocker", "high", "low"]);
}

/// A queue at its concurrency with a backlog of due calls larger than one reading of the
/// schedule does not hold back a call of another queue that came due after them.
#[test]
fn a_full_queue_with_a_backlog_does_not_hold_back_another_queue() {
    use cages::runtime::transport::client::Client;
    use cages::runtime::transport::protocol::{EnqueueRequest, Request, Response};
    let (site, _cage, out) = one_slot_site("slow");
    let args = |tag: &str, sleep_ms: u64| append_args(&out, tag, sleep_ms);
    // The blocker holds the slow queue's only slot; 400 more of its calls come due behind it.
    site.enqueue(
        "back",
        "echo.append",
        &args("blocker", 4000),
        &["--queue", "slow"],
    );
    let backlog = |_| {
        Request::Enqueue(EnqueueRequest {
            target: "back".into(),
            module: "echo".into(),
            method: "version".into(),
            args: b"null".to_vec(),
            queue: "slow".into(),
            priority: 0,
            key: None,
            delay_ms: 0,
            group: None,
        })
    };
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let answers = client
        .pipeline((0..400).map(backlog).collect(), Duration::from_secs(30))
        .unwrap();
    assert!(answers
        .iter()
        .all(|a| matches!(a, Response::Enqueued { .. })));
    // A due call of the full queue says why it waits.
    let listed = site.listing("pending", Some("back"));
    assert!(
        listed
            .iter()
            .any(|c| c["waiting"].as_str() == Some("waiting: queue slow has 1 of 1 running")),
        "{listed:?}"
    );
    site.enqueue(
        "back",
        "echo.append",
        &args("other", 0),
        &["--queue", "other"],
    );
    let text = eventually(Duration::from_secs(30), "both ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.lines().count() == 2 && t.ends_with('\n'))
    });
    let tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
    assert_eq!(tags, vec!["other", "blocker"], "{text}");
}

#[test]
fn pipelined_enqueues_are_each_answered_and_stored() {
    use cages::runtime::transport::client::Client;
    use cages::runtime::transport::protocol::{EnqueueRequest, Request, Response};
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("back");
    let request = |i: usize| {
        Request::Enqueue(EnqueueRequest {
            target: "back".into(),
            module: "echo".into(),
            method: "echo".into(),
            args: i.to_string().into_bytes(),
            queue: "retry".into(),
            priority: 0,
            key: Some(format!("k{}", i % 40)),
            delay_ms: 3_600_000,
            group: None,
        })
    };
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    // 50 requests sent before any answer is read; keys repeat from the 41st on, so the last
    // ten answers name the call they duplicate, in request order.
    let answers = client
        .pipeline((0..50).map(request).collect(), Duration::from_secs(30))
        .unwrap();
    assert_eq!(answers.len(), 50);
    let ids: Vec<(String, Option<String>)> = answers
        .into_iter()
        .map(|a| match a {
            Response::Enqueued { id, duplicate_of } => (id, duplicate_of),
            other => panic!("not an enqueue receipt: {other:?}"),
        })
        .collect();
    for i in 40..50 {
        assert_eq!(
            ids[i].1.as_deref(),
            Some(ids[i - 40].0.as_str()),
            "answer {i}"
        );
    }
    assert!(ids[..40].iter().all(|(_, dup)| dup.is_none()));
    assert_eq!(site.listing("pending", Some("back")).len(), 40);
}

#[test]
fn calls_too_large_to_offer_together_are_offered_one_by_one() {
    let mut site = Site::new();
    // Retries wait for `retry-now` below, so every call is due at once (with a short first
    // retry, each would come due on its own and could be delivered alone before it).
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n",
    );
    // back takes frames of at most 1 MiB; each call carries 600 KB, so any two offered in one
    // request make a frame back refuses (it closes the connection).
    site.cage("front", &[], "")
        .cage("back", &["echo"], "max_frame_bytes = 1048576\n");
    site.install("echo", &module_so("echo", &[]));
    let out = site.path().join("effects.txt");
    let front = site.start("front");
    let pad = "x".repeat(600 * 1024);
    let mut enqueuer = support::Enqueuer::new(&site, "front");
    for i in 0..6 {
        enqueuer.enqueue(&support::echo_call(
            "back",
            "append",
            serde_json::json!({ "file": out, "tag": format!("t{i}"), "pad": pad }),
            None,
        ));
    }
    eventually(
        Duration::from_secs(30),
        "front has tried every call",
        || {
            let p = site.listing("pending", Some("front"));
            (p.len() == 6 && p.iter().all(|v| !attempts(v).is_empty())).then_some(())
        },
    );
    let _back = site.start("back");
    // All due at once, so one pump offers them together.
    let run = site.cage_cmd(&["retry-now", "--all", "--cage", "front"]);
    assert_eq!(run.code, 0, "{run:?}");
    eventually(Duration::from_secs(60), "both queues are empty", || {
        (site.listing("pending", Some("front")).is_empty()
            && site.listing("pending", Some("back")).is_empty())
        .then_some(())
    });
    let text = std::fs::read_to_string(&out).unwrap();
    let mut tags: Vec<&str> = text.lines().map(|l| l.split(' ').nth(2).unwrap()).collect();
    tags.sort();
    let mut expected: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    expected.sort();
    assert_eq!(tags, expected, "each call ran exactly once");
    assert!(site.listing("dead", None).is_empty());
    assert!(
        front.log().contains("offering them one by one"),
        "{}",
        front.log()
    );
}

#[test]
fn a_listing_cut_short_by_its_limit_says_how_many_there_are() {
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("back");
    for i in 0..7 {
        let queue = if i < 4 { "retry" } else { "other" };
        site.enqueue(
            "back",
            "echo.echo",
            &i.to_string(),
            &["--delay", "1h", "--queue", queue],
        );
    }
    let run = site.cage_cmd(&["pending", "back", "--limit", "5"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("5 of 7 pending call(s) (--limit to see more)"),
        "{run:?}"
    );
    let run = site.cage_cmd(&["pending", "back", "--limit", "2", "--queue", "other"]);
    assert!(run.stdout.contains("2 of 3 pending call(s)"), "{run:?}");
    let run = site.cage_cmd(&["pending", "back"]);
    assert!(run.stdout.contains("\n7 pending call(s)\n"), "{run:?}");
}
