//! A queue that cannot reach its disk says "not accepted", never success, keeps serving what it
//! can, and takes calls again once the disk is back.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

#[test]
fn a_failed_flush_is_not_accepted_and_the_cage_recovers() {
    let mut site = Site::new();
    site.cage("back", &["echo", "orders"], "");
    site.install("echo", &module_so("echo", &[]));
    site.install("orders", &module_so("orders", &[]));
    let fault = site.path().join("disk-fails");
    let _cage = site.start_with_env(
        "back",
        &[("CAGE_FAULT_FLUSH_FILE", fault.to_str().unwrap())],
    );
    let out = site.path().join("effects.txt");
    let args = |tag: &str| {
        format!(
            r#"{{"file": {:?}, "tag": "{tag}"}}"#,
            out.display().to_string()
        )
    };

    let ok = site.enqueue("back", "echo.append", &args("before"), &[]);
    eventually(Duration::from_secs(10), "the first call ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains("before"))
    });

    std::fs::write(&fault, b"").unwrap();
    let refused = site.cage_cmd(&["enqueue", "back", "echo.append", &args("during")]);
    assert_eq!(refused.code, 18, "{refused:?}");
    assert!(
        refused.stderr.contains("not accepted") && refused.stderr.contains("injected fault"),
        "{}",
        refused.stderr
    );
    // A chain is not stored either, and is taken back so it never runs.
    let chain = site.cage_cmd(&["chain", "back", "orders.mark", "{}", "--queue", "retry"]);
    assert_eq!(chain.code, 18, "{chain:?}");
    assert!(chain.stderr.contains("not stored"), "{chain:?}");
    // The cage still answers what needs no disk.
    assert_eq!(
        site.call("back", "echo.shout", r#""up""#).stdout.trim(),
        r#""UP""#
    );

    std::fs::remove_file(&fault).unwrap();
    let after = site.enqueue("back", "echo.append", &args("after"), &[]);
    let text = eventually(
        Duration::from_secs(10),
        "the call after recovery ran",
        || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|t| t.contains("after"))
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let text = std::fs::read_to_string(&out).unwrap_or(text);
    assert!(
        !text.contains("during"),
        "a call that was not accepted must never run: {text}"
    );
    assert!(text.contains(&ok) && text.contains(&after));
    let chains = site.cage_cmd(&["chains", "back", "--all", "--json"]);
    assert_eq!(chains.stdout.trim(), "[]", "{chains:?}");
    assert_eq!(site.call("back", "orders.runs", "null").stdout.trim(), "{}");
    assert!(site.listing("pending", Some("back")).is_empty());
}

#[test]
fn a_queue_database_whose_files_were_corrupted_is_refused_with_its_path() {
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("back");
    let id = site.enqueue("back", "echo.version", "null", &["--delay", "1h"]);
    cage.terminate();
    // A clean restart keeps the call.
    let mut cage = site.start("back");
    assert_eq!(site.show(&id).len(), 1);
    cage.terminate();

    let db = site.path().join("data/back/queue/db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    let garbage: Vec<u8> = (0..len.max(4096)).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&db, garbage).unwrap();
    let run = site.cage_cmd(&["run", "back"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("data/back/queue") && run.stderr.contains("corrupt"),
        "the refusal names the database and why: {run:?}"
    );
    assert!(!run.stderr.contains("panicked"), "{run:?}");
}
