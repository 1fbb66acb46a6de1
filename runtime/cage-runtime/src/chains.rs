//! Chains of calls, as plain data and decisions: parsing steps, merging each call's result
//! into the chain's bag, what runs next, and the shape of the results. The scheduler stores
//! [`ChainRecord`]s on the cage that started the chain (its *owner*) and runs their steps;
//! nothing here touches storage, actors or sockets.
//!
//! A step that ran on another cage tells the owner how it ended through a [`StepReport`]
//! carried as a queued call to the owner's built-in [`REPORT_MODULE`], stored in the same batch
//! as the step's completion, so a report is never lost nor applied twice (a report for a
//! step the chain has already passed is ignored).

use crate::model::call::{ChainLink, QueuedCall};
use crate::model::chain::{
    ChainRecord, ChainState, Group, StepOutcome, StepReport, StepRun, StepSpec,
};
use cage_sdk::{ChainFailure, ResultOptions};

use serde_json::{Map, Value};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// Module name of the owner's built-in handler of step reports (not a loadable module).
pub const REPORT_MODULE: &str = "$chain";
/// Method of [`REPORT_MODULE`] that applies a step report.
pub const REPORT_METHOD: &str = "report";

/// Why a chain description is not usable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ChainError {
    /// A step is not `module.method` or `cage:module.method`.
    #[error("step {step:?} is not MODULE.METHOD or CAGE:MODULE.METHOD")]
    BadStep {
        /// The step as written.
        step: String,
    },
    /// The chain has no steps.
    #[error("a chain needs at least one step")]
    Empty,
    /// The inputs are not a JSON object.
    #[error("chain inputs must be a JSON object, not {found}")]
    Inputs {
        /// What they were.
        found: String,
    },
}

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl StepSpec {
    /// Parses `module.method` or `cage:module.method`.
    pub fn parse(step: &str) -> Result<Self, ChainError> {
        let bad = || ChainError::BadStep {
            step: step.to_owned(),
        };
        let (cage, rest) = match step.split_once(':') {
            Some((c, r)) => (Some(c.trim()), r.trim()),
            None => (None, step.trim()),
        };
        let (module, method) = rest.split_once('.').ok_or_else(bad)?;
        if cage.is_some_and(|c| !name_ok(c)) || !name_ok(module) || !name_ok(method) {
            return Err(bad());
        }
        Ok(StepSpec {
            cage: cage.map(str::to_owned),
            module: module.to_owned(),
            method: method.to_owned(),
            args: None,
        })
    }

    /// Parses `cage.module.method` or `module.method` (the form `chain_next` takes).
    pub fn parse_dotted(target: &str, args: Vec<u8>) -> Result<Self, ChainError> {
        let parts: Vec<&str> = target.split('.').collect();
        let colon = match parts.as_slice() {
            [cage, module, method] => format!("{cage}:{module}.{method}"),
            [module, method] => format!("{module}.{method}"),
            _ => {
                return Err(ChainError::BadStep {
                    step: target.to_owned(),
                })
            }
        };
        let mut spec = StepSpec::parse(&colon)?;
        spec.args = Some(args);
        Ok(spec)
    }

    /// The step as written in a chain: `cage:module.method` or `module.method`.
    pub fn label(&self) -> String {
        match &self.cage {
            Some(c) => format!("{c}:{}.{}", self.module, self.method),
            None => format!("{}.{}", self.module, self.method),
        }
    }

    /// The cage that runs it, given the chain's owner.
    pub fn cage_or<'a>(&'a self, owner: &'a str) -> &'a str {
        self.cage.as_deref().unwrap_or(owner)
    }
}

/// Parses `"m.a | m.b | other:m.c"`.
pub fn parse_steps(steps: &str) -> Result<Vec<StepSpec>, ChainError> {
    let parsed = steps
        .split('|')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(StepSpec::parse)
        .collect::<Result<Vec<_>, _>>()?;
    if parsed.is_empty() {
        return Err(ChainError::Empty);
    }
    Ok(parsed)
}

