//! What the dashboard (and `cage status`) shows, asked of the cages over their ordinary
//! protocol: each question goes to every cage at once (one thread per cage), so a cage that is
//! down costs one connect timeout, not one per cage.

use crate::config::{Address, CageRoute, ConfigError, Site, UnknownCages};
use crate::discovery::{self, DiscoveryError, Known};
use crate::metrics::MetricsSnapshot;
use crate::model::chain::ChainRecord;
use crate::model::job::Job;
use crate::transport::client::{Client, ClientError};
use crate::transport::protocol::{
    CageInfo, CallView, ChainRequest, Filter, JobRequest, ModuleInfo, QueueQuery, Redrive,
};
use std::time::Duration;

/// Longest the dashboard waits for one cage's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The cages a dashboard covers and how to reach each.
#[derive(Debug, Clone)]
pub struct Cluster {
    cages: Vec<(String, CageRoute)>,
    known: Vec<(String, Known)>,
}

/// One instance of a cage: its address, whether it answered, and what it said.
#[derive(Debug, Clone)]
pub struct Instance {
    /// Where it listens.
    pub addr: Address,
    /// Its identity, or why it did not answer.
    pub info: Result<CageInfo, String>,
    /// Modules this instance serves (empty if it did not answer).
    pub modules: Vec<ModuleInfo>,
    /// Its counters and gauges, if it answered.
    pub metrics: Option<MetricsSnapshot>,
}

/// One cage at a glance.
#[derive(Debug, Clone)]
pub struct CageSummary {
    /// Cage name.
    pub name: String,
    /// How its route was learnt.
    pub known: Known,
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
        let cages: Vec<(String, CageRoute)> = names
            .into_iter()
            .map(|name| Ok((name.clone(), site.route(&execute_on, &name)?)))
            .collect::<Result<_, ConfigError>>()?;
        let known = cages
            .iter()
            .map(|(name, _)| {
                let known = match execute_on.cages.contains_key(name) {
                    true => Known::Config,
                    false => Known::CageFile,
                };
                (name.clone(), known)
            })
            .collect();
        Ok(Cluster { cages, known })
    }

    /// Just one cage (a cage's own `/ui`).
    pub fn single(name: &str, route: CageRoute) -> Self {
        Cluster {
            cages: vec![(name.to_owned(), route)],
            known: vec![(name.to_owned(), Known::CageFile)],
        }
    }

    /// Adds every cage that answers a discovery query for everyone and is not covered yet
    /// (a cage the site lists stays as listed); blocks for the `query_timeout`.
    pub fn discover(&mut self, unknown: &UnknownCages) -> Result<(), DiscoveryError> {
        for heard in discovery::find_all(unknown)? {
            if self.cages.iter().any(|(n, _)| *n == heard.cage) {
                continue;
            }
            let addresses = heard.addresses.into_iter().map(Address::Ip).collect();
            self.cages
                .push((heard.cage.clone(), unknown.route(addresses)));
            self.known.push((heard.cage, Known::Discovered));
        }
        self.cages.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(())
    }

    /// How the route to `cage` was learnt.
    fn known(&self, cage: &str) -> Known {
        self.known
            .iter()
            .find(|(n, _)| n == cage)
            .map_or(Known::CageFile, |(_, k)| *k)
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
        self.ask_among(None, question)
    }

    /// [`Cluster::ask_all`], of cage `only` alone when given.
    fn ask_among<T: Send>(
        &self,
        only: Option<&str>,
        question: impl Fn(&str, &CageRoute) -> T + Sync,
    ) -> Vec<(String, T)> {
        std::thread::scope(|s| {
            let asks: Vec<_> = self
                .cages
                .iter()
                .filter(|(name, _)| only.is_none_or(|c| c == name))
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

    /// Every cage at a glance: each instance pinged and asked for its modules and metrics;
    /// the cage's modules and metrics are those of the first instance that answered.
    pub fn summaries(&self) -> Vec<CageSummary> {
        self.ask_all(|name, route| {
            let instances: Vec<Instance> = route
                .addresses
                .iter()
                .map(|addr| instance(name, route, addr))
                .collect();
            let first = instances.iter().find(|i| i.info.is_ok());
            CageSummary {
                name: name.to_owned(),
                known: self.known(name),
                modules: first.map(|i| i.modules.clone()).unwrap_or_default(),
                metrics: first.and_then(|i| i.metrics.clone()),
                instances,
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
    pub fn dead(
        &self,
        cage: Option<&str>,
        filter: &Filter,
    ) -> Vec<(String, Result<Vec<CallView>, String>)> {
        self.ask_among(cage, |name, route| {
            Client::connect(name, route)
                .and_then(|mut c| c.calls(QueueQuery::Dead(filter.clone()), ASK_TIMEOUT))
                .map_err(|e| e.to_string())
        })
    }

    /// Gives `order` to `cage` (or every cage): per cage, how many calls it took (or, in a
    /// dry run, would take) and the first ten, or why the cage could not say.
    pub fn redrive(
        &self,
        cage: Option<&str>,
        order: &Redrive,
    ) -> Vec<(String, Result<Redriven, String>)> {
        self.ask_among(cage, |name, route| {
            Client::connect(name, route)
                .and_then(|mut c| c.redrive(order.clone(), ASK_TIMEOUT))
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

/// What a cage said of a redrive: how many calls it took (or would take), the first ten.
pub type Redriven = (usize, Vec<CallView>);

/// Instance `addr` of `name`: pinged, then asked for its modules and metrics on the same
/// connection.
fn instance(name: &str, route: &CageRoute, addr: &Address) -> Instance {
    let only = CageRoute {
        addresses: vec![addr.clone()],
        ..route.clone()
    };
    let answered = Client::connect(name, &only).and_then(|mut c| {
        let info = c.ping(ASK_TIMEOUT)?;
        Ok((info, c))
    });
    match answered {
        Ok((info, mut c)) => Instance {
            addr: addr.clone(),
            info: Ok(info),
            modules: c.modules(ASK_TIMEOUT).unwrap_or_default(),
            metrics: c.metrics(ASK_TIMEOUT).ok(),
        },
        Err(e) => Instance {
            addr: addr.clone(),
            info: Err(e.to_string()),
            modules: Vec::new(),
            metrics: None,
        },
    }
}
