//! A stopped cage's queue, opened directly by an operator's command: its pending and dead
//! calls listed and shown, and calls cancelled, revived or made due, so a cage that cannot
//! stay up (a call that crashes it at every start) can be inspected and its offending call
//! removed. The queue is opened as the cage opens it: the same lock (a running cage keeps
//! it, so the two never write at once), the journal replayed, every change written through
//! it, and a checkpoint before the command ends, so the cage started afterwards finds the
//! changes. A call that is a step of a chain, or started chains, is not cancelled here: that
//! touches the chains' records, on this cage or another, which only the running cage does.

use crate::config::{ExecuteOn, Site};
use crate::model::call::{CallEvent, CallRecord};
use crate::model::clock;
use crate::queue::{QueueError, QueueStore};
use crate::transport::protocol::{CallView, Crashes, Filter, QueueQuery, Redrive, Response};
use cage_sdk::{CallError, ErrorKind};
use std::path::PathBuf;

/// Why a stopped cage's queue could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum MaintenanceError {
    /// The cage's files could not be read.
    #[error("cage {cage}: {source}")]
    Config {
        /// The cage.
        cage: String,
        /// What was wrong.
        source: crate::config::ConfigError,
    },
    /// A process holds the queue's lock: the cage runs (and did not answer), or another command
    /// has it open.
    #[error("the queue of cage {cage} ({dir}) is in use by another process: the cage runs but does not answer, or another command has it open")]
    InUse {
        /// The cage.
        cage: String,
        /// The queue's directory.
        dir: String,
    },
    /// The queue failed.
    #[error("cage {cage}: {source}")]
    Queue {
        /// The cage.
        cage: String,
        /// What failed.
        source: QueueError,
    },
}

/// The queue of a cage that is not running, open for one command.
pub struct StoppedCage {
    cage: String,
    store: QueueStore,
    policies: ExecuteOn,
    /// The cage's data directory, as the notes name it.
    pub data_dir: PathBuf,
    changed: bool,
}

impl StoppedCage {
    /// Opens cage `cage`'s queue in `site`, if the cage has ever stored one (`None` if not).
    pub fn open(site: &Site, cage: &str) -> Result<Option<StoppedCage>, MaintenanceError> {
        let config = |source| MaintenanceError::Config {
            cage: cage.to_owned(),
            source,
        };
        let c = site.cage(cage).map_err(config)?;
        let policies = site.execute_on().map_err(config)?;
        let dir = c.data_dir.join("queue");
        if !dir.join("db").exists() {
            return Ok(None);
        }
        let store = QueueStore::open(&dir).map_err(|source| {
            if source.is_locked() {
                MaintenanceError::InUse {
                    cage: cage.to_owned(),
                    dir: dir.display().to_string(),
                }
            } else {
                MaintenanceError::Queue {
                    cage: cage.to_owned(),
                    source,
                }
            }
        })?;
        store
            .set_rules(crate::scheduler::store_rules(&policies))
            .map_err(|source| MaintenanceError::Queue {
                cage: cage.to_owned(),
                source,
            })?;
        Ok(Some(StoppedCage {
            cage: cage.to_owned(),
            store,
            policies,
            data_dir: c.data_dir,
            changed: false,
        }))
    }

    /// Answers `query` as the running cage would (a refusal as [`Response::Failed`]); the
    /// changes it makes are on disk when it returns.
    pub fn answer(&mut self, query: QueueQuery) -> Response {
        let answer = self.query(query).and_then(|r| {
            if std::mem::take(&mut self.changed) {
                self.store.checkpoint()?;
            }
            Ok(r)
        });
        answer.unwrap_or_else(|e| {
            let why = format!("queue storage: {e}");
            Response::failed(&self.cage, CallError::with_kind(ErrorKind::Refused, why))
        })
    }

    fn view(&self, record: CallRecord) -> CallView {
        let crashes = self
            .store
            .crashes(&record.call.id)
            .ok()
            .flatten()
            .map(|c| Crashes {
                count: c.total(),
                max: self.policies.queue(&record.call.queue).max_crashes as u32,
                signal: c.signal,
            });
        CallView {
            cage: self.cage.clone(),
            record,
            running: false,
            waiting: None,
            crashes,
        }
        .listed()
    }

    fn listing(&self, filter: &Filter, dead: bool) -> Result<Response, QueueError> {
        let records = filter.listed(&self.store, dead)?;
        Ok(Response::Calls(
            records.into_iter().map(|r| self.view(r)).collect(),
        ))
    }

    /// Why call `id` is not cancelled here, if it is not: it belongs to chains.
    fn chained(&self, record: &CallRecord) -> Result<Option<String>, QueueError> {
        let id = &record.call.id;
        if let Some(link) = &record.call.chain {
            return Ok(Some(format!(
                "call {id} is step {} of chain {} (held by cage {}): start cage {} to cancel it, so the chain ends with it",
                link.step + 1,
                link.chain,
                link.owner,
                self.cage
            )));
        }
        if !self.store.children(id)?.is_empty() {
            return Ok(Some(format!(
                "call {id} started chains: start cage {} to cancel it with them",
                self.cage
            )));
        }
        Ok(None)
    }

