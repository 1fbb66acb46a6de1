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

/// Makes a directory unwritable for the cage until dropped: `chmod a-w` for an ordinary user;
/// for root, whom permission bits do not stop, the immutable attribute (`chattr +i`).
struct ReadOnly {
    dirs: Vec<std::path::PathBuf>,
    immutable: bool,
}

impl ReadOnly {
    /// `None` when this machine offers no way to stop the test's own user writing (root
    /// without the immutable attribute); the fault-hook tests cover the same steps anywhere.
    fn lock(dirs: &[std::path::PathBuf]) -> Option<ReadOnly> {
        use std::os::unix::fs::PermissionsExt;
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
        let guard = ReadOnly {
            dirs: dirs.to_vec(),
            immutable: root,
        };
        for d in dirs {
            let locked = if root {
                std::process::Command::new("chattr")
                    .arg("+i")
                    .arg(d)
                    .status()
                    .is_ok_and(|s| s.success())
            } else {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o555)).is_ok()
            };
            if !locked {
                return None;
            }
        }
        // Proof the lock holds for this user, as it will for the cage.
        let probe = dirs[0].join("probe");
        if std::fs::write(&probe, b"").is_ok() {
            let _ = std::fs::remove_file(probe);
            return None;
        }
        Some(guard)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        for d in &self.dirs {
            if self.immutable {
                let _ = std::process::Command::new("chattr")
                    .arg("-i")
                    .arg(d)
                    .status();
            } else {
                let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
            }
        }
    }
}

/// The reported case, end to end: with the queue directory read-only, sled cannot make the
/// file it keeps a large value in, so the enqueue fails after its journal entry was written.
/// The refusal must be final: after `kill -9` and a restart the call is not pending and never
/// runs.
#[test]
fn an_enqueue_refused_by_a_read_only_queue_directory_never_runs() {
    use cages::runtime::transport::client::Client;
    use cages::runtime::transport::protocol::EnqueueRequest;
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("back");
    let out = site.path().join("effects.txt");
    let args = |tag: &str| {
        format!(
            r#"{{"file": {:?}, "tag": "{tag}"}}"#,
            out.display().to_string()
        )
    };
    let ran = |tag: &str| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains(tag)
    };
    site.enqueue("back", "echo.append", &args("before"), &[]);
    eventually(Duration::from_secs(10), "the first call ran", || {
        ran("before").then_some(())
    });

    let queue = site.path().join("data/back/queue");
    let Some(lock) = ReadOnly::lock(&[queue.clone(), queue.join("blobs")]) else {
        eprintln!(
            "skipped: running as root without the immutable attribute (chattr +i), nothing \
             stops this user writing; the fault-hook tests in this file cover the same steps"
        );
        return;
    };
    // Larger than sled keeps inline (a quarter of its 512 KiB segment): sled writes it to a
    // file of its own in blobs/, which the lock refuses.
    let pad = "x".repeat(200_000);
    let big = format!(
        r#"{{"file": {:?}, "tag": "during", "pad": "{pad}"}}"#,
        out.display().to_string()
    );
    let mut client = Client::connect("back", &site.route("back")).unwrap();
    let refused = client.enqueue(
        EnqueueRequest {
            target: "back".into(),
            module: "echo".into(),
            method: "append".into(),
            args: big.into_bytes(),
            queue: "retry".into(),
            priority: 0,
            key: None,
            delay_ms: 0,
        },
        Duration::from_secs(10),
    );
    let reason = format!("{:?}", refused.expect_err("the enqueue is refused"));
    assert!(reason.contains("not accepted"), "{reason}");
    assert!(site.listing("pending", Some("back")).is_empty());

    cage.kill9();
    drop(lock);
    let cage = site.start("back");
    assert!(
        site.listing("pending", Some("back")).is_empty(),
        "a refused call is not pending after a restart: {}",
        cage.log()
    );
    site.enqueue("back", "echo.append", &args("after"), &[]);
    eventually(
        Duration::from_secs(10),
        "a call after the restart ran",
        || ran("after").then_some(()),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(!ran("during"), "a refused call must never run");
    assert!(!cage.log().contains("panicked"), "{}", cage.log());
}
