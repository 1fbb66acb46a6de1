//! Bulk redrive after a fix: `cage revive --all` and `cage retry-now --all` with filters, a dry
//! run that changes nothing, due times spread over a span, and each call's history naming the
//! order that moved it.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

/// Cage `back` serving echo, with queues `mail` and `other` that retry quickly.
fn site() -> (Site, support::RunningCage) {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.mail]\nfirst_retry = \"100ms\"\n\n[queues.other]\nfirst_retry = \"100ms\"\n",
    );
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    (site, cage)
}

/// `cage ARGS --json` answered as JSON, exiting 0.
fn json(site: &Site, args: &[&str]) -> serde_json::Value {
    let mut cmd = args.to_vec();
    cmd.push("--json");
    let run = site.cage_cmd(&cmd);
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

/// The dead calls of `back` in `queue`.
fn dead_in(site: &Site, queue: &str) -> Vec<serde_json::Value> {
    site.listing("dead", Some("back"))
        .into_iter()
        .filter(|c| c["record"]["call"]["queue"] == queue)
        .collect()
}

#[test]
fn a_filtered_revive_counts_first_then_spreads_its_calls_and_each_history_names_it() {
    let (site, cage) = site();
    // Five calls of `mail` refused for good ("smtp down"), two of `other` for another reason.
    for (queue, reason) in [("mail", "smtp down"); 5]
        .into_iter()
        .chain([("other", "quota"); 2])
    {
        site.enqueue(
            "back",
            "echo.refuse",
            &format!("{reason:?}"),
            &["--queue", queue],
        );
    }
    eventually(Duration::from_secs(30), "seven dead letters", || {
        (site.listing("dead", Some("back")).len() == 7).then_some(())
    });
    // One log line per failed attempt: the scheduler's, saying what follows.
    let log = cage.log();
    assert_eq!(
        log.matches("moved to dead letters: permanent rejection: smtp down")
            .count(),
        5,
        "{log}"
    );
    assert!(!log.contains("call failed: permanent rejection"), "{log}");

    // A dry run counts and lists, and changes nothing.
    let dry = json(&site, &["revive", "--all", "--error", "smtp", "--dry-run"]);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["count"], 5, "{dry}");
    assert_eq!(dry["first"].as_array().unwrap().len(), 5);
    assert!(dry["first"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["record"]["call"]["queue"] == "mail"));
    assert_eq!(dead_in(&site, "mail").len(), 5, "a dry run changed nothing");
    let limited = json(
        &site,
        &[
            "revive",
            "--all",
            "--queue",
            "mail",
            "--limit",
            "2",
            "--dry-run",
        ],
    );
    assert_eq!(limited["count"], 2);
    let old = json(
        &site,
        &[
            "revive",
            "--all",
            "--before",
            "2000-01-01T00:00:00Z",
            "--dry-run",
        ],
    );
    assert_eq!(old["count"], 0);
    let recent = json(
        &site,
        &[
            "revive",
            "--all",
            "--since",
            "1h",
            "--method",
            "refuse",
            "--dry-run",
        ],
    );
    assert_eq!(recent["count"], 7);

    // Revived over an hour: due times a fifth of it apart, the first at once.
    let before = cages::runtime::model::clock::now_ms();
    let done = json(
        &site,
        &["revive", "--all", "--queue", "mail", "--spread", "1h"],
    );
    assert_eq!(done["count"], 5, "{done}");
    let mut due: Vec<u64> = site
        .listing("pending", Some("back"))
        .iter()
        .map(|c| c["record"]["next_at_ms"].as_u64().unwrap())
        .collect();
    due.sort_unstable();
    // The first, due at once, may already have run and died again.
    assert!(due.len() >= 4, "{due:?}");
    let later = &due[due.len() - 4..];
    for (i, at) in later.iter().enumerate() {
        let expected = before + (i as u64 + 1) * 720_000;
        assert!(
            at.abs_diff(expected) < 60_000,
            "call {} of 5 due at {at}, expected about {expected}: {due:?}",
            i + 2
        );
    }
    assert_eq!(dead_in(&site, "other").len(), 2, "other queue untouched");

    // Each history names the order.
    let pending = site.listing("pending", Some("back"));
    let id = pending[0]["record"]["call"]["id"].as_str().unwrap();
    let shown = site.cage_cmd(&["show", id]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(
        shown
            .stdout
            .contains("revived by cage revive --all --queue mail --spread 1h --json"),
        "{shown:?}"
    );
    let events = &pending[0]["record"]["events"];
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");

    // Made due again, all at once: they run (and are refused) now.
    let dry = json(
        &site,
        &["retry-now", "--all", "--queue", "mail", "--dry-run"],
    );
    assert_eq!(dry["count"], pending.len());
    let now = json(&site, &["retry-now", "--all", "--queue", "mail"]);
    assert_eq!(now["count"], pending.len());
    let dead = eventually(Duration::from_secs(30), "mail's calls dead again", || {
        let dead = dead_in(&site, "mail");
        (dead.len() == 5).then_some(dead)
    });
    let retried = dead
        .iter()
        .find(|c| c["record"]["call"]["id"] == id)
        .unwrap();
    let said: Vec<&str> = retried["record"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["what"].as_str().unwrap())
        .collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[1].starts_with("made due by cage retry-now --all --queue mail --json"));
}