/// Checks that `inputs` is a JSON object (or empty, meaning `{}`); returns its bytes.
pub fn object_bytes(inputs: &[u8]) -> Result<Vec<u8>, ChainError> {
    if inputs.iter().all(u8::is_ascii_whitespace) {
        return Ok(b"{}".to_vec());
    }
    match serde_json::from_slice::<Value>(inputs) {
        Ok(Value::Object(_)) => Ok(inputs.to_vec()),
        Ok(other) => Err(ChainError::Inputs {
            found: kind_of(&other).to_owned(),
        }),
        Err(e) => Err(ChainError::Inputs {
            found: format!("invalid JSON ({e})"),
        }),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// What applying a report did to a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// Nothing: the report is for a step the chain is not at (a repeat), or it is cancelled.
    Ignored,
    /// The next step is to run.
    Next,
    /// The chain ended (done or failed).
    Ended,
}

fn as_object(bytes: &[u8]) -> Map<String, Value> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn to_bytes(map: &Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(map).unwrap_or_else(|_| b"{}".to_vec())
}

impl ChainRecord {
    /// A new chain of `steps` owned by `owner`; held (not started) when `held`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        owner: &str,
        parent: Option<String>,
        ordinal: u32,
        group: Option<Group>,
        steps: Vec<StepSpec>,
        inputs: Vec<u8>,
        queue: Option<String>,
        now_ms: u64,
        held: bool,
    ) -> Self {
        ChainRecord {
            id,
            owner: owner.to_owned(),
            parent,
            ordinal,
            group,
            steps,
            queue,
            bag: inputs.clone(),
            inputs,
            returned: Vec::new(),
            children_results: b"{}".to_vec(),
            step: 0,
            state: if held {
                ChainState::Held
            } else {
                ChainState::Running
            },
            path: Vec::new(),
            started_ms: now_ms,
            ended_ms: None,
        }
    }

    /// Whether it has ended (done, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        matches!(
            self.state,
            ChainState::Done | ChainState::Failed(_) | ChainState::Cancelled(_)
        )
    }

    /// The current step, if one is left.
    pub fn current(&self) -> Option<&StepSpec> {
        self.steps.get(self.step as usize)
    }

    /// Call id of the current step (the same on every retry and after a restart).
    pub fn step_call_id(&self) -> String {
        format!("{}.s{}", self.id, self.step)
    }

    /// Arguments of the current step: its own, or the bag.
    pub fn step_args(&self) -> Vec<u8> {
        self.current()
            .and_then(|s| s.args.clone())
            .unwrap_or_else(|| self.bag.clone())
    }

    /// The queued call of the current step (a chain on a queue); `None` when no step is left or
    /// the chain runs directly.
    pub fn step_call(&self, now_ms: u64) -> Option<QueuedCall> {
        let mut call = self.step_call_on(self.queue.as_deref()?, now_ms)?;
        call.chain = Some(ChainLink {
            chain: self.id.clone(),
            owner: self.owner.clone(),
            step: self.step,
        });
        Some(call)
    }

    /// The current step as a call through `queue`, without a chain link (how a direct chain
    /// runs it); `None` when no step is left.
    pub fn step_call_on(&self, queue: &str, now_ms: u64) -> Option<QueuedCall> {
        let spec = self.current()?;
        Some(QueuedCall {
            id: self.step_call_id(),
            source: self.owner.clone(),
            target: spec.cage_or(&self.owner).to_owned(),
            module: spec.module.clone(),
            method: spec.method.clone(),
            args: self.step_args(),
            queue: queue.to_owned(),
            priority: 0,
            key: None,
            enqueued_at_ms: now_ms,
            not_before_ms: 0,
            chain: None,
            group: None,
        })
    }

    /// Applies how a step ended. A report for another step than the current one is a repeat
    /// and is ignored; a success for the step a chain failed at (its dead call was revived)
    /// resumes the chain.
    pub fn apply(&mut self, report: &StepReport) -> Advance {
        let resumable = matches!(&self.state, ChainState::Failed(f) if f.step == report.step)
            && matches!(report.outcome, StepOutcome::Done { .. });
        if report.step != self.step || !(self.state == ChainState::Running || resumable) {
            return Advance::Ignored;
        }
        let call = self
            .current()
            .map(StepSpec::label)
            .unwrap_or_else(|| "?".to_owned());
        let mut run = StepRun {
            step: report.step,
            call: call.clone(),
            cage: report.cage.clone(),
            call_id: report.call_id.clone(),
            started_ms: report.started_ms,
            ended_ms: report.ended_ms,
            error: None,
        };
        match &report.outcome {
            StepOutcome::Failed(reason) => {
                run.error = Some(reason.clone());
                self.path.push(run);
                self.state = ChainState::Failed(ChainFailure {
                    chain: self.id.clone(),
                    step: report.step,
                    call,
                    cage: report.cage.clone(),
                    call_id: report.call_id.clone(),
                    reason: reason.clone(),
                });
                self.ended_ms = Some(report.ended_ms);
                Advance::Ended
            }
            StepOutcome::Done {
                result,
                next,
                children,
            } => {
                self.path.push(run);
                self.merge_result(result);
                let mut merged = as_object(&self.children_results);
                merged.extend(as_object(children));
                self.children_results = to_bytes(&merged);
                if let Some(next) = next {
                    self.steps.insert(self.step as usize + 1, next.clone());
                }
                self.step += 1;
                if (self.step as usize) < self.steps.len() {
                    self.state = ChainState::Running;
                    Advance::Next
                } else {
                    self.state = ChainState::Done;
                    self.ended_ms = Some(report.ended_ms);
                    Advance::Ended
                }
            }
        }
    }

    /// Merges a call's result into the bag: an object's keys; a value other than `null` under
    /// the method's name.
    fn merge_result(&mut self, result: &[u8]) {
        let method = self.current().map(|s| s.method.clone()).unwrap_or_default();
        let added: Map<String, Value> = match serde_json::from_slice(result) {
            Ok(Value::Object(m)) => m,
            Ok(Value::Null) | Err(_) => Map::new(),
            Ok(other) => Map::from_iter([(method, other)]),
        };
        let mut bag = as_object(&self.bag);
        for (k, v) in added {
            if !self.returned.contains(&k) {
                self.returned.push(k.clone());
            }
            bag.insert(k, v);
        }
        self.bag = to_bytes(&bag);
    }

    /// Ends the chain as cancelled (unless it already ended); whether it changed.
    pub fn cancel(&mut self, reason: &str, now_ms: u64) -> bool {
        if self.is_finished() {
            return false;
        }
        self.state = ChainState::Cancelled(reason.to_owned());
        self.ended_ms = Some(now_ms);
        true
    }

    /// The failure a waiter sees for a chain that did not succeed.
    pub fn failure(&self) -> Option<ChainFailure> {
        match &self.state {
            ChainState::Failed(f) => Some(f.clone()),
            ChainState::Cancelled(reason) => Some(ChainFailure {
                chain: self.id.clone(),
                step: self.step,
                call: self
                    .current()
                    .map(StepSpec::label)
                    .unwrap_or_else(|| "-".to_owned()),
                cage: self.owner.clone(),
                call_id: self.step_call_id(),
                reason: format!("cancelled: {reason}"),
            }),
            _ => None,
        }
    }

    /// The results, shaped by `options`: a map of the returned keys (or the whole bag), with
    /// the children's results under them when asked; or, with `return_keys`, an array of
    /// those keys' values in that order.
    pub fn results(&self, options: &ResultOptions) -> Value {
        let bag = as_object(&self.bag);
        let mut out = Map::new();
        if options.merge_children_results {
            out.extend(as_object(&self.children_results));
        }
        if options.return_keys_only {
            for k in &self.returned {
                if let Some(v) = bag.get(k) {
                    out.insert(k.clone(), v.clone());
                }
            }
        } else {
            out.extend(bag);
        }
        match &options.return_keys {
            Some(keys) => Value::Array(
                keys.iter()
                    .map(|k| out.get(k).cloned().unwrap_or(Value::Null))
                    .collect(),
            ),
            None => Value::Object(out),
        }
    }

    /// The merged results this chain passes up to the chain its parent belongs to.
    pub fn results_for_parent(&self) -> Map<String, Value> {
        match self.results(&ResultOptions {
            return_keys: None,
            merge_children_results: true,
            return_keys_only: true,
        }) {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }
}

