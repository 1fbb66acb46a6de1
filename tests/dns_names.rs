//! The cluster map may name instances by DNS name (`NAME:PORT`), looked up at every connect:
//! sync and queued calls reach a cage listed as `localhost:PORT`, and a name that does not
//! resolve is an error naming the cage and the name.

mod support;
use support::{module_so, Site};

#[test]
fn a_cage_listed_by_dns_name_is_reached_and_a_bad_name_is_named() {
    let mut site = Site::new();
    site.cage("front", &[], "").cage("back", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let port = site.addr("back").port();
    site.write(
        "config/config_execute_on.toml",
        &format!(
            "[cages.back]\naddresses = [\"localhost:{port}\"]\n\n\
             [cages.ghost]\naddresses = [\"nowhere.invalid:7401\"]\n\n\
             [queues.retry]\nfirst_retry = \"100ms\"\nmax_delay = \"500ms\"\ngive_up_after = \"5m\"\n"
        ),
    );
    let _front = site.start("front");
    let _back = site.start("back");

    let run = site.call("back", "echo.shout", r#""by name""#);
    assert_eq!(
        (run.code, run.stdout.trim()),
        (0, r#""BY NAME""#),
        "{run:?}"
    );

    site.queued_append_runs("back", "front");

    let run = site.call("ghost", "echo.shout", r#""hi""#);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains("ghost")
            && run.stderr.contains("nowhere.invalid:7401")
            && run.stderr.contains("cannot resolve"),
        "the error names the cage, the name and why: {run:?}"
    );
}
