//! What the store is told of each queue's policy: how long its finished calls are remembered
//! (`retention`), and whether it keeps order (`keep_order`). Only a queue that keeps order has
//! its calls in the order index (`o`), which saves two writes a call and their space for every
//! other queue. A queue that starts keeping order gets its index built from its pending calls
//! (each record holds its place, `seq`) before any call of it is started, and a marker (`O`)
//! saying its index is whole.

use super::journal::Batch;
use super::keys::{self, CALL};
use super::store::decode_record;
use super::{QueueError, QueueStore};
use crate::model::call::CallRecord;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The rules of one queue the store follows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueRule {
    /// How long its finished calls are remembered.
    pub retention: Duration,
    /// Whether its calls are indexed in stored order (for `keep_order`).
    pub keep_order: bool,
}

/// The rules of every queue.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// For queues not named.
    pub default: QueueRule,
    /// By queue name.
    pub queues: HashMap<String, QueueRule>,
}

impl Rules {
    /// The rule of `queue`.
    pub fn of(&self, queue: &str) -> QueueRule {
        self.queues.get(queue).copied().unwrap_or(self.default)
    }
}

impl Default for Rules {
    fn default() -> Self {
        let p = crate::config::QueuePolicy::default();
        Rules {
            default: QueueRule {
                retention: p.retention,
                keep_order: p.keep_order,
            },
            queues: HashMap::new(),
        }
    }
}

/// Calls indexed per change when a queue's order index is built.
const BUILD_BATCH: usize = 10_000;

impl QueueStore {
    /// Follows `rules` from now on: builds the order index of every queue that keeps order and
    /// has no whole index yet (reading every pending call, once), and drops the marker of one
    /// that no longer keeps order (its calls stored from now on are not indexed).
    pub fn set_rules(&self, rules: Rules) -> Result<(), QueueError> {
        self.put_rules(rules.clone());
        let mut marked = HashSet::new();
        for item in self.db().scan_prefix([keys::ORDERED]) {
            let (k, _) = item.map_err(|e| self.err(e))?;
            marked.insert(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        let mut unmark = Batch::default();
        for queue in &marked {
            if !rules.of(queue).keep_order {
                unmark.remove(keys::ordered(queue));
            }
        }
        self.apply(unmark)?;
        // Queues that keep order by the default rule are known only by their calls.
        let named_unmarked = rules
            .queues
            .iter()
            .any(|(q, r)| r.keep_order && !marked.contains(q));
        if named_unmarked || rules.default.keep_order {
            self.build_order_index(&rules, &marked)?;
        }
        Ok(())
    }

    /// Indexes the pending calls of every queue that keeps order and is not in `whole`, then
    /// marks those queues.
    fn build_order_index(&self, rules: &Rules, whole: &HashSet<String>) -> Result<(), QueueError> {
        let wanted = |queue: &str| rules.of(queue).keep_order && !whole.contains(queue);
        // A named queue with no pending call is marked too: its index is (trivially) whole.
        let mut built: HashSet<String> =
            rules.queues.keys().filter(|q| wanted(q)).cloned().collect();
        let mut b = Batch::default();
        let mut n = 0;
        for item in self.db().scan_prefix([CALL]) {
            let (k, v) = item.map_err(|e| self.err(e))?;
            let Ok(record) = decode_record(&k, &v) else {
                continue; // unreadable: the scheduler quarantines it when it comes due
            };
            if !wanted(&record.call.queue) {
                continue;
            }
            b.insert(Self::order_key(&record), record.call.id.as_bytes());
            built.insert(record.call.queue);
            n += 1;
            if n % BUILD_BATCH == 0 {
                self.apply(std::mem::take(&mut b))?;
            }
        }
        for queue in &built {
            b.insert(keys::ordered(queue), [].as_slice());
        }
        self.apply(b)?;
        if n > 0 {
            tracing::info!(
                "queue database {}: order index built for {} call(s) of queue(s) that keep order",
                self.path().display(),
                n
            );
        }
        Ok(())
    }

    /// Adds `record`'s order entry to `b` if its queue keeps order.
    pub(super) fn order_entry(&self, b: &mut Batch, record: &CallRecord) {
        if self.rule(&record.call.queue).keep_order {
            b.insert(Self::order_key(record), record.call.id.as_bytes());
        }
    }
}