/// Merges the parent-facing results of finished `children` into one JSON object.
pub fn merge_children(children: &[ChainRecord]) -> Vec<u8> {
    let mut merged = Map::new();
    for c in children.iter().filter(|c| c.state == ChainState::Done) {
        merged.extend(c.results_for_parent());
    }
    to_bytes(&merged)
}

/// Wakes callers waiting for chains whenever a chain of this cage changes: threads (module
/// code) through a condition variable, futures (clients' requests) through a watch channel.
pub struct ChainWatch {
    generation: Mutex<u64>,
    changed: Condvar,
    wake: tokio::sync::watch::Sender<u64>,
}

impl Default for ChainWatch {
    fn default() -> Self {
        ChainWatch {
            generation: Mutex::new(0),
            changed: Condvar::new(),
            wake: tokio::sync::watch::channel(0).0,
        }
    }
}

/// How often a waiting future looks again without being told of a change, in case a change
/// was made by a path that does not tell (rare: a slow look is cheap insurance). Longer than a
/// thread's: many more futures than threads may wait.
const FUTURE_RECHECK: Duration = Duration::from_secs(2);

impl ChainWatch {
    /// Tells every waiter to look again.
    pub fn changed(&self) {
        *self.generation.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.changed.notify_all();
        self.wake.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Calls `check` until it answers `Some`, after each change; `None` once `timeout` passed.
    pub fn wait_for<T>(
        &self,
        timeout: Option<Duration>,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let seen = *self.generation.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(found) = check() {
                return Some(found);
            }
            let mut generation = self.generation.lock().unwrap_or_else(|p| p.into_inner());
            while *generation == seen {
                // Wake now and then regardless: a change made by another path (a direct store
                // write) is never missed for long.
                let mut slice = Duration::from_millis(500);
                if let Some(d) = deadline {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    slice = slice.min(left);
                }
                let (g, waited) = self
                    .changed
                    .wait_timeout(generation, slice)
                    .unwrap_or_else(|p| p.into_inner());
                generation = g;
                if waited.timed_out() {
                    break;
                }
            }
        }
    }

