//! Jobs: a call at a time or at an interval, stored before the command returns, fired through
//! the queue, surviving restarts, catching up on missed ticks as configured.

mod support;
use cages::runtime::model::call::QueuedCall;
use cages::runtime::model::job::{CatchUp, Job, LastRun, Schedule};
use cages::runtime::queue::QueueStore;
use cages::runtime::transport::client::Client;
use cages::runtime::transport::protocol::{EnqueueRequest, JobRequest, JobSpec};
use cages::sdk::ErrorKind;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use support::{eventually, free_port, module_so, Site};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Lines of an effects file: (scheduled ms from the run id, tag).
fn runs(file: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split(' ');
            let id = parts.next()?;
            let tag = parts.nth(1).unwrap_or("").to_owned();
            Some((id.rsplit_once('@')?.1.parse().ok()?, tag))
        })
        .collect()
}

fn append_args(file: &Path, tag: &str) -> String {
    format!(
        r#"{{"file": {:?}, "tag": "{tag}"}}"#,
        file.display().to_string()
    )
}

fn site_with_echo() -> Site {
    let mut site = Site::new();
    site.cage("back", &["echo"], "shutdown_grace = \"2s\"\n");
    site.install("echo", &module_so("echo", &[]));
    site
}

#[test]
fn a_scheduled_job_runs_at_its_time_not_before_and_survives_a_restart() {
    let site = site_with_echo();
    let mut cage = site.start("back");
    let out = site.path().join("once.txt");

    let added = now_ms();
    let run = site.cage_cmd(&[
        "job",
        "add",
        "back",
        "echo.append",
        &append_args(&out, "once"),
        "--in",
        "2s",
    ]);
    assert_eq!(run.code, 0, "{run:?}");
    let id = run.stdout.trim().to_owned();
    assert!(id.starts_with("job-"), "{id}");

    // A crash between add and due time loses nothing.
    cage.kill9();
    let _cage = site.start("back");
    let listed = site.cage_cmd(&["jobs", "back", "--json"]);
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], id.as_str());

    let ran = eventually(Duration::from_secs(20), "the job ran", || {
        let r = runs(&out);
        (!r.is_empty()).then_some(r)
    });
    let modified = std::fs::metadata(&out)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(ran[0].0 >= added + 2000, "scheduled for its time");
    assert!(
        modified >= added + 2000,
        "ran {} ms after being added, before its time",
        modified - added
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(&out).len(), 1, "a one-shot job runs once");
}

#[test]
fn a_recurring_job_ticks_at_its_interval_and_a_duplicate_is_refused() {
    let site = site_with_echo();
    let _cage = site.start("back");
    let out = site.path().join("ticks.txt");
    let args = append_args(&out, "tick");

    let id = site
        .cage_cmd(&[
            "job",
            "add",
            "back",
            "echo.append",
            &args,
            "--every",
            "300ms",
        ])
        .stdout
        .trim()
        .to_owned();
    let dup = site.cage_cmd(&["job", "add", "back", "echo.append", &args, "--every", "1m"]);
    assert_eq!(dup.code, 18, "{dup:?}");
    assert!(
        dup.stderr
            .contains(&format!("recurring job {id} already calls"))
            && dup.stderr.contains("--replace"),
        "{}",
        dup.stderr
    );

    let ticks = eventually(Duration::from_secs(20), "four ticks", || {
        let r = runs(&out);
        (r.len() >= 4).then_some(r)
    });
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].0 - pair[0].0,
            300,
            "ticks are scheduled one interval apart: {ticks:?}"
        );
    }
    let table = site.cage_cmd(&["jobs"]);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("every 300ms"),
        "{}",
        table.stdout
    );

    // --replace takes the old job's place; remove stops it.
    let replaced = site.cage_cmd(&[
        "job",
        "add",
        "back",
        "echo.append",
        &args,
        "--every",
        "1h",
        "--replace",
    ]);
    assert_eq!(replaced.code, 0, "{replaced:?}");
    let new_id = replaced.stdout.trim().to_owned();
    let jobs: Vec<serde_json::Value> =
        serde_json::from_str(&site.cage_cmd(&["jobs", "back", "--json"]).stdout).unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["id"], new_id.as_str());
    assert_eq!(site.cage_cmd(&["job", "run-now", &new_id]).code, 0);
    eventually(Duration::from_secs(10), "run-now ran it", || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(&format!("{new_id}@"))
            .then_some(())
    });
    assert_eq!(site.cage_cmd(&["job", "remove", &new_id]).code, 0);
    assert_eq!(site.cage_cmd(&["job", "remove", &new_id]).code, 4);
}

