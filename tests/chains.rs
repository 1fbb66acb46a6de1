//! Chains end to end: `cage chain` directly and on a queue across cages, failure in the middle,
//! the module API (child chains, waits, results, parallel caps), continuation chains, cancel
//! cascading to children, and a durable chain surviving `kill -9` of its cages.

mod support;
use serde_json::{json, Value};
use std::time::Duration;
use support::{eventually, module_so, Site};

const FAST_RETRY: &str = "[queues.retry]\nfirst_retry = \"100ms\"\ngrowth = 1.5\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n";

/// Cages `shop` and `depot`, both serving `orders`, with quick retries.
fn shop_and_depot() -> Site {
    let mut site = Site::new();
    site.write("config/config_execute_on.toml", FAST_RETRY);
    site.cage("shop", &["orders"], "")
        .cage("depot", &["orders"], "");
    site.install("orders", &module_so("orders", &[]));
    site
}

const PIPELINE: &str = "orders.reserve | orders.charge | depot:orders.ship";

fn json_of(run: &support::Run) -> Value {
    assert_eq!(run.code, 0, "{run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run:?}"))
}

fn chains(site: &Site, cage: &str) -> Vec<Value> {
    let run = site.cage_cmd(&["chains", cage, "--all", "--json"]);
    json_of(&run).as_array().cloned().unwrap_or_default()
}

fn children_of(site: &Site, cage: &str, parent: &str) -> Vec<Value> {
    chains(site, cage)
        .into_iter()
        .filter(|c| c["parent"] == parent)
        .collect()
}

fn chain(site: &Site, cage: &str, id: &str) -> Value {
    chains(site, cage)
        .into_iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no chain {id} on {cage}"))
}

