//! What frames carry: a request or response body tagged with the id that pairs them, so one
//! connection can carry many calls at once.

use crate::metrics::MetricsSnapshot;
use crate::model::call::{CallRecord, QueuedCall, UngroupedCall};
use crate::model::chain::{ChainRecord, StepSpec};
use crate::model::job::{CatchUp, Job, Schedule};
use cage_sdk::{CallError, ErrorKind};
use serde::{Deserialize, Serialize};

/// A request and the id its response will carry.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct RequestFrame {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What is asked.
    pub body: Request,
}

/// What a client can ask of a cage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Request {
    /// Run a method now and return its result.
    Call(CallRequest),
    /// List the modules the cage serves.
    Modules,
    /// Say who you are.
    Ping,
    /// Take a call into the durable queue (for this cage or for another one).
    Enqueue(EnqueueRequest),
    /// From another cage: accept a queued call (one without a group) for execution here.
    Accept(UngroupedCall),
    /// Inspect or steer the queue.
    Queue(QueueQuery),
    /// Add, list, remove or run jobs.
    Job(JobRequest),
    /// Hand a message to a receiver on a port of an invocation running on this cage.
    Message(MessageRequest),
    /// Start, wait on or look at chains of calls.
    Chain(ChainRequest),
    /// What the cage counted since it started, and what its queues hold now.
    Metrics,
    /// From another cage: accept several queued calls without groups, made durable by one
    /// group commit.
    AcceptMany(Vec<UngroupedCall>),
    /// From another cage: accept several queued calls, some with groups, made durable by one
    /// group commit (a cage from before groups refuses it; calls without groups are offered
    /// as [`Request::AcceptMany`], which every cage takes).
    AcceptCalls(Vec<QueuedCall>),
}

/// A chain to start on the receiving cage (its owner).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct NewChain {
    /// Its id; `None`: the cage picks one. A chain id already held starts nothing new.
    pub id: Option<String>,
    /// Its steps.
    pub steps: Vec<StepSpec>,
    /// Its inputs (a JSON object).
    #[serde(with = "serde_bytes")]
    pub inputs: Vec<u8>,
    /// Queue of its steps; `None` runs them directly.
    pub queue: Option<String>,
    /// Its place among its parent's children.
    pub ordinal: u32,
}

/// What can be asked about chains.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ChainRequest {
    /// Start chains, at most `max_parallel` running at once (0: all); answers their ids.
    Start {
        /// The chains.
        chains: Vec<NewChain>,
        /// Cap on chains of this request running at once.
        max_parallel: u32,
        /// Call id of the invocation starting them.
        parent: Option<String>,
    },
    /// Waits until the first of `ids` (or, with `any`, any of them) finished; answers it.
    Wait {
        /// Chains.
        ids: Vec<String>,
        /// Any rather than the first.
        any: bool,
        /// Longest to wait, in milliseconds.
        timeout_ms: u64,
    },
    /// One chain.
    Get(String),
    /// The chains a call started.
    Children(String),
    /// Chains of the cage, running ones and (with `all`) finished ones, at most `limit`.
    List {
        /// Include finished chains.
        all: bool,
        /// At most this many (0: the default listing size).
        limit: usize,
    },
}

/// A message for an invocation of the receiving cage.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct MessageRequest {
    /// The invocation, `CAGE/N`.
    pub target: String,
    /// Its port.
    pub port: String,
    /// The message.
    #[serde(with = "serde_bytes")]
    pub message: Vec<u8>,
    /// Longest to wait for a receiver, in milliseconds.
    pub timeout_ms: u64,
}

/// A job to add: what it calls and when.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments of every run.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Queue the runs go through.
    pub queue: String,
    /// When it runs.
    pub schedule: Schedule,
    /// What to do about missed runs.
    pub catch_up: CatchUp,
}

/// What can be asked about jobs.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum JobRequest {
    /// Add a job; `replace` lets it take the place of a recurring job with the same signature.
    Add {
        /// The job.
        spec: JobSpec,
        /// Replace a recurring job of the same signature instead of refusing.
        replace: bool,
    },
    /// Every job of the cage.
    List,
    /// Remove a job.
    Remove(String),
    /// Fire a run of a job now, leaving its schedule as it is.
    RunNow(String),
}

