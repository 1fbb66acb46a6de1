//! Example module: an order pipeline built from chains. Each step takes the chain's bag (a JSON
//! object) and returns the keys it adds; `fulfil` and `fan_out` start child chains from inside
//! a call, `countdown` continues its own chain, `slow` lets tests watch `max_parallel`.

use cage_sdk::{export_module, CallError, Chain, Ctx, Handle, ResultOptions};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type Bag = Map<String, Value>;

fn number(bag: &Bag, key: &str) -> Result<i64, CallError> {
    bag.get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| CallError::bad_arguments(format!("the bag has no number {key:?}")))
}

/// Reserves stock: adds `reserved`.
fn reserve(_ctx: &Ctx, bag: Bag) -> Result<Value, CallError> {
    Ok(json!({ "reserved": number(&bag, "qty")? }))
}

/// Charges the card: adds `charged` (qty × price); a declined card is refused for good.
fn charge(_ctx: &Ctx, bag: Bag) -> Result<Value, CallError> {
    if bag.get("card").and_then(Value::as_str) == Some("declined") {
        return Err(CallError::permanent("card declined"));
    }
    Ok(json!({ "charged": number(&bag, "qty")? * number(&bag, "price")? }))
}

/// Ships the order: adds `shipped_by` (the cage that shipped it).
fn ship(ctx: &Ctx, _bag: Bag) -> Result<Value, CallError> {
    Ok(json!({ "shipped_by": ctx.cage() }))
}

/// Fails (to be retried) while the bag's `fail` is true.
fn flaky(_ctx: &Ctx, bag: Bag) -> Result<Value, CallError> {
    if bag.get("fail").and_then(Value::as_bool) == Some(true) {
        return Err(CallError::new("flaky step failed as asked"));
    }
    Ok(json!({ "flaky": "ok" }))
}

/// Counts its runs in the module's state, exactly once per queued call; sleeps `sleep_ms`
/// first (so a test can kill the cage mid-chain). Adds `marks` (how many steps marked so far).
fn mark(ctx: &Ctx, bag: Bag) -> Result<Value, CallError> {
    let ms = bag.get("sleep_ms").and_then(Value::as_u64).unwrap_or(0);
    std::thread::sleep(Duration::from_millis(ms));
    let state = ctx.state();
    let mut runs: Map<String, Value> = state.get_json("runs")?.unwrap_or_default();
    let n = runs.get(ctx.call_id()).and_then(Value::as_u64).unwrap_or(0) + 1;
    runs.insert(ctx.call_id().to_owned(), json!(n));
    state.put_json("runs", &runs)?;
    let marks = bag.get("marks").and_then(Value::as_u64).unwrap_or(0) + 1;
    Ok(json!({ "marks": marks }))
}

/// Runs counted by `mark`, by call id.
fn runs(ctx: &Ctx, _: ()) -> Result<Value, CallError> {
    Ok(ctx.state().get_json::<Value>("runs")?.unwrap_or(json!({})))
}

static RUNNING: AtomicUsize = AtomicUsize::new(0);
static MOST: AtomicUsize = AtomicUsize::new(0);

/// Sleeps `ms` while counting how many `slow` calls run at once; adds `slow_N` for input `n`.
fn slow(_ctx: &Ctx, bag: Bag) -> Result<Value, CallError> {
    let now = RUNNING.fetch_add(1, Ordering::SeqCst) + 1;
    MOST.fetch_max(now, Ordering::SeqCst);
    let ms = bag.get("ms").and_then(Value::as_u64).unwrap_or(100);
    std::thread::sleep(Duration::from_millis(ms));
    RUNNING.fetch_sub(1, Ordering::SeqCst);
    let n = number(&bag, "n")?;
    Ok(json!({ format!("slow_{n}"): ms }))
}

/// The most `slow` calls seen running at once since the last reset; resets.
fn most_parallel(_ctx: &Ctx, _: ()) -> Result<usize, CallError> {
    Ok(MOST.swap(0, Ordering::SeqCst))
}

#[derive(Deserialize)]
struct FanOut {
    /// Sleep of each chain, by input order.
    sleeps_ms: Vec<u64>,
    max_parallel: u32,
    queue: Option<String>,
    /// How to collect: `"children"` (`wait_for_children`, start order), `"any_children"`
    /// (`wait_for_any_children`) or `"any"` (`wait_for_any` on the handles), both by completion.
    wait: String,
}

