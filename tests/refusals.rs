//! A refusal is typed whatever was asked (an offered call, an enqueue, a job), and its sender
//! classes it by kind: a queued call its target refuses for good goes to dead letters at once
//! with a reason naming cage, module, method and call; one refused for now (the target is
//! overloaded, or did not store it) or delivered to the wrong cage is retried, its error saying
//! which; the CLI's exit code says the kind of a refused enqueue or job.
//!
//! The target of the first two stories is a fake cage refusing every request with the kind its method names (a
//! healthy cage of this build refuses an offered call for good only when its names or times
//! are wrong, which its source already refuses at enqueue).

mod support;

use cages::runtime::model::call::QueuedCall;
use cages::runtime::transport::protocol::{CallFailure, JobRequest, Request, Response};
use cages::sdk::{CallError, ErrorKind};
use std::time::Duration;
use support::fake_cage::FakeCage;
use support::{eventually, Site};

/// The kind named by `method` (`permanent`, `refused`, `unknown_cage`…).
fn kind_named(method: &str) -> ErrorKind {
    serde_json::from_value(serde_json::json!(method)).expect("a method named for a kind")
}

/// How the fake cage `back` answers: every request about a call refused with the kind its
/// method names.
fn refuse(request: &Request) -> Response {
    let refusal = |module: &str, method: &str, call_id: &str| {
        let kind = kind_named(method);
        CallFailure {
            cage: "back".into(),
            module: module.into(),
            method: method.into(),
            call_id: call_id.into(),
            error: CallError::with_kind(kind, format!("{} as the test asks", kind.as_str())),
        }
    };
    let offered = |c: &QueuedCall| refusal(&c.module, &c.method, &c.id);
    match request {
        Request::Accept(call) => Response::Failed(offered(&call.clone().into())),
        Request::AcceptMany(calls) => Response::AcceptedMany(
            calls
                .iter()
                .map(|c| Err(Box::new(offered(&c.clone().into()))))
                .collect(),
        ),
        Request::AcceptCalls(calls) => {
            Response::AcceptedMany(calls.iter().map(|c| Err(Box::new(offered(c)))).collect())
        }
        Request::Enqueue(e) => Response::Failed(refusal(&e.module, &e.method, "")),
        Request::Job(JobRequest::Add { spec, .. }) => {
            Response::Failed(refusal(&spec.module, &spec.method, ""))
        }
        other => Response::failed(
            "back",
            CallError::with_kind(ErrorKind::Internal, format!("a fake cage: {other:?}")),
        ),
    }
}

/// Cage `front` (real, no modules) and the fake cage `back` it knows from the site config,
/// with a queue that retries quickly.
fn site_with_fake_back() -> (Site, FakeCage) {
    let back = FakeCage::start(refuse);
    let mut site = Site::new();
    site.cage("front", &[], "");
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.unknown]\ndiscovery = \"off\"\n\n[cages.back]\naddresses = [\"{}\"]\n\n\
             [queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n",
            back.addr
        ),
    );
    (site, back)
}

/// How many times `back` was offered call `id`.
fn offers(back: &FakeCage, id: &str) -> usize {
    back.asked()
        .iter()
        .flat_map(|r| match r {
            Request::Accept(c) => vec![QueuedCall::from(c.clone()).id],
            Request::AcceptMany(calls) => calls
                .iter()
                .map(|c| QueuedCall::from(c.clone()).id)
                .collect(),
            Request::AcceptCalls(calls) => calls.iter().map(|c| c.id.clone()).collect(),
            _ => Vec::new(),
        })
        .filter(|offered| offered == id)
        .count()
}

