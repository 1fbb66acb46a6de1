//! The invariants a chaos run must end with, and the report that lists them:
//! - every acknowledged call ran, or sits in dead letters with its reason;
//! - a call refused for good never ran;
//! - a call ran more than once only as the same attempt (a kill cut that attempt short);
//! - one idempotency key, one call;
//! - every acknowledged chain finished, and module state counted each step exactly once;
//! - every acknowledged call of the module that crashes its worker at random finished;
//! - no cage died but by the run's kills, and no cage panicked.

use super::workload::{Fate, Tally};
use super::{Faults, Lab, Report, CAGES};
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{CallRequest, ChainRequest, Filter, QueueQuery};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One invariant and whether it held.
#[derive(Serialize, Debug)]
pub struct Invariant {
    name: &'static str,
    held: bool,
    detail: String,
}

/// What the checks found.
#[derive(Serialize, Debug, Default)]
pub struct Outcome {
    calls_executed: usize,
    calls_dead: usize,
    repeats_after_kill: usize,
    chains_done: usize,
    chains_failed: usize,
    chain_steps_counted: usize,
    job_runs: usize,
    invariants: Vec<Invariant>,
}

impl Outcome {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.invariants.iter().all(|i| i.held)
    }

    fn assert(&mut self, name: &'static str, problems: Vec<String>, fine: String) {
        let held = problems.is_empty();
        let detail = if held {
            fine
        } else {
            let n = problems.len();
            let mut shown: Vec<String> = problems.into_iter().take(5).collect();
            if n > 5 {
                shown.push(format!("and {} more", n - 5));
            }
            shown.join("; ")
        };
        self.invariants.push(Invariant { name, held, detail });
    }
}

/// Lines `call_id attempt tag` of an effects file, by tag.
fn effects(path: &std::path::Path) -> BTreeMap<String, Vec<(String, u32)>> {
    let mut by_tag: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let mut parts = line.split(' ');
        if let (Some(id), Some(attempt), Some(tag)) = (parts.next(), parts.next(), parts.next()) {
            by_tag
                .entry(tag.to_owned())
                .or_default()
                .push((id.to_owned(), attempt.parse().unwrap_or(0)));
        }
    }
    by_tag
}

/// Runs of one call id beyond the first; an error if they were not all the same attempt.
fn repeats(runs: &[(String, u32)]) -> Result<usize, String> {
    let mut by_id: BTreeMap<&str, BTreeSet<u32>> = BTreeMap::new();
    for (id, attempt) in runs {
        by_id.entry(id).or_default().insert(*attempt);
    }
    for (id, attempts) in &by_id {
        if attempts.len() > 1 {
            return Err(format!(
                "call {id} ran as attempts {attempts:?} after succeeding"
            ));
        }
    }
    Ok(runs.len() - by_id.len())
}

