//! One function per endpoint; blocking work (waiting for messages, calls) runs off the
//! server's threads.

use super::auth::Invocation;
use super::{ApiError, ApiState};
use crate::dashboard::gather::Cluster;
use crate::metrics::exposition;
use crate::model::clock;
use crate::model::job::{CatchUp, Schedule};
use crate::transport::client::{Client, ClientError};
use crate::transport::protocol::{EnqueueRequest, Filter, JobRequest, JobSpec, QueueQuery};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use cage_sdk::CallError;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;

/// Longest any API request waits, whatever it asks.
const MAX_WAIT: Duration = Duration::from_secs(3600);

fn seconds(s: Option<f64>, default: Duration) -> Duration {
    match s {
        Some(v) if v.is_finite() && v >= 0.0 => clock::from_secs_f64(v).min(MAX_WAIT),
        _ => default,
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CallError> + Send + 'static,
) -> Result<T, ApiError> {
    match web::block(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "the cage could not run the request",
        )),
    }
}

/// Runs `request` against this cage's own listener over a pooled connection.
fn own<T>(
    state: &ApiState,
    request: impl FnOnce(&mut Client) -> Result<T, ClientError>,
) -> Result<T, CallError> {
    let route = state.env.own_route();
    state
        .env
        .peers
        .at(&state.env.cage, &route, request)
        .map_err(|e| match e {
            ClientError::Rejected { kind, reason, .. } => CallError::with_kind(kind, reason),
            e => e.into_call_error(),
        })
}

fn split(target: &str) -> Result<(String, String), ApiError> {
    target
        .split_once('.')
        .filter(|(m, f)| !m.is_empty() && !f.is_empty())
        .map(|(m, f)| (m.to_owned(), f.to_owned()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_arguments",
                format!("target {target:?} is not MODULE.METHOD"),
            )
        })
}

/// Body of `POST /v1/messages/send`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    target: String,
    port: String,
    message: String,
    timeout_secs: Option<f64>,
}

/// Hands a message to a receiver on a port of another invocation.
pub async fn send(
    state: web::Data<ApiState>,
    _me: Invocation,
    body: web::Json<SendBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let env = state.env.clone();
    let wait = seconds(body.timeout_secs, env.port_wait);
    blocking(move || env.send_message(&body.target, &body.port, body.message.into_bytes(), wait))
        .await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "handed over" })))
}

/// Body of `POST /v1/messages/receive`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    #[serde(default)]
    port: Option<String>,
    #[serde(default)]
    ports: Vec<String>,
    timeout_secs: Option<f64>,
}

/// Waits for a message on one or more ports of the invocation the token stands for.
pub async fn receive(
    state: web::Data<ApiState>,
    me: Invocation,
    body: web::Json<ReceiveBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let mut ports = body.ports;
    ports.extend(body.port);
    let timeout = Some(seconds(body.timeout_secs, MAX_WAIT));
    let mailboxes = state.env.mailboxes.clone();
    let got = blocking(move || mailboxes.receive(me.0, &ports, timeout)).await?;
    Ok(HttpResponse::Ok()
        .json(json!({ "port": got.port, "message": String::from_utf8_lossy(&got.message) })))
}

/// Body of `POST /v1/call`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallBody {
    cage: String,
    target: String,
    #[serde(default)]
    args: Value,
    timeout_secs: Option<f64>,
}

/// Calls a method synchronously on behalf of the invocation.
pub async fn call(
    state: web::Data<ApiState>,
    me: Invocation,
    body: web::Json<CallBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    split(&body.target)?;
    let env = state.env.clone();
    let parent = env.mailboxes.id(me.0);
    let timeout = seconds(body.timeout_secs, Duration::from_secs(30));
    let args = serde_json::to_vec(&body.args).unwrap_or_default();
    let result = blocking(move || {
        env.call(&body.cage, &body.target, &args, timeout, &parent)
            .map_err(|f| CallError::with_kind(f.error.kind, f.to_string()))
    })
    .await?;
    let result: Value = serde_json::from_slice(&result).unwrap_or(Value::Null);
    Ok(HttpResponse::Ok().json(json!({ "result": result })))
}

/// Body of `POST /v1/enqueue`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnqueueBody {
    cage: String,
    target: String,
    #[serde(default)]
    args: Value,
    queue: Option<String>,
    #[serde(default)]
    priority: i32,
    key: Option<String>,
    delay_secs: Option<f64>,
    group: Option<String>,
}

