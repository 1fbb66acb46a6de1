//! `cage bench chain`: the cost of a chain step, local and across cages, direct and queued:
//! chains of one step and of K steps are timed from start to finish, and the difference per
//! added step is the step's overhead.

use super::percentile_us;
use crate::LabError;
use cage_runtime::chains::parse_steps;
use cage_runtime::config::Site;
use cage_runtime::model::chain::StepSpec;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{ChainRequest, NewChain};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use std::time::{Duration, Instant};

/// What the chain scenario was told.
pub struct ChainBench<'a> {
    /// Cage that owns the chains.
    pub cage: &'a str,
    /// Another cage serving the same step, for the across-cages rows.
    pub other: Option<&'a str>,
    /// MODULE.METHOD of every step.
    pub step: &'a str,
    /// Inputs of every chain.
    pub inputs: &'a str,
    /// Steps of the long chains.
    pub steps: usize,
    /// Chains timed per row.
    pub chains: usize,
    /// Queue of the queued rows.
    pub queue: &'a str,
    /// Print JSON.
    pub json: bool,
}

#[derive(Serialize)]
struct Row {
    mode: String,
    steps: usize,
    chains: usize,
    p50_ms: f64,
    p99_ms: f64,
    per_step_overhead_ms: f64,
}

fn time_chains(
    b: &ChainBench,
    client: &mut Client,
    steps: &[StepSpec],
    queue: Option<&str>,
    progress: &ProgressBar,
) -> Result<Vec<Duration>, String> {
    let mut out = Vec::with_capacity(b.chains);
    for _ in 0..b.chains {
        let t = Instant::now();
        let start = ChainRequest::Start {
            chains: vec![NewChain {
                id: None,
                steps: steps.to_vec(),
                inputs: b.inputs.as_bytes().to_vec(),
                queue: queue.map(str::to_owned),
                ordinal: 0,
            }],
            max_parallel: 0,
            parent: None,
        };
        let id = client
            .start_chains(start, Duration::from_secs(30))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?
            .pop()
            .unwrap_or_default();
        let wait = ChainRequest::Wait {
            ids: vec![id.clone()],
            any: false,
            timeout_ms: 60_000,
        };
        let chain = client
            .chains(wait, Duration::from_secs(65))
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if let Some(f) = chain.first().and_then(|c| c.failure()) {
            return Err(f.to_string());
        }
        out.push(t.elapsed());
        progress.inc(1);
    }
    out.sort_unstable();
    Ok(out)
}

pub fn chain(site: &Site, b: ChainBench) -> Result<(), LabError> {
    let bench = |e: String| LabError::Bench(e);
    let route = site
        .execute_on()
        .and_then(|e| site.route(&e, b.cage))
        .map_err(|e| bench(e.to_string()))?;
    let mut client = Client::connect(b.cage, &route).map_err(|e| bench(e.to_string()))?;
    let mut cages = vec![("local", b.cage)];
    if let Some(other) = b.other {
        cages.push(("across cages", other));
    }
    let modes: Vec<(String, &str, Option<&str>)> = cages
        .iter()
        .flat_map(|(place, cage)| {
            [
                (format!("{place}, direct"), *cage, None),
                (format!("{place}, queue {}", b.queue), *cage, Some(b.queue)),
            ]
        })
        .collect();
    let progress = ProgressBar::new((modes.len() * 2 * b.chains) as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} chains")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let steps = b.steps.max(2);
    let mut rows = Vec::new();
    for (mode, cage, queue) in modes {
        progress.set_message(format!("chain {mode}"));
        let step = if cage == b.cage {
            b.step.to_owned()
        } else {
            format!("{cage}:{}", b.step)
        };
        // Every step of the long chain on `cage`; alternating cages would measure hops twice.
        let one = parse_steps(&step).map_err(|e| bench(e.to_string()))?;
        let many: Vec<StepSpec> = std::iter::repeat_n(one[0].clone(), steps).collect();
        let short = time_chains(&b, &mut client, &one, queue, &progress);
        let long = time_chains(&b, &mut client, &many, queue, &progress);
        let (short, long) = match (short, long) {
            (Ok(s), Ok(l)) => (s, l),
            (Err(e), _) | (_, Err(e)) => return Err(bench(format!("{mode}: {e}"))),
        };
        let p50 = |d: &[Duration]| percentile_us(d, 0.5) / 1000.0;
        rows.push(Row {
            per_step_overhead_ms: (p50(&long) - p50(&short)) / (steps - 1) as f64,
            mode,
            steps,
            chains: b.chains,
            p50_ms: p50(&long),
            p99_ms: percentile_us(&long, 0.99) / 1000.0,
        });
    }
    progress.finish_and_clear();
    if b.json {
        println!("{}", serde_json::to_string(&rows).unwrap_or_default());
        return Ok(());
    }
    let mut table = Table::new();
    table.load_preset(UTF8_BORDERS_ONLY).set_header([
        "MODE",
        "STEPS",
        "CHAINS",
        "CHAIN p50",
        "CHAIN p99",
        "PER STEP",
    ]);
    for r in &rows {
        table.add_row([
            r.mode.clone(),
            r.steps.to_string(),
            r.chains.to_string(),
            format!("{:.2} ms", r.p50_ms),
            format!("{:.2} ms", r.p99_ms),
            format!("{:.2} ms", r.per_step_overhead_ms),
        ]);
    }
    println!("{table}");
    Ok(())
}