/// A call to put into the queue of the cage that receives the request.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EnqueueRequest {
    /// Cage that executes the call (may be the receiving cage itself).
    pub target: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Queue whose retry policy applies.
    pub queue: String,
    /// Among due calls of a queue, higher runs first.
    pub priority: i32,
    /// Idempotency key.
    pub key: Option<String>,
    /// Run no earlier than this many milliseconds after the enqueue (0: at once).
    pub delay_ms: u64,
    /// The group of the call within its queue, if any.
    #[serde(default)]
    pub group: Option<String>,
}

/// Which queued calls an operator command is about.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Filter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only calls to this module.
    pub module: Option<String>,
    /// At most this many (0: no limit).
    pub limit: usize,
    /// Only calls of this group.
    #[serde(default)]
    pub group: Option<String>,
    /// Only calls to this method.
    #[serde(default)]
    pub method: Option<String>,
    /// Only calls whose last error (or, for a dead call, why it died) holds this text.
    #[serde(default)]
    pub error: Option<String>,
    /// Only calls last tried (or, never tried, enqueued) at or after this time (ms since the
    /// epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only calls last tried (or, never tried, enqueued) before this time (ms since the epoch).
    #[serde(default)]
    pub before_ms: Option<u64>,
}

impl Filter {
    /// Whether `record` passes the filter.
    pub fn keeps(&self, record: &CallRecord) -> bool {
        let call = &record.call;
        let same = |want: &Option<String>, have: &str| want.as_ref().is_none_or(|w| w == have);
        let last = record
            .attempts
            .last()
            .map_or(call.enqueued_at_ms, |a| a.started_ms);
        same(&self.queue, &call.queue)
            && same(&self.module, &call.module)
            && same(&self.method, &call.method)
            && self
                .group
                .as_ref()
                .is_none_or(|g| Some(g) == call.group.as_ref())
            && self.error.as_ref().is_none_or(|text| {
                [record.last_error(), record.dead_reason.as_deref()]
                    .into_iter()
                    .flatten()
                    .any(|e| e.contains(text.as_str()))
            })
            && self.since_ms.is_none_or(|t| last >= t)
            && self.before_ms.is_none_or(|t| last < t)
    }
}

/// Most calls a listing returns when the operator gives no limit.
pub const DEFAULT_LISTING: usize = 1000;

impl Filter {
    /// How many pending (or, with `dead`, dead) calls of `store` it selects, its limit aside.
    pub fn count(
        &self,
        store: &crate::queue::QueueStore,
        dead: bool,
    ) -> Result<usize, crate::queue::QueueError> {
        // Without a filter, the counts need no record read.
        let unfiltered = Filter {
            limit: self.limit,
            ..Filter::default()
        };
        if *self == unfiltered {
            let (pending, dead_now) = store.counts();
            return Ok(if dead { dead_now } else { pending });
        }
        store.count_where(dead, &|r| self.keeps(r))
    }

    /// The pending (or, with `dead`, dead) calls of `store` it selects, at most its limit (a
    /// listing's [`DEFAULT_LISTING`] when it gives none).
    pub fn listed(
        &self,
        store: &crate::queue::QueueStore,
        dead: bool,
    ) -> Result<Vec<CallRecord>, crate::queue::QueueError> {
        let limit = match self.limit {
            0 => DEFAULT_LISTING,
            n => n,
        };
        let keep = |r: &CallRecord| self.keeps(r);
        if dead {
            store.dead(&keep, limit)
        } else {
            store.pending(&keep, limit)
        }
    }
}

/// An operator's order to run pending calls again soon, or dead calls again (a redrive after a
/// fix): which calls, how their due times are spread, and who gave it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Redrive {
    /// Dead calls (revive) rather than pending ones (retry now).
    pub dead: bool,
    /// Which calls (its limit: at most this many).
    pub filter: Filter,
    /// Count them and show the first ten, changing nothing.
    pub dry_run: bool,
    /// Their due times spread evenly over this span from now (0: all due now).
    pub spread_ms: u64,
    /// The command that gave the order, as each call's history records it.
    pub by: String,
}

impl Redrive {
    /// Most calls it takes (its filter's limit; 0 there: no limit).
    pub fn limit(&self) -> usize {
        match self.filter.limit {
            0 => usize::MAX,
            n => n,
        }
    }

