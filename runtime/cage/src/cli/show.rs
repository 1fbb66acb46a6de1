//! `cage show ID`: one queued call with its arguments, full attempt history, its chain and the
//! chains it started; or one chain with its path.

use super::chain::{path, related, view};
use super::queue_view::{crash_reason, crashes, find, next_attempt};
use cage_runtime::config::Site;
use cage_runtime::model::chain::ChainRecord;
use cage_runtime::model::clock::{now_ms, span_ms};
use cage_runtime::transport::protocol::ChainRequest;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::process::ExitCode;

fn show_chain(c: &ChainRecord) {
    let now = now_ms();
    println!(
        "chain {}  (held by cage {}, {})",
        c.id,
        c.owner,
        c.state.as_str()
    );
    if let Some(f) = c.failure() {
        println!("  failure     {f}");
    }
    println!(
        "  steps       {}",
        c.steps
            .iter()
            .map(|s| s.label())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!(
        "  runs        {}",
        c.queue
            .as_deref()
            .map(|q| format!("on queue {q}"))
            .unwrap_or_else(|| "directly".into())
    );
    if let Some(p) = &c.parent {
        println!("  parent      call {p}");
    }
    println!(
        "  started     {} ago",
        span_ms(now.saturating_sub(c.started_ms))
    );
    println!("  path        {}", path(c));
    let v = view(c);
    println!("  bag         {}", v["bag"]);
    if c.path.is_empty() {
        println!();
        return;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["STEP", "CALL", "CAGE", "CALL ID", "DURATION", "OUTCOME"]);
    for r in &c.path {
        table.add_row([
            (r.step + 1).to_string(),
            r.call.clone(),
            r.cage.clone(),
            r.call_id.clone(),
            span_ms(r.ended_ms.saturating_sub(r.started_ms)),
            r.error
                .clone()
                .map(|e| format!("failed: {e}"))
                .unwrap_or_else(|| "ok".into()),
        ]);
    }
    println!("{table}\n");
}

pub fn show(site: &Site, id: &str, json: bool) -> ExitCode {
    let chains: Vec<ChainRecord> = site
        .cage_names()
        .iter()
        .flat_map(|c| related(site, c, ChainRequest::Get(id.to_owned())))
        .collect();
    if !chains.is_empty() {
        if json {
            let views: Vec<_> = chains.iter().map(view).collect();
            println!("{}", serde_json::Value::Array(views));
        } else {
            chains.iter().for_each(show_chain);
        }
        return ExitCode::SUCCESS;
    }
    let found = match find(site, id) {
        Ok(f) => f,
        Err(code) => return code,
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&found).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let now = now_ms();
    for v in &found {
        let (r, c) = (&v.record, &v.record.call);
        println!(
            "call {}  (held by cage {}, stage {})",
            c.id,
            v.cage,
            r.stage.as_str()
        );
        println!("  target      {} {}.{}", c.target, c.module, c.method);
        println!("  from        {}", c.source);
        println!("  queue       {} (priority {})", c.queue, c.priority);
        if let Some(k) = &c.key {
            println!("  key         {k}");
        }
        if let Some(link) = &c.chain {
            println!(
                "  chain       step {} of chain {} (held by cage {})",
                link.step + 1,
                link.chain,
                link.owner
            );
        }
        for child in related(site, &v.cage, ChainRequest::Children(c.id.clone())) {
            println!(
                "  child       chain {} ({}): {}",
                child.id,
                child.state.as_str(),
                path(&child)
            );
        }
        println!(
            "  enqueued    {} ago",
            span_ms(now.saturating_sub(c.enqueued_at_ms))
        );
        match &r.dead_reason {
            Some(reason) => println!("  state       dead: {reason}"),
            None => println!("  next        {}", next_attempt(v)),
        }
        if let Some(c) = crashes(v) {
            // "crashes: 1 of 3" as a field of this page: "crashes     1 of 3".
            println!("  crashes     {}", c.trim_start_matches("crashes: "));
        }
        let args = serde_json::from_slice::<serde_json::Value>(&c.args)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_else(|_| String::from_utf8_lossy(&c.args).into_owned());
        println!("  args        {}", args.replace('\n', "\n              "));
        if let Some(group) = &c.group {
            println!("  group       {group}");
        }
        // Operators' orders, each with when it was given.
        for e in &r.events {
            println!(
                "  order       {} ago: {}",
                span_ms(now.saturating_sub(e.at_ms)),
                e.what
            );
        }
        if r.attempts.is_empty() {
            println!("  no attempts yet\n");
            continue;
        }
        let mut table = Table::new();
        table
            .load_preset(UTF8_BORDERS_ONLY)
            .set_content_arrangement(ContentArrangement::Dynamic)
            .set_header(["#", "STARTED", "DURATION", "MODULE VERSION", "OUTCOME"]);
        for a in &r.attempts {
            table.add_row([
                a.number.to_string(),
                format!("{} ago", span_ms(now.saturating_sub(a.started_ms))),
                format!("{:.1} ms", a.duration_us as f64 / 1000.0),
                a.module_version.clone().unwrap_or_else(|| "-".into()),
                a.error
                    .clone()
                    .map(|e| format!("failed: {e}"))
                    .unwrap_or_else(|| "ok".into()),
            ]);
        }
        println!("{table}");
        // Crashed attempts, each with its reason whole (the table may wrap it).
        for a in &r.attempts {
            if let Some(reason) = a.error.as_deref().and_then(crash_reason) {
                println!("  crashed     attempt {}: {reason}", a.number);
            }
        }
        println!();
    }
    ExitCode::SUCCESS
}
