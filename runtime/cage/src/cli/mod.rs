//! Command-line front end of the `cage` binary: one file per subcommand.

mod call;
mod chain;
mod dashboard;
mod enqueue;
mod exit;
mod jobs;
mod keys;
mod listing;
mod modules;
mod pending;
mod queue_view;
mod run;
mod schedule;
mod show;
mod status;
mod steer;
mod target;
mod worker;

use cage_runtime::config::Site;
use cage_runtime::transport::protocol::{Filter, QueueQuery, Redrive};
use cage_runtime::transport::{credential, tls};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// cages: every service a cage, serving hot-reloaded modules.
#[derive(Parser)]
#[command(name = "cage", version, about)]
struct Cli {
    /// Site directory holding cages/, config/ and modules/.
    #[arg(long, global = true, env = "CAGE_SITE", default_value = ".")]
    site: PathBuf,
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=cage_runtime=debug).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one module version as a worker process of a cage (started by the cage itself).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
    /// Run cage NAME (cages/NAME.toml) until interrupted.
    Run {
        /// The cage to run.
        name: String,
        /// Listen here instead of the cage file's `listen` (a second instance of the cage on
        /// this host; list every instance under `[cages.NAME]` in config_execute_on.toml).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Serve the HTTP API here instead of the cage file's `http_listen`.
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// Keep the queue here instead of the cage file's `data_dir` (relative: to the site);
        /// every instance needs its own.
        #[arg(long)]
        data_dir: Option<std::path::PathBuf>,
    },
    /// Serve the operator dashboard for every cage of the site (pending calls, dead letters,
    /// modules, jobs, metrics).
    Dashboard {
        /// Address to serve on (loopback only).
        #[arg(long, default_value = "127.0.0.1:7480")]
        listen: std::net::SocketAddr,
        /// Token that opens it (default: config/keys/dashboard.token, made on first use).
        #[arg(long, env = "CAGE_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM); needed beyond loopback.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --tls-cert.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
    },
    /// Call MODULE.METHOD on a cage synchronously and print the JSON result.
    Call {
        /// The cage to call.
        cage: String,
        /// MODULE.METHOD to call.
        target: String,
        /// JSON arguments.
        #[arg(default_value = "null")]
        args: String,
        /// Longest to wait for the result.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Every cage the site lists and every cage discovery finds, one row per instance:
    /// reachable or why not, version, uptime, modules, pending and dead calls.
    Status {
        /// Print JSON: one object per instance.
        #[arg(long)]
        json: bool,
    },
    /// List the modules a running cage serves: version, file hash, load time, last load error.
    Modules {
        /// The cage to ask.
        cage: String,
        /// List every method of each module (the table shows the first few and a count).
        #[arg(long)]
        methods: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put a call into a durable queue; prints its id once it is on disk.
    Enqueue {
        /// The cage that executes the call.
        cage: String,
        /// MODULE.METHOD to call.
        target: String,
        /// JSON arguments.
        #[arg(default_value = "null")]
        args: String,
        /// Queue whose retry policy applies.
        #[arg(long, default_value = "retry")]
        queue: String,
        /// Among due calls of the queue, higher runs first.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        priority: i32,
        /// Idempotency key: a second enqueue with the same key is the first call.
        #[arg(long)]
        key: Option<String>,
        /// Group of the call within its queue (a customer, a tenant), which the queue's
        /// group_concurrency, group_rate_limit and round-robin dispatch count by.
        #[arg(long)]
        group: Option<String>,
        /// Hand the call to this cage, which keeps it until CAGE accepts it (default: CAGE).
        #[arg(long)]
        from: Option<String>,
        /// Run it no earlier than this long from now (e.g. 10m).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        delay: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List pending queued calls: target, attempts, next attempt, age, last error.
    Pending {
        /// Only this cage (default: every cage of the site).
        cage: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List dead letters: calls that gave up or were rejected for good.
    Dead {
        /// Only this cage (default: every cage of the site).
        cage: Option<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one queued call: arguments and every attempt.
    Show {
        /// The call id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make a pending call due now; or, with --all, every pending call that passes the filters
    /// (--dry-run to count them first, --spread to spread their due times).
    RetryNow(Redrivable),
    /// Remove a call, pending or dead, and cancel the chains it started; or cancel a chain (or,
    /// with --all, every pending call that passes the filters).
    Cancel(PendingCalls),
    /// Move a dead call back to pending, due now, with a fresh give-up window and crash count;
    /// or, with --all, every dead call that passes the filters (a redrive after a fix:
    /// --dry-run to count them first, --spread to spread their due times).
    Revive(Redrivable),
    /// Add, remove or run a job.
    Job {
        #[command(subcommand)]
        action: jobs::JobAction,
    },
    /// List jobs: target, schedule in words, next run, last run and outcome.
    Jobs {
        /// Only this cage (default: every cage of the site).
        cage: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the retry schedule the current config implies for a queue (no jitter).
    Schedule {
        /// The queue.
        #[arg(long, default_value = "retry")]
        queue: String,
        /// Print JSON: one {"attempt", "delay_secs", "at_secs"} object per attempt.
        #[arg(long)]
        json: bool,
    },
    /// Run a chain of calls on CAGE and print its results: `cage chain CAGE 'm.a | m.b |
    /// other:m.c' 'JSON'`; or start a continuation chain: `cage chain start
    /// CAGE.MODULE.METHOD 'JSON'` (prints its id).
    Chain(chain::ChainArgs),
    /// List running chains (with --all, recent finished ones too): state, step, path so far.
    Chains {
        /// Only this cage (default: every cage of the site).
        cage: Option<String>,
        /// Include finished chains.
        #[arg(long)]
        all: bool,
        /// At most this many per cage (default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run three cages in a temporary site under faults (kill -9, broken modules, failed
    /// flushes, cut connections) while calls, chains and a job flow; then check that nothing
    /// acknowledged was lost or run twice, and print the report.
    Chaos(cage_lab::chaos::ChaosArgs),
    /// Make the cluster's TLS keys: `cage keys init`, `cage keys issue NAME`.
    Keys {
        #[command(subcommand)]
        action: keys::KeysAction,
    },
    /// Measure a running cage.
    Bench {
        #[command(subcommand)]
        scenario: cage_lab::bench::Scenario,
    },
}

/// The pending calls a steering command acts on: one by id, or every one the filters pass.
#[derive(clap::Args)]
struct PendingCalls {
    /// The call id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    id: Option<String>,
    /// Every call that passes the filters.
    #[arg(long)]
    all: bool,
    /// With --all: only this cage.
    #[arg(long)]
    cage: Option<String>,
    #[command(flatten)]
    filter: FilterArgs,
}

/// The calls a redrive (`retry-now`, `revive`) is about: one, or all that pass the filters.
#[derive(clap::Args)]
struct Redrivable {
    #[command(flatten)]
    calls: PendingCalls,
    /// With --all: count the calls and show the first ten, changing nothing.
    #[arg(long, requires = "all")]
    dry_run: bool,
    /// With --all: spread their due times evenly over this span from now (e.g. 10m), so a
    /// service downstream is not flooded.
    #[arg(long, requires = "all", value_parser = humantime::parse_duration)]
    spread: Option<Duration>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Filters shared by the queue listings.
#[derive(clap::Args)]
struct FilterArgs {
    /// Only calls of this queue.
    #[arg(long)]
    queue: Option<String>,
    /// Only calls to this module.
    #[arg(long)]
    module: Option<String>,
    /// Only calls of this group.
    #[arg(long)]
    group: Option<String>,
    /// Only calls to this method.
    #[arg(long)]
    method: Option<String>,
    /// Only calls whose last error (or why they died) holds this text.
    #[arg(long)]
    error: Option<String>,
    /// Only calls last tried at or after this time: RFC 3339 (2026-12-01T10:00:00Z) or a span
    /// ago (2h).
    #[arg(long, value_parser = moment)]
    since: Option<u64>,
    /// Only calls last tried before this time (as --since).
    #[arg(long, value_parser = moment)]
    before: Option<u64>,
    /// At most this many calls per cage (listings: default 1000; orders: no limit).
    #[arg(long)]
    limit: Option<usize>,
}

impl From<FilterArgs> for Filter {
    fn from(f: FilterArgs) -> Self {
        Filter {
            queue: f.queue,
            module: f.module,
            limit: f.limit.unwrap_or(0),
            group: f.group,
            method: f.method,
            error: f.error,
            since_ms: f.since,
            before_ms: f.before,
        }
    }
}

/// A moment given on the command line: an RFC 3339 time, or a span before now (`2h`); in ms
/// since the epoch.
fn moment(text: &str) -> Result<u64, String> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(cage_runtime::model::clock::unix_ms(at));
    }
    humantime::parse_duration(text)
        .map(|ago| cage_runtime::model::clock::now_ms().saturating_sub(ago.as_millis() as u64))
        .map_err(|_| {
            format!("{text:?} is neither a time (2026-12-01T10:00:00Z) nor a span ago (2h)")
        })
}

/// Gives the redrive `r` (of dead calls with `dead`, else of pending ones) on its cages.
fn redrive(site: &Site, r: Redrivable, dead: bool) -> ExitCode {
    // The command as typed, for each call's history.
    let by = std::iter::once("cage".to_owned())
        .chain(std::env::args().skip(1))
        .collect::<Vec<_>>()
        .join(" ");
    let order = Redrive {
        dead,
        filter: r.calls.filter.into(),
        dry_run: r.dry_run,
        spread_ms: r.spread.map_or(0, |d| d.as_millis() as u64),
        by,
    };
    steer::redrive(site, r.calls.cage.as_deref(), order, r.json)
}

/// The exit of a lab command: success, or its error with the general failure code.
fn lab_outcome(result: Result<(), cage_lab::LabError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::fail(exit::OTHER, e),
    }
}

fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses the command line and runs it, returning the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Worker(args) = &cli.command {
        // Before any logging or credential set-up: a worker speaks only to its cage.
        return worker::worker(args);
    }
    let site = Site::new(&cli.site);
    let is_run = matches!(cli.command, Command::Run { .. });
    init_logs(cli.log_format, if is_run { "info" } else { "warn" });
    // A cage speaks as itself over TLS; every other command as the operator's `cli`.
    let identity = match &cli.command {
        Command::Run { name, .. } => name.as_str(),
        _ => tls::CLI_IDENTITY,
    };
    tls::act_as(tls::Identity::new(identity, &site.keys_dir()));
    // Over plain TCP, every connection opens with the site's credential.
    credential::present_site(&site.keys_dir());
    match cli.command {
        Command::Run {
            name,
            listen,
            http_listen,
            data_dir,
        } => run::run(
            &site,
            &name,
            &cage_runtime::config::InstanceOverrides {
                listen,
                http_listen,
                data_dir,
            },
        ),
        Command::Call {
            cage,
            target,
            args,
            timeout,
        } => call::call(&site, &cage, &target, &args, timeout),
        Command::Dashboard {
            listen,
            token,
            tls_cert,
            tls_key,
        } => {
            let tls = tls_cert
                .zip(tls_key)
                .map(|(cert, key)| dashboard::TlsFiles { cert, key });
            dashboard::dashboard(&site, listen, token, tls)
        }
        Command::Modules {
            cage,
            methods,
            json,
        } => modules::modules(&site, &cage, methods, json),
        Command::Status { json } => status::status(&site, json),
        Command::Enqueue {
            cage,
            target,
            args,
            queue,
            priority,
            key,
            group,
            from,
            delay,
            json,
        } => enqueue::enqueue(
            &site,
            enqueue::EnqueueArgs {
                cage: &cage,
                target: &target,
                args: &args,
                queue,
                priority,
                key,
                group,
                from,
                delay,
                json,
            },
        ),
        Command::Pending { cage, filter, json } => {
            pending::list(&site, cage.as_deref(), filter.into(), false, json)
        }
        Command::Dead { cage, filter, json } => {
            pending::list(&site, cage.as_deref(), filter.into(), true, json)
        }
        Command::Show { id, json } => show::show(&site, &id, json),
        Command::RetryNow(Redrivable {
            calls: PendingCalls { id: Some(id), .. },
            ..
        }) => steer::by_id(&site, &id, "retry-now", QueueQuery::RetryNow),
        Command::RetryNow(r) => redrive(&site, r, false),
        Command::Cancel(PendingCalls { id: Some(id), .. }) => steer::cancel(&site, &id),
        Command::Cancel(PendingCalls {
            id: None,
            cage,
            filter,
            ..
        }) => steer::all(
            &site,
            cage.as_deref(),
            filter.into(),
            "cancelled",
            QueueQuery::CancelAll,
        ),
        Command::Revive(Redrivable {
            calls: PendingCalls { id: Some(id), .. },
            ..
        }) => steer::by_id(&site, &id, "revived", QueueQuery::Revive),
        Command::Revive(r) => redrive(&site, r, true),
        Command::Job { action } => jobs::job(&site, action),
        Command::Jobs { cage, json } => jobs::list(&site, cage.as_deref(), json),
        Command::Schedule { queue, json } => schedule::schedule(&site, &queue, json),
        Command::Chain(args) => chain::chain(&site, args),
        Command::Chains {
            cage,
            all,
            limit,
            json,
        } => chain::list(&site, cage.as_deref(), all, limit.unwrap_or(0), json),
        Command::Chaos(args) => lab_outcome(cage_lab::chaos::chaos(&site, args)),
        Command::Bench { scenario } => lab_outcome(cage_lab::bench::bench(&site, scenario)),
        Command::Keys { action } => keys::keys(&site, action),
        Command::Worker(args) => worker::worker(&args),
    }
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::{CommandFactory, Parser};
    use std::path::{Path, PathBuf};

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The files a reader learns the commands from: the README, docs/ and deploy/README.md.
    fn doc_files() -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut files = vec![root.join("README.md"), root.join("deploy/README.md")];
        let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
            .expect("docs/ is there")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        files
    }

    /// Every `cage …` line of the code blocks in `text`, with its line number, as a shell would
    /// split it (a trailing `# comment` dropped).
    fn command_lines(text: &str) -> Vec<(usize, String)> {
        let mut in_block = false;
        let mut found = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                in_block = !in_block;
                continue;
            }
            let line = line.trim();
            let line = ["sudo -u cage ", "./target/release/", "./target/debug/"]
                .iter()
                .fold(line, |l, prefix| l.strip_prefix(prefix).unwrap_or(l));
            if in_block && line.starts_with("cage ") {
                found.push((n + 1, line.to_owned()));
            }
        }
        found
    }

    #[test]
    fn every_command_line_the_docs_show_parses() {
        let mut checked = 0;
        let mut wrong = Vec::new();
        for file in doc_files() {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in command_lines(&text) {
                let words = shlex::split(&line)
                    .map(|mut w| {
                        // The shell drops a comment; shlex keeps it.
                        if let Some(at) = w.iter().position(|x| x.starts_with('#')) {
                            w.truncate(at);
                        }
                        w
                    })
                    .unwrap_or_default();
                checked += 1;
                if let Err(e) = Cli::try_parse_from(&words) {
                    let first = e.to_string().lines().next().unwrap_or_default().to_owned();
                    wrong.push(format!("{}:{n}: {line}\n    {first}", file.display()));
                }
            }
        }
        assert!(
            checked > 20,
            "found only {checked} command lines in the docs"
        );
        assert!(
            wrong.is_empty(),
            "command lines the CLI does not take:\n{}",
            wrong.join("\n")
        );
    }

    #[test]
    fn a_line_the_cli_does_not_take_is_caught() {
        let lines =
            command_lines("```sh\ncage pending --no-such-flag   # a comment\n```\ncage nope\n");
        assert_eq!(lines.len(), 1, "only lines inside code blocks: {lines:?}");
        let words = shlex::split(&lines[0].1).unwrap();
        assert!(Cli::try_parse_from(&words[..3]).is_err());
    }
}
