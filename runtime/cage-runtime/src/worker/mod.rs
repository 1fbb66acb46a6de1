//! Module code in supervised worker processes: a crash, a hang or a leak in a module ends its
//! worker and fails only the call it was running; the cage keeps serving.
//!
//! - [`wire`]: the messages between a cage and a worker, framed on a Unix socket pair.
//! - [`role`]: the worker's side (`cage worker`): load the module, run calls, forward every
//!   `Ctx` callback to the cage.
//! - [`remote`]: the cage's side of one call: serve the forwarded callbacks with the host's own.
//! - [`process`]: starting one worker process and reaping it.
//! - [`exit`]: how a worker died (signal, exit code, stack overflow, out of memory).
//! - [`watchdog`]: killing workers whose call passed its deadline.
//! - [`pool`]: workers per module version, grown on demand, replaced, retired on reload.

pub mod exit;
pub mod pool;
pub mod process;
pub mod remote;
pub mod role;
pub mod watchdog;
pub mod wire;

pub use pool::Workers;
pub use role::{serve, WorkerArgs};
