//! `cage schedule` prints what the config implies: with the shipped defaults, 80 attempts in
//! under three days.

mod support;
use std::time::Duration;
use support::Site;

#[test]
fn shipped_defaults_give_80_attempts_in_under_three_days() {
    let run = std::process::Command::new(support::cage_bin())
        .args(["schedule", "--json", "--site"])
        .arg(support::workspace())
        .output()
        .unwrap();
    assert!(run.status.success());
    let plan: Vec<serde_json::Value> = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(plan.len(), 80);
    assert_eq!(
        plan[0],
        serde_json::json!({"attempt": 1, "delay_secs": 0, "at_secs": 0})
    );
    assert_eq!(
        plan[1],
        serde_json::json!({"attempt": 2, "delay_secs": 60, "at_secs": 60})
    );
    assert_eq!(plan[79]["delay_secs"], 3600);
    assert!(plan[79]["at_secs"].as_f64().unwrap() < 3.0 * 86400.0);

    let table = std::process::Command::new(support::cage_bin())
        .args(["schedule", "--site"])
        .arg(support::workspace())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.contains("80 attempts spanning 2days 23h"), "{text}");
}

#[test]
fn a_queue_of_its_own_follows_its_table() {
    let site = Site::new();
    site.write("config/config_execute_on.toml", "[queues.fast]\nfirst_retry = \"100ms\"\ngrowth = 2.0\nmax_delay = \"400ms\"\ngive_up_after = \"2s\"\n");
    let run = site.cage_cmd(&["schedule", "--queue", "fast", "--json"]);
    let plan: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let delays: Vec<f64> = plan
        .iter()
        .map(|a| a["delay_secs"].as_f64().unwrap())
        .collect();
    assert_eq!(delays, vec![0.0, 0.1, 0.2, 0.4, 0.4, 0.4, 0.4]);

    let bad = site.cage_cmd(&["schedule"]);
    assert_eq!(
        bad.code, 0,
        "an absent queue falls back to the retry defaults: {bad:?}"
    );
}

/// The attempts `cage schedule --queue QUEUE --json` lists, as (delay, since enqueue) in ms.
fn listed(site: &Site, queue: &str) -> Vec<(u64, u64)> {
    let run = site.cage_cmd(&["schedule", "--queue", queue, "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let plan: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let ms = |v: &serde_json::Value| (v.as_f64().unwrap() * 1000.0).round() as u64;
    plan.iter()
        .map(|a| (ms(&a["delay_secs"]), ms(&a["at_secs"])))
        .collect()
}

#[test]
fn a_failing_call_makes_the_attempts_cage_schedule_lists_then_is_dead() {
    let mut site = Site::new();
    // Attempts at 0, 100 ms, 500 ms and 2.1 s; the next would be at 3.7 s, past give_up_after.
    site.write(
        "config/config_execute_on.toml",
        "[queues.fast]\nfirst_retry = \"100ms\"\ngrowth = 4.0\nmax_delay = \"1600ms\"\ngive_up_after = \"3500ms\"\n",
    );
    let plan = listed(&site, "fast");
    assert_eq!(plan, vec![(0, 0), (100, 100), (400, 500), (1600, 2100)]);

    site.cage("back", &["billing"], "");
    site.install("billing", &support::module_so("billing", &[]));
    let _cage = site.start("back");
    let id = site.enqueue(
        "back",
        "billing.charge",
        r#"{"customer":"ann","cents":500}"#,
        &["--queue", "fast"],
    );
    let dead = support::eventually(Duration::from_secs(30), "the call is dead", || {
        site.listing("dead", Some("back"))
            .into_iter()
            .find(|v| v["record"]["call"]["id"] == id.as_str())
    });
    let record = &dead["record"];
    let attempts = record["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), plan.len(), "{record}");
    let reason = record["dead_reason"].as_str().unwrap();
    assert!(
        reason.starts_with(&format!("gave up after {} attempt(s)", plan.len()))
            && reason.contains("give_up_after of queue fast"),
        "{reason}"
    );
    // Each retry waited at least the listed delay after the attempt before it ended, and no
    // attempt started before its listed time since enqueue.
    let enqueued = record["call"]["enqueued_at_ms"].as_u64().unwrap();
    let mut previous_end = enqueued;
    for (a, (delay, at)) in attempts.iter().zip(&plan) {
        let started = a["started_ms"].as_u64().unwrap();
        assert!(started >= previous_end + delay, "{a} after {previous_end}");
        assert!(started >= enqueued + at, "{a}");
        previous_end = started + a["duration_us"].as_u64().unwrap() / 1000;
    }
}

#[test]
fn a_schedule_beyond_the_attempt_cap_is_refused_by_cage_schedule() {
    let site = Site::new();
    // The policy that once made 1 512 attempts in 3 s while `cage schedule` listed one.
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"0s\"\n",
    );
    let run = site.cage_cmd(&["schedule"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("config_execute_on.toml:2:15: queues.retry.first_retry: 0s is out of range (allowed: 10ms to 1day)"),
        "{}",
        run.stderr
    );

    // At the floor, retried every 10 ms for a minute: 6 000 attempts, more than the cap.
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"10ms\"\ngrowth = 1.0\nmax_delay = \"10ms\"\ngive_up_after = \"1m\"\n",
    );
    let run = site.cage_cmd(&["schedule"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("config_execute_on.toml:1:1: queues.retry: this schedule makes more than 1000 attempts (the most a call makes): its first 1000 span 9s 990ms of give_up_after 1m"),
        "{}",
        run.stderr
    );

    // Within the cap: exactly 1000 attempts, 10 ms apart, and the listing says it is the most.
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"10ms\"\ngrowth = 1.0\nmax_delay = \"10ms\"\ngive_up_after = \"9990ms\"\n",
    );
    let plan = listed(&site, "retry");
    assert_eq!(plan.len(), 1000);
    assert!(plan[1..].iter().all(|&(delay, _)| delay == 10), "{plan:?}");
    assert_eq!(plan[999].1, 9990);
    let table = site.cage_cmd(&["schedule"]);
    assert!(
        table
            .stdout
            .contains("1000 attempts spanning 9s 990ms (the most attempts a call makes)"),
        "{}",
        table.stdout
    );
}
