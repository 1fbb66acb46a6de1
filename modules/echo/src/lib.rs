//! Example module `echo`: the smallest useful module, and a test bed for the cage.
// The `lean` build exports a few methods only: the others are left unused in it.
#![cfg_attr(feature = "lean", allow(dead_code))]

use cage_sdk::{export_module, CallError, Ctx};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::Duration;

/// Which build answered; the `v2` feature makes the change visible after a hot swap.
const BUILD: &str = if cfg!(feature = "v2") { "v2" } else { "v1" };
const VERSION: &str = if cfg!(feature = "v2") {
    "1.0.0+v2"
} else if cfg!(feature = "lean") {
    "1.0.0+lean"
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

#[derive(Deserialize)]
struct QueueIn {
    cage: String,
    target: String,
    args: Value,
    queue: String,
    group: Option<String>,
}

/// Queues a call on another cage's (or this cage's) queue, in a group if given; its id.
fn queue_in(ctx: &Ctx, args: QueueIn) -> Result<String, CallError> {
    let options = cage_sdk::EnqueueOptions {
        queue: args.queue,
        group: args.group,
        ..cage_sdk::EnqueueOptions::default()
    };
    ctx.enqueue_with(&args.cage, &args.target, &args.args, options)
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

#[derive(Deserialize)]
struct Stamp {
    file: String,
    tag: String,
}

/// Appends `tag unix-time-in-µs` to a file, the time read as the call starts: tells a
/// benchmark when each queued call began executing, without timing hooks in the runtime.
fn stamp(_ctx: &Ctx, args: Stamp) -> Result<(), CallError> {
    use std::io::Write;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| CallError::new(format!("clock before 1970: {e}")))?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.file)
        .map_err(|e| CallError::new(format!("cannot open {}: {e}", args.file)))?;
    // One write per line: with O_APPEND, concurrent calls then never interleave within a line.
    let line = format!("{} {}\n", args.tag, now.as_micros());
    f.write_all(line.as_bytes())
        .map_err(|e| CallError::new(format!("cannot write {}: {e}", args.file)))
}

#[derive(Deserialize)]
struct Span {
    file: String,
    tag: String,
    ms: u64,
}

/// Sleeps `ms`, then appends `tag start-µs end-µs` to a file: tells a test which calls ran at
/// the same time (the concurrency a queue or group allowed), from the module's own clock.
fn span(_ctx: &Ctx, args: Span) -> Result<(), CallError> {
    use std::io::Write;
    let micros = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .map_err(|e| CallError::new(format!("clock before 1970: {e}")))
    };
    let start = micros()?;
    std::thread::sleep(std::time::Duration::from_millis(args.ms));
    let end = micros()?;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&args.file)
        .map_err(|e| CallError::new(format!("cannot open {}: {e}", args.file)))?;
    let line = format!("{} {start} {end}\n", args.tag);
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

/// This invocation's id.
fn whoami(ctx: &Ctx, _: ()) -> Result<String, CallError> {
    Ok(ctx.invocation_id().to_owned())
}

#[derive(Deserialize)]
struct SendTo {
    target: String,
    port: String,
    message: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    90_000
}

/// Sends a message to another invocation.
fn send_to(ctx: &Ctx, args: SendTo) -> Result<&'static str, CallError> {
    ctx.send_message(
        &args.target,
        &args.port,
        args.message.as_bytes(),
        Duration::from_millis(args.timeout_ms),
    )?;
    Ok("handed over")
}

#[derive(Deserialize)]
struct Receive {
    port: String,
    timeout_ms: Option<u64>,
}

/// Waits for a message on a port and returns it.
fn receive(ctx: &Ctx, args: Receive) -> Result<String, CallError> {
    let m = ctx.receive_message(&args.port, args.timeout_ms.map(Duration::from_millis))?;
    Ok(String::from_utf8_lossy(&m).into_owned())
}

#[derive(Deserialize)]
struct Idle {
    file: String,
    ms: u64,
}

