//! A queued call as every layer sees it: what was enqueued, its place in the two-hop journey
//! (deliver, then execute), its attempts.

use serde::{Deserialize, Serialize};

/// A call as enqueued: where it goes, what it runs, and how it is queued.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct QueuedCall {
    /// Unique id, assigned by the cage that took the enqueue.
    pub id: String,
    /// Cage that took the enqueue.
    pub source: String,
    /// Cage that executes the call.
    pub target: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Queue whose retry policy applies.
    pub queue: String,
    /// Among due calls of a queue, higher runs first.
    pub priority: i32,
    /// Idempotency key: a second call with the same key (same target, same queue) is a duplicate.
    pub key: Option<String>,
    /// When the source cage took it (ms since the epoch).
    pub enqueued_at_ms: u64,
    /// Not to run before this time (ms since the epoch; 0: at once).
    pub not_before_ms: u64,
    /// The chain this call is a step of, if any.
    pub chain: Option<ChainLink>,
    /// The group it belongs to within its queue (a customer, a tenant): the unit of
    /// `group_concurrency`, `group_rate_limit` and round-robin dispatch.
    #[serde(default)]
    pub group: Option<String>,
}

/// A queued call as cages before groups encoded it: the body of call records of format 2 and of
/// the `Accept` and `AcceptMany` frames, so that cages of both versions still exchange the
/// calls that have no group.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct UngroupedCall {
    id: String,
    source: String,
    target: String,
    module: String,
    method: String,
    #[serde(with = "serde_bytes")]
    args: Vec<u8>,
    queue: String,
    priority: i32,
    key: Option<String>,
    enqueued_at_ms: u64,
    not_before_ms: u64,
    chain: Option<ChainLink>,
}

impl From<UngroupedCall> for QueuedCall {
    fn from(c: UngroupedCall) -> Self {
        QueuedCall {
            id: c.id,
            source: c.source,
            target: c.target,
            module: c.module,
            method: c.method,
            args: c.args,
            queue: c.queue,
            priority: c.priority,
            key: c.key,
            enqueued_at_ms: c.enqueued_at_ms,
            not_before_ms: c.not_before_ms,
            chain: c.chain,
            group: None,
        }
    }
}

impl From<QueuedCall> for UngroupedCall {
    /// Drops the group: only for calls that have none.
    fn from(c: QueuedCall) -> Self {
        debug_assert!(c.group.is_none());
        UngroupedCall {
            id: c.id,
            source: c.source,
            target: c.target,
            module: c.module,
            method: c.method,
            args: c.args,
            queue: c.queue,
            priority: c.priority,
            key: c.key,
            enqueued_at_ms: c.enqueued_at_ms,
            not_before_ms: c.not_before_ms,
            chain: c.chain,
        }
    }
}

/// A queued call's place in a chain: which chain, which step, and the cage that holds it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ChainLink {
    /// Chain id.
    pub chain: String,
    /// Cage that holds the chain's record and is told how the step ended.
    pub owner: String,
    /// Index of the step.
    pub step: u32,
}

/// Where a call is on its way: held by its source until the target accepts it, then executed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// On the source cage: to be handed to the target cage.
    Deliver,
    /// On the target cage: to be run by the local module.
    Execute,
}

impl Stage {
    /// Short name for tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Deliver => "deliver",
            Stage::Execute => "execute",
        }
    }
}

/// How one attempt ended.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Attempt {
    /// 1-based attempt number within the stage.
    pub number: u32,
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    /// How long it ran (µs).
    pub duration_us: u64,
    /// `None` for success, else the error text.
    pub error: Option<String>,
    /// Module version that ran it (execute stage), if known.
    pub module_version: Option<String>,
}

/// A call in a cage's queue, pending or dead.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallRecord {
    /// The call.
    pub call: QueuedCall,
    /// Its stage on this cage.
    pub stage: Stage,
    /// Attempts so far on this cage, oldest first.
    pub attempts: Vec<Attempt>,
    /// When the next attempt is due (ms since the epoch).
    pub next_at_ms: u64,
    /// Start of the give-up window: the enqueue, or the last revive.
    pub window_start_ms: u64,
    /// Why it is dead, if it is.
    pub dead_reason: Option<String>,
    /// Place in its queue's order on this cage (assigned when stored; rises monotonically).
    pub seq: u64,
    /// What operators did to it here besides its attempts (revived, made due), oldest first.
    #[serde(default)]
    pub events: Vec<CallEvent>,
}

/// Something done to a call besides its attempts: an operator's order, when and by what.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallEvent {
    /// When (ms since the epoch).
    pub at_ms: u64,
    /// What was done, and by which command (`revived by cage revive --all --queue mail`).
    pub what: String,
}

impl CallRecord {
    /// A new pending record, due at once (or, to execute, at its `not_before_ms`).
    pub fn new(call: QueuedCall, stage: Stage, now_ms: u64) -> Self {
        let due = match stage {
            Stage::Execute => now_ms.max(call.not_before_ms),
            Stage::Deliver => now_ms,
        };
        CallRecord {
            stage,
            attempts: Vec::new(),
            next_at_ms: due,
            window_start_ms: due,
            dead_reason: None,
            seq: 0,
            events: Vec::new(),
            call,
        }
    }

    /// Number of the next attempt.
    pub fn next_attempt(&self) -> u32 {
        self.attempts.len() as u32 + 1
    }

    /// Error text of the latest attempt, if it failed.
    pub fn last_error(&self) -> Option<&str> {
        self.attempts.last().and_then(|a| a.error.as_deref())
    }
}
