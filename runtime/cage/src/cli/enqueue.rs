//! `cage enqueue CAGE MODULE.METHOD 'JSON'`: put a call into a durable queue; prints its id.

use super::queue_view::TIMEOUT;
use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::model::clock;
use cage_runtime::transport::client::{Client, ClientError};
use cage_runtime::transport::protocol::EnqueueRequest;
use cage_sdk::ErrorKind;
use std::process::ExitCode;

/// What `cage enqueue` was asked to queue.
pub struct EnqueueArgs<'a> {
    pub cage: &'a str,
    pub target: &'a str,
    pub args: &'a str,
    pub queue: String,
    pub priority: i32,
    pub key: Option<String>,
    pub group: Option<String>,
    pub from: Option<String>,
    pub delay: std::time::Duration,
    pub json: bool,
}

pub fn enqueue(site: &Site, a: EnqueueArgs<'_>) -> ExitCode {
    let (module, method) = match target::split(a.target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Err(code) = target::cage(a.cage)
        .and_then(|()| target::queue(&a.queue))
        .and_then(|()| a.group.as_deref().map_or(Ok(()), target::group))
    {
        return code;
    }
    if let Err(e) = serde_json::from_str::<serde_json::Value>(a.args) {
        return exit::fail(
            exit::for_kind(ErrorKind::BadArguments),
            format!("arguments for {} {} are not JSON: {e}", a.cage, a.target),
        );
    }
    if let Err(e) = clock::span_within_horizon("--delay", a.delay) {
        return exit::fail(
            exit::for_kind(ErrorKind::BadArguments),
            format!("enqueue of {} {}: {e}", a.cage, a.target),
        );
    }
    // The cage that takes the call keeps it until its target accepts it: by default the target
    // itself, or `--from` a cage of this host that then delivers it.
    let via = a.from.as_deref().unwrap_or(a.cage);
    let route = match target::route(site, via) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let request = EnqueueRequest {
        target: a.cage.to_owned(),
        module: module.to_owned(),
        method: method.to_owned(),
        args: a.args.as_bytes().to_vec(),
        queue: a.queue,
        priority: a.priority,
        key: a.key,
        delay_ms: clock::millis(a.delay),
        group: a.group,
    };
    match Client::connect(via, &route).and_then(|mut c| c.enqueue(request, TIMEOUT)) {
        Ok((id, duplicate_of)) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "id": id, "duplicate_of": duplicate_of })
                );
            } else {
                match duplicate_of {
                    Some(of) => {
                        println!("{of}\t(duplicate: the idempotency key was already used by {of})")
                    }
                    None => println!("{id}"),
                }
            }
            ExitCode::SUCCESS
        }
        Err(e @ ClientError::Rejected { kind, .. }) => exit::fail(
            exit::for_kind(kind),
            format!("enqueue of {} {} via {via} refused: {e}", a.cage, a.target),
        ),
        Err(e) => {
            let e = e.into_call_error();
            exit::fail(
                exit::for_kind(e.kind),
                format!("enqueue of {} {} via {via} failed: {e}", a.cage, a.target),
            )
        }
    }
}
