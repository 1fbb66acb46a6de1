//! Module state with exactly-once effect: a counter incremented by 10 000 queued calls ends at
//! exactly 10 000, although the source and target cages are killed with SIGKILL throughout.

mod support;
use std::sync::Arc;
use std::time::Duration;
use support::{echo_call, eventually, module_so, Enqueuer, Site};

const CALLS: usize = 10_000;
const KILLS: usize = 8;

#[test]
fn a_counter_incremented_by_every_call_ends_at_exactly_the_number_of_calls() {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"1s\"\ngive_up_after = \"10m\"\n",
    );
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let site = Arc::new(site);
    let mut front = site.start("front");
    let mut back = site.start("back");

    let enqueuer = {
        let site = site.clone();
        std::thread::spawn(move || {
            let mut enqueuer = Enqueuer::new(&site, "front");
            for i in 0..CALLS {
                let request = echo_call(
                    "back",
                    "count",
                    serde_json::json!({ "key": "hits" }),
                    Some(format!("hit-{i}")),
                );
                enqueuer.enqueue(&request);
            }
        })
    };

    let mut seed = 0x0c0f_fee5_u64;
    for k in 0..KILLS {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(300 + (seed >> 33) % 700));
        if k % 2 == 0 {
            back.kill9();
            back = site.start("back");
        } else {
            front.kill9();
            front = site.start("front");
        }
    }
    enqueuer.join().expect("the enqueuer failed");

    eventually(Duration::from_secs(300), "both queues drain", || {
        (site.listing("pending", Some("front")).is_empty()
            && site.listing("pending", Some("back")).is_empty())
        .then_some(())
    });
    let run = site.call("back", "echo.count_get", r#"{"key": "hits"}"#);
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        run.stdout.trim(),
        CALLS.to_string(),
        "every call counted exactly once"
    );
    assert!(site.listing("dead", None).is_empty());
}
