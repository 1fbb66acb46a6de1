//! `cage schedule` prints what the config implies: with the shipped defaults, 80 attempts in
//! under three days.

mod support;
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