#[test]
fn missed_ticks_follow_catch_up() {
    let site = site_with_echo();
    let mut cage = site.start("back");
    let out = site.path().join("missed.txt");
    for mode in ["all", "once", "skip"] {
        let run = site.cage_cmd(&[
            "job",
            "add",
            "back",
            "echo.append",
            &append_args(&out, mode),
            "--every",
            "200ms",
            "--catch-up",
            mode,
        ]);
        assert_eq!(run.code, 0, "{run:?}");
    }
    eventually(Duration::from_secs(10), "every job ticked", || {
        let r = runs(&out);
        ["all", "once", "skip"]
            .iter()
            .all(|m| r.iter().any(|x| x.1 == *m))
            .then_some(())
    });

    assert_eq!(cage.terminate(), Some(0));
    let down_from = now_ms();
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<(u64, String)> = runs(&out);
    let _cage = site.start("back");
    let new_in = |after: &[(u64, String)], mode: &str| -> Vec<u64> {
        after
            .iter()
            .filter(|r| r.1 == mode && !before.contains(r))
            .map(|r| r.0)
            .collect()
    };
    let missed = |ticks: &[u64]| {
        ticks
            .iter()
            .filter(|t| **t > down_from + 250 && **t < down_from + 1400)
            .count()
    };
    // The catch-up runs all start at once, each in a worker that may first have to start: on
    // a loaded machine that takes a while, so wait for them (and for the ticks after them).
    let after = eventually(Duration::from_secs(20), "the missed runs ran", || {
        let after = runs(&out);
        let caught_up = missed(&new_in(&after, "all")) >= 5;
        let resumed = ["once", "skip"]
            .iter()
            .all(|m| !new_in(&after, m).is_empty());
        (caught_up && resumed).then_some(after)
    });
    let new = |mode: &str| new_in(&after, mode);
    // all: every tick of the downtime ran; once: one run stood for them; skip: none did.
    assert!(missed(&new("all")) >= 5, "catch_up = all: {:?}", new("all"));
    assert!(
        missed(&new("once")) <= 1,
        "catch_up = once: {:?}",
        new("once")
    );
    assert_eq!(
        missed(&new("skip")),
        0,
        "catch_up = skip: {:?}",
        new("skip")
    );
    for mode in ["once", "skip"] {
        assert!(
            !new(mode).is_empty(),
            "{mode}: ticks resume after the restart"
        );
    }
}