    /// When the `i`th of the `count` calls it takes is due, from `now_ms`: evenly over its
    /// span, the first at once and the last one step before the span ends.
    pub fn due(&self, now_ms: u64, i: usize, count: usize) -> u64 {
        now_ms + (u128::from(self.spread_ms) * i as u128 / count.max(1) as u128) as u64
    }

    /// The entry of a call's history that says it moved the call, due at `due_ms`
    /// (`note`, if any, added).
    pub fn event(&self, now_ms: u64, due_ms: u64, note: &str) -> crate::model::call::CallEvent {
        let what = if self.dead { "revived" } else { "made due" };
        crate::model::call::CallEvent {
            at_ms: now_ms,
            what: format!(
                "{what} by {} (due {}{note})",
                self.by,
                crate::model::clock::utc(due_ms)
            ),
        }
    }
}

/// An operator's question or order about the queue.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum QueueQuery {
    /// Pending calls.
    Pending(Filter),
    /// Dead letters.
    Dead(Filter),
    /// One call, pending or dead.
    Show(String),
    /// Make one call due now.
    RetryNow(String),
    /// Make every pending call that passes the filter due now.
    RetryAllNow(Filter),
    /// Remove a call, pending or dead.
    Cancel(String),
    /// Remove every pending call that passes the filter.
    CancelAll(Filter),
    /// Move a dead call back to pending, due now.
    Revive(String),
    /// Counters of the queue; with `true`, also count pending and dead calls (a full scan).
    Stats(bool),
    /// Revive dead calls or make pending ones due, filtered, spread, or only counted.
    Redrive(Redrive),
    /// How many pending (or, with `dead`, dead) calls the filter selects, its limit aside.
    Count {
        /// Which calls.
        filter: Filter,
        /// Dead calls rather than pending ones.
        dead: bool,
    },
}

/// What a cage's queue has done since the cage started, and what it holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct QueueStats {
    /// Calls taken by enqueue (on this cage as source).
    pub enqueued: u64,
    /// Calls accepted from other cages.
    pub accepted: u64,
    /// Calls handed to their target and accepted there.
    pub delivered: u64,
    /// Calls executed successfully here.
    pub executed: u64,
    /// Attempts that failed (and will be retried or died).
    pub failed_attempts: u64,
    /// Calls moved to dead letters.
    pub died: u64,
    /// Pending calls now (when counted).
    pub pending: Option<u64>,
    /// Dead calls now (when counted).
    pub dead: Option<u64>,
}

/// A queued call as an operator sees it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallView {
    /// Cage holding the record.
    pub cage: String,
    /// The record.
    pub record: CallRecord,
    /// Whether an attempt is running now.
    pub running: bool,
    /// Why a due call has not started, if it is held back (its target cage's delivery window
    /// is full, or its queue's rate limit gives no start yet).
    pub waiting: Option<String>,
    /// How often the pending call crashed the process running it, if it ever did.
    #[serde(default)]
    pub crashes: Option<Crashes>,
}

/// A pending call's crashes against its queue's `max_crashes` (at that many it is dead).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Crashes {
    /// Attempts that crashed the cage or a worker process.
    pub count: u32,
    /// The queue's `max_crashes`.
    pub max: u32,
    /// The signal of the latest worker crash, when it was named.
    pub signal: Option<String>,
}

/// Most argument bytes a listing carries per call, so a listing of the default 1000 calls
/// stays far under a client's frame limit however large the calls' arguments are.
pub const LISTED_ARGS_BYTES: usize = 4096;

impl CallView {
    /// The view as a listing carries it: arguments over [`LISTED_ARGS_BYTES`] replaced by a
    /// JSON string saying how large they are and where to see them whole (`cage show ID`).
    pub fn listed(mut self) -> Self {
        let call = &mut self.record.call;
        if call.args.len() > LISTED_ARGS_BYTES {
            let note = format!(
                "({} bytes of arguments, too large for a listing: `cage show {}` has them)",
                call.args.len(),
                call.id
            );
            call.args = serde_json::to_vec(&note).unwrap_or_default();
        }
        self
    }
}

/// A synchronous call.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallRequest {
    /// Id of the call, for logs and errors.
    pub call_id: String,
    /// Module to call.
    pub module: String,
    /// Method of that module.
    pub method: String,
    /// JSON arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// Longest the caller will wait, in milliseconds (0: the cage's default).
    pub timeout_ms: u64,
}

