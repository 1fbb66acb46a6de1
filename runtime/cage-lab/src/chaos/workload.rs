//! The traffic of a chaos run: careful clients that enqueue calls (each with an idempotency key,
//! sent again with the same key when an answer is lost) and start chains (with fixed ids, so a
//! repeated start is the same chain), recording what was acknowledged and what was refused.

use super::{Lab, Lcg, CAGES};
use cage_runtime::chains::parse_steps;
use cage_runtime::config::CageRoute;
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::{ChainRequest, EnqueueRequest, NewChain};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Refusals after which a client gives a call up (it was never stored).
const GIVE_UP_AFTER_REFUSALS: usize = 3;
/// Lost answers after which a client stops trying (the call may or may not be stored).
const GIVE_UP_AFTER_LOSSES: usize = 200;

/// What one request ended as, from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Fate {
    /// Acknowledged: durable on the cage.
    Acked,
    /// Refused every time it was sent: never stored, must never run.
    Refused,
    /// Some answers were lost, then the client gave up: it may or may not run.
    Uncertain,
}

/// What the workload did.
#[derive(Serialize, Default, Debug)]
pub struct Tally {
    /// Calls by fate.
    pub calls_acked: usize,
    /// Calls refused for good.
    pub calls_refused: usize,
    /// Calls whose fate the client cannot know.
    pub calls_uncertain: usize,
    /// Chains acknowledged.
    pub chains_acked: usize,
    /// Chains refused for good.
    pub chains_refused: usize,
    /// Requests sent again after a lost answer or a refusal.
    pub resends: usize,
    /// Each call's fate and acknowledged id, by tag.
    #[serde(skip)]
    pub calls: BTreeMap<String, (Fate, Option<String>)>,
    /// Each chain's fate and owner, by id.
    #[serde(skip)]
    pub chains: BTreeMap<String, (Fate, String)>,
    /// Calls of the crashing module acknowledged.
    pub crashing_calls_acked: usize,
    /// Each call of the crashing module: its fate and acknowledged id, by tag.
    #[serde(skip)]
    pub crashing: BTreeMap<String, (Fate, Option<String>)>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.resends += other.resends;
        self.calls.extend(other.calls);
        self.chains.extend(other.chains);
        self.crashing.extend(other.crashing);
    }

    fn count(&mut self) {
        let fates = |f: Fate, it: &mut dyn Iterator<Item = Fate>| it.filter(|x| *x == f).count();
        self.calls_acked = fates(Fate::Acked, &mut self.calls.values().map(|v| v.0));
        self.calls_refused = fates(Fate::Refused, &mut self.calls.values().map(|v| v.0));
        self.calls_uncertain = fates(Fate::Uncertain, &mut self.calls.values().map(|v| v.0));
        self.chains_acked = fates(Fate::Acked, &mut self.chains.values().map(|v| v.0));
        self.chains_refused = fates(Fate::Refused, &mut self.chains.values().map(|v| v.0));
        self.crashing_calls_acked = fates(Fate::Acked, &mut self.crashing.values().map(|v| v.0));
    }
}