#[test]
fn a_job_removed_from_the_cage_file_stops() {
    let mut site = Site::new();
    let out = site.path().join("declared.txt");
    let job = format!(
        "[[jobs]]\nname = \"heartbeat\"\ncall = \"echo.append\"\nargs = {{ file = {:?}, tag = \"beat\" }}\nevery = \"200ms\"\n",
        out.display().to_string()
    );
    site.cage("back", &["echo"], &job);
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("back");
    eventually(Duration::from_secs(10), "the declared job ticks", || {
        (runs(&out).len() >= 2).then_some(())
    });
    let listed = site.cage_cmd(&["jobs", "back"]);
    assert!(
        listed.stdout.contains("job-decl-heartbeat") && listed.stdout.contains("(cage file)"),
        "{}",
        listed.stdout
    );
    let refused = site.cage_cmd(&["job", "remove", "job-decl-heartbeat"]);
    assert_ne!(refused.code, 0);
    assert!(
        refused.stderr.contains("declared in cages/back.toml"),
        "{}",
        refused.stderr
    );

    // Redeploy without the job: it stops.
    let body = std::fs::read_to_string(site.path().join("cages/back.toml")).unwrap();
    site.write("cages/back.toml", &body[..body.find("[[jobs]]").unwrap()]);
    eventually(
        Duration::from_secs(10),
        "the job is reported stopped",
        || {
            cage.log()
                .contains("no longer declared in the cage file: stopped")
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let settled = runs(&out).len();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        runs(&out).len(),
        settled,
        "no tick after the job left the cage file"
    );
    assert!(site.cage_cmd(&["jobs", "back"]).stdout.contains("no jobs"));
}

#[test]
fn a_slow_job_does_not_delay_another() {
    let site = site_with_echo();
    let _cage = site.start("back");
    let out = site.path().join("slow.txt");
    let slow = format!(
        r#"{{"file": {:?}, "tag": "slow", "sleep_ms": 3000}}"#,
        out.display().to_string()
    );
    assert_eq!(
        site.cage_cmd(&[
            "job",
            "add",
            "back",
            "echo.append",
            &slow,
            "--every",
            "200ms"
        ])
        .code,
        0
    );
    let started = now_ms();
    assert_eq!(
        site.cage_cmd(&[
            "job",
            "add",
            "back",
            "echo.append",
            &append_args(&out, "fast"),
            "--every",
            "200ms"
        ])
        .code,
        0
    );
    // While every slow run sleeps three seconds, the fast job keeps its pace.
    let fast = eventually(Duration::from_secs(10), "five fast runs", || {
        let r: Vec<u64> = runs(&out)
            .into_iter()
            .filter(|r| r.1 == "fast")
            .map(|r| r.0)
            .collect();
        (r.len() >= 5).then_some(r)
    });
    assert!(
        runs(&out).iter().all(|r| r.1 != "slow"),
        "the fast runs came before any slow run finished"
    );
    assert!(fast[4] < started + 2500);
}

#[test]
fn a_module_adds_a_job_through_its_context() {
    let site = site_with_echo();
    let _cage = site.start("back");
    let out = site.path().join("later.txt");
    let args = format!(
        r#"{{"cage": "back", "target": "echo.append", "args": {}, "in_ms": 300}}"#,
        append_args(&out, "later")
    );
    let run = site.call("back", "echo.later", &args);
    assert_eq!(run.code, 0, "{run:?}");
    let id: String = serde_json::from_str(&run.stdout).unwrap();
    assert!(id.starts_with("job-"), "{id}");
    let ran = eventually(Duration::from_secs(10), "the module's job ran", || {
        let r = runs(&out);
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(ran[0].1, "later");
}

/// Cage `back` serving echo, with its HTTP API (and so its dashboard at `/ui`) on a known port.
fn site_with_dashboard() -> (Site, u16) {
    let mut site = Site::new();
    let http = free_port();
    site.cage(
        "back",
        &["echo"],
        &format!("http_listen = \"127.0.0.1:{http}\"\nshutdown_grace = \"2s\"\n"),
    );
    site.install("echo", &module_so("echo", &[]));
    (site, http)
}

/// `GET /ui/jobs` of cage `back` with the site's dashboard token: status and page.
fn jobs_page(site: &Site, http: u16) -> (u16, String) {
    let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token")).unwrap();
    match ureq::get(&format!("http://127.0.0.1:{http}/ui/jobs"))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("GET /ui/jobs: {e}"),
    }
}

/// The queue still takes calls: an enqueue is acknowledged and listed as pending.
fn queue_still_works(site: &Site) {
    let id = site.enqueue("back", "echo.echo", "1", &["--delay", "1h"]);
    let pending = site.listing("pending", Some("back"));
    assert!(
        pending
            .iter()
            .any(|v| v["record"]["call"]["id"] == id.as_str()),
        "the enqueued call is pending: {pending:?}"
    );
}

#[test]
fn a_job_or_delay_beyond_the_horizon_is_refused_and_the_queue_keeps_working() {
    let (site, http) = site_with_dashboard();
    let cage = site.start("back");

    // The finding: this panicked the scheduler, and every enqueue after it was refused.
    for when in [
        &["--in", "8000years"][..],
        &["--in", "101years"],
        &["--at", "9999-12-31T23:59:59Z"],
        &["--every", "200years"],
    ] {
        let mut args = vec!["job", "add", "back", "echo.shout", "\"x\""];
        args.extend_from_slice(when);
        let run = site.cage_cmd(&args);
        assert_eq!(run.code, 11, "{when:?}: {run:?}");
        assert!(
            run.stderr.contains("job for back echo.shout: ")
                && run.stderr.contains("the horizon of 100 years"),
            "{}",
            run.stderr
        );
    }
    let delayed = site.cage_cmd(&["enqueue", "back", "echo.echo", "1", "--delay", "8000years"]);
    assert_eq!(delayed.code, 11, "{delayed:?}");
    assert!(
        delayed
            .stderr
            .contains("--delay 8000years is longer than the horizon of 100 years"),
        "{}",
        delayed.stderr
    );
    // Within the horizon is fine.
    let near = site.cage_cmd(&[
        "job",
        "add",
        "back",
        "echo.shout",
        "\"x\"",
        "--in",
        "99years",
    ]);
    assert_eq!(near.code, 0, "{near:?}");

    // Frames that bypass the command are refused by the cage itself.
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let spec = |schedule| JobSpec {
        module: "echo".into(),
        method: "shout".into(),
        args: b"\"x\"".to_vec(),
        queue: "retry".into(),
        schedule,
        catch_up: CatchUp::Once,
    };
    for schedule in [
        Schedule::Once { at_ms: u64::MAX },
        Schedule::Every {
            interval_ms: u64::MAX,
            first_ms: 0,
        },
        Schedule::Every {
            interval_ms: 1000,
            first_ms: u64::MAX,
        },
    ] {
        let refused = client
            .job(
                JobRequest::Add {
                    spec: spec(schedule.clone()),
                    replace: false,
                },
                Duration::from_secs(10),
            )
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("the horizon of 100 years"),
            "{schedule:?}: {refused}"
        );
    }
    let enqueue = |delay_ms| EnqueueRequest {
        target: "back".into(),
        module: "echo".into(),
        method: "echo".into(),
        args: b"1".to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        delay_ms,
        group: None,
    };
    let refused = client
        .enqueue(enqueue(u64::MAX), Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("the horizon of 100 years"), "{refused}");
    let offered = QueuedCall {
        id: "front-far-1".into(),
        source: "front".into(),
        target: "back".into(),
        module: "echo".into(),
        method: "echo".into(),
        args: b"1".to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        enqueued_at_ms: now_ms(),
        not_before_ms: u64::MAX,
        chain: None,
        group: None,
    };
    let refused = client
        .accept(offered, Duration::from_secs(10))
        .unwrap()
        .unwrap_err();
    // Typed, so the offering cage moves the call to dead letters at once.
    assert_eq!(refused.error.kind, ErrorKind::Permanent, "{refused}");
    assert_eq!(refused.call_id, "front-far-1", "{refused}");
    let refused = refused.to_string();
    assert!(refused.contains("not_before is"), "{refused}");
    assert!(
        refused.contains("beyond the horizon of 100 years"),
        "{refused}"
    );

    // So is a module asking through its context (its time saturates, it does not wrap).
    let later = site.call(
        "back",
        "echo.later",
        r#"{"cage": "back", "target": "echo.shout", "args": "x", "in_ms": 18446744073709551615}"#,
    );
    assert_ne!(later.code, 0, "{later:?}");
    assert!(
        later.stderr.contains("the horizon of 100 years"),
        "{}",
        later.stderr
    );

    // The cage is whole: enqueues are taken, jobs list, the dashboard's jobs page answers.
    queue_still_works(&site);
    let listed = site.cage_cmd(&["jobs", "back"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed.stdout.contains(near.stdout.trim()),
        "{}",
        listed.stdout
    );
    let (status, page) = jobs_page(&site, http);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains(near.stdout.trim()), "{page}");
    assert!(!cage.log().contains("panicked"), "{}", cage.log());
}

#[test]
fn a_job_stored_with_an_absurd_time_still_lists_and_renders() {
    let (site, http) = site_with_dashboard();
    let mut cage = site.start("back");
    assert_eq!(cage.terminate(), Some(0));

    // What a cage before the horizon stored: the store takes any time.
    let far = |id: &str, schedule: Schedule, next: Option<u64>| Job {
        id: id.into(),
        cage: "back".into(),
        module: "echo".into(),
        method: "shout".into(),
        args: b"\"x\"".to_vec(),
        queue: "retry".into(),
        schedule,
        catch_up: CatchUp::All,
        declared: false,
        next_run_ms: next,
        last_run: Some(LastRun {
            scheduled_ms: u64::MAX,
            call_id: format!("{id}@{}", u64::MAX),
            outcome: Some("done".into()),
        }),
    };
    {
        let store = QueueStore::open(&site.path().join("data/back/queue")).unwrap();
        store
            .put_job(&far(
                "job-far-once",
                Schedule::Once { at_ms: u64::MAX },
                Some(u64::MAX),
            ))
            .unwrap();
        // Due at once, and its next tick is past the end of time.
        store
            .put_job(&far(
                "job-far-every",
                Schedule::Every {
                    interval_ms: u64::MAX,
                    first_ms: 1,
                },
                Some(1),
            ))
            .unwrap();
        store.checkpoint().unwrap();
    }

    let cage = site.start("back");
    let listed = site.cage_cmd(&["jobs", "back"]);
    assert_eq!(listed.code, 0, "{listed:?}");
    assert!(
        listed.stdout.contains("job-far-once") && listed.stdout.contains("job-far-every"),
        "{}",
        listed.stdout
    );
    // Rendered as ISO 8601's expanded year, where RFC 3339 formatting fails past 9999.
    assert!(
        listed.stdout.contains("+584556019-04-03T14:25:51Z"),
        "{}",
        listed.stdout
    );
    let json = site.cage_cmd(&["jobs", "back", "--json"]);
    assert_eq!(json.code, 0, "{json:?}");
    let jobs: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(jobs.len(), 2);
    // The tick due at once fired; the one after it saturates at the end of time.
    eventually(Duration::from_secs(10), "the due tick fired", || {
        let jobs: Vec<serde_json::Value> =
            serde_json::from_str(&site.cage_cmd(&["jobs", "back", "--json"]).stdout).ok()?;
        let j = jobs.into_iter().find(|j| j["id"] == "job-far-every")?;
        (j["last_run"]["call_id"] == "job-far-every@1" && j["next_run_ms"] == u64::MAX)
            .then_some(())
    });
    let (status, page) = jobs_page(&site, http);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("job-far-once") && page.contains("+584556019-04-03T14:25:51Z"),
        "{page}"
    );
    queue_still_works(&site);
    assert!(!cage.log().contains("panicked"), "{}", cage.log());
}

#[test]
fn a_declared_job_beyond_its_range_is_a_config_error() {
    let mut site = Site::new();
    site.cage(
        "back",
        &["echo"],
        "[[jobs]]\nname = \"someday\"\ncall = \"echo.shout\"\nargs = \"x\"\nevery = \"8000years\"\n",
    );
    site.install("echo", &module_so("echo", &[]));
    let run = site.cage_cmd(&["run", "back"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("cages/back.toml:")
            && run.stderr.contains(
                "jobs.someday.every: 8000years is out of range (allowed: 100ms to 1year)"
            ),
        "{}",
        run.stderr
    );
}