/// Starts one `slow` chain per sleep, at most `max_parallel` at once; returns the inputs `n`
/// in the order the chains were yielded, and every result merged.
fn fan_out(ctx: &Ctx, args: FanOut) -> Result<Value, CallError> {
    let chains: Vec<Chain> = args
        .sleeps_ms
        .iter()
        .enumerate()
        .map(|(n, ms)| {
            let chain = Chain::new("orders.slow").input("n", n).input("ms", ms);
            match &args.queue {
                Some(q) => chain.on_queue(q),
                None => chain,
            }
        })
        .collect();
    let handles = ctx.enqueue_in_parallel(&chains, args.max_parallel)?;
    let waiter = match args.wait.as_str() {
        "children" => ctx.wait_for_children(),
        "any_children" => ctx.wait_for_any_children(),
        "any" => ctx.wait_for_any(&handles),
        other => return Err(CallError::bad_arguments(format!("wait {other:?}"))),
    };
    let mut order = Vec::new();
    let mut merged = Map::new();
    for finished in waiter {
        let finished = finished?;
        let n = handles
            .iter()
            .position(|h| *h == finished.handle)
            .ok_or_else(|| CallError::new("a finished chain that was not started here"))?;
        order.push(n);
        if let Value::Object(m) = finished.results {
            merged.extend(m);
        }
    }
    Ok(json!({ "order": order, "results": merged }))
}

#[derive(Deserialize)]
struct Fulfil {
    /// The chain, e.g. `"orders.reserve | orders.charge | ledger:orders.ship"`.
    steps: String,
    /// Its inputs.
    inputs: Bag,
    queue: Option<String>,
    /// `get_results` options.
    return_keys: Option<Vec<String>>,
    #[serde(default)]
    merge_children_results: bool,
    #[serde(default = "yes")]
    return_keys_only: bool,
    /// Wait with `raise_on_failure = false` and report a failure as data.
    #[serde(default)]
    tolerate_failure: bool,
}

fn yes() -> bool {
    true
}

/// Runs one chain as a child and returns its results (or, when tolerated, its failure).
fn fulfil(ctx: &Ctx, args: Fulfil) -> Result<Value, CallError> {
    let mut chain = Chain::new(&args.steps);
    chain.inputs = args.inputs;
    if let Some(q) = &args.queue {
        chain = chain.on_queue(q);
    }
    let options = ResultOptions {
        return_keys: args.return_keys,
        merge_children_results: args.merge_children_results,
        return_keys_only: args.return_keys_only,
    };
    if !args.tolerate_failure {
        return ctx.enqueue_child_and_get_results(&chain, &options);
    }
    let handle: Handle = ctx.enqueue_child(&chain)?;
    let finished = ctx
        .wait_for_any(std::slice::from_ref(&handle))
        .raise_on_failure(false)
        .next()
        .ok_or_else(|| CallError::new("nothing to wait for"))??;
    Ok(match finished.failure {
        Some(f) => {
            json!({ "failed": { "step": f.step, "call": f.call, "cage": f.cage, "reason": f.reason } })
        }
        None => ctx.get_results(&handle, &options)?,
    })
}

/// A step that starts its own child chain (`orders.reserve` with `qty` 2) and waits for it;
/// adds `nested`.
fn nested(ctx: &Ctx, _bag: Bag) -> Result<Value, CallError> {
    let child = Chain::new("orders.reserve").input("qty", 2);
    ctx.enqueue_child_and_get_results(&child, &ResultOptions::default())?;
    Ok(json!({ "nested": true }))
}

#[derive(Deserialize)]
struct Countdown {
    n: u32,
    #[serde(default)]
    sleep_ms: u64,
}

/// A continuation chain: counts in state, then continues with `n - 1` until 0.
fn countdown(ctx: &Ctx, args: Countdown) -> Result<Value, CallError> {
    std::thread::sleep(Duration::from_millis(args.sleep_ms));
    let state = ctx.state();
    let mut runs: Map<String, Value> = state.get_json("runs")?.unwrap_or_default();
    let n = runs.get(ctx.call_id()).and_then(Value::as_u64).unwrap_or(0) + 1;
    runs.insert(ctx.call_id().to_owned(), json!(n));
    state.put_json("runs", &runs)?;
    if args.n == 0 {
        return Ok(json!({ "lift_off": true }));
    }
    ctx.chain_next(
        "orders.countdown",
        &json!({ "n": args.n - 1, "sleep_ms": args.sleep_ms }),
    )
}

/// Starts a continuation chain `countdown` from inside a call; returns its id.
fn launch(ctx: &Ctx, n: u32) -> Result<String, CallError> {
    Ok(ctx
        .chain_start("orders.countdown", &json!({ "n": n }), "retry")?
        .0)
}

/// Calls `chain_next` outside any chain (a sync call): refused.
fn stray_next(ctx: &Ctx, _: ()) -> Result<Value, CallError> {
    ctx.chain_next("orders.reserve", &json!({}))
}

export_module! {
    name: "orders",
    version: env!("CARGO_PKG_VERSION"),
    methods: [
        reserve, charge, ship, flaky, mark, runs, slow, most_parallel, fan_out, fulfil, nested,
        countdown, launch, stray_next
    ],
}
