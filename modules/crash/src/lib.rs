//! Test module `crash`: each method fails its process in one way a native module can (a
//! segfault, an abort, a stack overflow, a busy loop, a sleep without end, `exit(3)`, memory
//! without end), so the cage's fault containment can be shown; `fine` answers, and with the
//! `fixed` feature every method does, as a repaired build dropped in over a poison call would.

use cage_sdk::{export_module, CallError, Ctx};
use serde::Deserialize;
use serde_json::Value;
use std::hint::black_box;
use std::time::Duration;

const VERSION: &str = if cfg!(feature = "fixed") {
    "1.0.1"
} else {
    "1.0.0"
};

/// What every method answers in the fixed build.
fn repaired(ctx: &Ctx) -> Result<Value, CallError> {
    Ok(serde_json::json!({ "fixed": true, "method": ctx.method(), "version": VERSION }))
}

/// Answers: the module's healthy method (and a probe that its worker is whole).
fn fine(ctx: &Ctx, args: Value) -> Result<Value, CallError> {
    Ok(
        serde_json::json!({ "fine": args, "version": VERSION, "pid": std::process::id(), "call_id": ctx.call_id() }),
    )
}

/// Writes through a null pointer: SIGSEGV.
fn segfault(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    ctx.error("about to write through a null pointer");
    // SAFETY: none; this method exists to crash its process.
    unsafe { std::ptr::null_mut::<u64>().write_volatile(black_box(7)) };
    Ok(Value::Null)
}

/// Aborts the process: SIGABRT.
fn abort(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    std::process::abort()
}

// Without end on purpose: this is the stack overflow.
#[allow(unconditional_recursion)]
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    // A frame the optimiser cannot fold away or turn into a loop.
    let frame = black_box([depth; 64]);
    recurse(black_box(depth + 1)).wrapping_add(frame[(depth % 64) as usize])
}

/// Recurses without end: the stack overflows (the Rust runtime aborts, SIGABRT).
fn overflow(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    Ok(Value::from(recurse(black_box(0))))
}

/// Spins on the CPU without end.
fn spin(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    let mut n = 0u64;
    loop {
        n = black_box(n.wrapping_add(1));
    }
}

/// Sleeps without end.
fn sleep_forever(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Ends the process with exit code 3.
fn exit(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    std::process::exit(3)
}

/// Allocates (and touches) 16 MiB at a time without end.
fn allocate(ctx: &Ctx, _: Value) -> Result<Value, CallError> {
    if cfg!(feature = "fixed") {
        return repaired(ctx);
    }
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        held.push(vec![1u8; 16 << 20]);
        black_box(&held);
    }
}

#[derive(Deserialize)]
struct Chance {
    /// Share of calls that crash, 0.0 to 1.0.
    crash: f64,
    /// Any value that makes the draw; the same seed draws the same way on every attempt.
    seed: u64,
    /// Attempts from this one on never crash (0: no such attempt), so a call ends up done.
    #[serde(default)]
    spare_from: u32,
}

/// Crashes its process (SIGSEGV) for a share of calls, drawn from `seed` and the attempt, and
/// answers otherwise: the chaos suite's crashing module.
fn maybe(ctx: &Ctx, args: Chance) -> Result<Value, CallError> {
    let attempt = ctx.attempt();
    let spared = args.spare_from != 0 && attempt >= args.spare_from;
    // SplitMix64 over the seed and the attempt: a cheap, well-spread draw.
    let mut x = args.seed ^ (u64::from(attempt) << 32);
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    let draw = (x >> 11) as f64 / (1u64 << 53) as f64;
    if !spared && draw < args.crash && !cfg!(feature = "fixed") {
        // SAFETY: none; this call was drawn to crash its process.
        unsafe { std::ptr::null_mut::<u64>().write_volatile(black_box(7)) };
    }
    Ok(serde_json::json!({ "attempt": attempt, "seed": args.seed }))
}

export_module! {
    name: "crash",
    version: VERSION,
    methods: [fine, segfault, abort, overflow, spin, sleep_forever, exit, allocate, maybe],
}
