//! `cage pending` and `cage dead`: queued calls of one cage or of the whole site.

use super::listing::Gathered;
use super::queue_view::{cages, crashes, next_attempt};
use cage_runtime::config::Site;
use cage_runtime::model::clock::{now_ms, span_ms};
use cage_runtime::transport::protocol::{CallView, Filter, QueueQuery, Response, DEFAULT_LISTING};
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::process::ExitCode;

fn target_of(v: &CallView) -> String {
    let c = &v.record.call;
    format!("{} {}.{}", c.target, c.module, c.method)
}

/// Lists pending (`dead` false) or dead calls.
/// The queue column of a call: its queue, and its group if it has one.
fn queue_of(v: &CallView) -> String {
    match &v.record.call.group {
        Some(group) => format!("{} (group {group})", v.record.call.queue),
        None => v.record.call.queue.clone(),
    }
}

pub fn list(site: &Site, cage: Option<&str>, filter: Filter, dead: bool, json: bool) -> ExitCode {
    let limit = match filter.limit {
        0 => DEFAULT_LISTING,
        n => n,
    };
    let counted = filter.clone();
    let query = if dead {
        QueueQuery::Dead(filter)
    } else {
        QueueQuery::Pending(filter)
    };
    let mut gathered = match Gathered::ask_queue(
        site,
        &cages(site, cage),
        &|| query.clone(),
        super::listing::calls,
    ) {
        Ok(g) => g,
        Err(code) => return code,
    };
    gathered
        .items
        .sort_by_key(|v| (v.record.next_at_ms, v.record.call.enqueued_at_ms));
    let all = &gathered.items;
    if json {
        println!("{}", serde_json::to_string_pretty(all).unwrap_or_default());
        return gathered.finish(json);
    }
    if all.is_empty() {
        println!(
            "{}",
            gathered.nothing(if dead {
                "no dead calls"
            } else {
                "no pending calls"
            })
        );
        return gathered.finish(json);
    }
    let now = now_ms();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if dead {
        table.set_header([
            "ID", "HELD BY", "TARGET", "QUEUE", "ATTEMPTS", "AGE", "WHY DEAD",
        ]);
        for v in all {
            table.add_row([
                v.record.call.id.clone(),
                v.cage.clone(),
                target_of(v),
                queue_of(v),
                v.record.attempts.len().to_string(),
                span_ms(now.saturating_sub(v.record.call.enqueued_at_ms)),
                v.record.dead_reason.clone().unwrap_or_default(),
            ]);
        }
    } else {
        table.set_header([
            "ID",
            "HELD BY",
            "STAGE",
            "TARGET",
            "QUEUE",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "AGE",
            "LAST ERROR",
        ]);
        for v in all {
            table.add_row([
                v.record.call.id.clone(),
                v.cage.clone(),
                v.record.stage.as_str().to_owned(),
                target_of(v),
                queue_of(v),
                match crashes(v) {
                    Some(c) => format!("{} ({c})", v.record.attempts.len()),
                    None => v.record.attempts.len().to_string(),
                },
                next_attempt(v),
                span_ms(now.saturating_sub(v.record.call.enqueued_at_ms)),
                v.record.last_error().unwrap_or("-").to_owned(),
            ]);
        }
    }
    println!("{table}");
    let what = if dead { "dead" } else { "pending" };
    // A cage that filled its listing holds more, maybe: how many, in all.
    let full: Vec<String> = cages(site, cage)
        .into_iter()
        .filter(|c| all.iter().filter(|v| v.cage == *c).count() >= limit)
        .collect();
    let more = if full.is_empty() {
        None
    } else {
        Gathered::ask_queue(
            site,
            &full,
            &|| QueueQuery::Count {
                filter: counted.clone(),
                dead,
            },
            |answer| match answer {
                Response::Counted(n) => Ok(vec![n]),
                other => Err(super::listing::refusal(other)),
            },
        )
        .ok()
        .filter(|g| g.unread.is_empty())
        .map(|g| {
            g.items.iter().sum::<usize>() + all.iter().filter(|v| !full.contains(&v.cage)).count()
        })
    };
    match more {
        Some(total) if total > all.len() => {
            println!(
                "{} of {total} {what} call(s) (--limit to see more)",
                all.len()
            )
        }
        _ => println!("{} {what} call(s)", all.len()),
    }
    gathered.finish(json)
}
