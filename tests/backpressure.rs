//! Backpressure: when a target cage stalls, its source hands it at most the target's
//! `window` calls at once; the rest wait in the source's queue, shown as waiting for room.
//! Calls for other cages keep flowing, enqueues keep being acknowledged, and once the target
//! resumes every call runs exactly once.

mod support;
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use support::{echo_call, eventually, module_so, Enqueuer, Site};

const WINDOW: usize = 8;

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} {pid}");
}

fn lines_tagged(text: &str, tag: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.ends_with(&format!(" {tag}")))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_stalled_cage_holds_only_its_window_and_other_cages_keep_flowing() {
    let mut site = Site::new();
    site.cage("front", &[], "")
        .cage("back", &["echo"], "")
        .cage("other", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.back]\naddresses = [\"{}\"]\nwindow = {WINDOW}\n\n\
             [queues.retry]\nfirst_retry = \"200ms\"\nmax_delay = \"1s\"\ngive_up_after = \"10m\"\n",
            site.addr("back")
        ),
    );
    let _front = site.start("front");
    let back = site.start("back");
    let _other = site.start("other");
    let effects = site.path().join("effects.txt");
    let append = |tag: &str| json!({"file": effects.display().to_string(), "tag": tag});

    // The target stops answering (its connections are accepted by the kernel, then nothing).
    signal(back.pid(), "-STOP");
    let mut enqueuer = Enqueuer::new(&site, "front");
    for i in 0..200 {
        enqueuer.enqueue(&echo_call(
            "back",
            "append",
            append("back"),
            Some(format!("b{i}")),
        ));
    }
    for i in 0..20 {
        enqueuer.enqueue(&echo_call(
            "other",
            "append",
            append("other"),
            Some(format!("o{i}")),
        ));
    }

    // Calls for the healthy cage are not stuck behind the stalled one.
    eventually(Duration::from_secs(20), "other's calls ran", || {
        let text = std::fs::read_to_string(&effects).ok()?;
        (lines_tagged(&text, "other").len() == 20).then_some(())
    });

    // The source hands the stalled cage no more than its window, and says why the rest wait.
    let waiting = eventually(Duration::from_secs(10), "calls wait for room", || {
        let pending = site.listing("pending", Some("front"));
        let handed = pending.iter().filter(|v| v["running"] == true).count();
        assert!(handed <= WINDOW, "{handed} calls handed to back at once");
        let waiting = pending
            .iter()
            .filter(|v| v["waiting"].as_str().is_some_and(|w| w.contains("back")))
            .count();
        (handed == WINDOW && waiting > 0).then_some(waiting)
    });
    assert!(waiting <= 200 - WINDOW, "{waiting}");
    let table = site.cage_cmd(&["pending", "front"]);
    assert!(
        table.stdout.contains("waiting for room"),
        "the listing says why: {table:?}"
    );

    // Enqueueing is still acknowledged at once: it only touches the source's own disk.
    for i in 200..300 {
        enqueuer.enqueue(&echo_call(
            "back",
            "append",
            append("back"),
            Some(format!("b{i}")),
        ));
    }
    let handed = site
        .listing("pending", Some("front"))
        .iter()
        .filter(|v| v["running"] == true)
        .count();
    assert!(handed <= WINDOW, "{handed} calls handed to back at once");

    // The target resumes: everything arrives, once.
    signal(back.pid(), "-CONT");
    let text = eventually(Duration::from_secs(60), "every call for back ran", || {
        let text = std::fs::read_to_string(&effects).ok()?;
        (lines_tagged(&text, "back").len() >= 300).then_some(text)
    });
    let mut ids: Vec<&str> = text
        .lines()
        .filter(|l| l.ends_with(" back"))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "each call ran exactly once");
    eventually(Duration::from_secs(10), "front holds nothing", || {
        site.listing("pending", Some("front"))
            .is_empty()
            .then_some(())
    });
}