    /// As [`ChainWatch::wait_for`], waiting as a future (no thread) until `deadline`.
    pub async fn wait_until<T>(
        &self,
        deadline: tokio::time::Instant,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        let mut changes = self.wake.subscribe();
        loop {
            // Marked seen before looking: a change after the look wakes the wait below.
            changes.borrow_and_update();
            if let Some(found) = check() {
                return Some(found);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return None;
            }
            let slice = deadline.min(now + FUTURE_RECHECK);
            let _ = tokio::time::timeout_at(slice, changes.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(steps: &str, inputs: &str) -> ChainRecord {
        ChainRecord::new(
            "c1".into(),
            "a",
            None,
            0,
            None,
            parse_steps(steps).unwrap(),
            object_bytes(inputs.as_bytes()).unwrap(),
            Some("retry".into()),
            1000,
            false,
        )
    }

    fn done(c: &ChainRecord, result: &str) -> StepReport {
        StepReport {
            chain: c.id.clone(),
            step: c.step,
            call_id: c.step_call_id(),
            cage: "a".into(),
            started_ms: 1,
            ended_ms: 2,
            outcome: StepOutcome::Done {
                result: result.as_bytes().to_vec(),
                next: None,
                children: b"{}".to_vec(),
            },
        }
    }

    #[test]
    fn steps_parse_with_and_without_cage() {
        let s = parse_steps("m.a | m.b | other:m.c").unwrap();
        assert_eq!(
            s.iter().map(StepSpec::label).collect::<Vec<_>>(),
            vec!["m.a", "m.b", "other:m.c"]
        );
        assert_eq!(s[2].cage_or("here"), "other");
        assert_eq!(s[0].cage_or("here"), "here");
        assert!(matches!(
            parse_steps("m.a | nodot"),
            Err(ChainError::BadStep { .. })
        ));
        assert_eq!(parse_steps(" | "), Err(ChainError::Empty));
        assert!(StepSpec::parse("a b:m.c").is_err());
        let d = StepSpec::parse_dotted("ledger.billing.charge", b"1".to_vec()).unwrap();
        assert_eq!(
            (d.label(), d.args),
            ("ledger:billing.charge".into(), Some(b"1".to_vec()))
        );
        assert!(StepSpec::parse_dotted("a.b.c.d", vec![]).is_err());
    }

    #[test]
    fn inputs_must_be_an_object() {
        assert_eq!(object_bytes(b"").unwrap(), b"{}");
        assert!(matches!(
            object_bytes(b"[1]"),
            Err(ChainError::Inputs { .. })
        ));
        assert!(matches!(object_bytes(b"{"), Err(ChainError::Inputs { .. })));
    }

    #[test]
    fn results_merge_into_the_bag_step_by_step() {
        let mut c = chain("m.a | m.b", r#"{"n": 1}"#);
        assert_eq!(c.step_call(5).unwrap().args, br#"{"n": 1}"#);
        assert_eq!(c.apply(&done(&c, r#"{"x": 2, "n": 5}"#)), Advance::Next);
        assert_eq!(as_object(&c.step_args())["n"], 5);
        assert_eq!(c.step_call(5).unwrap().id, "c1.s1");
        assert_eq!(c.apply(&done(&c, "7")), Advance::Ended);
        assert_eq!(c.state, ChainState::Done);
        let all = c.results(&ResultOptions::default());
        assert_eq!(all, serde_json::json!({"x": 2, "n": 5, "b": 7}));
        let keys = c.results(&ResultOptions::keys(&["b", "x", "missing"]));
        assert_eq!(keys, serde_json::json!([7, 2, null]));
        let with_inputs = c.results(&ResultOptions {
            return_keys_only: false,
            ..ResultOptions::default()
        });
        assert_eq!(with_inputs["n"], 5);
    }

    #[test]
    fn inputs_stay_out_unless_asked() {
        let mut c = chain("m.a", r#"{"n": 1}"#);
        c.apply(&done(&c, r#"{"x": 2}"#));
        assert_eq!(
            c.results(&ResultOptions::default()),
            serde_json::json!({"x": 2})
        );
        let all = c.results(&ResultOptions {
            return_keys_only: false,
            ..ResultOptions::default()
        });
        assert_eq!(all, serde_json::json!({"n": 1, "x": 2}));
    }

    #[test]
    fn a_repeated_report_is_ignored_and_a_failure_stops_the_chain() {
        let mut c = chain("m.a | m.b | m.c", "{}");
        let first = done(&c, "{}");
        assert_eq!(c.apply(&first), Advance::Next);
        assert_eq!(c.apply(&first), Advance::Ignored);
        let mut failed = done(&c, "");
        failed.outcome = StepOutcome::Failed("gave up".into());
        assert_eq!(c.apply(&failed), Advance::Ended);
        let f = c.failure().unwrap();
        assert_eq!(
            (f.step, f.call.as_str(), f.reason.as_str()),
            (1, "m.b", "gave up")
        );
        assert_eq!(c.path.len(), 2);
        // The dead step was revived and succeeded: the chain goes on.
        assert_eq!(c.apply(&done(&c, "{}")), Advance::Next);
        assert_eq!(c.state, ChainState::Running);
    }

    #[test]
    fn a_continuation_inserts_the_next_step() {
        let mut c = chain("m.a", "{}");
        let mut r = done(&c, r#"{"k": 1}"#);
        r.outcome = StepOutcome::Done {
            result: b"null".to_vec(),
            next: Some(StepSpec::parse_dotted("b.m.z", b"[3]".to_vec()).unwrap()),
            children: br#"{"child": true}"#.to_vec(),
        };
        assert_eq!(c.apply(&r), Advance::Next);
        let call = c.step_call(1).unwrap();
        assert_eq!(
            (call.target.as_str(), call.args.as_slice()),
            ("b", &b"[3]"[..])
        );
        assert_eq!(call.chain.unwrap().step, 1);
        let merged = c.results(&ResultOptions {
            merge_children_results: true,
            ..ResultOptions::default()
        });
        assert_eq!(merged, serde_json::json!({"child": true}));
    }

    #[test]
    fn cancel_ends_only_running_chains() {
        let mut c = chain("m.a", "{}");
        assert!(c.cancel("by operator", 9));
        assert!(!c.cancel("again", 10));
        assert!(c.failure().unwrap().reason.contains("by operator"));
        assert_eq!(c.apply(&done(&c, "{}")), Advance::Ignored);
    }

    #[test]
    fn the_watch_wakes_waiters() {
        let w = std::sync::Arc::new(ChainWatch::default());
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w2, f2) = (w.clone(), flag.clone());
        let t = std::thread::spawn(move || {
            w2.wait_for(Some(Duration::from_secs(20)), || {
                f2.load(std::sync::atomic::Ordering::SeqCst).then_some(())
            })
        });
        std::thread::sleep(Duration::from_millis(20));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
        w.changed();
        assert_eq!(t.join().unwrap(), Some(()));
        assert_eq!(
            w.wait_for(Some(Duration::from_millis(10)), || None::<()>),
            None
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_future_waiting_on_the_watch_wakes_on_a_change_and_times_out() {
        let w = std::sync::Arc::new(ChainWatch::default());
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (w2, f2) = (w.clone(), flag.clone());
        let changer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            f2.store(true, std::sync::atomic::Ordering::SeqCst);
            w2.changed();
        });
        let far = tokio::time::Instant::now() + Duration::from_secs(20);
        let found = w
            .wait_until(far, || {
                flag.load(std::sync::atomic::Ordering::SeqCst).then_some(())
            })
            .await;
        assert_eq!(found, Some(()));
        changer.join().unwrap();
        let soon = tokio::time::Instant::now() + Duration::from_millis(10);
        assert_eq!(w.wait_until(soon, || None::<()>).await, None);
    }
}