/// Writes its invocation id to a file, then stays running without opening any port.
fn idle(ctx: &Ctx, args: Idle) -> Result<(), CallError> {
    std::fs::write(&args.file, ctx.invocation_id()).map_err(|e| CallError::new(e.to_string()))?;
    std::thread::sleep(Duration::from_millis(args.ms));
    Ok(())
}

#[derive(Deserialize)]
struct Orchestrate {
    cage_a: String,
    cage_b: String,
}

#[derive(Serialize, Deserialize)]
struct Hello {
    role: String,
    id: String,
}

fn json_msg<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CallError> {
    serde_json::from_slice(bytes).map_err(|e| CallError::new(format!("bad message: {e}")))
}

/// A parent: starts two children (queued calls on two cages), introduces them to each other,
/// and returns what each reported back.
fn orchestrate(ctx: &Ctx, args: Orchestrate) -> Result<Value, CallError> {
    let me = ctx.invocation_id().to_owned();
    let wait = Some(Duration::from_secs(30));
    ctx.enqueue(
        &args.cage_a,
        "echo.child",
        &serde_json::json!({ "parent": me, "role": "a" }),
    )?;
    ctx.enqueue(
        &args.cage_b,
        "echo.child",
        &serde_json::json!({ "parent": me, "role": "b" }),
    )?;
    let first: Hello = json_msg(&ctx.receive_message("hello", wait)?)?;
    let second: Hello = json_msg(&ctx.receive_message("hello", wait)?)?;
    let step = Duration::from_secs(30);
    ctx.send_message(&first.id, "peer", second.id.as_bytes(), step)?;
    ctx.send_message(&second.id, "peer", first.id.as_bytes(), step)?;
    let mut results = serde_json::Map::new();
    for _ in 0..2 {
        let r: Hello = json_msg(&ctx.receive_message("result", wait)?)?;
        results.insert(r.role, Value::String(r.id));
    }
    Ok(Value::Object(results))
}

#[derive(Deserialize)]
struct Child {
    parent: String,
    role: String,
}

/// A child: says hello to its parent, learns its peer, exchanges a ping and a pong with it,
/// and reports the message it got to the parent.
fn child(ctx: &Ctx, args: Child) -> Result<(), CallError> {
    let me = ctx.invocation_id().to_owned();
    let step = Duration::from_secs(30);
    let hello = serde_json::to_vec(&Hello {
        role: args.role.clone(),
        id: me.clone(),
    })
    .unwrap_or_default();
    ctx.send_message(&args.parent, "hello", &hello, step)?;
    let peer = String::from_utf8_lossy(&ctx.receive_message("peer", Some(step))?).into_owned();
    let got = if args.role == "a" {
        ctx.send_message(&peer, "ping", format!("ping from {me}").as_bytes(), step)?;
        ctx.receive_message("pong", Some(step))?
    } else {
        let ping = ctx.receive_message("ping", Some(step))?;
        ctx.send_message(
            &peer,
            "pong",
            format!("pong from {me} to {}", String::from_utf8_lossy(&ping)).as_bytes(),
            step,
        )?;
        ping
    };
    let report = Hello {
        role: args.role,
        id: String::from_utf8_lossy(&got).into_owned(),
    };
    ctx.send_message(
        &args.parent,
        "result",
        &serde_json::to_vec(&report).unwrap_or_default(),
        step,
    )
}

#[derive(Deserialize)]
struct RunScript {
    script: String,
    #[serde(default)]
    args: Vec<String>,
}

