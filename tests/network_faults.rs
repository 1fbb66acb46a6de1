//! Network faults between two cages: the lab's fault proxy (on loopback) stands between
//! `front` and `back` and, phase by phase, delays, drops, truncates and cuts what passes.
//! Meanwhile 1 000 queued calls go from front to back and sync calls go to back through the
//! proxy. Sync calls succeed or fail with an error naming the cage; once the faults stop,
//! every queued call has run on back exactly once.

mod support;
use cages::lab::proxy::{Fault, Proxy, FAULTS};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{echo_call, eventually, module_so, Enqueuer, Site};

const CALLS: usize = 1000;

#[test]
fn queued_calls_survive_delays_drops_truncations_and_cuts_exactly_once() {
    let mut site = Site::new();
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let proxy = Proxy::start(site.addr("back")).unwrap();
    // front (and the command line) reach back only through the proxy.
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.back]\naddresses = [\"{}\"]\nconnect_timeout = \"500ms\"\ncall_timeout = \"5s\"\n\n\
             [queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\njitter = 0.1\nconcurrency = 64\n",
            proxy.addr
        ),
    );
    let site = Arc::new(site);
    let _front = site.start("front");
    let back = site.start("back");
    let out = site.path().join("effects.txt");

    // The enqueuer, paced so that calls are on their way to back through every fault phase.
    let enqueuer = {
        let (site, out) = (site.clone(), out.clone());
        std::thread::spawn(move || {
            let mut enqueuer = Enqueuer::new(&site, "front");
            for i in 0..CALLS {
                let request = echo_call(
                    "back",
                    "append",
                    serde_json::json!({ "file": out, "tag": format!("t{i}") }),
                    Some(format!("t{i}")),
                );
                enqueuer.enqueue(&request);
                std::thread::sleep(Duration::from_millis(3));
            }
        })
    };

    // Each fault in turn until it has hit traffic a few times, with sync calls through it.
    let mut sync_ok = 0;
    let mut sync_failed = 0;
    for fault in [
        Fault::Delay,
        Fault::Drop,
        Fault::Truncate,
        Fault::Cut,
        Fault::Delay,
        Fault::Truncate,
    ] {
        proxy.set(fault);
        let started = Instant::now();
        let before = proxy.applied(fault);
        while proxy.applied(fault) < before + 5 && started.elapsed() < Duration::from_secs(10) {
            let run = site.call("back", "echo.shout", r#""hi""#);
            if run.code == 0 {
                assert_eq!(run.stdout.trim(), r#""HI""#, "{run:?}");
                sync_ok += 1;
            } else {
                assert!(
                    run.stderr.contains("back") && !run.stderr.contains("panicked"),
                    "a failed sync call names the cage it could not reach: {run:?}"
                );
                sync_failed += 1;
            }
        }
    }
    proxy.set(Fault::None);
    enqueuer.join().expect("the enqueuer failed");
    for fault in [Fault::Delay, Fault::Drop, Fault::Truncate, Fault::Cut] {
        assert!(proxy.applied(fault) > 0, "{fault:?} never hit any traffic");
    }

    let text = eventually(Duration::from_secs(120), "every call ran on back", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let mut tags: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(2)).collect();
        tags.sort();
        tags.dedup();
        (tags.len() == CALLS && text.ends_with('\n')).then_some(text)
    });
    eventually(Duration::from_secs(30), "both queues drain", || {
        (site.listing("pending", Some("front")).is_empty()
            && site.listing("pending", Some("back")).is_empty())
        .then_some(())
    });
    // No kill interrupted any attempt, so every call ran once: a re-offer after a lost
    // acknowledgement was recognised by back, never run again.
    let text = std::fs::read_to_string(&out).unwrap_or(text);
    let mut runs: HashMap<&str, usize> = HashMap::new();
    for l in text.lines() {
        *runs.entry(l.split(' ').nth(2).unwrap()).or_default() += 1;
    }
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "calls ran more than once: {twice:?}");
    assert_eq!(runs.len(), CALLS);
    assert!(site.listing("dead", None).is_empty(), "no call died");
    let log = back.log();
    assert!(!log.contains("panicked"), "{log}");
    eprintln!(
        "faults applied: {:?}; sync calls: {sync_ok} answered, {sync_failed} failed cleanly",
        FAULTS.map(|f| (f, proxy.applied(f)))
    );
}
