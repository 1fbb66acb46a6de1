//! The `cage` command: run a cage, call it, inspect it, benchmark it. See `cage --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