/// Queues a call durably; answers its id once it is on disk.
pub async fn enqueue(
    state: web::Data<ApiState>,
    _me: Invocation,
    body: web::Json<EnqueueBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (module, method) = split(&body.target)?;
    let request = EnqueueRequest {
        target: body.cage,
        module,
        method,
        args: serde_json::to_vec(&body.args).unwrap_or_default(),
        queue: body
            .queue
            .unwrap_or_else(|| crate::config::DEFAULT_QUEUE.to_owned()),
        priority: body.priority,
        key: body.key,
        // Not a wait: uncapped here, refused by the cage beyond its horizon.
        delay_ms: clock::millis(clock::from_secs_f64(body.delay_secs.unwrap_or(0.0))),
        group: body.group,
    };
    let state = state.into_inner();
    let (id, duplicate_of) =
        blocking(move || own(&state, |c| c.enqueue(request, Duration::from_secs(30)))).await?;
    Ok(HttpResponse::Ok().json(json!({ "id": id, "duplicate_of": duplicate_of })))
}

/// The pending calls of this cage.
pub async fn pending(
    state: web::Data<ApiState>,
    _me: Invocation,
) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let calls = blocking(move || {
        own(&state, |c| {
            c.calls(
                QueueQuery::Pending(Filter::default()),
                Duration::from_secs(30),
            )
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(calls))
}

/// Body of `POST /v1/jobs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobBody {
    target: String,
    #[serde(default)]
    args: Value,
    at: Option<String>,
    in_secs: Option<f64>,
    every_secs: Option<f64>,
    queue: Option<String>,
    #[serde(default)]
    catch_up: CatchUp,
    #[serde(default)]
    replace: bool,
}

/// Adds a job to this cage.
pub async fn add_job(
    state: web::Data<ApiState>,
    _me: Invocation,
    body: web::Json<JobBody>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (module, method) = split(&body.target)?;
    let now = clock::now_ms();
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "bad_arguments", m);
    let schedule = match (body.at, body.in_secs, body.every_secs) {
        (Some(at), None, None) => {
            let t =
                humantime::parse_rfc3339_weak(&at).map_err(|e| bad(format!("at {at:?}: {e}")))?;
            Schedule::Once {
                at_ms: clock::unix_ms(t),
            }
        }
        (None, Some(s), None) => Schedule::Once {
            at_ms: clock::after(now, clock::from_secs_f64(s)),
        },
        (None, None, Some(s)) => {
            let every = clock::from_secs_f64(s);
            Schedule::Every {
                interval_ms: clock::millis(every),
                first_ms: clock::after(now, every),
            }
        }
        _ => {
            return Err(bad(
                "say when with exactly one of at, in_secs, every_secs".into()
            ))
        }
    };
    let spec = JobSpec {
        module,
        method,
        args: serde_json::to_vec(&body.args).unwrap_or_default(),
        queue: body
            .queue
            .unwrap_or_else(|| crate::config::DEFAULT_QUEUE.to_owned()),
        schedule,
        catch_up: body.catch_up,
    };
    let (state, replace) = (state.into_inner(), body.replace);
    let jobs = blocking(move || {
        own(&state, |c| {
            c.job(JobRequest::Add { spec, replace }, Duration::from_secs(30))
        })
    })
    .await?;
    Ok(HttpResponse::Ok().json(jobs.into_iter().next()))
}

/// The jobs of this cage.
pub async fn jobs(state: web::Data<ApiState>, _me: Invocation) -> Result<HttpResponse, ApiError> {
    let state = state.into_inner();
    let jobs =
        blocking(move || own(&state, |c| c.job(JobRequest::List, Duration::from_secs(30)))).await?;
    Ok(HttpResponse::Ok().json(jobs))
}

/// Which invocation the token stands for.
pub async fn whoami(state: web::Data<ApiState>, me: Invocation) -> HttpResponse {
    HttpResponse::Ok()
        .json(json!({ "invocation": state.env.mailboxes.id(me.0), "cage": state.env.cage }))
}

/// Anything else.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see clients/openapi.yaml",
    ))
}

/// `GET /metrics`: the cage's counters and gauges in the Prometheus text format.
pub async fn metrics(cluster: web::Data<Cluster>) -> HttpResponse {
    match web::block(move || cluster.metrics()).await {
        Ok(snapshots) if !snapshots.is_empty() => HttpResponse::Ok()
            .content_type(exposition::CONTENT_TYPE)
            .body(exposition::encode(snapshots)),
        Ok(_) => HttpResponse::ServiceUnavailable().body("metrics: the cage did not answer\n"),
        Err(e) => HttpResponse::InternalServerError().body(format!("metrics: {e}\n")),
    }
}