/// Runs a Python script as a child acting as this invocation; returns what it printed.
fn run_python(ctx: &Ctx, args: RunScript) -> Result<String, CallError> {
    let out = ctx
        .child_command("python3")
        .arg(&args.script)
        .args(&args.args)
        .output()
        .map_err(|e| CallError::new(format!("cannot start python3: {e}")))?;
    if !out.status.success() {
        return Err(CallError::new(format!(
            "{} failed ({}): {}",
            args.script,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[derive(Deserialize)]
struct Respond {
    file: String,
    port_in: String,
    port_out: String,
}

#[derive(Deserialize)]
struct Note {
    from: String,
    text: String,
}

/// Writes its id to a file, waits for a `{from, text}` message, answers `echo: text` to `from`.
fn respond(ctx: &Ctx, args: Respond) -> Result<(), CallError> {
    std::fs::write(&args.file, ctx.invocation_id()).map_err(|e| CallError::new(e.to_string()))?;
    let note: Note = json_msg(&ctx.receive_message(&args.port_in, Some(Duration::from_secs(30)))?)?;
    ctx.send_message(
        &note.from,
        &args.port_out,
        format!("echo: {}", note.text).as_bytes(),
        Duration::from_secs(30),
    )
}

#[derive(Deserialize)]
struct PingPong {
    peer_cage: String,
    rounds: u32,
}

/// Message round trips with a child on `peer_cage`: returns latency percentiles in µs.
fn pingpong(ctx: &Ctx, args: PingPong) -> Result<Value, CallError> {
    let step = Duration::from_secs(30);
    ctx.enqueue(
        &args.peer_cage,
        "echo.ponger",
        &serde_json::json!({ "parent": ctx.invocation_id(), "rounds": args.rounds }),
    )?;
    let child = String::from_utf8_lossy(&ctx.receive_message("hello", Some(step))?).into_owned();
    let mut rtts = Vec::with_capacity(args.rounds as usize);
    for i in 0..args.rounds {
        let t = std::time::Instant::now();
        ctx.send_message(&child, "ping", i.to_string().as_bytes(), step)?;
        ctx.receive_message("pong", Some(step))?;
        rtts.push(t.elapsed().as_micros() as u64);
    }
    rtts.sort_unstable();
    let at = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(
        serde_json::json!({ "rounds": args.rounds, "child": child, "p50_us": at(0.5), "p99_us": at(0.99), "max_us": at(1.0) }),
    )
}

#[derive(Deserialize)]
struct Ponger {
    parent: String,
    rounds: u32,
}

/// The other side of `pingpong`: answers each ping with a pong.
fn ponger(ctx: &Ctx, args: Ponger) -> Result<(), CallError> {
    let step = Duration::from_secs(30);
    ctx.send_message(&args.parent, "hello", ctx.invocation_id().as_bytes(), step)?;
    for _ in 0..args.rounds {
        let ping = ctx.receive_message("ping", Some(step))?;
        ctx.send_message(&args.parent, "pong", &ping, step)?;
    }
    Ok(())
}

#[derive(Deserialize)]
struct Counter {
    key: String,
}

/// Adds one to a counter in the module's state; exactly once per queued call, whatever happens.
fn count(ctx: &Ctx, args: Counter) -> Result<u64, CallError> {
    let state = ctx.state();
    let n = state.get_json::<u64>(&args.key)?.unwrap_or(0) + 1;
    state.put_json(&args.key, &n)?;
    Ok(n)
}

/// The counter's value.
fn count_get(ctx: &Ctx, args: Counter) -> Result<u64, CallError> {
    Ok(ctx.state().get_json::<u64>(&args.key)?.unwrap_or(0))
}

/// Fails the first `fail_first` attempts of a queued call, then succeeds (for retry
/// benchmarks and demos of the retry policy).
fn flaky(ctx: &Ctx, fail_first: u32) -> Result<u32, CallError> {
    match ctx.attempt() {
        n if n <= fail_first => Err(CallError::new(format!(
            "attempt {n} fails on purpose (the first {fail_first} do)"
        ))),
        n => Ok(n),
    }
}

// A build that lacks most methods, to show what a cage does with calls pending for methods a
// new version no longer has.
#[cfg(feature = "lean")]
export_module! {
    name: "echo",
    version: VERSION,
    methods: [echo, shout, version],
}

#[cfg(not(feature = "lean"))]
export_module! {
    name: "echo",
    version: VERSION,
    methods: [
        echo, shout, sleep, version, boom, forward, queue_in, append, stamp, span, refuse, relay, later, whoami, send_to, receive, idle,
        orchestrate, child, run_python, respond, pingpong, ponger, count, count_get, flaky
    ],
}
