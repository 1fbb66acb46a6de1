//! `cage job add|remove|run-now` and `cage jobs`: scheduled and recurring calls.

use super::queue_view::TIMEOUT;
use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::model::clock::{self, now_ms, span_ms, unix_ms};
use cage_runtime::model::job::{CatchUp, Job, Schedule};
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::{JobRequest, JobSpec};
use cage_sdk::ErrorKind;
use clap::Subcommand;
use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Subcommand)]
pub enum JobAction {
    /// Add a job to CAGE: once (--at / --in) or recurring (--every); stored before this returns.
    Add {
        /// The cage that stores the job and runs it.
        cage: String,
        /// MODULE.METHOD to call.
        target: String,
        /// JSON arguments of every run.
        #[arg(default_value = "null")]
        args: String,
        /// Run once at this time (RFC 3339, e.g. 2026-12-01T10:00:00Z).
        #[arg(long, conflicts_with_all = ["after", "every"], required_unless_present_any = ["after", "every"])]
        at: Option<String>,
        /// Run once after this long (e.g. 2h).
        #[arg(long = "in", value_parser = humantime::parse_duration, conflicts_with = "every")]
        after: Option<Duration>,
        /// Run at this interval (e.g. 1m), the first run one interval from now.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<Duration>,
        /// Queue the runs go through (its retry policy applies to failed runs).
        #[arg(long, default_value = "retry")]
        queue: String,
        /// What a recurring job does about runs missed while the cage was down.
        #[arg(long, value_enum, default_value_t = CatchUp::Once)]
        catch_up: CatchUp,
        /// Replace a recurring job with the same cage, method and arguments.
        #[arg(long)]
        replace: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a job (declared jobs are removed from their cage file instead).
    Remove {
        /// The job id.
        id: String,
    },
    /// Fire a run of a job now; its schedule stays as it is.
    RunNow {
        /// The job id.
        id: String,
    },
}

fn client(site: &Site, cage: &str) -> Result<Client, ExitCode> {
    let route = target::route(site, cage)?;
    Client::connect(cage, &route).map_err(|e| {
        let e = e.into_call_error();
        exit::fail(exit::for_kind(e.kind), e)
    })
}

fn failed(e: ClientError) -> ExitCode {
    match e {
        e @ ClientError::Rejected { kind, .. } => exit::fail(exit::for_kind(kind), e),
        e => {
            let e = e.into_call_error();
            exit::fail(exit::for_kind(e.kind), e)
        }
    }
}

/// Runs one `cage job …` action.
pub fn job(site: &Site, action: JobAction) -> ExitCode {
    match action {
        JobAction::Add {
            cage,
            target: t,
            args,
            at,
            after,
            every,
            queue,
            catch_up,
            replace,
            json,
        } => {
            let (module, method) = match target::split(&t) {
                Ok(x) => x,
                Err(code) => return code,
            };
            if let Err(code) = target::queue(&queue) {
                return code;
            }
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&args) {
                return exit::fail(
                    exit::for_kind(ErrorKind::BadArguments),
                    format!("arguments for {cage} {t} are not JSON: {e}"),
                );
            }
            let now = now_ms();
            let schedule = match (at, after, every) {
                (Some(at), _, _) => match humantime::parse_rfc3339_weak(&at) {
                    Ok(t) => clock::within_horizon(&format!("--at {at}"), unix_ms(t), now)
                        .map(|at_ms| Schedule::Once { at_ms }),
                    Err(e) => {
                        return exit::fail(
                            exit::for_kind(ErrorKind::BadArguments),
                            format!("--at {at:?}: {e} (expected e.g. 2026-12-01T10:00:00Z)"),
                        )
                    }
                },
                (_, Some(d), _) => clock::span_within_horizon("--in", d).map(|d| Schedule::Once {
                    at_ms: clock::after(now, d),
                }),
                (_, _, Some(d)) => {
                    clock::span_within_horizon("--every", d).map(|d| Schedule::Every {
                        interval_ms: clock::millis(d),
                        first_ms: clock::after(now, d),
                    })
                }
                (None, None, None) => {
                    return exit::fail(
                        exit::for_kind(ErrorKind::BadArguments),
                        "say when: --at, --in or --every",
                    )
                }
            };
            let schedule = match schedule {
                Ok(s) => s,
                Err(e) => {
                    return exit::fail(
                        exit::for_kind(ErrorKind::BadArguments),
                        format!("job for {cage} {t}: {e}"),
                    )
                }
            };
            let spec = JobSpec {
                module: module.into(),
                method: method.into(),
                args: args.into_bytes(),
                queue,
                schedule,
                catch_up,
            };
            let mut c = match client(site, &cage) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match c.job(JobRequest::Add { spec, replace }, TIMEOUT) {
                Ok(jobs) => {
                    for j in &jobs {
                        if json {
                            println!("{}", serde_json::to_string_pretty(j).unwrap_or_default());
                        } else {
                            println!("{}", j.id);
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => failed(e),
            }
        }
        JobAction::Remove { id } => order(site, &id, "removed", JobRequest::Remove),
        JobAction::RunNow { id } => order(site, &id, "run started", JobRequest::RunNow),
    }
}

/// Finds the cage holding job `id` and gives it `make(id)`.
fn order(site: &Site, id: &str, what: &str, make: fn(String) -> JobRequest) -> ExitCode {
    for cage in site.cage_names() {
        let Ok(mut c) = client(site, &cage) else {
            continue;
        };
        let Ok(jobs) = c.job(JobRequest::List, TIMEOUT) else {
            continue;
        };
        if jobs.iter().any(|j| j.id == id) {
            return match c.job(make(id.to_owned()), TIMEOUT) {
                Ok(_) => {
                    println!("{what}: {id}");
                    ExitCode::SUCCESS
                }
                Err(e) => failed(e),
            };
        }
    }
    exit::fail(
        exit::NOT_FOUND,
        format!(
            "no running cage of the site {} has a job {id:?}",
            site.root().display()
        ),
    )
}

/// `cage jobs [CAGE]`.
pub fn list(site: &Site, cage: Option<&str>, json: bool) -> ExitCode {
    let cages = match cage {
        Some(c) => vec![c.to_owned()],
        None => site.cage_names(),
    };
    // A cage that could not be read is named, and the exit code says the listing is partial.
    let gathered = match super::listing::Gathered::ask(site, &cages, |c| {
        c.job(JobRequest::List, TIMEOUT)
            .map_err(ClientError::into_call_error)
    }) {
        Ok(g) => g,
        Err(code) => return code,
    };
    let all: &Vec<Job> = &gathered.items;
    if json {
        println!("{}", serde_json::to_string_pretty(all).unwrap_or_default());
        return gathered.finish(json);
    }
    if all.is_empty() {
        println!("{}", gathered.nothing("no jobs"));
        return gathered.finish(json);
    }
    let now = now_ms();
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header([
            "ID", "CAGE", "CALLS", "SCHEDULE", "NEXT RUN", "LAST RUN", "OUTCOME",
        ]);
    for j in all {
        let next = match j.next_run_ms {
            None => "- (ran)".to_owned(),
            Some(t) if t <= now => "due now".to_owned(),
            Some(t) => format!("in {}", span_ms(t - now)),
        };
        let (last, outcome) = match &j.last_run {
            None => ("never".to_owned(), "-".to_owned()),
            Some(r) => (
                // A run stored as scheduled ahead of now (a clock set back, an old record).
                if r.scheduled_ms > now {
                    format!("at {}", clock::utc(r.scheduled_ms))
                } else {
                    format!("{} ago", span_ms(now - r.scheduled_ms))
                },
                r.outcome
                    .clone()
                    .unwrap_or_else(|| format!("queued as {}", r.call_id)),
            ),
        };
        let schedule = if j.declared {
            format!("{} (cage file)", j.schedule.words())
        } else {
            j.schedule.words()
        };
        table.add_row([
            j.id.clone(),
            j.cage.clone(),
            format!(
                "{}.{} {}",
                j.module,
                j.method,
                String::from_utf8_lossy(&j.args)
            ),
            schedule,
            next,
            last,
            outcome,
        ]);
    }
    println!("{table}");
    gathered.finish(json)
}
