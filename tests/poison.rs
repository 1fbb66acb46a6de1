//! Poison calls are quarantined: a queued call whose attempt crashes its cage (modules running in
//! the cage's own process) is counted at each restart, as systemd's `Restart=on-failure` would
//! restart it, and after its queue's `max_crashes` it moves to dead letters, so the cage stays
//! up; a fixed module dropped in while such a call waits serves its next attempt.

mod support;
use cages::lab::site::Launch;
use serde_json::Value;
use std::time::Duration;
use support::{cage_bin, eventually, module_so, RunningCage, Site};

/// The settings of every cage file of these tests (written by [`crash_site`] alone): modules
/// run in the cage's own process, so a crashing module takes its cage down.
/// A worker's crash is shown in tests/isolation.rs.
const CAGE_SETTINGS: &str = "isolation = \"in_process\"\n";

/// `poison` retries within moments, so the restarts come fast; `slow` waits an hour, so a call
/// waits for its next attempt until the test asks for it (`cage retry-now`).
const QUEUES: &str = "\
[queues.poison]
first_retry = \"200ms\"
growth = 2.0
max_delay = \"400ms\"
give_up_after = \"1m\"
jitter = 0.0
max_crashes = 3

[queues.slow]
first_retry = \"1h\"
max_delay = \"1h\"
give_up_after = \"1d\"
max_crashes = 3
";

/// A site with cage `acc` serving the `crash` test module as first built (its methods crash).
fn crash_site() -> Site {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", QUEUES);
    site.cage("acc", &["crash"], CAGE_SETTINGS);
    site.install("crash", &module_so("crash", &[]));
    site
}

/// Starts cage `name` again after it died, as a supervisor would: its log goes on in the same
/// file, and nobody waits for it to answer (it may die again first).
fn restart(site: &Site, name: &str) -> RunningCage {
    let launch = Launch {
        binary: cage_bin(),
        site: site.path(),
        name,
        addr: site.addr(name),
        before: &[],
        after: &[],
        env: &[],
        log_level: "info",
        log: site.path().join(format!("{name}.log")),
        append_log: true,
    };
    launch.spawn().unwrap()
}

/// The record of call `id` (`cage show ID --json`), if a cage answered with it.
fn record(site: &Site, id: &str) -> Option<Value> {
    site.show(id)
        .into_iter()
        .next()
        .map(|v| v["record"].clone())
}

/// Waits until cage `cage` died.
fn wait_for_death(cage: &mut RunningCage) {
    eventually(Duration::from_secs(60), "the cage died", || {
        (!cage.alive()).then_some(())
    });
}

/// Enqueues `crash.METHOD` on queue `poison` and restarts the cage whenever it dies until the
/// call is dead; answers the dead record, how many restarts it took, and the running cage.
fn crash_until_dead(site: &Site, method: &str) -> (String, Value, usize, RunningCage) {
    let mut cage = site.start("acc");
    let target = format!("crash.{method}");
    let id = site.enqueue("acc", &target, "{}", &["--queue", "poison"]);
    let mut restarts = 0;
    loop {
        let dead = eventually(
            Duration::from_secs(60),
            "the cage died, or the call is dead",
            || {
                if !cage.alive() {
                    return Some(None);
                }
                record(site, &id)
                    .filter(|r| !r["dead_reason"].is_null())
                    .map(Some)
            },
        );
        if let Some(dead) = dead {
            return (id, dead, restarts, cage);
        }
        restarts += 1;
        assert!(
            restarts <= 3,
            "still crashing after max_crashes (3) restarts:\n{}",
            cage.log()
        );
        cage = restart(site, "acc");
    }
}

fn poison_call_is_dead_after_max_crashes(method: &str) {
    let site = crash_site();
    let (id, dead, restarts, mut cage) = crash_until_dead(&site, method);
    // Each restart records one crash; the third reaches max_crashes.
    assert_eq!(restarts, 3, "{}", cage.log());
    let reason = dead["dead_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("crashed its cage 3 times: ")
            && reason.contains(&format!("crash.{method} of call {id} on cage acc")),
        "{reason}"
    );
    let attempts = dead["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{dead}");
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(
            a["error"],
            format!(
                "module crash: the cage process died while this attempt ran (crash {} of 3)",
                n + 1
            )
        );
    }
    // `cage show` lists each crashed attempt with its reason.
    let shown = site.cage_cmd(&["show", &id]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown.stdout.contains(
            "crashed     attempt 2: the cage process died while this attempt ran (crash 2 of 3)"
        ),
        "{}",
        shown.stdout
    );
    // The cage stays up and serves.
    let fine = site.call("acc", "crash.fine", "{}");
    assert_eq!(fine.code, 0, "{fine:?}");
    assert!(cage.alive());
    let dead_listed = site.listing("dead", Some("acc"));
    assert_eq!(dead_listed.len(), 1);
    assert_eq!(dead_listed[0]["record"]["dead_reason"], reason);
}

#[test]
fn a_segfaulting_queued_call_is_dead_after_max_crashes_and_the_cage_stays_up() {
    poison_call_is_dead_after_max_crashes("segfault");
}

#[test]
fn an_aborting_queued_call_is_dead_after_max_crashes_and_the_cage_stays_up() {
    poison_call_is_dead_after_max_crashes("abort");
}

#[test]
fn a_fixed_module_dropped_while_a_poison_call_waits_serves_its_next_attempt() {
    let site = crash_site();
    let mut cage = site.start("acc");
    let id = site.enqueue("acc", "crash.segfault", "{}", &["--queue", "slow"]);
    wait_for_death(&mut cage);
    // The cage is down; the fix goes in before it comes back.
    site.install_atomic("crash", &module_so("crash", &["fixed"]));
    let cage = site.start("acc");

    // Back up, it counted the crash; the call waits an hour for its next attempt.
    let pending = site.listing("pending", Some("acc"));
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["crashes"]["count"], 1, "{}", pending[0]);
    assert_eq!(pending[0]["crashes"]["max"], 3, "{}", pending[0]);
    let listed = site.cage_cmd(&["pending", "acc"]);
    assert!(
        listed.stdout.contains("crashes: 1 of 3"),
        "{}",
        listed.stdout
    );

    assert_eq!(site.cage_cmd(&["retry-now", &id]).code, 0);
    eventually(Duration::from_secs(30), "the call completed", || {
        cage.log()
            .lines()
            .any(|l| l.contains(&id) && l.contains("done after 2 attempt(s)"))
            .then_some(())
    });
    assert!(record(&site, &id).is_none(), "done, it left the queue");
    assert!(site.listing("dead", Some("acc")).is_empty());
}

#[test]
fn a_revived_poison_call_starts_a_fresh_count_and_a_fixed_module_completes_it() {
    let site = crash_site();
    let (id, _, _, cage) = crash_until_dead(&site, "segfault");
    site.install_atomic("crash", &module_so("crash", &["fixed"]));
    eventually(Duration::from_secs(30), "the fixed build is loaded", || {
        let run = site.call("acc", "crash.fine", "{}");
        run.stdout.contains("1.0.1").then_some(())
    });
    assert_eq!(site.cage_cmd(&["revive", &id]).code, 0);
    eventually(
        Duration::from_secs(30),
        "the revived call completed",
        || {
            cage.log()
                .lines()
                .any(|l| l.contains(&id) && l.contains("done after 4 attempt(s)"))
                .then_some(())
        },
    );
}
