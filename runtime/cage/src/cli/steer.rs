//! `cage retry-now`, `cage cancel`, `cage revive`: operator orders about queued calls.

use super::exit;
use super::listing::Gathered;
use super::queue_view::{cages, find, next_attempt};
use cage_runtime::config::Site;
use cage_runtime::transport::protocol::{CallView, Filter, QueueQuery, Redrive, Response};
use std::process::ExitCode;

/// Gives `order` (built from the call id) to every cage holding call `id`.
pub fn by_id(site: &Site, id: &str, what: &str, order: fn(String) -> QueueQuery) -> ExitCode {
    let holders = match find(site, id) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let mut changed = 0;
    for v in holders {
        changed += match steer(site, &v.cage, order(id.to_owned())) {
            Ok(n) => n,
            Err(code) => return code,
        };
    }
    if changed == 0 {
        return exit::fail(exit::NOT_FOUND, format!("{what}: call {id} is not in a state that allows it (pending for retry-now and cancel, dead for revive)"));
    }
    println!("{what}: {id}");
    ExitCode::SUCCESS
}

/// Cancels `id` wherever it is: a call pending or dead, a chain, or a call whose chains are
/// still running (a sync call that started children has no record of its own).
pub fn cancel(site: &Site, id: &str) -> ExitCode {
    let asked = match everywhere(site, site.cage_names(), &|| {
        QueueQuery::Cancel(id.to_owned())
    }) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let changed: usize = asked.items.iter().sum();
    if changed == 0 {
        // A cage that did not answer may hold it: say so rather than "not found".
        if !asked.unread.is_empty() {
            return asked.fail_if_unread(&format!(
                "call or chain {id:?} may be held by one of them and was not cancelled"
            ));
        }
        return exit::fail(
            exit::NOT_FOUND,
            format!("no cage of the site holds a call or chain {id:?} to cancel"),
        );
    }
    println!("cancelled: {id} ({changed} call(s) and chain(s))");
    // Cancelled where it was found; a cage that did not answer is worth a warning only.
    for u in &asked.unread {
        eprintln!("warning: cage {} did not answer: {}", u.cage, u.error);
    }
    ExitCode::SUCCESS
}

/// Gives `order` about every pending call that passes `filter`, on one cage or the whole site.
pub fn all(
    site: &Site,
    cage: Option<&str>,
    filter: Filter,
    what: &str,
    order: fn(Filter) -> QueueQuery,
) -> ExitCode {
    match everywhere(site, cages(site, cage), &|| order(filter.clone())) {
        Ok(asked) => {
            println!("{} call(s) {what}", asked.items.iter().sum::<usize>());
            asked.fail_if_unread("their calls were not changed")
        }
        Err(code) => code,
    }
}

/// Gives redrive `order` (revive dead calls, or make pending ones due) to one cage or every
/// cage of the site, and says how many calls each took (or, in a dry run, would take) and the
/// first ten of them.
pub fn redrive(site: &Site, cage: Option<&str>, order: Redrive, json: bool) -> ExitCode {
    let asked = match Gathered::ask_queue(
        site,
        &cages(site, cage),
        &|| QueueQuery::Redrive(order.clone()),
        |answer| match answer {
            Response::Redriven { count, first } => Ok(vec![(count, first)]),
            other => Err(super::listing::refusal(other)),
        },
    ) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let count: usize = asked.items.iter().map(|(n, _)| n).sum();
    let first: Vec<&CallView> = asked.items.iter().flat_map(|(_, f)| f).take(10).collect();
    let verb = match (order.dead, order.dry_run) {
        (true, true) => "would be revived",
        (true, false) => "revived",
        (false, true) => "would be made due",
        (false, false) => "made due",
    };
    if json {
        println!(
            "{}",
            serde_json::json!({ "dry_run": order.dry_run, "count": count, "first": first })
        );
    } else {
        let spread = match order.spread_ms {
            0 => String::new(),
            ms => format!(
                ", due times spread over {}",
                humantime::format_duration(std::time::Duration::from_millis(ms))
            ),
        };
        println!("{count} call(s) {verb}{spread}");
        if !first.is_empty() {
            let mut table = comfy_table::Table::new();
            table
                .load_preset(comfy_table::presets::UTF8_BORDERS_ONLY)
                .set_content_arrangement(comfy_table::ContentArrangement::Dynamic);
            table.set_header([
                "ID",
                "CAGE",
                "QUEUE",
                "TARGET",
                "NEXT ATTEMPT",
                "LAST ERROR",
            ]);
            for v in &first {
                let r = &v.record;
                table.add_row([
                    r.call.id.clone(),
                    v.cage.clone(),
                    r.call.queue.clone(),
                    format!("{}.{}", r.call.module, r.call.method),
                    next_attempt(v),
                    r.last_error()
                        .or(r.dead_reason.as_deref())
                        .unwrap_or("-")
                        .to_owned(),
                ]);
            }
            let title = if count > first.len() {
                format!("the first {} of them:", first.len())
            } else {
                "they are:".to_owned()
            };
            println!("{title}\n{table}");
        }
    }
    asked.fail_if_unread("their calls were not changed")
}

/// Gives the order `order` builds to each of `cages`: how many calls each that answered
/// changed, and which did not answer (one cage down does not keep the others' calls waiting).
fn everywhere(
    site: &Site,
    cages: Vec<String>,
    order: &dyn Fn() -> QueueQuery,
) -> Result<Gathered<usize>, ExitCode> {
    Gathered::ask_queue(site, &cages, order, super::listing::changed)
}

fn steer(site: &Site, cage: &str, order: QueueQuery) -> Result<usize, ExitCode> {
    let asked = everywhere(site, vec![cage.to_owned()], &|| order.clone())?;
    match asked.unread.into_iter().next() {
        Some(u) => Err(exit::fail(exit::for_kind(u.error.kind), u.error)),
        None => Ok(asked.items.iter().sum()),
    }
}