/// Sends `request` until it is acknowledged, refused for good, or given up.
fn careful<T>(
    cage: &str,
    route: &CageRoute,
    client: &mut Option<Client>,
    resends: &mut usize,
    stop: &AtomicBool,
    mut send: impl FnMut(&mut Client) -> Result<Result<T, String>, ClientError>,
) -> (Fate, Option<T>) {
    let (mut refusals, mut losses) = (0, 0);
    loop {
        if client.is_none() {
            *client = Client::connect(cage, route).ok();
        }
        let outcome = match client.as_mut() {
            Some(c) => send(c),
            None => Err(ClientError::Protocol {
                cage: cage.to_owned(),
                what: "not connected".into(),
            }),
        };
        match outcome {
            Ok(Ok(v)) => return (Fate::Acked, Some(v)),
            // Definitely not stored ("not accepted" after a failed flush): may be sent again.
            Ok(Err(_)) => refusals += 1,
            Err(ClientError::Rejected { .. }) => refusals += 1,
            // The answer was lost: the request may or may not have been taken.
            Err(_) => {
                losses += 1;
                *client = None;
            }
        }
        if refusals >= GIVE_UP_AFTER_REFUSALS && losses == 0 {
            return (Fate::Refused, None);
        }
        if losses >= GIVE_UP_AFTER_LOSSES
            || (stop.load(Ordering::Acquire) && losses + refusals >= 20)
        {
            return (Fate::Uncertain, None);
        }
        *resends += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What an enqueuing client sent, by tag, and how often it sent again.
type Sent = (BTreeMap<String, (Fate, Option<String>)>, usize);

/// Enqueues calls until `stop`, each from a random cage for a random cage with its tag as its
/// idempotency key: `call` makes a tag's module, method and JSON arguments; `pause` is the
/// least and the spread of the wait between calls, in ms.
fn enqueue_until_stopped(
    lab_routes: &[CageRoute],
    rng: &mut Lcg,
    stop: &AtomicBool,
    tag_prefix: &str,
    pause: (u64, u64),
    mut call: impl FnMut(&mut Lcg, &str) -> (&'static str, &'static str, serde_json::Value),
) -> Sent {
    let (mut sent, mut resends) = (BTreeMap::new(), 0);
    let mut clients: Vec<Option<Client>> = CAGES.iter().map(|_| None).collect();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let (s, t) = (rng.below(3) as usize, rng.below(3) as usize);
        let tag = format!("{tag_prefix}{i}");
        i += 1;
        let (module, method, args) = call(rng, &tag);
        let request = EnqueueRequest {
            target: CAGES[t].into(),
            module: module.into(),
            method: method.into(),
            args: serde_json::to_vec(&args).unwrap_or_default(),
            queue: "retry".into(),
            priority: 0,
            key: Some(tag.clone()),
            delay_ms: 0,
            group: None,
        };
        let (fate, id) = careful(
            CAGES[s],
            &lab_routes[s],
            &mut clients[s],
            &mut resends,
            stop,
            |c| {
                c.enqueue(request.clone(), Duration::from_secs(10))
                    .map(|(id, dup)| Ok(dup.unwrap_or(id)))
            },
        );
        sent.insert(tag, (fate, id));
        std::thread::sleep(Duration::from_millis(pause.0 + rng.below(pause.1)));
    }
    (sent, resends)
}

/// Queues `echo.append` calls whose effects land in `effects`.
fn enqueuer(
    lab_routes: Vec<CageRoute>,
    effects: String,
    seed: u64,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Tally {
    let (calls, resends) = enqueue_until_stopped(
        &lab_routes,
        &mut Lcg(seed),
        &stop,
        &format!("w{n}-"),
        (2, 8),
        |rng, tag| {
            let args = serde_json::json!({
                "file": effects, "tag": tag, "sleep_ms": rng.below(20)
            });
            ("echo", "append", args)
        },
    );
    Tally {
        calls,
        resends,
        ..Tally::default()
    }
}

/// Share of `crash.maybe` attempts that crash their worker process.
const CRASH_SHARE: f64 = 0.4;
/// Attempts of `crash.maybe` from this one on never crash, so each call ends done with fewer
/// crashes than the default `max_crashes` (3) and none is dead-lettered for crashing.
const SPARE_FROM: u32 = 3;

/// Queues calls of the module that crashes its worker at random (`crash.maybe`).
fn crasher(lab_routes: Vec<CageRoute>, seed: u64, stop: Arc<AtomicBool>) -> Tally {
    let (crashing, resends) = enqueue_until_stopped(
        &lab_routes,
        &mut Lcg(seed ^ 0xc4a5),
        &stop,
        "crash-",
        (20, 40),
        |rng, tag| {
            let args = serde_json::json!({
                "crash": CRASH_SHARE, "seed": rng.below(u64::MAX), "spare_from": SPARE_FROM, "tag": tag
            });
            ("crash", "maybe", args)
        },
    );
    Tally {
        crashing,
        resends,
        ..Tally::default()
    }
}

fn chain_starter(lab_routes: Vec<CageRoute>, seed: u64, stop: Arc<AtomicBool>) -> Tally {
    let mut rng = Lcg(seed ^ 0x5eed);
    let mut tally = Tally::default();
    let mut clients: Vec<Option<Client>> = CAGES.iter().map(|_| None).collect();
    let mut i = 0;
    while !stop.load(Ordering::Acquire) {
        let owner = rng.below(3) as usize;
        let steps: Vec<String> = (0..3)
            .map(|_| format!("{}:orders.mark", CAGES[rng.below(3) as usize]))
            .collect();
        let Ok(steps) = parse_steps(&steps.join(" | ")) else {
            break;
        };
        let id = format!("chaos-{}-{i}", CAGES[owner]);
        i += 1;
        let new = NewChain {
            id: Some(id.clone()),
            steps,
            inputs: serde_json::to_vec(&serde_json::json!({"sleep_ms": rng.below(30)}))
                .unwrap_or_default(),
            queue: Some("retry".into()),
            ordinal: 0,
        };
        let (fate, _) = careful(
            CAGES[owner],
            &lab_routes[owner],
            &mut clients[owner],
            &mut tally.resends,
            &stop,
            |c| {
                let request = ChainRequest::Start {
                    chains: vec![new.clone()],
                    max_parallel: 0,
                    parent: None,
                };
                c.start_chains(request, Duration::from_secs(10))
                    .map(|r| r.map_err(|e| e.to_string()))
            },
        );
        tally.chains.insert(id, (fate, CAGES[owner].to_owned()));
        std::thread::sleep(Duration::from_millis(100 + rng.below(200)));
    }
    tally
}

/// Starts the clients; they run until `stop`.
pub fn start(lab: &Lab, seed: u64, stop: Arc<AtomicBool>) -> Vec<JoinHandle<Tally>> {
    let routes: Vec<CageRoute> = CAGES.iter().map(|c| lab.route(c)).collect();
    let effects = lab.dir().join("effects.txt").display().to_string();
    let mut workers: Vec<JoinHandle<Tally>> = (0..2)
        .map(|n| {
            let (routes, effects, stop) = (routes.clone(), effects.clone(), stop.clone());
            std::thread::spawn(move || {
                enqueuer(routes, effects, seed.wrapping_add(n as u64), n, stop)
            })
        })
        .collect();
    let (chain_routes, chain_stop) = (routes.clone(), stop.clone());
    workers.push(std::thread::spawn(move || {
        chain_starter(chain_routes, seed, chain_stop)
    }));
    workers.push(std::thread::spawn(move || crasher(routes, seed, stop)));
    workers
}

/// Waits for the clients and adds up what they did.
pub fn join(workers: Vec<JoinHandle<Tally>>) -> Result<Tally, String> {
    let mut all = Tally::default();
    for w in workers {
        all.merge(
            w.join()
                .map_err(|_| "a workload thread panicked".to_owned())?,
        );
    }
    all.count();
    Ok(all)
}
