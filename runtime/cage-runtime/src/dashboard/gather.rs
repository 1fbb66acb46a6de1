//! What the dashboard shows, asked of the cages over their ordinary protocol: each question
//! goes to every cage at once (one thread per cage), so a cage that is down costs one connect
//! timeout, not one per cage.

use crate::chains::ChainRecord;
use crate::config::{Address, CageRoute, ConfigError, Site};
use crate::jobs::Job;
use crate::metrics::MetricsSnapshot;
use crate::transport::client::{Client, ClientError};
use crate::transport::protocol::{
    CageInfo, CallView, ChainRequest, Filter, JobRequest, ModuleInfo, QueueQuery,
};
use std::time::Duration;

/// Longest the dashboard waits for one cage's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The cages a dashboard covers and how to reach each.
#[derive(Debug, Clone)]
pub struct Cluster {
    cages: Vec<(String, CageRoute)>,
}

/// One instance of a cage: its address and whether it answered.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Where it listens.
    pub addr: Address,
    /// Its identity, or why it did not answer.
    pub info: Result<CageInfo, String>,
}

/// One cage at a glance.
#[derive(Debug, Clone)]
pub struct CageSummary {
    /// Cage name.
    pub name: String,
    /// Each instance in the cluster map.
    pub instances: Vec<Instance>,
    /// Modules it serves (from the first instance that answered).
    pub modules: Vec<ModuleInfo>,
    /// Its counters and gauges, if an instance answered.
    pub metrics: Option<MetricsSnapshot>,
}

impl CageSummary {
    /// Whether any instance answered.
    pub fn up(&self) -> bool {
        self.instances.iter().any(|i| i.info.is_ok())
    }
}

/// An operator's order about one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make a pending call due now.
    RetryNow,
    /// Move a dead call back to pending, due now.
    Revive,
    /// Remove a call, pending or dead (and cancel the chains it started).
    Cancel,
}

impl Action {
    /// The action named `name` in a form.
    pub fn parse(name: &str) -> Option<Action> {
        match name {
            "retry-now" => Some(Action::RetryNow),
            "revive" => Some(Action::Revive),
            "cancel" => Some(Action::Cancel),
            _ => None,
        }
    }

    /// Its name in forms and messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::RetryNow => "retry-now",
            Action::Revive => "revive",
            Action::Cancel => "cancel",
        }
    }
}

/// A call with what links it to others.
#[derive(Debug, Clone)]
pub struct CallDetail {
    /// The call as its cage holds it.
    pub view: CallView,
    /// The chains the call started.
    pub children: Vec<ChainRecord>,
    /// The chain the call is a step of, if its owner answered.
    pub chain: Option<ChainRecord>,
}

impl Cluster {
    /// Every cage of `site`: those with a cage file and those the cluster map lists.
    pub fn from_site(site: &Site) -> Result<Self, ConfigError> {
        let execute_on = site.execute_on()?;
        let mut names = site.cage_names();
        names.extend(execute_on.cages.keys().cloned());
        names.sort();
        names.dedup();
        let cages = names
            .into_iter()
            .map(|name| Ok((name.clone(), site.route(&execute_on, &name)?)))
            .collect::<Result<_, ConfigError>>()?;
        Ok(Cluster { cages })
    }

    /// Just one cage (a cage's own `/ui`).
    pub fn single(name: &str, route: CageRoute) -> Self {
        Cluster {
            cages: vec![(name.to_owned(), route)],
        }
    }

    /// Names of the cages covered.
    pub fn names(&self) -> Vec<String> {
        self.cages.iter().map(|(n, _)| n.clone()).collect()
    }

    fn route(&self, cage: &str) -> Result<&CageRoute, String> {
        self.cages
            .iter()
            .find(|(n, _)| n == cage)
            .map(|(_, r)| r)
            .ok_or_else(|| format!("cage {cage} is not in this dashboard's cluster map"))
    }

    fn ask<T>(
        &self,
        cage: &str,
        question: impl FnOnce(&mut Client) -> Result<T, ClientError>,
    ) -> Result<T, String> {
        let route = self.route(cage)?;
        Client::connect(cage, route)
            .and_then(|mut c| question(&mut c))
            .map_err(|e| e.to_string())
    }

    /// Asks every cage the same question at once; answers in cage order.
    fn ask_all<T: Send>(
        &self,
        question: impl Fn(&str, &CageRoute) -> T + Sync,
    ) -> Vec<(String, T)> {
        std::thread::scope(|s| {
            let asks: Vec<_> = self
                .cages
                .iter()
                .map(|(name, route)| {
                    let question = &question;
                    (name, s.spawn(move || question(name, route)))
                })
                .collect();
            asks.into_iter()
                .filter_map(|(name, ask)| ask.join().ok().map(|answer| (name.clone(), answer)))
                .collect()
        })
    }

