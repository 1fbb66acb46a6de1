//! Configuration of a site: the cage files under `cages/` and the site-wide files under `config/`.
//!
//! Every error names the file, the line and column, and what was expected; nothing here starts
//! anything, so all of it is testable on plain strings.

mod address;
mod cage_file;
mod error;
mod execute_on;
pub mod ranges;
mod rate;
mod site;

pub use address::Address;
pub use cage_file::{
    valid_name, CageConfig, CageFileDefaults, DeclaredJob, InstanceOverrides, Isolation,
    ModuleRunning,
};
pub use error::ConfigError;
pub use execute_on::{
    CageRoute, Discovery, ExecuteOn, Fairness, QueuePolicy, UnknownCages, DEFAULT_QUEUE,
    UNKNOWN_CAGE,
};
pub use rate::{Rate, RATE_FORM};
pub use site::{Site, EXECUTE_ON_FILE};
