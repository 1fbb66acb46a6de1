//! `cage status [--json]`: every cage the site knows and every cage discovery finds, one row
//! per instance: reachable or why not, version, uptime, modules, pending and dead calls.

use super::exit;
use cage_runtime::config::Site;
use cage_runtime::dashboard::gather::{CageSummary, Cluster, Instance};
use cage_runtime::discovery::{DiscoveryError, Known};
use cage_sdk::ErrorKind;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde::Serialize;
use std::process::ExitCode;
use std::time::Duration;

/// One instance of one cage, as printed.
#[derive(Serialize)]
struct Row {
    cage: String,
    address: String,
    known: Known,
    reachable: bool,
    error: Option<String>,
    version: Option<String>,
    uptime_secs: Option<u64>,
    modules: Vec<ModuleRow>,
    pending: Option<u64>,
    dead: Option<u64>,
}

#[derive(Serialize)]
struct ModuleRow {
    name: String,
    /// `None`: named in the cage file but not loaded.
    version: Option<String>,
}

fn row(cage: &CageSummary, instance: &Instance) -> Row {
    let counts = instance.metrics.as_ref().map(|m| {
        m.queues
            .iter()
            .fold((0, 0), |(p, d), q| (p + q.pending, d + q.dead_now))
    });
    Row {
        cage: cage.name.clone(),
        address: instance.addr.to_string(),
        known: cage.known,
        reachable: instance.info.is_ok(),
        error: instance.info.as_ref().err().cloned(),
        version: instance.info.as_ref().ok().map(|i| i.version.clone()),
        uptime_secs: instance.info.as_ref().ok().map(|i| i.uptime_secs),
        modules: instance
            .modules
            .iter()
            .map(|m| ModuleRow {
                name: m.name.clone(),
                version: m.version.clone(),
            })
            .collect(),
        pending: counts.map(|c| c.0),
        dead: counts.map(|c| c.1),
    }
}

pub fn status(site: &Site, json: bool) -> ExitCode {
    let (mut cluster, execute_on) =
        match Cluster::from_site(site).and_then(|c| Ok((c, site.execute_on()?))) {
            Ok(found) => found,
            Err(e) => return exit::fail(exit::CONFIG, e),
        };
    // Cages the site lists are shown however discovery goes; a failed query is a warning.
    let discovery = cluster.discover(&execute_on.unknown);
    if let Err(e) = &discovery {
        if !matches!(e, DiscoveryError::Off) {
            eprintln!("warning: {e}; only the cages this site lists are shown");
        }
    }
    let rows: Vec<Row> = cluster
        .summaries()
        .iter()
        .flat_map(|c| c.instances.iter().map(move |i| row(c, i)))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return unread(&rows);
    }
    if rows.is_empty() {
        println!("no cages: none in cages/, none under [cages.*], none answered discovery");
        return ExitCode::SUCCESS;
    }
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "CAGE", "ADDRESS", "KNOWN BY", "STATE", "VERSION", "UPTIME", "MODULES", "PENDING",
            "DEAD",
        ]);
    let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    for r in &rows {
        let state = match &r.error {
            None => "up".to_owned(),
            Some(e) => format!("down: {e}"),
        };
        let modules = r
            .modules
            .iter()
            .map(|m| match &m.version {
                Some(v) => format!("{} {v}", m.name),
                None => format!("{} (not loaded)", m.name),
            })
            .collect::<Vec<_>>()
            .join(", ");
        table.add_row([
            r.cage.clone(),
            r.address.clone(),
            r.known.label().to_owned(),
            state,
            or_dash(r.version.clone()),
            or_dash(
                r.uptime_secs
                    .map(|s| humantime::format_duration(Duration::from_secs(s)).to_string()),
            ),
            if modules.is_empty() {
                "-".into()
            } else {
                modules
            },
            or_dash(r.pending.map(|n| n.to_string())),
            or_dash(r.dead.map(|n| n.to_string())),
        ]);
    }
    println!("{table}");
    unread(&rows)
}

/// Success if every instance answered in full; else names those that did not, and exits
/// with the unreachable code (the table or JSON above shows why for each).
fn unread(rows: &[Row]) -> ExitCode {
    let missing: Vec<String> = rows
        .iter()
        .filter_map(|r| match (&r.error, r.pending) {
            (Some(_), _) => Some(format!("{} at {} (down)", r.cage, r.address)),
            (None, None) => Some(format!(
                "{} at {} (its counters could not be read)",
                r.cage, r.address
            )),
            (None, Some(_)) => None,
        })
        .collect();
    if missing.is_empty() {
        return ExitCode::SUCCESS;
    }
    exit::fail(
        exit::for_kind(ErrorKind::Unreachable),
        format!(
            "{} of {} instance(s) could not be read: {}",
            missing.len(),
            rows.len(),
            missing.join(", ")
        ),
    )
}