    /// Every cage at a glance: each instance pinged, modules and metrics from one that answered.
    pub fn summaries(&self) -> Vec<CageSummary> {
        self.ask_all(|name, route| {
            let instances: Vec<Instance> = route
                .addresses
                .iter()
                .map(|addr| Instance {
                    addr: addr.clone(),
                    info: Client::connect(
                        name,
                        &CageRoute {
                            addresses: vec![addr.clone()],
                            ..route.clone()
                        },
                    )
                    .and_then(|mut c| c.ping(ASK_TIMEOUT))
                    .map_err(|e| e.to_string()),
                })
                .collect();
            let (modules, metrics) = match instances.iter().any(|i| i.info.is_ok()) {
                true => match Client::connect(name, route) {
                    Ok(mut c) => (
                        c.modules(ASK_TIMEOUT).unwrap_or_default(),
                        c.metrics(ASK_TIMEOUT).ok(),
                    ),
                    Err(_) => (Vec::new(), None),
                },
                false => (Vec::new(), None),
            };
            CageSummary {
                name: name.to_owned(),
                instances,
                modules,
                metrics,
            }
        })
        .into_iter()
        .map(|(_, s)| s)
        .collect()
    }

    /// Metrics of every cage that answered.
    pub fn metrics(&self) -> Vec<MetricsSnapshot> {
        self.ask_all(|name, route| {
            Client::connect(name, route).and_then(|mut c| c.metrics(ASK_TIMEOUT))
        })
        .into_iter()
        .filter_map(|(_, m)| m.ok())
        .collect()
    }

    /// Pending calls of `queue` on `cage`.
    pub fn pending(&self, cage: &str, queue: &str) -> Result<Vec<CallView>, String> {
        let filter = Filter {
            queue: Some(queue.to_owned()),
            ..Filter::default()
        };
        self.ask(cage, |c| c.calls(QueueQuery::Pending(filter), ASK_TIMEOUT))
    }

    /// Metrics of one cage.
    pub fn cage_metrics(&self, cage: &str) -> Result<MetricsSnapshot, String> {
        self.ask(cage, |c| c.metrics(ASK_TIMEOUT))
    }

    /// Dead letters of every cage (or why a cage could not say).
    pub fn dead(&self) -> Vec<(String, Result<Vec<CallView>, String>)> {
        self.ask_all(|name, route| {
            Client::connect(name, route)
                .and_then(|mut c| c.calls(QueueQuery::Dead(Filter::default()), ASK_TIMEOUT))
                .map_err(|e| e.to_string())
        })
    }

    /// Jobs of every cage (or why a cage could not say).
    pub fn jobs(&self) -> Vec<(String, Result<Vec<Job>, String>)> {
        self.ask_all(|name, route| {
            Client::connect(name, route)
                .and_then(|mut c| c.job(JobRequest::List, ASK_TIMEOUT))
                .map_err(|e| e.to_string())
        })
    }

    /// Call `id` on `cage` with its children and its chain, if the cage holds it.
    pub fn call(&self, cage: &str, id: &str) -> Result<Option<CallDetail>, String> {
        let Some(view) = self
            .ask(cage, |c| {
                c.calls(QueueQuery::Show(id.to_owned()), ASK_TIMEOUT)
            })?
            .into_iter()
            .next()
        else {
            return Ok(None);
        };
        let children = self.ask_all(|name, route| {
            Client::connect(name, route)
                .and_then(|mut c| c.chains(ChainRequest::Children(id.to_owned()), ASK_TIMEOUT))
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        });
        let chain = view.record.call.chain.as_ref().and_then(|link| {
            self.ask(&link.owner, |c| {
                c.chains(ChainRequest::Get(link.chain.clone()), ASK_TIMEOUT)
            })
            .ok()?
            .ok()?
            .into_iter()
            .next()
        });
        Ok(Some(CallDetail {
            view,
            children: children.into_iter().flat_map(|(_, c)| c).collect(),
            chain,
        }))
    }

    /// Carries out `action` on call `id` of `cage`; answers how many calls it changed.
    pub fn act(&self, cage: &str, action: Action, id: &str) -> Result<usize, String> {
        let query = match action {
            Action::RetryNow => QueueQuery::RetryNow(id.to_owned()),
            Action::Revive => QueueQuery::Revive(id.to_owned()),
            Action::Cancel => QueueQuery::Cancel(id.to_owned()),
        };
        self.ask(cage, |c| c.steer(query, ASK_TIMEOUT))
    }
}