/// The id of a response frame about the connection rather than a request: the reason a cage
/// gives, as `Response::Error`, just before it closes the connection. Clients number requests
/// from 1.
pub const CONNECTION_FRAME_ID: u64 = 0;

/// The last frame a cage sends on a connection it closes: why.
pub fn farewell(reason: &str) -> Vec<u8> {
    super::frame::encode(&ResponseFrame {
        id: CONNECTION_FRAME_ID,
        body: Response::Error(reason.to_owned()),
    })
    .unwrap_or_default()
}

/// A response and the id of the request it answers.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ResponseFrame {
    /// The request's id.
    pub id: u64,
    /// The answer.
    pub body: Response,
}

/// A cage's answer.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Response {
    /// The call's JSON result.
    Result(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request failed, and why, with its kind: the one failure answer of every request
    /// kind (a call, an enqueue, an acceptance, a queue query, a job, a chain…), so every
    /// sender classes a refusal the same way.
    Failed(CallFailure),
    /// The modules served.
    Modules(Vec<ModuleInfo>),
    /// Who the cage is.
    Pong(CageInfo),
    /// The queue took the call; its id, and the id of an earlier call with the same key if
    /// this one was a duplicate.
    Enqueued {
        /// Id of the call.
        id: String,
        /// Set when an earlier call with the same idempotency key stands for this one.
        duplicate_of: Option<String>,
    },
    /// Answer to [`Request::Accept`].
    Accepted {
        /// Set when the call (or its key) was accepted before.
        duplicate_of: Option<String>,
    },
    /// Queued calls.
    Calls(Vec<CallView>),
    /// How many calls an order changed.
    Changed(usize),
    /// Queue counters.
    Stats(QueueStats),
    /// Jobs.
    Jobs(Vec<Job>),
    /// A message was handed over (`Ok`), or why not.
    Handed(Result<(), CallError>),
    /// Ids of chains started.
    ChainsStarted(Vec<String>),
    /// Chains.
    Chains(Vec<ChainRecord>),
    /// Counters and gauges of the cage.
    Metrics(Box<MetricsSnapshot>),
    /// The connection's last word (frame id [`CONNECTION_FRAME_ID`]): why the cage closes it.
    /// No request is answered with it; a request that fails is answered [`Response::Failed`].
    Error(String),
    /// Answer to [`Request::AcceptMany`], in the order of its calls: the id each duplicates
    /// (if it or its key was accepted before), or why it was not accepted.
    AcceptedMany(Vec<Result<Option<String>, Box<CallFailure>>>),
    /// Answer to a [`QueueQuery::Redrive`]: how many calls it took (or, in a dry run, would
    /// take), and the first ten of them as they now stand.
    Redriven {
        /// Calls taken.
        count: usize,
        /// The first ten.
        first: Vec<CallView>,
    },
    /// Answer to a [`QueueQuery::Count`].
    Counted(usize),
}

impl Response {
    /// The answer to a request that `cage` could not serve, about no call in particular.
    pub fn failed(cage: &str, error: CallError) -> Self {
        Response::Failed(CallFailure::of_request(cage, error))
    }
}

/// A cage's identity, as answered to [`Request::Ping`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CageInfo {
    /// Cage name.
    pub cage: String,
    /// Runtime version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Seconds since the cage started.
    pub uptime_secs: u64,
}

/// One served module, as `cage modules` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ModuleInfo {
    /// Module name.
    pub name: String,
    /// The file it is served from.
    pub file: String,
    /// Loaded version, if any is loaded.
    pub version: Option<String>,
    /// Methods of the loaded version.
    pub methods: Vec<String>,
    /// SHA-256 of the loaded file.
    pub sha256: Option<String>,
    /// When the loaded version was loaded (ms since the epoch).
    pub loaded_at_ms: Option<u64>,
    /// Last load error, if the last attempt to load a file failed.
    pub last_error: Option<String>,
    /// When that error happened (ms since the epoch).
    pub last_error_at_ms: Option<u64>,
    /// Older versions still finishing calls.
    pub draining_versions: usize,
    /// Successful loads since the cage started.
    pub loads: u64,
    /// Files rejected since the cage started.
    pub rejected: u64,
    /// Its worker processes: running and idle now, crashed and killed since the cage started.
    pub workers: crate::metrics::WorkerCounters,
    /// Methods the loaded version lacks that pending calls targeted when it loaded, with how
    /// many targeted each.
    #[serde(default)]
    pub missing_methods: Vec<(String, usize)>,
}

