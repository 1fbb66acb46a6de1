//! `cage worker` (hidden): the worker-process role a cage starts its modules in. Not for
//! people: the cage gives it the channel on fd 3 and reads its stderr.

use std::path::PathBuf;
use std::process::ExitCode;

/// What the cage starts a worker with.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// The module version's private copy.
    #[arg(long)]
    module_file: PathBuf,
    /// The module's name.
    #[arg(long)]
    module: String,
    /// The cage the worker serves.
    #[arg(long)]
    cage: String,
}

/// Serves as a worker until the cage closes the channel.
pub fn worker(args: &WorkerArgs) -> ExitCode {
    let code = cage_runtime::worker::serve(&cage_runtime::worker::WorkerArgs {
        module_file: args.module_file.clone(),
        module: args.module.clone(),
        cage: args.cage.clone(),
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
