//! The queue's journal in real cages: what was acknowledged before a `kill -9` is replayed on
//! the next start, a last entry that a crash cut short is left out with a warning, a change
//! that failed and was taken back is left out, a call completed just before the crash is
//! neither lost nor run again, and a graceful stop leaves nothing to replay.

mod support;
use std::path::{Path, PathBuf};
use std::time::Duration;
use support::{eventually, module_so, Site};

/// The newest journal segment of cage `cage`.
fn newest_segment(site: &Site, cage: &str) -> PathBuf {
    let dir = site.path().join(format!("data/{cage}/queue"));
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("journal-") && n.ends_with(".log"))
        })
        .collect();
    segments.sort();
    segments.pop().expect("a journal segment")
}

/// Where the entries of a segment end: each is a 4-byte length, a 4-byte CRC and the payload,
/// after an 8-byte header; the zeros the segment was made with follow the last one.
fn end_of_entries(segment: &Path) -> usize {
    let bytes = std::fs::read(segment).unwrap();
    let mut at = 8;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            return at;
        }
        at += 8 + len;
    }
}

/// A site with one cage, `back`, serving `echo`.
fn back_with_echo() -> Site {
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    site
}

fn pending_ids(site: &Site) -> Vec<String> {
    let mut ids: Vec<String> = site
        .listing("pending", Some("back"))
        .iter()
        .map(|c| c["record"]["call"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn acknowledged_calls_are_replayed_after_kill_9_and_a_torn_entry_is_left_out() {
    let site = back_with_echo();
    let mut cage = site.start("back");
    let mut ids: Vec<String> = (0..40)
        .map(|_| site.enqueue("back", "echo.version", "null", &["--delay", "1h"]))
        .collect();
    ids.sort();
    cage.kill9();

    // A write the crash cut short: an entry header promising more bytes than follow.
    let segment = newest_segment(&site, "back");
    let end = end_of_entries(&segment);
    assert!(end > 8, "the acknowledged calls are in the journal");
    let mut torn = 4096u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xab; 20]);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &torn, end as u64).unwrap();
    drop(file);

    let mut cage = site.start("back");
    assert_eq!(pending_ids(&site), ids, "every acknowledged call is back");
    let log = cage.log();
    assert!(log.contains("replayed from the journal"), "{log}");
    assert!(
        log.contains("cut short by a crash") && log.contains("journal-"),
        "the torn entry is named: {log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // The cage goes on writing, and a graceful stop checkpoints: nothing to replay next time.
    ids.push(site.enqueue("back", "echo.version", "null", &["--delay", "1h"]));
    ids.sort();
    cage.terminate();
    let cage = site.start("back");
    assert_eq!(pending_ids(&site), ids);
    let log = cage.log();
    assert!(!log.contains("replayed from the journal"), "{log}");
    assert!(!log.contains("cut short"), "{log}");
}

/// A change taken back (its journal write failed, so the queue goes on) and a checkpoint: a
/// graceful stop checkpoints with the void in place, the next start has nothing to replay, and
/// the refused call stays gone; a crash before the checkpoint replays around it.
#[test]
fn a_taken_back_change_stays_out_through_checkpoints_and_replays() {
    let site = back_with_echo();
    let fault = site.path().join("journal-fault");
    let env = [("CAGE_FAULT_JOURNAL_FILE", fault.to_str().unwrap())];
    let mut cage = site.start_with_env("back", &env);
    let mut ids = vec![site.enqueue("back", "echo.version", "null", &["--delay", "1h"])];
    std::fs::write(&fault, "write").unwrap();
    let refused = site.cage_cmd(&["enqueue", "back", "echo.version", "null", "--delay", "1h"]);
    std::fs::remove_file(&fault).unwrap();
    assert_eq!(refused.code, 18, "{refused:?}");
    ids.push(site.enqueue("back", "echo.version", "null", &["--delay", "1h"]));
    ids.sort();
    assert_eq!(pending_ids(&site), ids);

    // A crash: the replay leaves the refused change out and keeps the others.
    cage.kill9();
    let mut cage = site.start_with_env("back", &env);
    assert_eq!(pending_ids(&site), ids);
    let log = cage.log();
    assert!(
        log.contains("1 change(s) that failed and were taken back left out of the replay"),
        "{log}"
    );

    // A graceful stop checkpoints: nothing is left to replay, and nothing comes back.
    cage.terminate();
    let cage = site.start_with_env("back", &env);
    assert_eq!(pending_ids(&site), ids);
    let log = cage.log();
    assert!(
        !log.contains("replayed") && !log.contains("taken back"),
        "{log}"
    );
}

/// The call ids a file of `echo.append` lines names, one per run.
fn runs_in(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut ids: Vec<String> = text
        .lines()
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    ids.sort();
    ids
}

/// Calls run to completion, then a `kill -9` before the next checkpoint: their completions
/// are only in the journal. The next start replays them: no call comes back as pending, and
/// none runs a second time (each left its mark once); a call enqueued after the restart runs,
/// so the queue was read and went on.
#[test]
fn calls_completed_just_before_kill_9_are_neither_lost_nor_run_twice() {
    let site = back_with_echo();
    let mut cage = site.start("back");
    let file = site.path().join("runs.txt");
    let args = format!(
        r#"{{"file": {:?}, "tag": "once"}}"#,
        file.display().to_string()
    );
    let mut ids: Vec<String> = (0..20)
        .map(|_| site.enqueue("back", "echo.append", &args, &[]))
        .collect();
    ids.sort();
    eventually(
        Duration::from_secs(30),
        "every call ran and completed",
        || (runs_in(&file) == ids && pending_ids(&site).is_empty()).then_some(()),
    );
    // The completions have not reached a checkpoint (one runs every 30 s at most): the
    // journal holds them.
    assert!(end_of_entries(&newest_segment(&site, "back")) > 8);
    cage.kill9();

    let cage = site.start("back");
    assert!(
        cage.log().contains("replayed from the journal"),
        "{}",
        cage.log()
    );
    let after = site.enqueue("back", "echo.append", &args, &[]);
    let mut all = ids.clone();
    all.push(after);
    all.sort();
    eventually(
        Duration::from_secs(30),
        "the call enqueued after the restart ran",
        || pending_ids(&site).is_empty().then_some(()),
    );
    assert_eq!(runs_in(&file), all, "each call ran exactly once");
    assert!(site.listing("dead", Some("back")).is_empty());
}
