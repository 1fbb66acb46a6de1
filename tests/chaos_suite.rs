//! The chaos suite as CI runs it: `cage chaos` for a minute (three cages, kill -9, broken
//! module files, failed flushes, cut connections, while calls, chains, a job and calls of a
//! module that crashes its worker at random flow), then its invariants. Longer runs: `cage chaos --minutes 30`.

mod support;
use support::{cage_bin, module_so};

#[test]
fn a_minute_of_chaos_loses_nothing_and_runs_nothing_twice() {
    let modules = tempfile::tempdir().unwrap();
    for m in ["echo", "orders", "crash"] {
        std::fs::copy(module_so(m, &[]), modules.path().join(format!("lib{m}.so"))).unwrap();
    }
    let run = std::process::Command::new(cage_bin())
        .args([
            "chaos",
            "--minutes",
            "1",
            "--seed",
            "20261125",
            "--drain",
            "5m",
            "--json",
            "--modules",
        ])
        .arg(modules.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "chaos failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let invariants = report["outcome"]["invariants"].as_array().unwrap();
    assert_eq!(invariants.len(), 10, "{report}");
    assert!(invariants.iter().all(|i| i["held"] == true), "{report}");
    for fault in [
        "kills",
        "broken_module_drops",
        "disk_faults",
        "connection_cuts",
    ] {
        assert!(
            report["faults"][fault].as_u64().unwrap() > 0,
            "no {fault}: {report}"
        );
    }
    assert!(
        report["workload"]["calls_acked"].as_u64().unwrap() > 100,
        "{report}"
    );
    assert!(
        report["workload"]["chains_acked"].as_u64().unwrap() > 10,
        "{report}"
    );
    assert!(
        report["workload"]["crashing_calls_acked"].as_u64().unwrap() > 10,
        "{report}"
    );
    assert_eq!(
        report["faults"]["unexpected_deaths"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "a module's crash took a cage down: {report}"
    );
    assert!(
        report["outcome"]["job_runs"].as_u64().unwrap() > 10,
        "{report}"
    );
}
