//! Example module `echo`: the smallest useful module, and a test bed for the cage.

use cage_sdk::{export_module, CallError, Ctx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Which build answered; the `v2` feature makes the change visible after a hot swap.
const BUILD: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };
const VERSION: &str = if cfg!(feature = "v2") {
    "1.0.0+v2"
} else {
    "1.0.0"
};

#[derive(Serialize)]
struct Echoed {
    echo: Value,
    build: &'static str,
    cage: String,
    call_id: String,
}

fn echo(ctx: &Ctx, args: Value) -> Result<Echoed, CallError> {
    Ok(Echoed {
        echo: args,
        build: BUILD,
        cage: ctx.cage().to_owned(),
        call_id: ctx.call_id().to_owned(),
    })
}

fn shout(_ctx: &Ctx, text: String) -> Result<String, CallError> {
    let loud = text.to_uppercase();
    Ok(if cfg!(feature = "v2") {
        format!("{loud}!")
    } else {
        loud
    })
}

#[derive(Deserialize)]
struct Sleep {
    ms: u64,
}

/// Sleeps, then reports which build ran: lets tests keep a call in flight across a swap.
fn sleep(ctx: &Ctx, args: Sleep) -> Result<Value, CallError> {
    ctx.info(&format!("sleeping {} ms", args.ms));
    std::thread::sleep(Duration::from_millis(args.ms));
    Ok(serde_json::json!({ "slept_ms": args.ms, "build": BUILD }))
}

fn version(_ctx: &Ctx, _: ()) -> Result<&'static str, CallError> {
    Ok(VERSION)
}

/// Panics with the given message, to show the cage surviving a module panic.
fn boom(_ctx: &Ctx, message: String) -> Result<(), CallError> {
    panic!("{message}")
}

#[derive(Deserialize)]
struct Forward {
    cage: String,
    target: String,
    args: Value,
}

/// Calls another cage's method through the host and returns its result.
fn forward(ctx: &Ctx, args: Forward) -> Result<Value, CallError> {
    ctx.call(
        &args.cage,
        &args.target,
        &args.args,
        Duration::from_secs(10),
    )
}

#[derive(Deserialize)]
struct Append {
    file: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    tag: String,
}

/// Appends `call_id attempt tag` to a file: a visible, countable effect for queue tests.
fn append(ctx: &Ctx, args: Append) -> Result<(), CallError> {
    use std::io::Write;
    std::thread::sleep(Duration::from_millis(args.sleep_ms));
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.file)
        .map_err(|e| CallError::new(format!("cannot open {}: {e}", args.file)))?;
    // One write per line: with O_APPEND, concurrent calls then never interleave within a line.
    let line = format!("{} {} {}\n", ctx.call_id(), ctx.attempt(), args.tag);
    f.write_all(line.as_bytes())
        .map_err(|e| CallError::new(format!("cannot write {}: {e}", args.file)))
}

/// Refuses for good: the queue moves the call to dead letters at once.
fn refuse(_ctx: &Ctx, reason: String) -> Result<(), CallError> {
    Err(CallError::permanent(reason))
}

/// Queues a call on behalf of the module and returns its id.
fn relay(ctx: &Ctx, args: Forward) -> Result<String, CallError> {
    ctx.enqueue(&args.cage, &args.target, &args.args)
}

#[derive(Deserialize)]
struct Later {
    cage: String,
    target: String,
    args: Value,
    in_ms: u64,
}

/// Adds a one-shot job on behalf of the module and returns its id.
fn later(ctx: &Ctx, args: Later) -> Result<String, CallError> {
    ctx.add_job(
        &args.cage,
        &args.target,
        &args.args,
        cage_sdk::JobWhen::InMs(args.in_ms),
    )
}

export_module! {
    name: "echo",
    version: VERSION,
    methods: [echo, shout, sleep, version, boom, forward, append, refuse, relay, later],
}