/// A failed request with everything an operator needs to find it: cage, and for a request
/// about one call its module, method and call id (empty when the request names none).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct CallFailure {
    /// Cage the call was addressed to.
    pub cage: String,
    /// Module called.
    pub module: String,
    /// Method called.
    pub method: String,
    /// Id of the call.
    pub call_id: String,
    /// What went wrong.
    pub error: CallError,
}

impl CallFailure {
    /// The failure of a request about no call in particular (a listing, a job, metrics).
    pub fn of_request(cage: &str, error: CallError) -> Self {
        CallFailure {
            cage: cage.to_owned(),
            module: String::new(),
            method: String::new(),
            call_id: String::new(),
            error,
        }
    }

    /// The failure of queued call `call` on cage `cage` (offered to it, or run there).
    pub fn of_queued(cage: &str, call: &QueuedCall, error: CallError) -> Self {
        CallFailure {
            cage: cage.to_owned(),
            module: call.module.clone(),
            method: call.method.clone(),
            call_id: call.id.clone(),
            error,
        }
    }

    /// Where it failed: `cage C`, then `M.F` and `(call ID)` when the request named them.
    fn place(&self) -> String {
        let mut place = format!("cage {}", self.cage);
        if !self.module.is_empty() || !self.method.is_empty() {
            place.push_str(&format!(" {}.{}", self.module, self.method));
        }
        if !self.call_id.is_empty() {
            place.push_str(&format!(" (call {})", self.call_id));
        }
        place
    }

    /// What a target's refusal of an offered queued call means to the call's source queue,
    /// as the error of that delivery attempt (its message names cage, module, method and call
    /// id). A refusal no retry can change (permanent; a name or time the target refuses, bad
    /// arguments) is permanent: the call moves to dead letters at once. Every other kind keeps
    /// its kind and is retried: refused (the target is overloaded or shutting down, or its
    /// queue did not store the call), unknown cage (misrouted: a config edit or a fresh
    /// discovery answer routes it right), internal (outcome unknown: the retry is
    /// deduplicated by call id).
    pub fn into_offer_error(self) -> CallError {
        let kind = match self.error.kind {
            ErrorKind::Permanent | ErrorKind::BadArguments => ErrorKind::Permanent,
            kind => kind,
        };
        let why = if kind == self.error.kind {
            self.error.message.clone()
        } else {
            self.error.to_string()
        };
        CallError::with_kind(kind, format!("{}: {why}", self.place()))
    }
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.place(), self.error)
    }
}

impl std::error::Error for CallFailure {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::call::Stage;

    fn call(args: Vec<u8>) -> QueuedCall {
        QueuedCall {
            id: "front-1".into(),
            source: "front".into(),
            target: "front".into(),
            module: "echo".into(),
            method: "shout".into(),
            args,
            queue: "retry".into(),
            priority: 0,
            key: None,
            enqueued_at_ms: 0,
            not_before_ms: 0,
            chain: None,
            group: None,
        }
    }

    fn view(args: Vec<u8>) -> CallView {
        CallView {
            cage: "front".into(),
            record: CallRecord::new(call(args), Stage::Execute, 0),
            running: false,
            waiting: None,
            crashes: None,
        }
    }

