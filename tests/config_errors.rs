//! A bad cage file or site config stops `cage run` with a non-zero exit naming file, line and
//! reason.

mod support;
use support::Site;

fn run_with_cage_file(body: &str) -> support::Run {
    let site = Site::new();
    site.write("cages/bad.toml", body);
    site.cage_cmd(&["run", "bad"])
}

#[test]
fn bad_cage_files_name_file_line_and_reason() {
    let cases = [
        (
            "listen = \"127.0.0.1:7999\"\nexecutor_threads = \"lots\"\n",
            "bad.toml:2:20: invalid type: string \"lots\", expected usize",
        ),
        (
            "listen = \"127.0.0.1:7999\"\nmodules = [\"echo\"\n",
            "bad.toml:3:1: invalid array; expected `]`",
        ),
        (
            "listen = \"127.0.0.1:7999\"\nmodule = [\"echo\"]\n",
            "bad.toml:2:1: unknown field `module`",
        ),
        (
            "listen = \"0.0.0.0:7999\"\n",
            "bad.toml:1:10: listen: 0.0.0.0:7999 is not a loopback address",
        ),
        (
            "listen = \"my-host\"\n",
            "bad.toml:1:10: listen: expected an address",
        ),
        (
            "listen = \"127.0.0.1:7999\"\ncall_timeout = \"forever\"\n",
            "bad.toml:2:16:",
        ),
        ("modules = [\"echo\"]\n", "missing field `listen`"),
    ];
    for (body, expected) in cases {
        let run = run_with_cage_file(body);
        assert_eq!(run.code, 3, "{body}: {run:?}");
        assert!(
            run.stderr.contains(expected),
            "{body}\nexpected {expected:?} in: {}",
            run.stderr
        );
        assert!(run.stderr.contains("cages/bad.toml"), "{}", run.stderr);
    }
}

#[test]
fn bad_site_config_names_file_line_and_reason() {
    let mut site = Site::new();
    site.cage("front", &[], "");
    site.write(
        "config/config_execute_on.toml",
        "[queues.retry]\nfirst_retry = \"1m\"\ngrowth = 0.2\n",
    );
    let run = site.cage_cmd(&["run", "front"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(run.stderr.contains("config/config_execute_on.toml:3:10: queues.retry.growth: expected a factor from 1 to 100"), "{}", run.stderr);

    site.write(
        "config/config_execute_on.toml",
        "[cages.back]\naddresses = [\"127.0.0.1:1\"]\nconnect_timeout = \"2 parsecs\"\n",
    );
    let run = site.cage_cmd(&["run", "front"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("config/config_execute_on.toml:3:"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_unknown_cage_is_named() {
    let site = Site::new();
    let run = site.cage_cmd(&["run", "ghost"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("no cage named \"ghost\"")
            && run.stderr.contains("cages/ghost.toml does not exist"),
        "{}",
        run.stderr
    );
}
