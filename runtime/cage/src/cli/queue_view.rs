//! Shared by the queue commands: asking one or all cages, and showing times in words.

use super::exit;
use super::listing::Gathered;
use cage_runtime::config::Site;
use cage_runtime::model::clock;
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
    let asked = Gathered::ask_queue(
        site,
        &site.cage_names(),
        &|| QueueQuery::Show(id.to_owned()),
        super::listing::calls,
    )?;
    if !asked.items.is_empty() {
        // Found: a cage that did not answer may hold another copy, worth a warning only.
        for u in &asked.unread {
            eprintln!("warning: cage {} did not answer: {}", u.cage, u.error);
        }
        return Ok(asked.items);
    }
    // Cages that did not answer may hold it: "not found" would be a guess.
    if !asked.unread.is_empty() {
        return Err(asked.fail_if_unread(&format!(
            "call {id:?} is held by none of the others, and may be held by one of them"
        )));
    }
    Err(exit::fail(
        exit::NOT_FOUND,
        format!(
            "no cage of the site {} holds a call {id:?} (pending or dead)",
            site.root().display()
        ),
    ))
}

/// When the next attempt of a pending call runs, in words.
pub fn next_attempt(view: &CallView) -> String {
    let now = clock::now_ms();
    if view.running {
        "running now".into()
    } else if let Some(why) = &view.waiting {
        format!("due, {why}")
    } else if view.record.dead_reason.is_some() {
        "never (dead)".into()
    } else if view.record.next_at_ms <= now {
        "due now".into()
    } else {
        format!("in {}", clock::span_ms(view.record.next_at_ms - now))
    }
}

/// A pending call's crashes against its queue's limit, in words (`crashes: 1 of 3 (SIGSEGV)`),
/// if it ever crashed.
pub fn crashes(view: &CallView) -> Option<String> {
    view.crashes.as_ref().map(|c| {
        let signal = c
            .signal
            .as_ref()
            .map(|s| format!(" ({s})"))
            .unwrap_or_default();
        format!("crashes: {} of {}{signal}", c.count, c.max)
    })
}

/// What a crashed attempt's error says after its kind, if the attempt crashed (its cage or
/// its worker): its recorded error begins with the kind's name.
pub fn crash_reason(error: &str) -> Option<&str> {
    error
        .strip_prefix(cage_sdk::ErrorKind::Crashed.as_str())
        .and_then(|rest| rest.strip_prefix(": "))
}
