//! The cages runtime: a cage serves hot-reloaded modules to callers over framed TCP.
//!
//! Map of the crate, top to bottom. Arrows point down: a module imports only modules listed
//! below it (test code aside), and `tests/layering.rs` fails when one does not.
//! - `cli` (in the `cage` binary, not this library): run, call, enqueue, pending, jobs, bench…
//! - [`cage`]: wiring of one running cage: config → actors → listener.
//! - [`api`]: the HTTP API for processes outside the cage, `/metrics`, and the cage's `/ui`.
//! - [`dashboard`]: the operator dashboard (HTML pages gathered from every cage).
//! - [`maintenance`]: a stopped cage's queue opened directly by an operator's command.
//! - [`config_watch`]: re-reading the site config when it changes.
//! - [`listener`]: the listener actor and the connection loop that hands requests on.
//! - [`dispatch`]: a request → registry (which module version) → executor → response.
//! - [`scheduler`]: the actor running the durable queue: due attempts, retries, dead letters,
//!   and chains (starting them, advancing them step by step, cancelling a call's children).
//! - [`run`]: where a call runs (here, or delivered to its cage), and the one path that runs
//!   it here: resolve the module, check the method, set the deadline, hand it to the executor.
//! - [`delivery`]: handing queued calls to their target cages.
//! - [`executor`]: the actor in front of the worker threads that run module code.
//! - [`worker`]: module code in supervised worker processes (the `cage worker` role, pools
//!   per module version, the watchdog that kills hung calls, how a worker died).
//! - [`host`]: the host side of the module ABI (context and callbacks given to a call).
//! - [`registry`]: the actor that knows each module's current version and swaps in new ones.
//! - [`loader`]: proving a library file whole, loading a private copy, unloading it.
//! - [`peers`]: reaching another cage: its name → a route (the live cluster map, cage files,
//!   discovery) → a pooled connection by route; failures make discovery ask again.
//! - [`discovery`]: finding cages the site does not list (UDP query and answer, a cache).
//! - [`keys`]: the cluster CA and the key pairs it signs (`cage keys`).
//! - [`transport`]: frames on the wire, the protocol, a blocking client, connection pools,
//!   the site credential and mutual TLS between cages.
//! - [`messaging`]: messages between running invocations through named ports.
//! - [`metrics`]: what a cage counts (per queue, per module method) and its Prometheus text.
//! - [`queue`]: the cage's database (sled, behind a write-ahead journal): pending calls, due
//!   index, dead letters, history, module state, jobs and chains.
//! - [`chains`]: chains of calls as decisions: parsing steps, the bag, what runs next, results.
//! - [`jobs`]: scheduled and recurring calls: what is due, catch-up, run ids.
//! - [`blocking`]: bounded lanes onto the blocking pool for work that requests cause.
//! - [`config`]: the site's files (`cages/NAME.toml`, `config/config_execute_on.toml`).
//! - [`retry_policy`]: when a failed queued call runs next (pure functions of the backoff).
//! - [`model`]: the ground floor: ids, the clock, call, chain and job records.
//! - [`names`]: the one check of cage, module, method, queue and job names.
//!
//! A sync call's path: client frame → [`listener`] → [`dispatch::Dispatcher`] →
//! [`run::run`] → [`registry::ModuleRegistry`] (resolve) → [`executor::CallExecutor`]
//! (executor thread) → [`host::HostEnv::run`] → the module's `call`, in a worker process
//! ([`worker::Workers`], its callbacks served by the cage's host) or in process → response
//! frame. A call for an idle worker with none queued before it skips the thread: the event
//! loop sends it to the worker and takes the answer.
//!
//! A queued call's path: enqueue → [`scheduler::Scheduler`] stores it in [`queue`] (journal
//! entry, then sled) and answers after the group commit (one journal sync for every waiting
//! writer) → the due index makes it due → deliver ([`delivery`] over [`peers`], stage
//! *deliver*; due calls for one cage go in one request) → the target's scheduler accepts it
//! into its own queue (dedup by id and key) → execute on the target ([`run`], [`executor`]; retried by
//! [`retry_policy`]) → complete (or dead letter). docs/architecture.md follows it file by file.
//!
//! A queued chain's step is such a call carrying a chain link; its completion, the chain's new
//! bag and the next step's call are one atomic write on the chain's owner (a step that ran
//! elsewhere reports back to the owner as a queued call of its own).

#![warn(missing_docs)]

pub mod api;
pub mod blocking;
pub mod cage;
pub mod chains;
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
pub mod listener;
pub mod loader;
pub mod maintenance;
pub mod messaging;
pub mod metrics;
pub mod model;
pub mod names;
pub mod peers;
pub mod queue;
pub mod registry;
pub mod retry_policy;
pub mod run;
pub mod scheduler;
pub mod transport;
pub mod worker;
