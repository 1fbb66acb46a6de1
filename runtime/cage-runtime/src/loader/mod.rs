//! Loading module libraries safely: prove a file whole, copy it privately, `dlopen` the copy.
//!
//! - [`elf_check`]: pure checks on a file's bytes, run *before* any `dlopen` (a truncated
//!   library can kill the process with SIGBUS once mapped, or load and run silently).
//! - [`file_watch`]: when a module file may have changed, and whether it has settled.
//! - [`module_file`]: opening and reading one module file safely (kind, size and magic first).
//! - [`library`]: a loaded module version; unloading and deleting its copy when the last call ends.

pub mod descriptor;
pub mod elf_check;
mod error;
pub mod file_watch;
pub mod library;
pub mod module_file;

pub use error::LoadError;
pub use library::LoadedModule;
