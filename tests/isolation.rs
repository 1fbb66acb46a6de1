//! Modules run in worker processes: a module that crashes, hangs or eats memory fails only its
//! own call; the cage (same pid) keeps serving its other modules, and the module's next call
//! gets a new worker.

mod support;
use serde_json::Value;
use std::time::Duration;
use support::{eventually, module_so, Site};

/// Retries far apart: a queued call makes one attempt while the test looks at it; `poison`
/// retries at once, so a call that always crashes meets its `max_crashes` quickly.
const SLOW_RETRY: &str = "[queues.retry]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n\n\
     [queues.short]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\ntime_limit = \"2s\"\n\n\
     [queues.poison]\nfirst_retry = \"100ms\"\ngrowth = 1.0\nmax_delay = \"100ms\"\ngive_up_after = \"1m\"\nmax_crashes = 3\n";

/// Process ids of every child of process `pid`, from each process's parent in `/proc/*/stat`
/// (a kernel without `/proc/PID/task/*/children` has those too).
fn children(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `PID (COMMAND) STATE PPID ...`: the command may hold spaces and parentheses, so the
        // fields are counted from the last ')'. A zombie has ended, whoever reaps it.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (state, parent) = (
            fields.next(),
            fields.next().and_then(|p| p.parse::<u32>().ok()),
        );
        if parent == Some(pid) && state != Some("Z") {
            found.push(child);
        }
    }
    found.sort_unstable();
    found
}

fn alive(pid: u32) -> bool {
    std::fs::metadata(format!("/proc/{pid}")).is_ok()
}

/// A site whose cage `box` serves `crash` (in processes of at most 256 MB) and `echo`.
fn crash_site() -> Site {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", SLOW_RETRY);
    site.cage(
        "box",
        &["crash", "echo"],
        "executor_threads = 4\n[module_settings.crash]\nmemory_limit = \"256MB\"\n",
    );
    site.install("crash", &module_so("crash", &[]));
    site.install("echo", &module_so("echo", &[]));
    site
}

