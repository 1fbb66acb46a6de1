//! Records as formats 1 (before calls could belong to chains), 2 (before they could belong to
//! groups) and 3 (before records kept operators' orders) wrote them, read on upgrade.

use crate::model::call::{self, Attempt, Stage, UngroupedCall};
use serde::Deserialize;

/// A call as format 1 wrote it: no chain link, no group.
#[derive(Deserialize)]
pub struct QueuedCall1 {
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
}

impl From<QueuedCall1> for call::QueuedCall {
    fn from(c: QueuedCall1) -> Self {
        call::QueuedCall {
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
            chain: None,
            group: None,
        }
    }
}

/// A call record of an earlier format: laid out as now around a call of that format's shape.
#[derive(Deserialize)]
pub struct CallRecord<C> {
    call: C,
    stage: Stage,
    attempts: Vec<Attempt>,
    next_at_ms: u64,
    window_start_ms: u64,
    dead_reason: Option<String>,
    seq: u64,
}

/// A record of format 1.
pub type CallRecord1 = CallRecord<QueuedCall1>;
/// A record of format 2.
pub type CallRecord2 = CallRecord<UngroupedCall>;
/// A record of format 3.
pub type CallRecord3 = CallRecord<call::QueuedCall>;

impl<C: Into<call::QueuedCall>> From<CallRecord<C>> for call::CallRecord {
    fn from(r: CallRecord<C>) -> Self {
        call::CallRecord {
            call: r.call.into(),
            stage: r.stage,
            attempts: r.attempts,
            next_at_ms: r.next_at_ms,
            window_start_ms: r.window_start_ms,
            dead_reason: r.dead_reason,
            seq: r.seq,
            events: Vec::new(),
        }
    }
}
