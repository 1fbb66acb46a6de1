//! Cages the site does not list are found by discovery: two sites, as if on two hosts, share a
//! cluster; site A has cage `a` and no entry for `c`, site C has cage `c` on 127.0.0.3. From
//! site A, `cage call c …`, a module call from `a` and queued calls for `c` all reach it; when
//! `c` comes back on another port, the next queued call finds it there. A static entry wins
//! over discovery, discovery off (or no answer) is a clear unknown-cage error, and
//! `cage status` shows `c` as discovered.

mod support;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener};
use support::{discovery_settings, log_mentioning, module_so, Site};

/// A free port on 127.0.0.3.
fn free_port_on_3() -> SocketAddr {
    TcpListener::bind("127.0.0.3:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Site A (cage `a`) and site C (cage `c` on 127.0.0.3), both serving echo, in one cluster.
fn two_sites(mode: &str) -> (Site, Site, String) {
    let settings = discovery_settings(mode);
    let echo = module_so("echo", &[]);
    let mut a = Site::new();
    a.cage("a", &["echo"], "");
    a.install("echo", &echo);
    a.write("config/config_execute_on.toml", &settings);
    let mut c = Site::new();
    c.cage_at("c", free_port_on_3(), &["echo"], "");
    c.install("echo", &echo);
    c.write("config/config_execute_on.toml", &settings);
    (a, c, settings)
}

fn shout_c(site: &Site) -> support::Run {
    site.call("c", "echo.shout", r#""found""#)
}

#[test]
fn a_cage_the_site_does_not_list_is_found_called_and_found_again_after_it_moves() {
    let (site_a, mut site_c, settings) = two_sites("multicast");
    let a = site_a.start("a");
    let mut c = site_c.start("c");

    // From the command line of site A, which has neither [cages.c] nor cages/c.toml.
    let run = shout_c(&site_a);
    assert_eq!((run.code, run.stdout.trim()), (0, r#""FOUND""#), "{run:?}");

    // From a module on cage `a`: a sync call, then a queued call delivered to `c`.
    let run = site_a.call(
        "a",
        "echo.forward",
        r#"{"cage": "c", "target": "echo.shout", "args": "via a"}"#,
    );
    assert_eq!((run.code, run.stdout.trim()), (0, r#""VIA A""#), "{run:?}");
    let id = site_a.queued_append_runs("c", "a");
    let log = log_mentioning(&c, &id);
    assert!(log.contains(&id), "cage c ran {id}:\n{log}");

    // `cage status` lists `a` from its cage file and `c` as discovered, up, with its modules.
    let run = site_a.cage_cmd(&["status", "--json"]);
    assert_eq!(run.code, 0, "{run:?}");
    let rows: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    let row = |cage: &str| {
        rows.iter()
            .find(|r| r["cage"] == cage)
            .unwrap_or_else(|| panic!("no row for {cage}: {rows:?}"))
            .clone()
    };
    assert_eq!(row("a")["known"], "cage_file", "{rows:?}");
    let c_row = row("c");
    assert_eq!(
        (&c_row["known"], &c_row["reachable"], &c_row["address"]),
        (
            &Value::from("discovered"),
            &Value::from(true),
            &Value::from(site_c.addr("c").to_string())
        ),
        "{rows:?}"
    );
    assert_eq!(c_row["modules"][0]["name"], "echo", "{rows:?}");
    assert!(
        c_row["pending"].is_u64() && c_row["uptime_secs"].is_u64(),
        "{rows:?}"
    );
    let table = site_a.cage_cmd(&["status"]);
    assert!(
        table.code == 0 && table.stdout.contains("discovered") && table.stdout.contains("echo"),
        "{table:?}"
    );

    // `c` comes back on another port. Cage `a` still holds the old binding, fails to connect,
    // forgets it, asks again, and the next queued call arrives.
    c.terminate();
    site_c.cage_at("c", free_port_on_3(), &["echo"], "");
    let c = site_c.start("c");
    let id = site_a.queued_append_runs("c", "a");
    let log = log_mentioning(&c, &id);
    assert!(log.contains(&id), "the moved cage ran {id}:\n{log}");
    assert!(
        a.log().contains("asked for again"),
        "cage a refreshed its binding after the failure:\n{}",
        a.log()
    );
    let run = shout_c(&site_a);
    assert_eq!(run.code, 0, "{run:?}");

    // A name nobody answers for: the error says everything that was tried.
    let run = site_a.call("nobody", "echo.shout", r#""x""#);
    assert_eq!(run.code, 14, "{run:?}");
    let port = settings
        .split("239.255.74.1:")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    for says in [
        "no cage named \"nobody\"",
        "no [cages.nobody] entry in",
        "config/config_execute_on.toml",
        "cages/nobody.toml",
        &format!("no answer to discovery on 239.255.74.1:{port} within 300ms"),
    ] {
        assert!(run.stderr.contains(says), "says {says:?}: {}", run.stderr);
    }

    // A static entry wins over discovery: [cages.c] pointing where nothing listens is used.
    let nowhere = free_port_on_3();
    site_a.write(
        "config/config_execute_on.toml",
        &format!(
            "{settings}\n[cages.c]\naddresses = [\"{nowhere}\"]\nconnect_timeout = \"300ms\"\n"
        ),
    );
    let run = shout_c(&site_a);
    assert!(
        run.code == 17 && run.stderr.contains(&nowhere.to_string()),
        "the listed address was tried, not the discovered one: {run:?}"
    );

    // Discovery off: the unknown-cage error names the cage and the places looked.
    site_a.write(
        "config/config_execute_on.toml",
        "[cages.unknown]\ndiscovery = \"off\"\n",
    );
    let run = shout_c(&site_a);
    assert_eq!(run.code, 14, "{run:?}");
    assert!(
        run.stderr.contains("no cage named \"c\"")
            && run.stderr.contains("cages/c.toml")
            && run.stderr.contains("discovery is off"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_cage_is_found_by_broadcast_too() {
    let (site_a, site_c, _) = two_sites("broadcast");
    let _a = site_a.start("a");
    let _c = site_c.start("c");
    let run = shout_c(&site_a);
    assert_eq!((run.code, run.stdout.trim()), (0, r#""FOUND""#), "{run:?}");
    site_a.queued_append_runs("c", "a");
}
