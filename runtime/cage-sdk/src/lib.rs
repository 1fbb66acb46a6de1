//! The cages module SDK: everything a module author depends on, and nothing more.
//!
//! A module is a `cdylib` whose methods are plain Rust functions over serde types:
//!
//! ```no_run
//! use cage_sdk::{export_module, CallError, Ctx};
//!
//! fn shout(_ctx: &Ctx, text: String) -> Result<String, CallError> {
//!     Ok(text.to_uppercase())
//! }
//!
//! export_module! { name: "echo", version: env!("CARGO_PKG_VERSION"), methods: [shout] }
//! ```
//!
//! Map of the crate:
//! - [`abi`]: the `#[repr(C)]` types and `extern "C"` signatures that are the *only* things
//!   crossing the boundary between a cage and a module (bytes and function pointers).
//! - [`error`]: [`CallError`], the error a method returns, also the wire form of every call failure.
//! - [`ctx`]: [`Ctx`], the module's view of the host during one call (identity, logging, calls).
//! - [`chain`]: chains of calls: starting child chains, waiting on them, reading their
//!   results, continuing the current chain.
//! - [`export`]: the machinery behind [`export_module!`]: argument decoding, panic capture,
//!   result encoding.
//!
//! A call's path through a module: the cage calls the descriptor's `call` function with the
//! method name and JSON arguments → [`export::dispatch`] catches any panic → the generated match
//! picks the method → [`export::invoke`] decodes the arguments, runs the function and encodes its
//! result → the cage reads the returned buffer and gives it back through `free`.
//!
//! The SDK deliberately uses no `thread_local!`: a module that registers a thread-local destructor
//! can never be unmapped by `dlclose`, so hot reload would leak every old version.

#![warn(missing_docs)]

pub mod abi;
pub mod chain;
pub mod ctx;
pub mod error;
pub mod export;

pub use chain::{Chain, ChainFailure, Finished, Handle, ResultOptions, Waiter};
pub use ctx::{Ctx, EnqueueOptions, JobWhen, LogLevel, State};
pub use error::{CallError, ErrorKind};
