//! The scheduler's answers to an operator: listings of pending and dead calls, one call's
//! record, counters, and orders (retry now, cancel, revive).

use super::Scheduler;
use crate::metrics::Metrics;
use crate::model::call::{CallRecord, Stage};
use crate::queue::{GroupCommit, QueueError};
use crate::transport::protocol::{CallView, Crashes, Filter, QueueQuery, QueueStats, Response};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use std::time::Duration;

/// Most calls a listing returns when the operator gives no limit.
const DEFAULT_LISTING: usize = 1000;

/// The queue counters of every queue added up, as `cage pending --stats` shows them.
fn totals(metrics: &Metrics) -> QueueStats {
    let mut stats = QueueStats::default();
    for q in metrics.queues().values() {
        stats.enqueued += q.enqueued;
        stats.accepted += q.accepted;
        stats.delivered += q.delivered;
        stats.executed += q.successes;
        stats.failed_attempts += q.failures + q.delivery_failures;
        stats.died += q.dead;
    }
    stats
}

/// An operator's question or order.
#[derive(Message)]
#[rtype(result = "Response")]
pub struct Query(pub QueueQuery);

impl Scheduler {
    fn view(&self, record: CallRecord) -> CallView {
        let crashes = match self.store.crashes(&record.call.id) {
            Ok(c) => c.map(|c| Crashes {
                count: c.total(),
                max: self.policies.queue(&record.call.queue).max_crashes as u32,
                signal: c.signal,
            }),
            Err(e) => {
                tracing::error!(cage = %self.cage, call_id = %record.call.id, "crash count unreadable, left out of the listing: {e}");
                None
            }
        };
        let running = self.running.contains_key(&record.call.id);
        let waiting = if self.windows.is_held(&record.call.id) {
            let target = &record.call.target;
            Some(format!(
                "waiting for room: {} of cage {target}'s window of {} calls are being handed over",
                self.windows.in_flight(target),
                self.delivery.peers().window(target)
            ))
        } else if !running && record.stage == Stage::Execute && record.next_at_ms <= self.now() {
            self.slots_waiting(&record.call.queue)
                .or_else(|| self.rate_waiting(&record.call.queue))
        } else {
            None
        };
        CallView {
            crashes,
            cage: self.cage.clone(),
            running,
            waiting,
            record,
        }
    }

    /// Why a due call of `queue` waits for a slot of its queue, if it does.
    fn slots_waiting(&self, queue: &str) -> Option<String> {
        let policy = self.policies.queue(queue);
        let busy = self.busy.get(queue).copied().unwrap_or(0);
        (!super::decide::has_slot(policy, busy)).then(|| {
            format!(
                "waiting: queue {queue} has {busy} of {} running",
                policy.concurrency
            )
        })
    }

    /// Why a due call of `queue` waits for its rate limit, if it does.
    fn rate_waiting(&self, queue: &str) -> Option<String> {
        let policy = self.policies.queue(queue);
        let rate = policy.rate_limit?;
        let wait = self.rates.wait(queue, policy, std::time::Instant::now());
        (!wait.is_zero() || self.rate_held.contains_key(queue)).then(|| {
            format!(
                "waiting: rate limit {rate} (next start in {})",
                humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
            )
        })
    }

    fn listing(&self, filter: &Filter, dead: bool) -> Result<Vec<CallView>, QueueError> {
        let limit = if filter.limit == 0 {
            DEFAULT_LISTING
        } else {
            filter.limit
        };
        let keep = |r: &CallRecord| filter.keeps(r);
        let records = if dead {
            self.store.dead(&keep, limit)?
        } else {
            self.store.pending(&keep, limit)?
        };
        Ok(records.into_iter().map(|r| self.view(r).listed()).collect())
    }

    /// Ids of every pending call `filter` keeps.
    fn pending_ids(&self, filter: &Filter) -> Result<Vec<String>, QueueError> {
        let pending = self.store.pending(&|r| filter.keeps(r), usize::MAX)?;
        Ok(pending.into_iter().map(|r| r.call.id).collect())
    }

    fn retry_now(&mut self, id: &str) -> Result<usize, QueueError> {
        let Some(record) = self.store.get(id)? else {
            return Ok(0);
        };
        let mut updated = record.clone();
        updated.next_at_ms = self.now();
        self.store.update(&record, &updated)?;
        Ok(1)
    }

    fn query(&mut self, q: QueueQuery) -> Result<Response, QueueError> {
        let changed = |n: usize, commit: &GroupCommit| {
            commit.nudge();
            Response::Changed(n)
        };
        Ok(match q {
            QueueQuery::Pending(f) => Response::Calls(self.listing(&f, false)?),
            QueueQuery::Dead(f) => Response::Calls(self.listing(&f, true)?),
            QueueQuery::Show(id) => {
                let found = match self.store.get(&id)? {
                    Some(r) => Some(r),
                    None => self.store.get_dead(&id)?,
                };
                Response::Calls(found.into_iter().map(|r| self.view(r)).collect())
            }
            QueueQuery::RetryNow(id) => changed(self.retry_now(&id)?, &self.commit),
            QueueQuery::RetryAllNow(f) => {
                let mut n = 0;
                for id in self.pending_ids(&f)? {
                    n += self.retry_now(&id)?;
                }
                changed(n, &self.commit)
            }
            QueueQuery::Cancel(id) => {
                let n = self.cancel_cascade(&id, "cancelled by an operator")?;
                if n >= 1 {
                    tracing::info!(cage = %self.cage, call_id = %id, "cancelled by an operator");
                }
                changed(n, &self.commit)
            }
            QueueQuery::CancelAll(f) => {
                let mut n = 0;
                for id in self.pending_ids(&f)? {
                    n += self.cancel_cascade(&id, "cancelled by an operator")?;
                }
                tracing::info!(cage = %self.cage, "{n} pending call(s) cancelled by an operator");
                changed(n, &self.commit)
            }
            QueueQuery::Stats(count) => {
                let mut stats = totals(&self.metrics);
                if count {
                    let (pending, dead) = self.store.counts();
                    (stats.pending, stats.dead) = (Some(pending as u64), Some(dead as u64));
                }
                Response::Stats(stats)
            }
            QueueQuery::Revive(id) => {
                let n = usize::from(self.store.revive(&id, self.now())?.is_some());
                if n == 1 {
                    tracing::info!(cage = %self.cage, call_id = %id, "revived by an operator: pending again, due now");
                }
                changed(n, &self.commit)
            }
        })
    }
}

impl Handler<Query> for Scheduler {
    type Result = MessageResult<Query>;

    fn handle(&mut self, Query(q): Query, ctx: &mut Context<Self>) -> Self::Result {
        let answer = self.query(q).unwrap_or_else(|e| {
            let why = format!("queue storage: {e}");
            Response::failed(&self.cage, CallError::with_kind(ErrorKind::Refused, why))
        });
        self.after_chains(ctx);
        self.pump_soon(ctx);
        MessageResult(answer)
    }
}