    #[test]
    fn offers_without_groups_keep_the_frame_cages_before_groups_read() {
        // The request tags and call layout of cages before groups: Accept was variant 4 and
        // AcceptMany variant 10, each call ending with its chain link.
        let plain = call(b"1".to_vec());
        let earlier = |variant: u8| {
            let mut bytes = vec![variant];
            let layout = (
                "front-1",
                "front",
                "front",
                "echo",
                "shout",
                serde_bytes::ByteBuf::from(b"1".to_vec()),
                "retry",
                0i32,
                None::<String>,
                0u64,
                0u64,
                None::<()>,
            );
            if variant == 10 {
                bytes.push(1);
            }
            postcard::to_extend(&layout, bytes).unwrap()
        };
        let one = postcard::to_allocvec(&Request::Accept(plain.clone().into())).unwrap();
        assert_eq!(one, earlier(4));
        let many = postcard::to_allocvec(&Request::AcceptMany(vec![plain.clone().into()])).unwrap();
        assert_eq!(many, earlier(10));
        // A call with a group travels in the newer frame, group and all.
        let mut grouped = plain;
        grouped.group = Some("customer-42".into());
        let bytes = postcard::to_allocvec(&Request::AcceptCalls(vec![grouped.clone()])).unwrap();
        let back: Request = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, Request::AcceptCalls(vec![grouped]));
    }

    #[test]
    fn a_listing_carries_small_arguments_whole_and_large_ones_as_a_note() {
        let small = br#""hello""#.to_vec();
        assert_eq!(view(small.clone()).listed().record.call.args, small);
        let large = serde_json::to_vec(&"x".repeat(LISTED_ARGS_BYTES)).unwrap();
        let listed = view(large.clone()).listed();
        let note: String = serde_json::from_slice(&listed.record.call.args).unwrap();
        assert!(
            note.contains(&format!("{} bytes of arguments", large.len()))
                && note.contains("cage show front-1"),
            "{note}"
        );
        assert!(listed.record.call.args.len() <= LISTED_ARGS_BYTES);
    }

    /// A refusal of `kind` by cage `back` of call `front-1` offered to it.
    fn offer_refused(kind: ErrorKind) -> CallError {
        let error = CallError::with_kind(kind, "why");
        CallFailure::of_queued("back", &call(Vec::new()), error).into_offer_error()
    }

    #[test]
    fn a_refused_offer_is_classed_by_its_kind_and_names_cage_module_method_and_call() {
        // Dead letter at once: nothing a retry can change.
        for kind in [ErrorKind::Permanent, ErrorKind::BadArguments] {
            assert_eq!(offer_refused(kind).kind, ErrorKind::Permanent, "{kind:?}");
        }
        // Retried, keeping the kind the target gave: misrouted, overloaded or not stored,
        // outcome unknown.
        for kind in [
            ErrorKind::UnknownCage,
            ErrorKind::Refused,
            ErrorKind::Internal,
        ] {
            assert_eq!(offer_refused(kind).kind, kind, "{kind:?}");
        }
        assert_eq!(
            offer_refused(ErrorKind::Permanent).message,
            "cage back echo.shout (call front-1): why"
        );
        // A kind the sender changed stays readable in the message.
        assert_eq!(
            offer_refused(ErrorKind::BadArguments).message,
            "cage back echo.shout (call front-1): bad arguments: why"
        );
    }

    #[test]
    fn a_failure_names_only_what_its_request_named() {
        let error = CallError::with_kind(ErrorKind::Refused, "shutting down");
        let whole = CallFailure::of_queued("back", &call(Vec::new()), error.clone());
        assert_eq!(
            whole.to_string(),
            "cage back echo.shout (call front-1): refused: shutting down"
        );
        let enqueue = CallFailure {
            call_id: String::new(),
            ..whole
        };
        assert_eq!(
            enqueue.to_string(),
            "cage back echo.shout: refused: shutting down"
        );
        match Response::failed("back", error) {
            Response::Failed(f) => {
                assert_eq!(f.to_string(), "cage back: refused: shutting down")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn byte_fields_keep_the_encoding_of_earlier_builds() {
        // Earlier builds wrote byte fields as a sequence of bytes; a slice is the same
        // bytes in postcard (frames, the store, the journal) and in JSON.
        #[derive(Serialize, Deserialize)]
        enum Earlier {
            Result(Vec<u8>),
        }
        let bytes = br#"{"total": 42}"#.to_vec();
        let now = postcard::to_allocvec(&Response::Result(bytes.clone())).unwrap();
        assert_eq!(
            now,
            postcard::to_allocvec(&Earlier::Result(bytes.clone())).unwrap()
        );
        let Earlier::Result(read) = postcard::from_bytes(&now).unwrap();
        assert_eq!(read, bytes);

        let json = serde_json::to_value(call(bytes.clone())).unwrap();
        let numbers: Vec<u8> = serde_json::from_value(json["args"].clone()).unwrap();
        assert_eq!(numbers, bytes);
        let back: QueuedCall = serde_json::from_value(json).unwrap();
        assert_eq!(back.args, bytes);
    }
}
