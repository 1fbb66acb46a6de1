//! A chain of calls as its owner stores it and the wire carries it: its steps, where it is,
//! the path it took, and how a step that ran elsewhere reports its end. The decisions over
//! these records (parsing steps, merging results, what runs next) live in `chains`.

use cage_sdk::ChainFailure;
use serde::{Deserialize, Serialize};

/// One call of a chain.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StepSpec {
    /// Cage that runs it (`None`: the chain's owner).
    pub cage: Option<String>,
    /// Module.
    pub module: String,
    /// Method.
    pub method: String,
    /// Explicit JSON arguments (a continuation's); `None`: the bag as it stands.
    #[serde(with = "serde_bytes")]
    pub args: Option<Vec<u8>>,
}

/// Where a chain is.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ChainState {
    /// Waiting for a free place under its group's `max_parallel`.
    Held,
    /// Its current step is pending or running.
    Running,
    /// Every step succeeded.
    Done,
    /// A step failed for good.
    Failed(ChainFailure),
    /// Cancelled by an operator (or with its parent); the reason.
    Cancelled(String),
}

/// One step that ran, as the chain's path shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StepRun {
    /// Index of the step.
    pub step: u32,
    /// The step as written.
    pub call: String,
    /// Cage that ran it.
    pub cage: String,
    /// Its call id.
    pub call_id: String,
    /// When its last attempt started (ms since the epoch).
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// Chains started together under a cap on how many run at once.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Group {
    /// Group id.
    pub id: String,
    /// Most chains of the group running at once.
    pub max_parallel: u32,
}

/// A chain, as its owner stores it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChainRecord {
    /// Chain id.
    pub id: String,
    /// Cage that holds this record and runs the chain.
    pub owner: String,
    /// Call id of the invocation that started it (`None`: started by an operator).
    pub parent: Option<String>,
    /// Its place among its parent's children (0-based).
    pub ordinal: u32,
    /// Its group, when started with `max_parallel`.
    pub group: Option<Group>,
    /// Steps; a continuation adds the next one while the chain runs.
    pub steps: Vec<StepSpec>,
    /// Queue of its steps; `None` runs them directly (sync calls).
    pub queue: Option<String>,
    /// The inputs (a JSON object).
    #[serde(with = "serde_bytes")]
    pub inputs: Vec<u8>,
    /// The bag: inputs with every returned object merged in (a JSON object).
    #[serde(with = "serde_bytes")]
    pub bag: Vec<u8>,
    /// Keys that some call returned, first-returned first.
    pub returned: Vec<String>,
    /// Merged results of chains that this chain's calls started (a JSON object).
    #[serde(with = "serde_bytes")]
    pub children_results: Vec<u8>,
    /// Index of the current step (equal to the number of steps once done).
    pub step: u32,
    /// Where it is.
    pub state: ChainState,
    /// Steps run so far.
    pub path: Vec<StepRun>,
    /// When it was started (ms since the epoch).
    pub started_ms: u64,
    /// When it finished, if it did.
    pub ended_ms: Option<u64>,
}

/// How a step ended, as the cage that ran it tells the chain's owner.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum StepOutcome {
    /// It succeeded with this JSON result; `next` is a continuation it asked for; `children`
    /// the merged results of chains it started that had finished.
    Done {
        /// The JSON result.
        #[serde(with = "serde_bytes")]
        result: Vec<u8>,
        /// The continuation, from `ctx.chain_next`.
        next: Option<StepSpec>,
        /// Merged results of its finished child chains (a JSON object).
        #[serde(with = "serde_bytes")]
        children: Vec<u8>,
    },
    /// It failed for good (dead letter, or cancelled); the reason.
    Failed(String),
}

/// The end of one step, for the chain's owner.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct StepReport {
    /// The chain.
    pub chain: String,
    /// Index of the step.
    pub step: u32,
    /// Its call id.
    pub call_id: String,
    /// Cage that ran it.
    pub cage: String,
    /// When its last attempt started.
    pub started_ms: u64,
    /// When it ended.
    pub ended_ms: u64,
    /// How.
    pub outcome: StepOutcome,
}

impl ChainState {
    /// Short name for tables.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChainState::Held => "held",
            ChainState::Running => "running",
            ChainState::Done => "done",
            ChainState::Failed(_) => "failed",
            ChainState::Cancelled(_) => "cancelled",
        }
    }
}
