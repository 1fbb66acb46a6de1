//! `cage retry-now`, `cage cancel`, `cage revive`: operator orders about queued calls.

use super::exit;
use super::listing::Gathered;
use super::queue_view::{cages, find, TIMEOUT};
use super::target;
use cage_runtime::config::Site;
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::{Filter, QueueQuery};
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

/// Gives the order `order` builds to each of `cages`: how many calls each that answered
/// changed, and which did not answer (one cage down does not keep the others' calls waiting).
fn everywhere(
    site: &Site,
    cages: Vec<String>,
    order: &dyn Fn() -> QueueQuery,
) -> Result<Gathered<usize>, ExitCode> {
    Gathered::ask(site, &cages, |c| {
        c.steer(order(), TIMEOUT)
            .map(|n| vec![n])
            .map_err(ClientError::into_call_error)
    })
}

fn steer(site: &Site, cage: &str, order: QueueQuery) -> Result<usize, ExitCode> {
    let route = target::route(site, cage)?;
    Client::connect(cage, &route)
        .and_then(|mut c| c.steer(order, TIMEOUT))
        .map_err(|e| {
            let e = e.into_call_error();
            exit::fail(exit::for_kind(e.kind), e)
        })
}