#[test]
fn a_chain_runs_directly_and_on_a_queue_across_cages() {
    let site = shop_and_depot();
    let (_shop, _depot) = (site.start("shop"), site.start("depot"));
    let inputs = r#"{"qty": 2, "price": 5}"#;
    let expected = json!({"reserved": 2, "charged": 10, "shipped_by": "depot"});

    // Directly: each step a sync call; each call receives the bag as it stands.
    let direct = site.cage_cmd(&["chain", "shop", PIPELINE, inputs, "--json"]);
    assert_eq!(json_of(&direct), expected);

    // On a queue: each step a durable queued call; the depot step is delivered to depot.
    let queued = site.cage_cmd(&[
        "chain", "shop", PIPELINE, inputs, "--queue", "retry", "--json",
    ]);
    assert_eq!(json_of(&queued), expected);

    // Result shapes: chosen keys as a list in order; the inputs only when asked for.
    let keys = site.cage_cmd(&[
        "chain",
        "shop",
        PIPELINE,
        inputs,
        "--return-keys",
        "shipped_by,qty,charged",
        "--json",
    ]);
    assert_eq!(json_of(&keys), json!(["depot", null, 10]));
    let all = site.cage_cmd(&["chain", "shop", PIPELINE, inputs, "--all-keys", "--json"]);
    assert_eq!(json_of(&all)["qty"], 2);

    // --async returns the id at once; `cage chains` shows its path once done.
    let started = site.cage_cmd(&[
        "chain", "shop", PIPELINE, inputs, "--queue", "retry", "--async",
    ]);
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_owned();
    let done = eventually(Duration::from_secs(30), "the async chain finishes", || {
        let c = chain(&site, "shop", &id);
        (c["state"] == "done").then_some(c)
    });
    let path: Vec<(String, String)> = done["path"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["call"].as_str().unwrap().to_owned(),
                r["cage"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        path,
        vec![
            ("orders.reserve".to_owned(), "shop".to_owned()),
            ("orders.charge".to_owned(), "shop".to_owned()),
            ("depot:orders.ship".to_owned(), "depot".to_owned()),
        ]
    );
    let table = site.cage_cmd(&["chains", "--all"]);
    assert!(
        table.stdout.contains(&id) && table.stdout.contains("done"),
        "{table:?}"
    );
    let shown = site.cage_cmd(&["show", &id]);
    assert!(shown.stdout.contains("depot:orders.ship"), "{shown:?}");
    assert!(site.listing("pending", None).is_empty());
}

#[test]
fn a_failure_in_the_middle_stops_the_chain_with_only_its_error() {
    let site = shop_and_depot();
    let (_shop, _depot) = (site.start("shop"), site.start("depot"));
    let declined = r#"{"qty": 2, "price": 5, "card": "declined"}"#;
    for extra in [&[][..], &["--queue", "retry"][..]] {
        let mut args = vec!["chain", "shop", PIPELINE, declined];
        args.extend_from_slice(extra);
        let run = site.cage_cmd(&args);
        assert_eq!(
            run.code, 24,
            "a failed chain has its own exit code: {run:?}"
        );
        for part in ["step 2", "orders.charge", "cage shop", "card declined"] {
            assert!(run.stderr.contains(part), "{part:?} missing: {run:?}");
        }
        assert!(
            run.stdout.trim().is_empty(),
            "no results of a failed chain: {run:?}"
        );
    }
    for c in chains(&site, "shop") {
        assert_eq!(c["state"], "failed");
        assert_eq!(
            c["path"].as_array().unwrap().len(),
            2,
            "ship never ran: {c}"
        );
        assert_eq!(c["failure"]["call"], "orders.charge");
    }
    // The queued step that was refused for good sits in dead letters with its reason.
    let dead = site.listing("dead", Some("shop"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0]["record"]["dead_reason"]
        .as_str()
        .unwrap()
        .contains("card declined"));

    // Bad chains are refused before anything runs.
    let unknown = site.cage_cmd(&[
        "chain",
        "shop",
        "orders.reserve | nowhere:orders.ship",
        "{}",
    ]);
    assert_eq!(unknown.code, 14, "{unknown:?}");
    assert!(unknown.stderr.contains("nowhere"), "{unknown:?}");
    let malformed = site.cage_cmd(&["chain", "shop", "orders.reserve | ship", "{}"]);
    assert_eq!(malformed.code, 11, "{malformed:?}");
    let not_object = site.cage_cmd(&["chain", "shop", "orders.reserve", "[1]"]);
    assert_eq!(not_object.code, 11, "{not_object:?}");
}

#[test]
fn a_module_runs_child_chains_and_reads_their_results() {
    let site = shop_and_depot();
    let (_shop, _depot) = (site.start("shop"), site.start("depot"));
    let fulfil = |args: Value| site.call("shop", "orders.fulfil", &args.to_string());

    // enqueue_child_and_get_results, on a queue and directly.
    for queue in [json!("retry"), Value::Null] {
        let run =
            fulfil(json!({"steps": PIPELINE, "inputs": {"qty": 3, "price": 2}, "queue": queue}));
        assert_eq!(
            json_of(&run),
            json!({"reserved": 3, "charged": 6, "shipped_by": "depot"})
        );
    }
    // get_results with return_keys (a list, in order) and return_keys_only = false.
    let run = fulfil(json!({
        "steps": "orders.reserve | orders.charge", "inputs": {"qty": 3, "price": 2},
        "return_keys": ["charged", "qty", "reserved"], "return_keys_only": false
    }));
    assert_eq!(json_of(&run), json!([6, 3, 3]));
    let run = fulfil(json!({
        "steps": "orders.reserve", "inputs": {"qty": 3}, "return_keys": ["qty"]
    }));
    assert_eq!(
        json_of(&run),
        json!([null]),
        "inputs are left out by default"
    );

    // merge_children_results takes the results of chains the steps themselves started.
    let merged = fulfil(json!({
        "steps": "orders.nested | orders.charge", "inputs": {"qty": 1, "price": 7},
        "queue": "retry", "merge_children_results": true
    }));
    assert_eq!(
        json_of(&merged),
        json!({"reserved": 2, "nested": true, "charged": 7})
    );
    let unmerged = fulfil(json!({
        "steps": "orders.nested | orders.charge", "inputs": {"qty": 1, "price": 7}, "queue": "retry"
    }));
    assert_eq!(json_of(&unmerged), json!({"nested": true, "charged": 7}));

    // Waiting raises the child's failure; with raise_on_failure = false it is data.
    let declined = json!({"qty": 1, "price": 1, "card": "declined"});
    let raised = fulfil(json!({"steps": PIPELINE, "inputs": declined, "queue": "retry"}));
    assert_eq!(raised.code, 24, "{raised:?}");
    assert!(raised.stderr.contains("card declined"), "{raised:?}");
    let tolerated = fulfil(json!({
        "steps": PIPELINE, "inputs": declined, "queue": "retry", "tolerate_failure": true
    }));
    assert_eq!(
        json_of(&tolerated)["failed"],
        json!({"step": 1, "call": "orders.charge", "cage": "shop", "reason": "permanent rejection: card declined"})
    );

    // The children are linked to the call that started them.
    let children: Vec<Value> = chains(&site, "shop")
        .into_iter()
        .filter(|c| c["parent"].is_string())
        .collect();
    assert!(children.len() >= 8, "{children:?}");
    assert!(children.iter().all(|c| c["id"]
        .as_str()
        .unwrap()
        .starts_with(c["parent"].as_str().unwrap())));

    // chain_next outside a chain is refused by name.
    let stray = site.call("shop", "orders.stray_next", "null");
    assert_eq!(stray.code, 11, "{stray:?}");
    assert!(stray.stderr.contains("chain_next"), "{stray:?}");
}

#[test]
fn waits_yield_by_completion_or_start_order_and_max_parallel_is_never_exceeded() {
    let mut site = shop_and_depot();
    // `orders` counts the calls running at once in a static, which only calls sharing one
    // address space see: its calls run on the cage's threads here, not in worker processes.
    site.cage("shop", &["orders"], "isolation = \"in_process\"\n");
    let _shop = site.start("shop");
    let fan_out = |sleeps: &[u64], max_parallel: u32, queue: Value, wait: &str| {
        let args = json!({"sleeps_ms": sleeps, "max_parallel": max_parallel, "queue": queue, "wait": wait});
        json_of(&site.call("shop", "orders.fan_out", &args.to_string()))
    };
    let most = || json_of(&site.call("shop", "orders.most_parallel", "null"));
    most();

    // wait_for_any_children and wait_for_any: by completion (all start at once, shortest first).
    for (wait, queue) in [("any_children", json!("retry")), ("any", Value::Null)] {
        let out = fan_out(&[2000, 400, 1000, 10], 0, queue, wait);
        assert_eq!(out["order"], json!([3, 1, 2, 0]), "{wait}: {out}");
        assert_eq!(out["results"]["slow_0"], 2000);
        assert_eq!(most(), json!(4));
    }

    // wait_for_children: in start order, whatever the completion order.
    let out = fan_out(&[300, 10, 100], 0, Value::Null, "children");
    assert_eq!(out["order"], json!([0, 1, 2]), "{out}");
    most();

    // enqueue_in_parallel with a cap, queued and direct: the module saw at most 2 at once.
    for queue in [json!("retry"), Value::Null] {
        let out = fan_out(&[150, 150, 150, 150, 150, 150], 2, queue, "any");
        assert_eq!(out["order"].as_array().unwrap().len(), 6, "{out}");
        assert_eq!(most(), json!(2), "max_parallel 2 held and was used");
    }
}

#[test]
fn a_continuation_chain_goes_on_until_its_last_call() {
    let site = shop_and_depot();
    let (_shop, _depot) = (site.start("shop"), site.start("depot"));
    let started = site.cage_cmd(&["chain", "start", "shop.orders.countdown", r#"{"n": 3}"#]);
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_owned();
    let done = eventually(Duration::from_secs(30), "the countdown ends", || {
        let c = chain(&site, "shop", &id);
        (c["state"] == "done").then_some(c)
    });
    assert_eq!(done["path"].as_array().unwrap().len(), 4, "{done}");
    assert_eq!(done["bag"]["lift_off"], true);
    let runs = json_of(&site.call("shop", "orders.runs", "null"));
    let runs = runs.as_object().unwrap();
    assert_eq!(runs.len(), 4, "{runs:?}");
    assert!(
        runs.values().all(|n| *n == 1),
        "each call ran once: {runs:?}"
    );

    // ctx.chain_start from inside a call.
    let launched = json_of(&site.call("shop", "orders.launch", "1"));
    let id = launched.as_str().unwrap().to_owned();
    eventually(Duration::from_secs(30), "the launched chain ends", || {
        (chain(&site, "shop", &id)["state"] == "done").then_some(())
    });
    let bad = site.cage_cmd(&["chain", "start", "shop.orders", "{}"]);
    assert_eq!(bad.code, 11, "{bad:?}");
}

#[test]
fn cancelling_the_parent_cancels_its_pending_children() {
    let site = shop_and_depot();
    let _shop = site.start("shop");
    let args = json!({"sleeps_ms": [800, 800, 800, 800], "max_parallel": 1, "queue": "retry", "wait": "any_children"});
    let parent = site.enqueue("shop", "orders.fan_out", &args.to_string(), &[]);
    let children = eventually(
        Duration::from_secs(20),
        "the parent starts its children",
        || {
            let c = children_of(&site, "shop", &parent);
            (c.len() == 4).then_some(c)
        },
    );
    assert_eq!(
        children.iter().filter(|c| c["state"] == "held").count(),
        3,
        "max_parallel 1 holds three: {children:?}"
    );
    let shown = site.cage_cmd(&["show", &parent]);
    assert_eq!(shown.stdout.matches("child ").count(), 4, "{shown:?}");

    let run = site.cage_cmd(&["cancel", &parent]);
    assert_eq!(run.code, 0, "{run:?}");
    eventually(
        Duration::from_secs(20),
        "children cancelled, nothing pending",
        || {
            let children = children_of(&site, "shop", &parent);
            (children.iter().all(|c| c["state"] == "cancelled")
                && site.listing("pending", Some("shop")).is_empty())
            .then_some(())
        },
    );
}

#[test]
fn a_durable_chain_survives_kill_9_of_its_cages_and_finishes_once() {
    let site = shop_and_depot();
    let (mut shop, mut depot) = (site.start("shop"), site.start("depot"));
    let steps = "orders.mark | depot:orders.mark | orders.mark | depot:orders.mark | orders.mark | orders.mark";
    let started = site.cage_cmd(&[
        "chain",
        "shop",
        steps,
        r#"{"sleep_ms": 400}"#,
        "--queue",
        "retry",
        "--async",
    ]);
    assert_eq!(started.code, 0, "{started:?}");
    let id = started.stdout.trim().to_owned();

    // Kill the owner mid-step, then the depot, then the owner again; restart each time.
    for (k, wait_ms) in [700u64, 900, 600].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(wait_ms));
        if k % 2 == 0 {
            shop.kill9();
            shop = site.start("shop");
        } else {
            depot.kill9();
            depot = site.start("depot");
        }
    }
    let done = eventually(Duration::from_secs(60), "the chain finishes", || {
        let c = chain(&site, "shop", &id);
        (c["state"] == "done").then_some(c)
    });
    assert_eq!(
        done["path"].as_array().unwrap().len(),
        6,
        "each step once in the path: {done}"
    );
    assert_eq!(done["bag"]["marks"], 6, "{done}");
    // Module state commits with each step's completion: every step counted exactly once.
    let mut runs = json_of(&site.call("shop", "orders.runs", "null"))
        .as_object()
        .unwrap()
        .clone();
    runs.extend(
        json_of(&site.call("depot", "orders.runs", "null"))
            .as_object()
            .unwrap()
            .clone(),
    );
    assert_eq!(runs.len(), 6, "{runs:?}");
    assert!(runs.values().all(|n| *n == 1), "{runs:?}");
    assert!(site.listing("pending", None).is_empty());
    assert!(site.listing("dead", None).is_empty());
    for log in [shop.log(), depot.log()] {
        assert!(!log.contains("panicked"), "{log}");
    }
}
