//! `cage modules CAGE`: what a running cage serves, as a table or JSON.

use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::metrics::WorkerCounters;
use cage_runtime::transport::client::Client;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long `cage modules` waits for an answer.
const TIMEOUT: Duration = Duration::from_secs(10);

fn ago(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return "-".into() };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let secs = now.saturating_sub(ms) / 1000;
    format!(
        "{} ago",
        humantime::format_duration(Duration::from_secs(secs))
    )
}

/// Worker processes now: `running/idle` (`-` for a module that never had one: it runs in
/// process, or was never called).
fn workers(w: &WorkerCounters) -> String {
    if w.started == 0 {
        return "-".into();
    }
    format!("{} running, {} idle", w.running, w.idle)
}

/// Crashed workers: the count and its reasons, most frequent first.
fn crashed(w: &WorkerCounters) -> String {
    if w.crashed.is_empty() {
        return "0".into();
    }
    let mut reasons: Vec<(&String, &u64)> = w.crashed.iter().collect();
    reasons.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    format!("{} ({})", w.crashes(), reasons.join(", "))
}

/// Workers killed at a deadline, and executor threads written off (in process).
fn killed(w: &WorkerCounters) -> String {
    match w.threads_written_off {
        0 => w.killed.to_string(),
        n => format!("{} ({n} threads written off)", w.killed),
    }
}

/// Methods shown in the table before the rest is counted.
const METHODS_SHOWN: usize = 6;

/// The methods cell: all of them, one line each few, with `all`; else the first few and how
/// many more (`--methods` lists them).
fn methods_cell(methods: &[String], all: bool) -> String {
    if all || methods.len() <= METHODS_SHOWN {
        return methods
            .chunks(METHODS_SHOWN)
            .map(|line| line.join(", "))
            .collect::<Vec<_>>()
            .join(",\n");
    }
    format!(
        "{}, … ({} in all; --methods lists them)",
        methods[..METHODS_SHOWN].join(", "),
        methods.len()
    )
}

pub fn modules(site: &Site, cage: &str, all_methods: bool, json: bool) -> ExitCode {
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let list = match Client::connect(cage, &route).and_then(|mut c| c.modules(TIMEOUT)) {
        Ok(list) => list,
        Err(e) => {
            let e = e.into_call_error();
            return exit::fail(exit::for_kind(e.kind), e);
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "MODULE",
            "VERSION",
            "SHA256",
            "LOADED",
            "METHODS",
            "WORKERS",
            "CRASHED",
            "KILLED",
            "LAST LOAD ERROR",
        ]);
    for m in &list {
        // An error older than the loaded version was superseded by it; `--json` still has it.
        let error = match (&m.last_error, m.last_error_at_ms) {
            (Some(e), at) if at >= m.loaded_at_ms => format!("{} ({})", e, ago(at)),
            _ => "-".into(),
        };
        let version = match (&m.version, m.draining_versions) {
            (Some(v), 0) => v.clone(),
            (Some(v), n) => format!("{v} (+{n} draining)"),
            (None, _) => "not loaded".into(),
        };
        table.add_row([
            m.name.clone(),
            version,
            m.sha256
                .as_deref()
                .map(|h| h[..12].to_owned())
                .unwrap_or_else(|| "-".into()),
            ago(m.loaded_at_ms),
            match m.missing_methods.as_slice() {
                [] => methods_cell(&m.methods, all_methods),
                missing => format!(
                    "{}\nlacks, with calls pending: {}",
                    methods_cell(&m.methods, all_methods),
                    missing
                        .iter()
                        .map(|(method, n)| format!("{method} ({n})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            },
            workers(&m.workers),
            crashed(&m.workers),
            killed(&m.workers),
            error,
        ]);
    }
    println!("{table}");
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_method_list_is_cut_and_counted_unless_all_are_asked_for() {
        let names: Vec<String> = (1..=8).map(|i| format!("m{i}")).collect();
        assert_eq!(
            methods_cell(&names, false),
            "m1, m2, m3, m4, m5, m6, … (8 in all; --methods lists them)"
        );
        assert_eq!(
            methods_cell(&names, true),
            "m1, m2, m3, m4, m5, m6,\nm7, m8"
        );
        assert_eq!(methods_cell(&names[..2], false), "m1, m2");
    }
}
