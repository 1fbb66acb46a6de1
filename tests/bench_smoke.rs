//! `cage bench all` runs end to end on its own cages (a short version, so the harness never
//! rots). It checks that every figure is reported, not how fast anything was: tests check
//! behaviour, benchmarks measure speed.

mod support;

use support::{cage_bin, module_so};

#[test]
fn bench_all_reports_every_figure() {
    let site = tempfile::tempdir().unwrap();
    let modules = site.path().join("modules");
    std::fs::create_dir_all(&modules).unwrap();
    std::fs::copy(module_so("echo", &[]), modules.join("libecho.so")).unwrap();
    // The benchmark's own site goes under this TMPDIR, to check it is removed afterwards.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(cage_bin())
        .args([
            "bench",
            "all",
            "--calls",
            "2000",
            "--no-fsync",
            "--json",
            "--site",
        ])
        .arg(site.path())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "cage bench all failed:\n{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    assert!(report["fdatasync_per_sec"].as_f64().unwrap() > 0.0);
    let figures = report["figures"].as_array().unwrap();
    for scenario in [
        "rpc",
        "enqueue",
        "e2e",
        "retry",
        "reload",
        "pending",
        "isolation",
        "idle",
        "latency",
        "burn-down",
    ] {
        assert!(
            figures.iter().any(|f| f["scenario"] == scenario),
            "no figure of {scenario}: {report}"
        );
    }
    for wanted in [
        "latency p50, 1 caller",
        "latency p99, 1 caller",
        "latency p99.9, 1 caller",
        "durable enqueues/s, 1 client(s)",
        "restart to first due call executed",
        "cage RSS with 2000 pending",
        "drop to first call answered by it",
        "in_process: rpc latency p50, 1 caller",
        "process: e2e queued calls/s",
        "process mode adds to rpc latency p50",
        "process mode costs of e2e queued calls/s",
        "cage a CPU while idle",
        "cage b CPU while idle",
        "offered rate achieved, 2000 calls a → b",
        "enqueue → execution start p50",
        "enqueue → execution start p99",
        "2000 queued calls drained, cage start to last done",
        "cage start to first queued call executed",
    ] {
        assert!(
            figures
                .iter()
                .any(|f| f["name"].as_str().unwrap().starts_with(wanted)),
            "no figure {wanted:?}: {report}"
        );
    }
    // --no-fsync: the sync-bound scenarios again, every such row labelled, after the durable
    // ones (false, then true, in the order of the rows).
    for scenario in ["enqueue", "e2e", "burn-down"] {
        let unsynced: Vec<bool> = figures
            .iter()
            .filter(|f| f["scenario"] == scenario)
            .map(|f| f["name"].as_str().unwrap().ends_with("(no fsync)"))
            .collect();
        assert!(
            unsynced.first() == Some(&false)
                && unsynced.last() == Some(&true)
                && unsynced.is_sorted(),
            "{scenario}: durable rows, then rows (no fsync): {report}"
        );
    }
    for f in figures {
        assert!(f["value"].as_f64().is_some_and(f64::is_finite), "{f}");
        assert_eq!(f["fdatasync_per_sec"], report["fdatasync_per_sec"]);
    }
    // Behaviour, not speed: every retried call succeeded on its third attempt, none was lost.
    let figure = |name: &str| {
        figures
            .iter()
            .find(|f| f["name"] == name)
            .and_then(|f| f["value"].as_f64())
            .unwrap_or_else(|| panic!("no figure {name:?}"))
    };
    assert_eq!(figure("calls lost or dead"), 0.0);
    assert_eq!(figure("failed attempts per call"), 2.0);
    // The benchmark's temporary site is gone.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
