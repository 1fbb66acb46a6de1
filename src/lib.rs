//! cages: a framework in which every service runs as a *cage* that serves hot-reloaded modules.
//!
//! This facade re-exports the library crates under `runtime/`:
//! - [`sdk`] (`cage-sdk`): what a module author depends on (ABI, [`sdk::Ctx`], `export_module!`);
//! - [`runtime`] (`cage-runtime`): the cage itself: its queue, the wire, the clients;
//! - [`lab`] (`cage-lab`): benchmarks, the chaos suite, and the harness they share with tests.
//!
//! The `cage` command is its own crate, `runtime/cage`.
//!
//! Its `tests/` start real `cage` processes in temporary sites, end to end.

pub use cage_lab as lab;
pub use cage_runtime as runtime;
pub use cage_sdk as sdk;
