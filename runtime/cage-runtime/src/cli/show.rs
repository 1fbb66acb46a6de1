//! `cage show ID`: one queued call with its arguments and full attempt history.

use super::queue_view::{find, next_attempt, now_ms, words};
use cage_runtime::config::Site;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::process::ExitCode;

pub fn show(site: &Site, id: &str, json: bool) -> ExitCode {
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
        println!(
            "  enqueued    {} ago",
            words(now.saturating_sub(c.enqueued_at_ms))
        );
        match &r.dead_reason {
            Some(reason) => println!("  state       dead: {reason}"),
            None => println!("  next        {}", next_attempt(v)),
        }
        let args = serde_json::from_slice::<serde_json::Value>(&c.args)
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_else(|_| String::from_utf8_lossy(&c.args).into_owned());
        println!("  args        {}", args.replace('\n', "\n              "));
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
                format!("{} ago", words(now.saturating_sub(a.started_ms))),
                format!("{:.1} ms", a.duration_us as f64 / 1000.0),
                a.module_version.clone().unwrap_or_else(|| "-".into()),
                a.error
                    .clone()
                    .map(|e| format!("failed: {e}"))
                    .unwrap_or_else(|| "ok".into()),
            ]);
        }
        println!("{table}\n");
    }
    ExitCode::SUCCESS
}
