//! Command-line front end of the `cage` binary: one file per subcommand.

mod bench;
mod call;
mod exit;
mod modules;
mod run;
mod schedule;
mod target;

use cage_runtime::config::Site;
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
    /// Run cage NAME (cages/NAME.toml) until interrupted.
    Run {
        /// The cage to run.
        name: String,
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
    /// List the modules a running cage serves: version, file hash, load time, last load error.
    Modules {
        /// The cage to ask.
        cage: String,
        /// Print JSON instead of a table.
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
    /// Measure a running cage.
    Bench {
        #[command(subcommand)]
        scenario: bench::Scenario,
    },
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
    let site = Site::new(&cli.site);
    let is_run = matches!(cli.command, Command::Run { .. });
    init_logs(cli.log_format, if is_run { "info" } else { "warn" });
    match cli.command {
        Command::Run { name } => run::run(&site, &name),
        Command::Call {
            cage,
            target,
            args,
            timeout,
        } => call::call(&site, &cage, &target, &args, timeout),
        Command::Modules { cage, json } => modules::modules(&site, &cage, json),
        Command::Schedule { queue, json } => schedule::schedule(&site, &queue, json),
        Command::Bench { scenario } => bench::bench(&site, scenario),
    }
}