    fn cancel(&mut self, id: &str) -> Result<Result<usize, String>, QueueError> {
        let Some(record) = self.store.get_any(id)? else {
            return Ok(Ok(0));
        };
        if let Some(why) = self.chained(&record)? {
            return Ok(Err(why));
        }
        let n = usize::from(self.store.cancel(id)?.is_some());
        self.changed |= n > 0;
        Ok(Ok(n))
    }

    fn make_due(&mut self, id: &str, due_ms: u64, what: String) -> Result<usize, QueueError> {
        let event = CallEvent {
            at_ms: clock::now_ms(),
            what,
        };
        let made = self.store.make_due(id, due_ms, Some(event))?;
        self.changed |= made;
        Ok(usize::from(made))
    }

    fn revive(&mut self, id: &str, due_ms: u64, what: String) -> Result<usize, QueueError> {
        let now = clock::now_ms();
        let event = CallEvent { at_ms: now, what };
        let n = usize::from(
            self.store
                .revive_at(id, now, due_ms, Some(event))?
                .is_some(),
        );
        self.changed |= n > 0;
        Ok(n)
    }

    fn redrive(&mut self, r: Redrive) -> Result<Response, QueueError> {
        let ids = self
            .store
            .ids_where(r.dead, &|rec| r.filter.keeps(rec), r.limit())?;
        let count = ids.len();
        if !r.dry_run {
            let now = clock::now_ms();
            let note = format!("; cage {} was not running", self.cage);
            for (i, id) in ids.iter().enumerate() {
                let due = r.due(now, i, count);
                let what = r.event(now, due, &note).what;
                if r.dead {
                    self.revive(id, due, what)?;
                } else {
                    self.make_due(id, due, what)?;
                }
            }
        }
        let mut first = Vec::new();
        for id in ids.iter().take(10) {
            first.extend(self.store.get_any(id)?.map(|rec| self.view(rec)));
        }
        Ok(Response::Redriven { count, first })
    }

    fn query(&mut self, q: QueueQuery) -> Result<Response, QueueError> {
        let now = clock::now_ms();
        let offline = |what: &str| format!("{what} by an operator (cage not running)");
        Ok(match q {
            QueueQuery::Pending(f) => self.listing(&f, false)?,
            QueueQuery::Dead(f) => self.listing(&f, true)?,
            QueueQuery::Show(id) => Response::Calls(
                self.store
                    .get_any(&id)?
                    .into_iter()
                    .map(|r| self.view(r))
                    .collect(),
            ),
            QueueQuery::RetryNow(id) => {
                Response::Changed(self.make_due(&id, now, offline("made due now"))?)
            }
            QueueQuery::RetryAllNow(f) => {
                let mut n = 0;
                for id in self.store.ids_where(false, &|r| f.keeps(r), usize::MAX)? {
                    n += self.make_due(&id, now, offline("made due now"))?;
                }
                Response::Changed(n)
            }
            QueueQuery::Revive(id) => {
                Response::Changed(self.revive(&id, now, offline("revived"))?)
            }
            QueueQuery::Cancel(id) => match self.cancel(&id)? {
                Ok(n) => Response::Changed(n),
                Err(why) => {
                    Response::failed(&self.cage, CallError::with_kind(ErrorKind::Refused, why))
                }
            },
            QueueQuery::CancelAll(f) => {
                let (mut n, mut kept) = (0, Vec::new());
                for id in self.store.ids_where(false, &|r| f.keeps(r), usize::MAX)? {
                    match self.cancel(&id)? {
                        Ok(c) => n += c,
                        Err(_) => kept.push(id),
                    }
                }
                if !kept.is_empty() {
                    let why = format!(
                        "{n} call(s) cancelled; {} call(s) belong to chains and were kept (start cage {} to cancel them): {}",
                        kept.len(),
                        self.cage,
                        kept.join(", ")
                    );
                    return Ok(Response::failed(
                        &self.cage,
                        CallError::with_kind(ErrorKind::Refused, why),
                    ));
                }
                Response::Changed(n)
            }
            QueueQuery::Redrive(r) => self.redrive(r)?,
            QueueQuery::Count { filter, dead } => {
                Response::Counted(filter.count(&self.store, dead)?)
            }
            QueueQuery::Stats(count) => {
                let mut stats = crate::transport::protocol::QueueStats::default();
                if count {
                    let (pending, dead) = self.store.counts();
                    (stats.pending, stats.dead) = (Some(pending as u64), Some(dead as u64));
                }
                Response::Stats(stats)
            }
        })
    }
}
