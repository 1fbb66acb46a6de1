//! The dispatcher: turns one request into a response by asking the registry for the module
//! version and handing the call to the executor, within the call's deadline.
//!
//! Nothing here parks a thread for a client: waits (on chains, for a message's receiver) are
//! futures, and the blocking work a request needs runs in a bounded [`crate::blocking`] lane,
//! so requests can never fill the blocking pool that module loading and shutdown use.

use crate::blocking::{LOOKUPS, STORE_READS};
use crate::chains::ChainWatch;
use crate::executor::{CallExecutor, MethodCall};
use crate::host::{query_chains, wait_for_chain_async};
use crate::messaging::{parse_invocation, Mailboxes};
use crate::metrics::{Metrics, MetricsSnapshot, ModuleLoads, QueueMetrics};
use crate::model::call::QueuedCall;
use crate::model::ids::new_call_id;
use crate::queue::QueueStore;
use crate::registry::{ListModules, ModuleRegistry};
use crate::run::{check_target, needs_lookup, Limit, Run};
use crate::scheduler::{Accept, AcceptMany, Enqueue, JobCommand, Query, Scheduler, StartChains};
use crate::transport::budget::Budget;
use crate::transport::protocol::{
    CageInfo, CallFailure, CallRequest, ChainRequest, Request, Response,
};
use crate::transport::waits::CageWaits;
use actix::Addr;
use cage_sdk::{CallError, ErrorKind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

/// Calls under way and whether new ones are still taken, shared by every connection.
#[derive(Default)]
pub struct Load {
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

impl Load {
    /// Calls being answered now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Refuse new calls from now on; calls under way go on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
}

/// Counts one call as in flight for as long as it lives.
struct InFlight<'a>(&'a Load);

impl<'a> InFlight<'a> {
    fn enter(load: &'a Load) -> Self {
        load.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(load)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Everything needed to answer requests for one cage.
#[derive(Clone)]
pub struct Dispatcher {
    /// This cage's name.
    pub cage: String,
    /// The module registry.
    pub registry: Addr<ModuleRegistry>,
    /// The call executor.
    pub executor: Addr<CallExecutor>,
    /// The durable queue's scheduler.
    pub scheduler: Addr<Scheduler>,
    /// Mailboxes of this cage's running invocations.
    pub mailboxes: Arc<Mailboxes>,
    /// Longest a message waits for a receiver.
    pub port_wait: Duration,
    /// Longest a client's wait on chains may last (a longer one is shortened to it).
    pub max_wait: Duration,
    /// Bytes of frames in flight on all connections together (`max_inflight_bytes`).
    pub in_flight_bytes: Budget,
    /// Waits held by all connections together (`max_waits`).
    pub waits: CageWaits,
    /// Limit for calls that do not name one.
    pub default_timeout: Duration,
    /// When the cage started.
    pub started: Instant,
    /// Calls under way, and whether the cage is draining.
    pub load: Arc<Load>,
    /// The cage's queue, for reading chains.
    pub store: Arc<QueueStore>,
    /// Wakes waiters when chains change.
    pub chains: Arc<ChainWatch>,
    /// What the cage counts.
    pub metrics: Arc<Metrics>,
    /// Queues named in the site config, listed in metrics even before their first call.
    pub queues: Vec<String>,
    /// Other cages, whose lookups (perhaps a discovery query) run here, off the scheduler,
    /// before a call or chain for them is queued.
    pub peers: Arc<crate::peers::Peers>,
}

impl Dispatcher {
    /// Answers one request.
    pub async fn handle(&self, request: Request) -> Response {
        match request {
            Request::Call(call) => self.call(call).await,
            Request::Modules => match self.registry.send(ListModules).await {
                Ok(mut list) => {
                    let workers = self.metrics.workers();
                    for module in &mut list {
                        module.workers = workers.get(&module.name).cloned().unwrap_or_default();
                    }
                    Response::Modules(list)
                }
                Err(_) => Response::Modules(Vec::new()),
            },
            Request::Enqueue(request) => {
                if self.load.draining.load(Ordering::Acquire) {
                    return self.shutting_down("; enqueue again once it is back");
                }
                let (target, module, method) = (
                    request.target.clone(),
                    request.module.clone(),
                    request.method.clone(),
                );
                let refused = |error| {
                    Response::Failed(CallFailure {
                        cage: target.clone(),
                        module: module.clone(),
                        method: method.clone(),
                        call_id: String::new(),
                        error,
                    })
                };
                if let Err(error) = self.look_up(vec![target.clone()]).await {
                    return refused(error);
                }
                match self.scheduler.send(Enqueue(request)).await {
                    Ok(Ok((id, duplicate_of))) => Response::Enqueued { id, duplicate_of },
                    Ok(Err(error)) => refused(error),
                    Err(_) => self.shutting_down(""),
                }
            }
            // A refusal names the call, typed, so its source classes it (dead letter or retry).
            Request::Accept(call) => {
                if self.load.draining.load(Ordering::Acquire) {
                    return self.shutting_down("");
                }
                // The call moves to the scheduler; a refusal still names it (its error is
                // filled in below).
                let call = QueuedCall::from(call);
                let offered = CallFailure::of_queued(&self.cage, &call, CallError::new(""));
                match self.scheduler.send(Accept(call)).await {
                    Ok(Ok(duplicate_of)) => Response::Accepted { duplicate_of },
                    Ok(Err(error)) => Response::Failed(CallFailure { error, ..offered }),
                    Err(_) => self.shutting_down(""),
                }
            }
            Request::AcceptMany(calls) => {
                let calls = calls.into_iter().map(QueuedCall::from).collect();
                self.accept_many(calls).await
            }
            Request::AcceptCalls(calls) => self.accept_many(calls).await,
            Request::Message(m) => {
                // port_wait caps how long a message may wait for its receiver, whatever the
                // client asks.
                let wait = Duration::from_millis(m.timeout_ms).min(self.port_wait);
                let handed = match parse_invocation(&m.target) {
                    Some((_, n)) => self.mailboxes.send_async(n, &m.port, m.message, wait).await,
                    None => Err(CallError::with_kind(
                        ErrorKind::UnknownInvocation,
                        format!("{:?} is not an invocation id", m.target),
                    )),
                };
                Response::Handed(handed)
            }
            Request::Job(request) => match self.scheduler.send(JobCommand(request)).await {
                Ok(Ok(answer)) => answer,
                // With its kind, so a bad job is told apart from a cage that cannot take one.
                Ok(Err(error)) => Response::failed(&self.cage, error),
                Err(_) => self.shutting_down(""),
            },
            Request::Queue(query) => match self.scheduler.send(Query(query)).await {
                Ok(answer) => answer,
                Err(_) => self.shutting_down(""),
            },
            Request::Chain(request) => self.chain(request).await,
            Request::Metrics => match self.metrics_snapshot().await {
                Ok(snapshot) => Response::Metrics(Box::new(snapshot)),
                Err(e) => {
                    Response::failed(&self.cage, CallError::with_kind(ErrorKind::Internal, e))
                }
            },
            Request::Ping => Response::Pong(CageInfo {
                cage: self.cage.clone(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                uptime_secs: self.started.elapsed().as_secs(),
            }),
        }
    }

    /// The refusal of a request because the cage is stopping (`then`: what the client may do).
    fn shutting_down(&self, then: &str) -> Response {
        let why = format!("cage {} is shutting down{then}", self.cage);
        Response::failed(&self.cage, CallError::with_kind(ErrorKind::Refused, why))
    }

    /// Finds each of `cages` other than this one (asking discovery for any never found) in the
    /// lookups lane, so the scheduler's own check of them answers from memory.
    /// Takes calls offered by another cage, made durable by one group commit; per call, its
    /// answer.
    async fn accept_many(&self, calls: Vec<QueuedCall>) -> Response {
        if self.load.draining.load(Ordering::Acquire) {
            return self.shutting_down("");
        }
        let offered: Vec<_> = calls
            .iter()
            .map(|c| CallFailure::of_queued(&self.cage, c, CallError::new("")))
            .collect();
        match self.scheduler.send(AcceptMany(calls)).await {
            Ok(answers) => Response::AcceptedMany(
                answers
                    .into_iter()
                    .zip(offered)
                    .map(|(a, f)| a.map_err(|error| Box::new(CallFailure { error, ..f })))
                    .collect(),
            ),
            Err(_) => self.shutting_down(""),
        }
    }

    async fn look_up(&self, mut cages: Vec<String>) -> Result<(), CallError> {
        // The usual case, a cage known already, costs no thread hop.
        cages.retain(|c| needs_lookup(&self.peers, &self.cage, c));
        cages.sort();
        cages.dedup();
        if cages.is_empty() {
            return Ok(());
        }
        let (peers, here) = (self.peers.clone(), self.cage.clone());
        LOOKUPS
            .run(move || {
                cages
                    .iter()
                    .try_for_each(|c| check_target(&peers, &here, c))
            })
            .await
            .unwrap_or(Ok(()))
    }

    async fn chain(&self, request: ChainRequest) -> Response {
        let failed = |error: CallError| Response::failed(&self.cage, error);
        if let ChainRequest::Start {
            chains,
            max_parallel,
            parent,
        } = request
        {
            if self.load.draining.load(Ordering::Acquire) {
                return failed(CallError::with_kind(
                    ErrorKind::Refused,
                    format!(
                        "cage {} is shutting down; start the chain again once it is back",
                        self.cage
                    ),
                ));
            }
            let others = chains
                .iter()
                .flat_map(|c| c.steps.iter().map(|s| s.cage_or(&self.cage).to_owned()))
                .collect();
            if let Err(e) = self.look_up(others).await {
                return failed(e);
            }
            let start = StartChains {
                chains,
                max_parallel,
                parent,
            };
            return match self.scheduler.send(start).await {
                Ok(Ok(ids)) => Response::ChainsStarted(ids),
                Ok(Err(e)) => failed(e),
                Err(_) => self.shutting_down(""),
            };
        }
        let answer = match request {
            ChainRequest::Wait {
                ids,
                any,
                timeout_ms,
            } => wait_for_chain_async(
                &self.store,
                &self.chains,
                &self.cage,
                &ids,
                any,
                timeout_ms,
                self.max_wait,
            )
            .await
            .map(|c| vec![c]),
            request => {
                let (store, cage) = (self.store.clone(), self.cage.clone());
                STORE_READS
                    .run(move || query_chains(&store, &cage, request))
                    .await
                    .unwrap_or_else(|e| {
                        Err(CallError::with_kind(ErrorKind::Internal, e.to_string()))
                    })
            }
        };
        match answer {
            Ok(chains) => Response::Chains(chains),
            Err(e) => failed(e),
        }
    }

    /// The counters with the gauges read now: pending and dead calls per queue (counted in the
    /// store-reads lane, as a large queue takes a while) and module loads.
    async fn metrics_snapshot(&self) -> Result<MetricsSnapshot, String> {
        let modules = self
            .registry
            .send(ListModules)
            .await
            .map_err(|e| format!("module registry unavailable: {e}"))?;
        let store = self.store.clone();
        let (rate_held, group_held) = self.metrics.held();
        let (counts, held) = STORE_READS
            .run(move || -> Result<_, crate::queue::QueueError> {
                let now = crate::model::clock::now_ms();
                // Per queue: due calls held by its rate limit, and by their groups' limits.
                let mut held = std::collections::BTreeMap::<String, (u64, u64)>::new();
                for queue in rate_held.iter().chain(group_held.keys()) {
                    if held.contains_key(queue) {
                        continue;
                    }
                    let groups = group_held.get(queue);
                    let (all, of_groups) = store
                        .count_due(queue, now, &|g| groups.is_some_and(|held| held.contains(g)))?;
                    let by_rate = if rate_held.contains(queue) { all } else { 0 };
                    held.insert(queue.clone(), (by_rate as u64, of_groups as u64));
                }
                Ok((store.counts_by_queue()?, held))
            })
            .await
            .map_err(|e| format!("counting queued calls failed: {e}"))?
            .map_err(|e| e.to_string())?;
        let mut counters = self.metrics.queues();
        for queue in self.queues.iter().chain(counts.keys()) {
            counters.entry(queue.clone()).or_default();
        }
        Ok(MetricsSnapshot {
            cage: self.cage.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            queues: counters
                .into_iter()
                .map(|(queue, counters)| {
                    let (pending, dead_now) = counts.get(&queue).copied().unwrap_or_default();
                    let (by_rate, by_group) = held.get(&queue).copied().unwrap_or_default();
                    QueueMetrics {
                        held_by_rate_limit: by_rate,
                        held_by_group: by_group,
                        queue,
                        counters,
                        pending,
                        dead_now,
                    }
                })
                .collect(),
            methods: self.metrics.methods(),
            workers: self.metrics.workers(),
            modules: modules
                .into_iter()
                .map(|m| ModuleLoads {
                    module: m.name,
                    loads: m.loads,
                    rejected: m.rejected,
                })
                .collect(),
        })
    }

    async fn call(&self, mut call: CallRequest) -> Response {
        if call.call_id.is_empty() {
            call.call_id = new_call_id(&self.cage);
        }
        let span = tracing::info_span!("call", call_id = %call.call_id, cage = %self.cage, module = %call.module, method = %call.method);
        let result = self.run(&call).instrument(span.clone()).await;
        match result {
            Ok(bytes) => Response::Result(bytes),
            Err(error) => {
                span.in_scope(|| tracing::debug!("answered with failure: {error}"));
                Response::Failed(CallFailure {
                    cage: self.cage.clone(),
                    module: call.module,
                    method: call.method,
                    call_id: call.call_id,
                    error,
                })
            }
        }
    }

    async fn run(&self, call: &CallRequest) -> Result<Vec<u8>, CallError> {
        let _counted = InFlight::enter(&self.load);
        if self.load.draining.load(Ordering::Acquire) {
            return Err(CallError::with_kind(
                ErrorKind::Refused,
                "cage is shutting down; call again once it is back",
            ));
        }
        let timeout = match call.timeout_ms {
            0 => self.default_timeout,
            ms => Duration::from_millis(ms),
        };
        let run = Run {
            module: call.module.clone(),
            call: MethodCall {
                call_id: call.call_id.clone(),
                method: call.method.clone(),
                args: call.args.clone(),
                attempt: 1,
                queued: false,
                chain: None,
            },
            limit: Limit::Call(timeout),
        };
        crate::run::run(&self.registry, &self.executor, run)
            .await
            .outcome
            .map(|output| output.result)
    }
}
