//! A stopped cage's queue: `cage pending`, `dead`, `show`, `cancel`, `revive` and `retry-now`
//! open its data directory directly (as the cage does), say so, and the cage started afterwards
//! finds the changes.

mod support;
use std::time::Duration;
use support::{eventually, module_so, Site};

#[test]
fn the_queue_of_a_stopped_cage_is_read_and_changed_in_place_and_the_cage_sees_it_later() {
    let mut site = Site::new();
    site.cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let out = site.path().join("effects.txt");
    let append = |tag: &str| {
        format!(
            r#"{{"file": {:?}, "tag": "{tag}"}}"#,
            out.display().to_string()
        )
    };
    let mut cage = site.start("back");
    let keep = site.enqueue("back", "echo.append", &append("kept"), &["--delay", "1h"]);
    let drop = site.enqueue(
        "back",
        "echo.append",
        &append("dropped"),
        &["--delay", "1h"],
    );
    let soon = site.enqueue("back", "echo.append", &append("soon"), &["--delay", "1h"]);
    let dead = site.enqueue("back", "echo.refuse", "\"no\"", &[]);
    eventually(Duration::from_secs(30), "one dead letter", || {
        (site.listing("dead", Some("back")).len() == 1).then_some(())
    });
    cage.stop(Duration::from_secs(10));

    // Listed from its data directory, saying so.
    let run = site.cage_cmd(&["pending", "back", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("(cage back is not running: read from data/back)"),
        "{run:?}"
    );
    let pending: Vec<serde_json::Value> = serde_json::from_str(&run.stdout).unwrap();
    let ids: Vec<&str> = pending
        .iter()
        .map(|c| c["record"]["call"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    for id in [&keep, &drop, &soon] {
        assert!(ids.contains(&id.as_str()), "{id} in {ids:?}");
    }
    let table = site.cage_cmd(&["dead", "back"]);
    assert_eq!(table.code, 0, "{table:?}");
    assert!(table.stdout.contains(&dead), "{table:?}");
    let shown = site.cage_cmd(&["show", &keep]);
    assert_eq!(shown.code, 0, "{shown:?}");
    assert!(shown.stdout.contains("echo.append"), "{shown:?}");

    // Changed in place.
    let cancelled = site.cage_cmd(&["cancel", &drop]);
    assert_eq!(cancelled.code, 0, "{cancelled:?}");
    let due = site.cage_cmd(&["retry-now", &soon]);
    assert_eq!(due.code, 0, "{due:?}");
    let revived = site.cage_cmd(&["revive", &dead]);
    assert_eq!(revived.code, 0, "{revived:?}");
    assert_eq!(site.listing("pending", Some("back")).len(), 3);
    assert!(site.listing("dead", Some("back")).is_empty());

    // The cage started again finds the changes: the call made due runs, the cancelled one
    // is gone, the revived one runs (and is refused again).
    let _cage = site.start("back");
    let text = eventually(Duration::from_secs(30), "the call made due ran", || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|t| t.contains("soon"))
    });
    assert!(!text.contains("dropped"), "{text}");
    let left: Vec<String> = site
        .listing("pending", Some("back"))
        .iter()
        .map(|c| c["record"]["call"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, vec![keep.clone()]);
    let dead_again = eventually(
        Duration::from_secs(30),
        "the revived call refused again",
        || {
            let dead = site.listing("dead", Some("back"));
            (dead.len() == 1).then_some(dead)
        },
    );
    let what = dead_again[0]["record"]["events"][0]["what"]
        .as_str()
        .unwrap();
    assert_eq!(what, "revived by an operator (cage not running)");
}