#[test]
fn the_dead_letter_page_revives_what_its_filter_selects_after_a_confirmation_that_counts_it() {
    let mut site = Site::new();
    let http = support::free_port();
    site.write(
        "config/config_execute_on.toml",
        "[queues.mail]\nfirst_retry = \"100ms\"\n",
    );
    site.cage(
        "back",
        &["echo"],
        &format!("http_listen = \"127.0.0.1:{http}\"\n"),
    );
    site.install("echo", &module_so("echo", &[]));
    let _cage = site.start("back");
    for (queue, reason) in [("mail", "smtp down"); 3]
        .into_iter()
        .chain([("retry", "quota")])
    {
        site.enqueue(
            "back",
            "echo.refuse",
            &format!("{reason:?}"),
            &["--queue", queue],
        );
    }
    eventually(Duration::from_secs(30), "four dead letters", || {
        (site.listing("dead", Some("back")).len() == 4).then_some(())
    });
    let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token")).unwrap();
    let auth = format!("Bearer {}", token.trim());
    let base = format!("http://127.0.0.1:{http}/ui");
    let get = |path: &str| {
        ureq::get(&format!("{base}{path}"))
            .set("Authorization", &auth)
            .call()
            .unwrap()
            .into_string()
            .unwrap()
    };
    let listed = get("/dead?queue=mail");
    assert_eq!(
        listed.matches("<tr data-call=\"back-").count(),
        3,
        "{listed}"
    );
    assert!(
        listed.contains("href=\"/ui/revive?queue=mail\""),
        "{listed}"
    );
    // The confirmation counts them and changes nothing.
    let confirm = get("/revive?queue=mail");
    assert!(
        confirm.contains("Revive <b>3</b> dead letter(s) matching queue=&quot;mail&quot;?"),
        "{confirm}"
    );
    assert_eq!(dead_in(&site, "mail").len(), 3);
    let csrf = confirm
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    // Without the page's CSRF value nothing is revived.
    let refused = agent
        .post(&format!("{base}/revive"))
        .set("Authorization", &auth)
        .send_form(&[("csrf", "wrong"), ("queue", "mail")]);
    assert!(matches!(refused, Err(ureq::Error::Status(403, _))));
    let done = agent
        .post(&format!("{base}/revive"))
        .set("Authorization", &auth)
        .send_form(&[("csrf", csrf.as_str()), ("queue", "mail"), ("spread", "0s")])
        .unwrap();
    assert_eq!(done.status(), 303);
    let location = done.header("location").unwrap_or_default().to_owned();
    assert!(
        location.starts_with("/ui/dead?queue=mail&notice=revived%203%20call"),
        "{location}"
    );
    // They ran again (and were refused again); each history names the dashboard's order.
    eventually(
        Duration::from_secs(30),
        "mail's calls revived and dead again",
        || {
            let dead = dead_in(&site, "mail");
            dead.iter()
                .all(|c| {
                    c["record"]["events"][0]["what"]
                        .as_str()
                        .is_some_and(|w| w.starts_with("revived by the dashboard (queue=\"mail\")"))
                })
                .then_some(())
                .filter(|()| dead.len() == 3)
        },
    );
    assert_eq!(
        dead_in(&site, "retry").len(),
        1,
        "the other queue untouched"
    );
}