/// Checks the invariants once the queues drained, after `faults`.
pub fn check(lab: &Lab, tally: &Tally, faults: &Faults) -> Result<Outcome, String> {
    let kills = faults.kills;
    let mut out = Outcome::default();
    let timeout = Duration::from_secs(30);
    let mut dead_tags: BTreeMap<String, String> = BTreeMap::new();
    let mut runs_by_cage = Vec::new();
    let mut chain_states: BTreeMap<String, (String, Option<String>)> = BTreeMap::new();
    for cage in CAGES {
        let mut client = Client::connect(cage, &lab.direct(cage)).map_err(|e| e.to_string())?;
        for view in client
            .calls(QueueQuery::Dead(Filter::default()), timeout)
            .map_err(|e| e.to_string())?
        {
            let args: serde_json::Value =
                serde_json::from_slice(&view.record.call.args).unwrap_or_default();
            let tag = args["tag"]
                .as_str()
                .unwrap_or(&view.record.call.id)
                .to_owned();
            dead_tags.insert(tag, view.record.dead_reason.clone().unwrap_or_default());
        }
        for c in client
            .chains(
                ChainRequest::List {
                    all: true,
                    limit: usize::MAX,
                },
                timeout,
            )
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
        {
            chain_states.insert(
                c.id.clone(),
                (
                    c.state.as_str().to_owned(),
                    c.failure().map(|f| f.to_string()),
                ),
            );
        }
        let request = CallRequest {
            call_id: String::new(),
            module: "orders".into(),
            method: "runs".into(),
            args: b"null".to_vec(),
            timeout_ms: 30_000,
        };
        let runs = client.call(request).map_err(|e| e.to_string())?;
        runs_by_cage
            .push(serde_json::from_slice::<BTreeMap<String, u64>>(&runs).unwrap_or_default());
    }
    out.calls_dead = dead_tags.len();

    let done = effects(&lab.dir().join("effects.txt"));
    out.calls_executed = done.len();
    let (mut lost, mut ran_refused, mut bad_repeats, mut split_keys) =
        (vec![], vec![], vec![], vec![]);
    for (tag, (fate, id)) in &tally.calls {
        let runs = done.get(tag);
        match fate {
            Fate::Acked if runs.is_none() && !dead_tags.contains_key(tag) => {
                lost.push(format!("{tag} (call {})", id.as_deref().unwrap_or("?")))
            }
            Fate::Refused if runs.is_some() => ran_refused.push(tag.clone()),
            _ => {}
        }
        if let Some(runs) = runs {
            match repeats(runs) {
                Ok(n) => out.repeats_after_kill += n,
                Err(e) => bad_repeats.push(e),
            }
            let ids: BTreeSet<&str> = runs.iter().map(|(id, _)| id.as_str()).collect();
            if ids.len() > 1 {
                split_keys.push(format!("key {tag} ran as calls {ids:?}"));
            }
        }
    }
    let unknown: Vec<String> = done
        .keys()
        .filter(|t| !tally.calls.contains_key(*t))
        .cloned()
        .collect();
    out.assert(
        "every acknowledged call ran or is a dead letter with its reason",
        lost,
        format!(
            "{} acknowledged, {} ran, {} dead",
            tally.calls_acked, out.calls_executed, out.calls_dead
        ),
    );
    out.assert(
        "a call refused for good never ran",
        ran_refused.into_iter().chain(unknown).collect(),
        format!("{} refused, none ran", tally.calls_refused),
    );
    if kills == 0 && out.repeats_after_kill > 0 {
        bad_repeats.push(format!(
            "{} repeats without any kill",
            out.repeats_after_kill
        ));
    }
    out.assert(
        "a call ran again only as the attempt a kill interrupted",
        bad_repeats,
        format!("{} repeat(s) after {kills} kill(s)", out.repeats_after_kill),
    );
    out.assert("one idempotency key, one call", split_keys, "held".into());

    let job_runs = effects(&lab.dir().join("job-effects.txt"));
    let mut job_problems = Vec::new();
    if let Some(runs) = job_runs.get("job") {
        out.job_runs = runs.iter().map(|(id, _)| id).collect::<BTreeSet<_>>().len();
        if let Err(e) = repeats(runs) {
            job_problems.push(e);
        }
    }
    out.assert(
        "job runs ran again only as an interrupted attempt",
        job_problems,
        format!("{} job run(s)", out.job_runs),
    );

    let mut chain_problems = Vec::new();
    for (id, (fate, owner)) in &tally.chains {
        match (fate, chain_states.get(id)) {
            (Fate::Acked, Some((state, _))) if state == "done" => out.chains_done += 1,
            (Fate::Acked, Some((state, Some(failure)))) if state == "failed" => {
                out.chains_failed += 1;
                if failure.is_empty() {
                    chain_problems.push(format!("chain {id} failed without a reason"));
                }
            }
            (Fate::Acked, other) => {
                chain_problems.push(format!("chain {id} on {owner}: {other:?}"))
            }
            (Fate::Refused, Some(_)) => chain_problems.push(format!("refused chain {id} exists")),
            _ => {}
        }
    }
    out.assert(
        "every acknowledged chain finished; a refused one never started",
        chain_problems,
        format!(
            "{} done, {} failed with a reason",
            out.chains_done, out.chains_failed
        ),
    );
    let mut counted = Vec::new();
    for runs in &runs_by_cage {
        for (call, n) in runs {
            out.chain_steps_counted += 1;
            if *n != 1 {
                counted.push(format!("step {call} counted {n} times"));
            }
        }
    }
    out.assert(
        "module state counted every chain step exactly once",
        counted,
        format!("{} step(s), each once", out.chain_steps_counted),
    );

    // Its attempts crash at random but never from the third on, so each call ends done with
    // fewer crashes than `max_crashes`: drained and not dead means it ran.
    let crashing_dead: Vec<String> = tally
        .crashing
        .iter()
        .filter(|(_, (fate, _))| *fate == Fate::Acked)
        .filter_map(|(tag, (_, id))| {
            dead_tags.get(tag).map(|why| {
                format!(
                    "{tag} (call {}) is dead: {why}",
                    id.as_deref().unwrap_or("?")
                )
            })
        })
        .collect();
    out.assert(
        "every acknowledged call of the crashing module finished",
        crashing_dead,
        format!(
            "{} acknowledged, all done despite their crashed workers",
            tally.crashing_calls_acked
        ),
    );
    out.assert(
        "no cage died but by the run's kills",
        faults
            .unexpected_deaths
            .iter()
            .map(|c| format!("cage {c} died (see {c}.log)"))
            .collect(),
        format!("{} kill(s), no other death", faults.kills),
    );

    let panics: Vec<String> = lab
        .logs()
        .into_iter()
        .filter(|(_, log)| log.contains("panicked"))
        .map(|(cage, _)| format!("cage {cage} panicked (see {cage}.log)"))
        .collect();
    out.assert("no cage panicked", panics, "no panic in any log".into());
    Ok(out)
}

