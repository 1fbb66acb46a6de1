//! `cage chain` (start a chain of calls, wait for its results) and `cage chains` (list them).

use super::listing::Gathered;
use super::queue_view::cages;
use super::{exit, target};
use cage_runtime::chains::parse_steps;
use cage_runtime::config::Site;
use cage_runtime::model::chain::{ChainRecord, ChainState, StepSpec};
use cage_runtime::model::clock::{now_ms, span_ms};
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::{ChainRequest, NewChain};
use cage_sdk::{CallError, ErrorKind, ResultOptions};
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde_json::{json, Value};
use std::process::ExitCode;
use std::time::Duration;

/// What `cage chain` was told.
#[derive(clap::Args)]
pub struct ChainArgs {
    /// CAGE 'STEPS' ['JSON'], or start CAGE.MODULE.METHOD ['JSON'].
    #[arg(num_args = 2..=3, required = true, value_names = ["CAGE|start", "STEPS|TARGET", "JSON"])]
    words: Vec<String>,
    /// Run the steps durably through this queue (default: directly; `start`: retry).
    #[arg(long)]
    queue: Option<String>,
    /// Print the chain id and return at once.
    #[arg(long = "async")]
    detach: bool,
    /// Print the values of these keys, in this order (comma-separated).
    #[arg(long, value_delimiter = ',')]
    return_keys: Option<Vec<String>>,
    /// Include the chain's inputs in the results.
    #[arg(long)]
    all_keys: bool,
    /// Merge in the results of chains the steps started.
    #[arg(long)]
    merge_children: bool,
    /// Longest to wait for the chain to finish.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// How long the start of a chain may take (it is stored durably first).
const START_TIMEOUT: Duration = Duration::from_secs(30);

fn bad(message: impl std::fmt::Display) -> ExitCode {
    exit::fail(exit::for_kind(ErrorKind::BadArguments), message)
}

fn refused(cage: &str, e: CallError) -> ExitCode {
    exit::fail(exit::for_kind(e.kind), format!("cage {cage}: {e}"))
}

pub fn chain(site: &Site, a: ChainArgs) -> ExitCode {
    let words: Vec<&str> = a.words.iter().map(String::as_str).collect();
    let (cage, new) = match words.as_slice() {
        ["start", target, rest @ ..] if rest.len() <= 1 => {
            let args = rest.first().copied().unwrap_or("null");
            if let Err(e) = serde_json::from_str::<Value>(args) {
                return bad(format!("arguments are not JSON: {e}"));
            }
            let Some((cage, local)) = target.split_once('.') else {
                return bad(format!("{target:?} is not CAGE.MODULE.METHOD"));
            };
            let step = match StepSpec::parse_dotted(local, args.as_bytes().to_vec()) {
                Ok(s) if s.cage.is_none() => s,
                _ => return bad(format!("{target:?} is not CAGE.MODULE.METHOD")),
            };
            let queue = a.queue.clone().unwrap_or_else(|| "retry".to_owned());
            (
                cage.to_owned(),
                new_chain(vec![step], b"{}".to_vec(), Some(queue)),
            )
        }
        [cage, steps, rest @ ..] if rest.len() <= 1 => {
            let steps = match parse_steps(steps) {
                Ok(s) => s,
                Err(e) => return bad(e),
            };
            let inputs = rest.first().copied().unwrap_or("{}").as_bytes().to_vec();
            (
                (*cage).to_owned(),
                new_chain(steps, inputs, a.queue.clone()),
            )
        }
        _ => {
            return bad(
                "usage: cage chain CAGE 'module.a | module.b | other:module.c' ['JSON'] \
                 or cage chain start CAGE.MODULE.METHOD ['JSON']",
            )
        }
    };
    let continuation = words.first() == Some(&"start");
    let route = match target::route(site, &cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut client = match Client::connect(&cage, &route) {
        Ok(c) => c,
        Err(e) => {
            return exit::fail(
                exit::for_kind(e.into_call_error().kind),
                format!("cage {cage}: unreachable"),
            )
        }
    };
    let start = ChainRequest::Start {
        chains: vec![new],
        max_parallel: 0,
        parent: None,
    };
    let id = match client.start_chains(start, START_TIMEOUT) {
        Ok(Ok(mut ids)) => ids.pop().unwrap_or_default(),
        Ok(Err(e)) => return refused(&cage, e),
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    if a.detach || continuation {
        if a.json {
            println!("{}", json!({ "chain": id, "cage": cage }));
        } else {
            println!("{id}");
        }
        return ExitCode::SUCCESS;
    }
    let wait = ChainRequest::Wait {
        ids: vec![id.clone()],
        any: false,
        timeout_ms: a.timeout.as_millis() as u64,
    };
    let chain = match client.chains(wait, a.timeout + Duration::from_secs(5)) {
        Ok(Ok(mut c)) if !c.is_empty() => c.remove(0),
        Ok(Ok(_)) => return exit::fail(exit::OTHER, format!("cage {cage} answered no chain {id}")),
        Ok(Err(e)) => return refused(&cage, e),
        Err(e) => return exit::fail(exit::OTHER, e),
    };
    if let Some(f) = chain.failure() {
        if a.json {
            println!("{}", json!({ "chain": id, "failure": f }));
        }
        return exit::fail(exit::for_kind(ErrorKind::ChildFailed), f);
    }
    let options = ResultOptions {
        return_keys: a.return_keys,
        merge_children_results: a.merge_children,
        return_keys_only: !a.all_keys,
    };
    let results = chain.results(&options);
    println!(
        "{}",
        if a.json {
            results.to_string()
        } else {
            serde_json::to_string_pretty(&results).unwrap_or_default()
        }
    );
    ExitCode::SUCCESS
}

fn new_chain(steps: Vec<StepSpec>, inputs: Vec<u8>, queue: Option<String>) -> NewChain {
    NewChain {
        id: None,
        steps,
        inputs,
        queue,
        ordinal: 0,
    }
}

/// A chain record for people and tools: JSON values instead of bytes.
pub fn view(c: &ChainRecord) -> Value {
    let parse = |b: &[u8]| serde_json::from_slice::<Value>(b).unwrap_or(Value::Null);
    json!({
        "id": c.id,
        "owner": c.owner,
        "parent": c.parent,
        "state": c.state.as_str(),
        "failure": c.failure(),
        "queue": c.queue,
        "step": c.step,
        "steps": c.steps.iter().map(StepSpec::label).collect::<Vec<_>>(),
        "inputs": parse(&c.inputs),
        "bag": parse(&c.bag),
        "returned": c.returned,
        "children_results": parse(&c.children_results),
        "path": c.path,
        "started_ms": c.started_ms,
        "ended_ms": c.ended_ms,
    })
}

/// The path so far: `m.a@demo ✓ → m.b@demo ✗`, then the current step.
pub fn path(c: &ChainRecord) -> String {
    let mut parts: Vec<String> = c
        .path
        .iter()
        .map(|r| {
            format!(
                "{}@{} {}",
                r.call,
                r.cage,
                if r.error.is_some() { "✗" } else { "✓" }
            )
        })
        .collect();
    if matches!(c.state, ChainState::Running | ChainState::Held) {
        if let Some(s) = c.current() {
            parts.push(format!("{} …", s.label()));
        }
    }
    parts.join(" → ")
}

pub fn list(site: &Site, cage: Option<&str>, all: bool, limit: usize, json: bool) -> ExitCode {
    // One cage down must not hide the others' chains; it is named, and the exit code says so.
    let gathered = match Gathered::ask(site, &cages(site, cage), |c| {
        c.chains(ChainRequest::List { all, limit }, START_TIMEOUT)
            .map_err(ClientError::into_call_error)?
    }) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let found = &gathered.items;
    if json {
        let views: Vec<Value> = found.iter().map(view).collect();
        println!("{}", Value::Array(views));
        return gathered.finish(json);
    }
    if found.is_empty() {
        println!(
            "{}",
            gathered.nothing(if all {
                "no chains"
            } else {
                "no running chains"
            })
        );
        return gathered.finish(json);
    }
    let now = now_ms();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(["CHAIN", "CAGE", "STATE", "STEP", "PATH", "AGE", "PARENT"]);
    for c in found {
        let state = match c.failure() {
            Some(f) => format!("{}: {}", c.state.as_str(), f.reason),
            None => c.state.as_str().to_owned(),
        };
        table.add_row([
            c.id.clone(),
            c.owner.clone(),
            state,
            format!(
                "{}/{}",
                (c.step as usize + 1).min(c.steps.len()),
                c.steps.len()
            ),
            path(c),
            span_ms(now.saturating_sub(c.started_ms)),
            c.parent.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    println!("{table}");
    gathered.finish(json)
}

/// Chains held by `cage` that call `id` started, or the chain `id` itself.
pub fn related(site: &Site, cage: &str, request: ChainRequest) -> Vec<ChainRecord> {
    let Ok(route) = target::route(site, cage) else {
        return Vec::new();
    };
    match Client::connect(cage, &route).and_then(|mut c| c.chains(request, START_TIMEOUT)) {
        Ok(Ok(chains)) => chains,
        _ => Vec::new(),
    }
}
