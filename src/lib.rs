//! cages: a framework in which every service runs as a *cage* that serves hot-reloaded modules.
//!
//! This facade re-exports the two crates under `runtime/`:
//! - [`sdk`] (`cage-sdk`): what a module author depends on (ABI, [`sdk::Ctx`], `export_module!`);
//! - [`runtime`] (`cage-runtime`): the cage itself and the `cage` command.
//!
//! Its `tests/` start real `cage` processes in temporary sites, end to end.

pub use cage_runtime as runtime;
pub use cage_sdk as sdk;
