//! `cage schedule`: the attempts the current config implies for a queue, without jitter: the
//! times come from the function the scheduler asks after each failed attempt.

use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::retry_policy::{schedule as plan, MAX_ATTEMPTS};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// One attempt in `--json` output, fields in reading order.
#[derive(serde::Serialize)]
struct Row {
    attempt: u32,
    delay_secs: Value,
    at_secs: Value,
}

/// Seconds as a JSON number: an integer when whole, so `0` reads as `0`, not `0.0`.
fn secs(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

fn words(secs: f64) -> String {
    // Whole milliseconds: humantime would otherwise print float noise in nanoseconds.
    humantime::format_duration(Duration::from_millis((secs * 1000.0).round() as u64)).to_string()
}

pub fn schedule(site: &Site, queue: &str, json_out: bool) -> ExitCode {
    if let Err(code) = target::queue(queue) {
        return code;
    }
    let execute_on = match site.execute_on() {
        Ok(e) => e,
        Err(e) => return exit::fail(exit::CONFIG, e),
    };
    let policy = execute_on.queue(queue);
    let attempts = plan(&policy.backoff());
    if json_out {
        let list: Vec<Row> = attempts
            .iter()
            .map(|a| Row {
                attempt: a.attempt,
                delay_secs: secs(a.delay_secs),
                at_secs: secs(a.at_secs),
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let known = if execute_on.queues.contains_key(queue) {
        queue.to_owned()
    } else {
        format!("{queue} (no table of its own: the retry queue's settings)")
    };
    println!(
        "queue {known}: first retry {}, growth {}, max delay {}, give up after {}, jitter ±{}%",
        humantime::format_duration(policy.first_retry),
        policy.growth,
        humantime::format_duration(policy.max_delay),
        humantime::format_duration(policy.give_up_after),
        policy.jitter * 100.0,
    );
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["ATTEMPT", "DELAY BEFORE", "SINCE ENQUEUE"]);
    for a in &attempts {
        let delay = if a.attempt == 1 {
            "- (at enqueue)".to_owned()
        } else {
            words(a.delay_secs)
        };
        table.add_row([a.attempt.to_string(), delay, words(a.at_secs)]);
    }
    println!("{table}");
    let span = attempts.last().map(|a| a.at_secs).unwrap_or(0.0);
    let cut = if attempts.len() >= MAX_ATTEMPTS as usize {
        " (the most attempts a call makes)"
    } else {
        ""
    };
    println!(
        "{} attempts spanning {}{cut}; a call still failing then moves to dead letters",
        attempts.len(),
        words(span)
    );
    ExitCode::SUCCESS
}
