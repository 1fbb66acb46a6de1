//! The cages runtime: a cage serves hot-reloaded modules to callers over framed TCP.
//!
//! Map of the crate, top to bottom (arrows point down):
//! - `cli` (in the `cage` binary, not this library): run, call, enqueue, pending, jobs, bench…
//! - [`dashboard`]: the operator dashboard (HTML pages gathered from every cage).
//! - [`api`]: the HTTP API for processes outside the cage, `/metrics`, and the cage's `/ui`.
//! - [`cage`]: wiring of one running cage: config → actors → listener.
//! - [`transport`]: frames on the wire, the protocol, the listener actor, a blocking client,
//!   and mutual TLS between cages.
//! - [`dispatch`]: a request → registry (which module version) → executor → response.
//! - [`blocking`]: bounded lanes onto the blocking pool for work that requests cause.
//! - [`scheduler`]: the actor running the durable queue: due attempts, retries, dead letters,
//!   and chains (starting them, advancing them step by step, cancelling a call's children).
//! - [`delivery`]: handing queued calls to their target cages.
//! - [`discovery`]: finding cages the site does not list (UDP query and answer, a cache).
//! - [`executor`]: the actor in front of the worker threads that run module code.
//! - [`registry`]: the actor that knows each module's current version and swaps in new ones.
//! - [`queue`]: the durable queue (sled, behind a write-ahead journal): pending calls, due
//!   index, dead letters, history.
//! - [`metrics`]: what a cage counts (per queue, per module method) and its Prometheus text.
//! - [`messaging`]: messages between running invocations through named ports.
//! - [`host`]: the host side of the module ABI (context and callbacks given to a call).
//! - [`loader`]: proving a library file whole, loading a private copy, unloading it.
//! - [`jobs`]: scheduled and recurring calls: what is due, catch-up, signatures.
//! - [`chains`]: chains of calls as data: steps, the bag, what runs next, result shapes.
//! - [`retry_policy`]: when a failed queued call runs next (pure functions of the policy).
//! - [`keys`]: the cluster CA and the key pairs it signs (`cage keys`).
//! - [`config_watch`]: re-reading the site config when it changes.
//! - [`config`]: the site's files (`cages/NAME.toml`, `config/config_execute_on.toml`).
//! - [`clock`]: instants and spans: saturating arithmetic, total rendering, the horizon.
//! - [`names`]: the one check of cage, module, method, queue and job names.
//!
//! A sync call's path: client frame → [`transport::server`] → [`dispatch::Dispatcher`] →
//! [`registry::ModuleRegistry`] (resolve) → [`executor::CallExecutor`] (worker thread) →
//! [`host::HostEnv::run`] → the module's `call` → response frame.
//!
//! A queued call's path: enqueue → [`scheduler::Scheduler`] stores it in [`queue`] (journal
//! entry, then sled) and answers after the group commit (one journal sync for every waiting
//! writer) → the due index makes it due → deliver ([`delivery`], stage *deliver*; due calls for
//! one cage go in one request) → the target's scheduler accepts it into its own queue (dedup
//! by id and key) → execute on the target ([`executor`], retried by [`retry_policy`]) →
//! complete (or dead letter).
//!
//! A queued chain's step is such a call carrying a chain link; its completion, the chain's new
//! bag and the next step's call are one atomic write on the chain's owner (a step that ran
//! elsewhere reports back to the owner as a queued call of its own).

#![warn(missing_docs)]

pub mod api;
pub mod blocking;
pub mod cage;
pub mod chains;
pub mod clock;
pub mod config;
pub mod config_watch;
pub mod dashboard;
pub mod delivery;
pub mod discovery;
pub mod dispatch;
pub mod executor;
pub mod host;
pub mod jobs;
pub mod keys;
pub mod loader;
pub mod messaging;
pub mod metrics;
pub mod names;
pub mod queue;
pub mod registry;
pub mod retry_policy;
pub mod scheduler;
pub mod transport;
