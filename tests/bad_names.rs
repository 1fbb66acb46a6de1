//! Names of cages, modules, methods and queues that could never be served (a path such as
//! `../evil`, a 10 KB name, a NUL byte) are refused as bad arguments: by the CLI before it sends
//! anything (exit 11), and by the cage for a frame that bypasses the CLI, so none is queued.

mod support;
use cages::runtime::model::call::QueuedCall;
use cages::runtime::model::chain::StepSpec;
use cages::runtime::model::job::{CatchUp, Schedule};
use cages::runtime::transport::client::{Client, ClientError};
use cages::runtime::transport::protocol::{
    ChainRequest, JobRequest, JobSpec, NewChain, Request, Response,
};
use cages::sdk::ErrorKind;
use std::time::Duration;
use support::{echo_call, module_so, Site};

const BAD_ARGUMENTS: i32 = 11;
const TIMEOUT: Duration = Duration::from_secs(10);

/// A site with cage `front` serving `echo`, running.
fn front() -> (Site, support::RunningCage) {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let cage = site.start("front");
    (site, cage)
}

fn assert_refused(site: &Site, args: &[&str], names: &str) {
    let run = site.cage_cmd(args);
    assert_eq!(run.code, BAD_ARGUMENTS, "{args:?}: {run:?}");
    assert!(
        run.stderr.contains(names),
        "{args:?}: expected {names:?} in {}",
        run.stderr
    );
}

#[test]
fn the_cli_refuses_bad_names_with_exit_11_naming_them() {
    let (site, mut cage) = front();
    // A real cage file one step up: the name is refused as a name, not looked for as a file.
    site.write(
        "evil.toml",
        &format!(
            "listen = \"{}\"\nmodules = [\"echo\"]\n",
            site.addr("front")
        ),
    );

    assert_refused(
        &site,
        &[
            "enqueue",
            "front",
            "echo.shout",
            "\"x\"",
            "--queue",
            "../../x",
        ],
        "\"../../x\" is not a queue name: it holds a path separator '/'",
    );
    assert_refused(
        &site,
        &["call", "front", "../x", "1"],
        "target \"../x\" is not MODULE.METHOD",
    );
    assert_refused(
        &site,
        &["call", "front", "echo.sh/out", "1"],
        "\"sh/out\" is not a method name",
    );
    assert_refused(
        &site,
        &["enqueue", "front", "e\tcho.shout", "\"x\""],
        "\"e\\tcho\" is not a module name: it holds a control character \\t",
    );
    for args in [
        &["call", "../evil", "echo.shout", "\"x\""][..],
        &["enqueue", "../evil", "echo.shout", "\"x\""],
        &[
            "enqueue",
            "front",
            "echo.shout",
            "\"x\"",
            "--from",
            "../evil",
        ],
        &["pending", "../evil"],
        &["modules", "../evil"],
        &["run", "../evil"],
    ] {
        let run = site.cage_cmd(args);
        assert_eq!(run.code, BAD_ARGUMENTS, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("\"../evil\" is not a cage name")
                && !run.stderr.contains("does not exist"),
            "{args:?}: {}",
            run.stderr
        );
    }
    assert_refused(
        &site,
        &[
            "job",
            "add",
            "front",
            "echo.shout",
            "\"x\"",
            "--every",
            "1m",
            "--queue",
            "../q",
        ],
        "\"../q\" is not a queue name",
    );
    assert_refused(
        &site,
        &["schedule", "--queue", "../q"],
        "\"../q\" is not a queue name",
    );

    assert!(site.listing("pending", Some("front")).is_empty());
    assert!(cage.alive());
}

