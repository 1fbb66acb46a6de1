//! The `cage` command: run a cage, call it, inspect it, benchmark it. See `cage --help`.

mod cli;

/// sled allocates for every node it touches; glibc's allocator was a fifth of a busy cage's
/// time in profiles, mimalloc a fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