fn echo_answers(site: &Site) {
    let run = site.call("box", "echo.shout", r#""still here""#);
    assert_eq!(run.stdout.trim(), r#""STILL HERE""#, "{run:?}");
}

fn fine_pid(site: &Site) -> u32 {
    let run = site.call("box", "crash.fine", "1");
    assert_eq!(run.code, 0, "{run:?}");
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    v["pid"].as_u64().unwrap() as u32
}

/// How each crashing method is told.
const CRASHES: [(&str, &str); 5] = [
    ("segfault", "(SIGSEGV)"),
    ("abort", "(SIGABRT)"),
    ("overflow", "(SIGABRT, stack overflow)"),
    ("exit", "(exited with code 3)"),
    ("allocate", "(SIGABRT, out of memory)"),
];

#[test]
fn a_sync_call_that_crashes_its_worker_fails_as_crashed_and_the_cage_goes_on() {
    let site = crash_site();
    let mut cage = site.start("box");
    let pid = cage.pid();
    for (method, how) in CRASHES {
        // Another module answers while the crash happens.
        let echo = site.call_in_background("box", "echo.shout", r#""meanwhile""#);
        let run = site.call("box", &format!("crash.{method}"), "null");
        assert_eq!(run.code, 25, "{method}: {run:?}");
        let says = format!("module crash: crash.{method} crashed its worker {how}");
        assert!(run.stderr.contains(&says), "{method}: {}", run.stderr);
        assert!(run.stderr.contains("cage box crash."), "{}", run.stderr);
        assert_eq!(echo.join().unwrap().stdout.trim(), r#""MEANWHILE""#);
        assert!(cage.alive(), "{method}: the cage died\n{}", cage.log());
        assert_eq!(cage.pid(), pid);
        echo_answers(&site);
        // The pool is whole again: the next call gets a worker (a new one, if the crashed one
        // was the one that answered before).
        let next = fine_pid(&site);
        assert!(alive(next));
        assert!(children(pid).contains(&next));
    }
    let overflow = site.call("box", "crash.overflow", "null");
    assert!(
        overflow.stderr.contains("its last words:")
            && overflow.stderr.contains("overflowed its stack"),
        "{}",
        overflow.stderr
    );
    let modules = site.cage_cmd(&["modules", "box", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&modules.stdout).unwrap();
    let crash = list.iter().find(|m| m["name"] == "crash").unwrap();
    let crashed = &crash["workers"]["crashed"];
    assert_eq!(crashed["SIGSEGV"], 1, "{crash}");
    assert_eq!(crashed["stack_overflow"], 2, "{crash}");
    assert_eq!(crashed["out_of_memory"], 1, "{crash}");
    assert_eq!(crashed["exit_3"], 1, "{crash}");
    let table = site.cage_cmd(&["modules", "box"]);
    assert!(
        table.stdout.contains("6 (2 stack_overflow"),
        "{}",
        table.stdout
    );
}

#[test]
fn a_queued_call_that_crashes_its_worker_fails_its_attempt_as_crashed() {
    let site = crash_site();
    let mut cage = site.start("box");
    let pid = cage.pid();
    for (method, how) in CRASHES {
        let id = site.enqueue("box", &format!("crash.{method}"), "null", &[]);
        let attempt = eventually(Duration::from_secs(30), "the attempt failed", || {
            let shown = site.show(&id);
            let attempts = shown.first()?["record"]["attempts"].as_array()?.clone();
            attempts.first().cloned()
        });
        let error = attempt["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("crash.{method} crashed its worker {how}")),
            "{method}: {attempt}"
        );
        assert!(cage.alive(), "{method}: the cage died\n{}", cage.log());
        assert_eq!(cage.pid(), pid);
        echo_answers(&site);
        let pending = site.listing("pending", Some("box"));
        assert!(pending
            .iter()
            .any(|p| p["record"]["call"]["id"] == id.as_str()));
    }
    fine_pid(&site);
}

#[test]
fn a_queued_call_that_crashes_its_worker_every_time_is_dead_after_max_crashes() {
    let site = crash_site();
    let mut cage = site.start("box");
    let pid = cage.pid();
    let ids: Vec<(String, &str, &str)> = CRASHES
        .iter()
        .map(|(method, how)| {
            let id = site.enqueue(
                "box",
                &format!("crash.{method}"),
                "null",
                &["--queue", "poison"],
            );
            (id, *method, *how)
        })
        .collect();
    for (id, method, how) in &ids {
        let dead = eventually(Duration::from_secs(60), "the call is dead", || {
            site.listing("dead", Some("box"))
                .into_iter()
                .find(|d| d["record"]["call"]["id"] == id.as_str())
        });
        let reason = dead["record"]["dead_reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("crashed its worker 3 times"),
            "{method}: {reason}"
        );
        // The reason names the signal where the worker died of one.
        let signal = how.trim_matches(['(', ')']).split(',').next().unwrap();
        if signal.starts_with("SIG") {
            assert!(reason.contains(signal), "{method}: {reason}");
        }
        let attempts = dead["record"]["attempts"].as_array().unwrap();
        assert_eq!(attempts.len(), 3, "{method}: {dead}");
        assert!(attempts.iter().all(|a| a["error"]
            .as_str()
            .unwrap_or_default()
            .contains(&format!("crash.{method} crashed its worker {how}"))));
    }
    assert!(cage.alive(), "the cage died\n{}", cage.log());
    assert_eq!(cage.pid(), pid);
    echo_answers(&site);
    fine_pid(&site);
}

#[test]
fn a_worker_busy_in_a_hung_call_does_not_outlive_its_killed_cage() {
    let site = crash_site();
    let mut cage = site.start("box");
    let _hung = site.call_in_background("box", "crash.spin", "null");
    let worker = eventually(Duration::from_secs(20), "a worker runs the call", || {
        children(cage.pid()).first().copied()
    });
    cage.kill9();
    // The worker never reads its channel while it spins; it notices that its cage is gone.
    eventually(Duration::from_secs(20), "the orphaned worker ended", || {
        (!alive(worker)).then_some(())
    });
}

#[test]
fn a_hung_sync_call_has_its_worker_killed_at_its_timeout() {
    let site = crash_site();
    let mut cage = site.start("box");
    for method in ["spin", "sleep_forever"] {
        let run = site.cage_cmd(&[
            "call",
            "box",
            &format!("crash.{method}"),
            "null",
            "--timeout",
            "1s",
        ]);
        assert_eq!(run.code, 16, "{method}: {run:?}");
        assert!(
            run.stderr
                .contains("its worker process was killed at the limit"),
            "{method}: {}",
            run.stderr
        );
        // The worker that ran it (the module's only one: idle ones are reused) is gone.
        eventually(Duration::from_secs(20), "the hung worker is gone", || {
            children(cage.pid()).is_empty().then_some(())
        });
        assert!(cage.alive());
        let fine = fine_pid(&site);
        assert!(alive(fine));
    }
    let modules = site.cage_cmd(&["modules", "box", "--json"]);
    let list: Vec<Value> = serde_json::from_str(&modules.stdout).unwrap();
    let crash = list.iter().find(|m| m["name"] == "crash").unwrap();
    assert_eq!(crash["workers"]["killed"], 2, "{crash}");
}

#[test]
fn a_hung_queued_attempt_has_its_worker_killed_at_the_time_limit() {
    let site = crash_site();
    let mut cage = site.start("box");
    for (n, method) in ["spin", "sleep_forever"].into_iter().enumerate() {
        let id = site.enqueue(
            "box",
            &format!("crash.{method}"),
            "null",
            &["--queue", "short"],
        );
        let attempt = eventually(Duration::from_secs(30), "the attempt failed", || {
            let shown = site.show(&id);
            shown.first()?["record"]["attempts"]
                .as_array()?
                .first()
                .cloned()
        });
        let error = attempt["error"].as_str().unwrap();
        assert!(
            error.contains("time_limit of 2s (its worker process was killed at the limit)"),
            "{method}: {attempt}"
        );
        // The hung worker is gone and the pool is whole: no worker runs, a new call answers.
        eventually(
            Duration::from_secs(20),
            "no worker runs the hung call",
            || {
                let modules = site.cage_cmd(&["modules", "box", "--json"]);
                let list: Vec<Value> = serde_json::from_str(&modules.stdout).ok()?;
                let crash = list.iter().find(|m| m["name"] == "crash")?.clone();
                (crash["workers"]["killed"] == n + 1 && crash["workers"]["running"] == 0)
                    .then_some(())
            },
        );
        assert!(cage.alive());
        let fine = fine_pid(&site);
        assert_eq!(children(cage.pid()), vec![fine]);
    }
}

#[test]
fn a_hot_reload_drains_old_workers_and_leaves_no_process_or_copy_behind() {
    let mut site = Site::new();
    site.cage("box", &["echo"], "executor_threads = 4\n");
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("box");
    let pid = cage.pid();
    // Calls under way on the old version while the new one arrives.
    let slow: Vec<_> = (0..2)
        .map(|_| site.call_in_background("box", "echo.sleep", r#"{"ms": 4000}"#))
        .collect();
    eventually(Duration::from_secs(20), "two workers run", || {
        (children(pid).len() >= 2).then_some(())
    });
    let old_workers = children(pid);
    site.install_atomic("echo", &module_so("echo", &["v2"]));
    eventually(
        Duration::from_secs(20),
        "new calls run the new version",
        || {
            let run = site.call("box", "echo.version", "null");
            (run.code == 0 && run.stdout.contains("+v2")).then_some(())
        },
    );
    for call in slow {
        let run = call.join().unwrap();
        assert!(
            run.stdout.contains(r#""build": "v1""#),
            "an old call finished on its version: {run:?}"
        );
    }
    eventually(Duration::from_secs(20), "the old workers exited", || {
        let now = children(pid);
        old_workers.iter().all(|w| !now.contains(w)).then_some(())
    });
    eventually(Duration::from_secs(20), "one private copy is left", || {
        let copies: Vec<_> = std::fs::read_dir(site.path().join("data/box/loaded-modules"))
            .unwrap()
            .flatten()
            .collect();
        (copies.len() == 1).then_some(())
    });
    // The new version's workers are the cage's only children.
    let now = children(pid);
    assert!(old_workers.iter().all(|w| !now.contains(w)));
}

#[test]
fn a_module_that_crashes_while_loading_is_refused_and_the_cage_never_maps_it() {
    let mut site = Site::new();
    site.cage("box", &["crash", "echo"], "");
    site.install("crash", &module_so("crash", &["crash_on_load"]));
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("box");
    let pid = cage.pid();
    let refused = eventually(Duration::from_secs(20), "the load is refused", || {
        let modules = site.cage_cmd(&["modules", "box", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&modules.stdout).ok()?;
        let crash = list.iter().find(|m| m["name"] == "crash")?.clone();
        crash["last_error"].as_str().map(str::to_owned)
    });
    assert!(
        refused.contains("its worker died while loading it (SIGSEGV)"),
        "{refused}"
    );
    // Calls are refused as for any module not loaded, and start no process: no fork loop.
    for _ in 0..5 {
        let run = site.call("box", "crash.fine", "null");
        assert_ne!(run.code, 0, "{run:?}");
        assert!(run.stderr.contains("not loaded"), "{run:?}");
    }
    assert!(children(pid).is_empty(), "{:?}", children(pid));
    assert!(cage.alive());
    assert!(
        cage.mapped_module_copies().is_empty(),
        "{:?}",
        cage.mapped_module_copies()
    );
    echo_answers(&site);
    // A fixed build is loaded and served.
    site.install_atomic("crash", &module_so("crash", &["fixed"]));
    eventually(Duration::from_secs(20), "the fixed build serves", || {
        let run = site.call("box", "crash.segfault", "null");
        (run.code == 0).then_some(())
    });
    assert_eq!(cage.pid(), pid);
}

#[test]
fn in_process_a_hung_call_has_its_thread_written_off_and_replaced() {
    let mut site = Site::new();
    site.cage(
        "box",
        &["crash"],
        "executor_threads = 2\nisolation = \"in_process\"\n",
    );
    site.install("crash", &module_so("crash", &[]));
    let mut cage = site.start("box");
    // More hung calls than the cage has threads: each passes its limit and is left running.
    for _ in 0..3 {
        let run = site.cage_cmd(&[
            "call",
            "box",
            "crash.sleep_forever",
            "null",
            "--timeout",
            "1s",
        ]);
        assert_eq!(run.code, 16, "{run:?}");
        assert!(
            run.stderr
                .contains("the method keeps running on its executor thread"),
            "{}",
            run.stderr
        );
    }
    // The pool kept its size: a healthy call still finds a thread.
    let written_off = eventually(Duration::from_secs(20), "three threads written off", || {
        let modules = site.cage_cmd(&["modules", "box", "--json"]);
        let list: Vec<Value> = serde_json::from_str(&modules.stdout).ok()?;
        let crash = list.iter().find(|m| m["name"] == "crash")?.clone();
        (crash["workers"]["threads_written_off"] == 3).then_some(crash)
    });
    let run = site.call("box", "crash.fine", "1");
    assert_eq!(run.code, 0, "{run:?} {written_off}");
    assert!(cage.alive());
    let table = site.cage_cmd(&["modules", "box"]);
    assert!(
        table.stdout.contains("3 threads written off"),
        "{}",
        table.stdout
    );
}

#[test]
fn an_idle_worker_killed_from_outside_is_replaced_without_failing_a_call() {
    let site = crash_site();
    let cage = site.start("box");
    let first = fine_pid(&site);
    // As the OOM killer would.
    let kill = std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    eventually(Duration::from_secs(20), "the worker is dead", || {
        let state = std::fs::read_to_string(format!("/proc/{first}/stat")).unwrap_or_default();
        (state.is_empty() || state.contains(") Z ")).then_some(())
    });
    let second = fine_pid(&site);
    assert_ne!(first, second);
    assert_eq!(children(cage.pid()), vec![second]);
}

#[test]
fn worker_crashes_and_kills_are_counted_in_metrics_and_on_the_dashboard() {
    let mut site = Site::new();
    let http = support::free_port();
    site.cage(
        "box",
        &["crash"],
        &format!("http_listen = \"127.0.0.1:{http}\"\n"),
    );
    site.install("crash", &module_so("crash", &[]));
    let _cage = site.start("box");
    assert_eq!(site.call("box", "crash.segfault", "null").code, 25);
    assert_eq!(site.call("box", "crash.overflow", "null").code, 25);
    let hung = site.cage_cmd(&[
        "call",
        "box",
        "crash.sleep_forever",
        "null",
        "--timeout",
        "1s",
    ]);
    assert_eq!(hung.code, 16, "{hung:?}");
    fine_pid(&site);
    let metrics = ureq::get(&format!("http://127.0.0.1:{http}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    for line in [
        "cage_worker_crashes_total{cage=\"box\",module=\"crash\",reason=\"SIGSEGV\"} 1",
        "cage_worker_crashes_total{cage=\"box\",module=\"crash\",reason=\"stack_overflow\"} 1",
        "cage_workers_killed_total{cage=\"box\",module=\"crash\"} 1",
        "cage_workers_idle{cage=\"box\",module=\"crash\"} 1",
        "cage_workers_running{cage=\"box\",module=\"crash\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
    let token = std::fs::read_to_string(site.path().join("config/keys/dashboard.token")).unwrap();
    let page = ureq::get(&format!("http://127.0.0.1:{http}/ui/modules"))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        page.contains("2 crashed (1 SIGSEGV, 1 stack_overflow)")
            && page.contains("1 killed at a deadline"),
        "{page}"
    );
}