#[test]
fn frames_with_impossible_names_are_refused_as_bad_arguments_and_nothing_is_queued() {
    let (site, mut cage) = front();
    let mut client = Client::connect("front", &site.route("front")).unwrap();
    let long = "m".repeat(10 * 1024);

    let mut requests = Vec::new();
    for module in ["../evil", long.as_str(), "ev\0il", ""] {
        let mut r = echo_call("front", "shout", serde_json::json!("x"), None);
        r.module = module.to_owned();
        requests.push((format!("module {:.20?}", module), r));
    }
    let mut r = echo_call("front", "shout", serde_json::json!("x"), None);
    r.method = "../shout".into();
    requests.push(("method ../shout".into(), r));
    let mut r = echo_call("front", "shout", serde_json::json!("x"), None);
    r.queue = "../../x".into();
    requests.push(("queue ../../x".into(), r));
    let mut r = echo_call("front", "shout", serde_json::json!("x"), None);
    r.target = "../front".into();
    requests.push(("target ../front".into(), r));

    for (what, request) in requests {
        match client.request(Request::Enqueue(request), TIMEOUT).unwrap() {
            Response::Failed(f) => {
                assert_eq!(f.error.kind, ErrorKind::BadArguments, "{what}: {f:?}");
                assert!(f.error.message.contains("is not a"), "{what}: {f:?}");
                assert!(
                    f.error.message.len() < 400,
                    "{what}: a long name is cut short"
                );
            }
            other => panic!("{what}: enqueue answered {other:?}"),
        }
    }

    // A call offered as if another cage delivered it.
    let offered = QueuedCall {
        id: "other-1".into(),
        source: "other".into(),
        target: "front".into(),
        module: "../evil".into(),
        method: "shout".into(),
        args: b"\"x\"".to_vec(),
        queue: "retry".into(),
        priority: 0,
        key: None,
        enqueued_at_ms: 1,
        not_before_ms: 0,
        chain: None,
        group: None,
    };
    match client
        .request(Request::Accept(offered.into()), TIMEOUT)
        .unwrap()
    {
        // Typed, naming the call, so the offering cage moves it to dead letters at once.
        Response::Failed(f) => {
            assert_eq!(f.error.kind, ErrorKind::BadArguments, "{f:?}");
            assert_eq!(f.call_id, "other-1", "{f:?}");
            let e = f.error.to_string();
            assert!(
                e.starts_with("bad arguments: \"../evil\" is not a module name"),
                "{e}"
            );
        }
        other => panic!("accept answered {other:?}"),
    }

    // A job whose runs could never be served.
    let job = JobSpec {
        module: "ev\0il".into(),
        method: "shout".into(),
        args: b"\"x\"".to_vec(),
        queue: "retry".into(),
        schedule: Schedule::Every {
            interval_ms: 60_000,
            first_ms: 1,
        },
        catch_up: CatchUp::Once,
    };
    let spec = JobRequest::Add {
        spec: job,
        replace: false,
    };
    match client.request(Request::Job(spec), TIMEOUT).unwrap() {
        Response::Failed(f) => {
            assert_eq!(f.error.kind, ErrorKind::BadArguments, "{f:?}");
            assert!(
                f.error
                    .message
                    .starts_with("\"ev\\0il\" is not a module name: it holds a NUL byte"),
                "{f:?}"
            );
        }
        other => panic!("job add answered {other:?}"),
    }

    // Through the client library, the refusal keeps its kind (a CLI exits 11 on it, not 18).
    let mut r = echo_call("front", "shout", serde_json::json!("x"), None);
    r.module = "../evil".into();
    match client.enqueue(r, TIMEOUT) {
        Err(e @ ClientError::Rejected { .. }) => {
            assert_eq!(e.into_call_error().kind, ErrorKind::BadArguments)
        }
        other => panic!("enqueue answered {other:?}"),
    }

    // A chain whose step names a module no file can be.
    let chain = NewChain {
        id: None,
        steps: vec![StepSpec {
            cage: None,
            module: "../evil".into(),
            method: "shout".into(),
            args: None,
        }],
        inputs: b"{}".to_vec(),
        queue: Some("retry".into()),
        ordinal: 0,
    };
    let start = ChainRequest::Start {
        chains: vec![chain],
        max_parallel: 0,
        parent: None,
    };
    let refused = client.start_chains(start, TIMEOUT).unwrap().unwrap_err();
    assert_eq!(refused.kind, ErrorKind::BadArguments, "{refused}");
    assert!(
        refused
            .message
            .starts_with("chain 1, step 1: \"../evil\" is not a module name"),
        "{refused}"
    );

    assert!(site.listing("pending", Some("front")).is_empty());
    assert!(site.listing("dead", Some("front")).is_empty());
    let jobs = site.cage_cmd(&["jobs", "front", "--json"]);
    assert_eq!(jobs.code, 0, "{jobs:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&jobs.stdout).unwrap(),
        serde_json::json!([])
    );
    // The cage still serves, and a good name still queues.
    assert_eq!(site.call("front", "echo.shout", "\"still\"").code, 0);
    assert!(cage.alive());
}
