//! The scheduler's answers to an operator: listings of pending and dead calls, one call's
//! record, counters, and orders (retry now, cancel, revive).

use super::admission::Hold;
use super::Scheduler;
use crate::metrics::Metrics;
use crate::model::call::{CallEvent, CallRecord, Stage};
use crate::queue::{GroupCommit, QueueError};
use crate::transport::protocol::{
    CallView, Crashes, Filter, QueueQuery, QueueStats, Redrive, Response,
};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use std::time::Duration;

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
            self.waiting_for(&record.call.queue, record.call.group.as_deref())
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

    /// Why a due call of `queue` (and `group`) waits, if it waits for its queue's or its
    /// group's slots or rate limit.
    fn waiting_for(&self, queue: &str, group: Option<&str>) -> Option<String> {
        let policy = self.policies.queue(queue);
        let now = std::time::Instant::now();
        let next_in = |wait: Duration| {
            humantime::format_duration(Duration::from_millis(wait.as_millis() as u64))
        };
        let group_name = group.unwrap_or_default();
        Some(match self.admission.hold(queue, group, policy, now) {
            Some(Hold::QueueRate(wait)) => format!(
                "waiting: rate limit {} (next start in {})",
                policy.rate_limit?,
                next_in(wait)
            ),
            Some(Hold::QueueSlots) => format!(
                "waiting: queue {queue} has {} of {} running",
                self.admission.busy(queue),
                policy.concurrency
            ),
            Some(Hold::GroupRate(wait)) => format!(
                "waiting: group {group_name} rate limit {} (next start in {})",
                policy.group_rate_limit?,
                next_in(wait)
            ),
            Some(Hold::GroupSlots) => format!(
                "waiting: group {group_name} has {} of {} running",
                self.admission.group_busy(queue, group_name),
                policy.group_concurrency?
            ),
            // Held at the last pump, and its next start is due now: it starts at the next.
            None if self.held.queue_rate.contains_key(queue) => format!(
                "waiting: rate limit {} (next start in {})",
                policy.rate_limit?,
                next_in(Duration::ZERO)
            ),
            None => return None,
        })
    }

    fn listing(&self, filter: &Filter, dead: bool) -> Result<Vec<CallView>, QueueError> {
        let records = filter.listed(&self.store, dead)?;
        Ok(records.into_iter().map(|r| self.view(r).listed()).collect())
    }

    /// Ids of every pending call `filter` keeps.
    fn pending_ids(&self, filter: &Filter) -> Result<Vec<String>, QueueError> {
        self.store
            .ids_where(false, &|r| filter.keeps(r), usize::MAX)
    }

    fn retry_now(&mut self, id: &str) -> Result<usize, QueueError> {
        let now = self.now();
        let event = CallEvent {
            at_ms: now,
            what: "made due now by an operator".into(),
        };
        self.retry_at(id, now, Some(event))
    }

    /// Makes pending call `id` due at `due_ms`, with `event` added to its history.
    fn retry_at(
        &mut self,
        id: &str,
        due_ms: u64,
        event: Option<CallEvent>,
    ) -> Result<usize, QueueError> {
        Ok(usize::from(self.store.make_due(id, due_ms, event)?))
    }

    /// Revives the dead calls, or makes due the pending ones, that `r` selects, their due
    /// times spread evenly over its span; or, in a dry run, only counts them. Each call's
    /// history records the order.
    fn redrive(&mut self, r: Redrive) -> Result<Response, QueueError> {
        let ids = self
            .store
            .ids_where(r.dead, &|rec| r.filter.keeps(rec), r.limit())?;
        let count = ids.len();
        let shown = |this: &Self, ids: &[String]| -> Result<Vec<CallView>, QueueError> {
            let mut first = Vec::new();
            for id in ids.iter().take(10) {
                first.extend(this.store.get_any(id)?.map(|rec| this.view(rec)));
            }
            Ok(first)
        };
        if r.dry_run {
            let first = shown(self, &ids)?;
            return Ok(Response::Redriven { count, first });
        }
        let now = self.now();
        let mut taken = 0;
        for (i, id) in ids.iter().enumerate() {
            let due = r.due(now, i, count);
            let event = r.event(now, due, "");
            taken += if r.dead {
                usize::from(self.store.revive_at(id, now, due, Some(event))?.is_some())
            } else {
                self.retry_at(id, due, Some(event))?
            };
        }
        self.commit.nudge();
        tracing::info!(cage = %self.cage, "{taken} call(s) {} by an operator ({}), spread over {} ms", if r.dead { "revived" } else { "made due" }, r.by, r.spread_ms);
        let first = shown(self, &ids)?;
        Ok(Response::Redriven {
            count: taken,
            first,
        })
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
                let found = self.store.get_any(&id)?;
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
            QueueQuery::Redrive(r) => self.redrive(r)?,
            QueueQuery::Count { filter, dead } => {
                Response::Counted(filter.count(&self.store, dead)?)
            }
            QueueQuery::Revive(id) => {
                let now = self.now();
                let event = CallEvent {
                    at_ms: now,
                    what: "revived by an operator".into(),
                };
                let n = usize::from(self.store.revive_at(&id, now, now, Some(event))?.is_some());
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