/// The report for people.
pub fn print(r: &Report) {
    println!(
        "chaos run: seed {}, {:.1} min of faults, queues drained {:.1} s after",
        r.seed, r.minutes, r.drained_in_secs
    );
    let f = &r.faults;
    let w = &r.workload;
    let o = &r.outcome;
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_header(["WHAT", "COUNT"]);
    for (what, n) in [
        ("kill -9", f.kills),
        ("restarts", f.restarts),
        ("broken module files dropped", f.broken_module_drops),
        ("disk faults (failed flushes)", f.disk_faults),
        ("connection cuts", f.connection_cuts),
        ("connections cut", f.connections_cut),
        ("calls acknowledged", w.calls_acked),
        (
            "calls of the crashing module acknowledged",
            w.crashing_calls_acked,
        ),
        ("calls refused for good", w.calls_refused),
        (
            "calls with unknown fate (client gave up)",
            w.calls_uncertain,
        ),
        ("requests sent again", w.resends),
        ("calls executed", o.calls_executed),
        ("dead letters", o.calls_dead),
        ("repeats after a kill", o.repeats_after_kill),
        ("chains acknowledged", w.chains_acked),
        ("chains done", o.chains_done),
        ("chains failed (with reason)", o.chains_failed),
        ("job runs", o.job_runs),
    ] {
        table.add_row([what.to_owned(), n.to_string()]);
    }
    println!("{table}");
    let mut inv = Table::new();
    inv.load_preset(UTF8_BORDERS_ONLY)
        .set_header(["INVARIANT", "HELD", "DETAIL"]);
    for i in &o.invariants {
        inv.add_row([
            i.name.to_owned(),
            if i.held { "yes" } else { "NO" }.to_owned(),
            i.detail.clone(),
        ]);
    }
    println!("{inv}");
}
