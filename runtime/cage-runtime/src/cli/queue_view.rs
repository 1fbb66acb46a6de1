//! Shared by the queue commands: asking one or all cages, and showing times in words.

use super::{exit, target};
use cage_runtime::clock;
use cage_runtime::config::Site;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{CallView, QueueQuery};
use std::process::ExitCode;
use std::time::Duration;

/// How long a queue command waits for each cage.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The cages a command is about: the one named, or every cage of the site.
pub fn cages(site: &Site, cage: Option<&str>) -> Vec<String> {
    match cage {
        Some(c) => vec![c.to_owned()],
        None => site.cage_names(),
    }
}

/// Finds the cages of the site holding call `id` (its source and its target may both).
pub fn find(site: &Site, id: &str) -> Result<Vec<CallView>, ExitCode> {
    let mut found = Vec::new();
    let mut unreachable = Vec::new();
    for cage in site.cage_names() {
        let route = target::route(site, &cage)?;
        match Client::connect(&cage, &route)
            .and_then(|mut c| c.calls(QueueQuery::Show(id.to_owned()), TIMEOUT))
        {
            Ok(calls) => found.extend(calls),
            Err(e) => unreachable.push(e.to_string()),
        }
    }
    // Cages that did not answer matter only if nobody holds the call: it may be on one of them.
    if found.is_empty() {
        for e in &unreachable {
            eprintln!("warning: {e}");
        }
        return Err(exit::fail(
            exit::NOT_FOUND,
            format!(
                "no cage of the site {} holds a call {id:?} (pending or dead)",
                site.root().display()
            ),
        ));
    }
    Ok(found)
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> u64 {
    clock::now_ms()
}

/// A duration in words, to the second (to the millisecond below ten seconds).
pub fn words(ms: u64) -> String {
    clock::span_ms(ms)
}

/// When the next attempt of a pending call runs, in words.
pub fn next_attempt(view: &CallView) -> String {
    let now = now_ms();
    if view.running {
        "running now".into()
    } else if let Some(why) = &view.waiting {
        format!("due, {why}")
    } else if view.record.dead_reason.is_some() {
        "never (dead)".into()
    } else if view.record.next_at_ms <= now {
        "due now".into()
    } else {
        format!("in {}", words(view.record.next_at_ms - now))
    }
}
