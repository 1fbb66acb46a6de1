//! Records as format 1 wrote them (before calls could belong to chains), read on upgrade.

use crate::model::call::{self, Attempt, Stage};
use serde::Deserialize;

#[derive(Deserialize)]
pub struct QueuedCall {
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

#[derive(Deserialize)]
pub struct CallRecord {
    call: QueuedCall,
    stage: Stage,
    attempts: Vec<Attempt>,
    next_at_ms: u64,
    window_start_ms: u64,
    dead_reason: Option<String>,
    seq: u64,
}

impl From<CallRecord> for call::CallRecord {
    fn from(r: CallRecord) -> Self {
        let c = r.call;
        call::CallRecord {
            call: call::QueuedCall {
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
            },
            stage: r.stage,
            attempts: r.attempts,
            next_at_ms: r.next_at_ms,
            window_start_ms: r.window_start_ms,
            dead_reason: r.dead_reason,
            seq: r.seq,
        }
    }
}
