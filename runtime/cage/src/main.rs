//! The `cage` command: run a cage, call it, inspect and steer its queue, benchmark it. See
//! `cage --help` and docs/cli.md.
//!
//! Map: `cli/mod.rs` parses the command line and hands each subcommand to its file in `cli/`
//! (`run`, `call`, `enqueue`, `pending`, `show`, `steer`, `jobs`, `chain`, `modules`, `status`,
//! `schedule`, `keys`, `dashboard`); `target` resolves what a command addresses, `listing` and
//! `queue_view` gather and print what cages answer, `exit` maps failures to exit codes. The
//! cage itself is the `cage-runtime` library; `cage bench` and `cage chaos` are the
//! `cage-lab` crate.

mod cli;

/// sled allocates for every node it touches; glibc's allocator was a fifth of a busy cage's
/// time in profiles, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