#[test]
fn a_queued_call_its_target_refuses_for_good_goes_to_dead_letters_at_once() {
    let (site, back) = site_with_fake_back();
    let _front = site.start("front");

    // Given a call its target refuses permanently: dead after one offer, saying who refused
    // which call and why.
    let doomed = site.enqueue("back", "echo.permanent", r#""x""#, &["--from", "front"]);
    let dead = eventually(Duration::from_secs(20), "the refused call is dead", || {
        site.listing("dead", Some("front"))
            .into_iter()
            .find(|v| v["record"]["call"]["id"] == doomed.as_str())
    });
    assert_eq!(
        dead["record"]["dead_reason"].as_str().unwrap(),
        format!(
            "permanent rejection: cage back echo.permanent (call {doomed}): \
             permanent rejection as the test asks"
        )
    );
    assert_eq!(dead["record"]["attempts"].as_array().unwrap().len(), 1);

    // A call whose target is overloaded (or did not store it) is retried, its error classed.
    let busy = site.enqueue("back", "echo.refused", r#""x""#, &["--from", "front"]);
    let pending = eventually(Duration::from_secs(20), "the busy call is retried", || {
        site.listing("pending", Some("front"))
            .into_iter()
            .find(|v| {
                v["record"]["call"]["id"] == busy.as_str()
                    && v["record"]["attempts"].as_array().unwrap().len() >= 3
            })
    });
    assert_eq!(
        pending["record"]["attempts"][0]["error"].as_str().unwrap(),
        format!("refused: cage back echo.refused (call {busy}): refused as the test asks")
    );
    assert!(site.listing("dead", Some("front")).len() == 1);
    // The doomed call was never offered again.
    assert_eq!(offers(&back, &doomed), 1);
}

#[test]
fn the_exit_code_of_a_refused_enqueue_or_job_says_its_kind() {
    let (site, _back) = site_with_fake_back();
    let _front = site.start("front");

    // Refused by a real cage: it knows no cage of that name.
    let run = site.cage_cmd(&[
        "enqueue",
        "nobody",
        "echo.shout",
        r#""x""#,
        "--from",
        "front",
    ]);
    assert_eq!(run.code, 14, "{run:?}");
    assert!(
        run.stderr
            .contains("enqueue of nobody echo.shout via front refused")
            && run.stderr.contains("no cage named \"nobody\""),
        "{run:?}"
    );

    // Refused by the fake cage, one kind after the other: the code is the kind's (docs/cli.md).
    for (kind, code) in [
        ("bad_arguments", 11),
        ("unknown_module", 13),
        ("unknown_cage", 14),
        ("refused", 18),
        ("internal", 19),
        ("permanent", 20),
    ] {
        let target = format!("echo.{kind}");
        let run = site.cage_cmd(&["enqueue", "back", &target, r#""x""#]);
        assert_eq!(run.code, code, "enqueue refused as {kind}: {run:?}");
        let said = format!("{} as the test asks", kind_named(kind).as_str());
        assert!(run.stderr.contains(&said), "{run:?}");

        let run = site.cage_cmd(&["job", "add", "back", &target, "--every", "1h"]);
        assert_eq!(run.code, code, "job refused as {kind}: {run:?}");
        assert!(run.stderr.contains(&said), "{run:?}");
    }
}

#[test]
fn a_call_delivered_to_the_wrong_cage_is_retried_saying_so() {
    // Given a site config that sends cage b's calls to cage c (a wrong address, not a wrong
    // call): the call waits, retried, for the config edit that routes it right.
    let mut site = Site::new();
    site.cage("front", &[], "").cage("c", &[], "");
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.b]\naddresses = [\"{}\"]\n\n\
             [queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n",
            site.addr("c")
        ),
    );
    let _front = site.start("front");
    let _c = site.start("c");

    let id = site.enqueue("b", "echo.shout", r#""x""#, &["--from", "front"]);
    let pending = eventually(Duration::from_secs(20), "the call is retried", || {
        site.listing("pending", Some("front"))
            .into_iter()
            .find(|v| {
                v["record"]["call"]["id"] == id.as_str()
                    && v["record"]["attempts"].as_array().unwrap().len() >= 2
            })
    });
    assert_eq!(
        pending["record"]["attempts"][0]["error"].as_str().unwrap(),
        format!(
            "unknown cage: cage c echo.shout (call {id}): this is cage c, not b \
             (check config/config_execute_on.toml on front)"
        )
    );
    assert!(site.listing("dead", Some("front")).is_empty());
}
