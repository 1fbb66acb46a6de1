//! Nothing acknowledged is lost: `kill -9` of the source or the target cage at random moments
//! while 1 000 queued calls flow, then restart; every call runs, and runs again only where a
//! kill interrupted that very attempt.

mod support;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{echo_call, eventually, module_so, Enqueuer, Site};

const CALLS: usize = 1000;
const KILLS: usize = 8;

/// A small deterministic generator, so a failing run can be replayed from its seed.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn kill_9_of_source_or_target_loses_nothing() {
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"1s\"\ngive_up_after = \"10m\"\njitter = 0.1\nconcurrency = 4\n",
    );
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let out = site.path().join("effects.txt");
    let site = Arc::new(site);
    let cages = Arc::new(Mutex::new(HashMap::from([
        ("front", site.start("front")),
        ("back", site.start("back")),
    ])));

    // The enqueuer: every call carries an idempotency key, and an enqueue whose answer was lost
    // to a kill is sent again with the same key, as a careful client would.
    let acked = Arc::new(AtomicUsize::new(0));
    let enqueuer = {
        let (site, out, acked) = (site.clone(), out.clone(), acked.clone());
        std::thread::spawn(move || {
            let mut enqueuer = Enqueuer::new(&site, "front");
            for i in 0..CALLS {
                let request = echo_call(
                    "back",
                    "append",
                    serde_json::json!({ "file": out, "tag": format!("t{i}"), "sleep_ms": 20 }),
                    Some(format!("t{i}")),
                );
                enqueuer.enqueue(&request);
                acked.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // The killer: at random moments, kill -9 one of the two cages and start it again.
    let mut rng = Lcg(0x5eed_cafe);
    let mut back_kills = 0;
    let mut kills_mid_flow = 0;
    for _ in 0..KILLS {
        std::thread::sleep(Duration::from_millis(150 + rng.below(400)));
        let victim = if rng.below(2) == 0 { "front" } else { "back" };
        back_kills += usize::from(victim == "back");
        let ran = std::fs::read_to_string(&out)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        kills_mid_flow += usize::from(ran < CALLS);
        let mut cages = cages.lock().unwrap();
        cages.get_mut(victim).unwrap().kill9();
        cages.insert(victim, site.start(victim));
    }
    assert!(
        kills_mid_flow >= KILLS / 2,
        "only {kills_mid_flow} of {KILLS} kills hit while calls were still running"
    );
    enqueuer.join().expect("the enqueuer failed");
    assert_eq!(acked.load(Ordering::Relaxed), CALLS);

    let lines = eventually(Duration::from_secs(120), "every call ran", || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        let mut tags: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(2)).collect();
        tags.sort();
        tags.dedup();
        (tags.len() == CALLS && text.ends_with('\n'))
            .then(|| text.lines().map(str::to_owned).collect::<Vec<_>>())
    });

    // Each tag ran under one call id (the key deduplicated re-sent enqueues), and a line repeats
    // only as the same call id and attempt number: a run cut short by a kill of the target.
    let mut by_tag: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for l in &lines {
        let parts: Vec<&str> = l.split(' ').collect();
        by_tag
            .entry(parts[2].to_owned())
            .or_default()
            .push((parts[0].to_owned(), parts[1].to_owned()));
    }
    let mut repeated = 0;
    for (tag, runs) in &by_tag {
        assert!(
            runs.iter().all(|r| r.0 == runs[0].0),
            "tag {tag} ran under several call ids: {runs:?}"
        );
        if runs.len() > 1 {
            repeated += 1;
        }
    }
    // At most every attempt running at the moment of each kill of the target repeats.
    assert!(
        repeated <= back_kills * 16,
        "{repeated} calls ran twice after {back_kills} kills of the target"
    );
    eventually(Duration::from_secs(30), "both queues drain", || {
        (site.listing("pending", Some("front")).is_empty()
            && site.listing("pending", Some("back")).is_empty())
        .then_some(())
    });
    assert!(site.listing("dead", None).is_empty(), "no call died");
    eprintln!("{CALLS} calls, {KILLS} kills ({back_kills} of the target, {kills_mid_flow} mid-flow), {repeated} calls ran twice");
}
