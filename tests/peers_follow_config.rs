//! The cluster map is live for modules too: when `config/config_execute_on.toml` moves a cage to
//! a new address while the calling cage runs, a module's next `ctx.call` reaches the cage there.

mod support;
use std::time::Duration;
use support::{eventually, free_port, module_so, Site};

/// `[cages.b]` at `addr`, with a short connect timeout.
fn map_with_b_at(addr: &str) -> String {
    format!("[cages.b]\naddresses = [\"{addr}\"]\nconnect_timeout = \"500ms\"\n")
}

#[test]
fn a_modules_next_call_follows_an_edit_of_the_cluster_map() {
    let mut site = Site::new();
    site.cage("a", &["echo"], "").cage("b", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let old = site.addr("b");
    site.write(
        "config/config_execute_on.toml",
        &map_with_b_at(&old.to_string()),
    );
    let _a = site.start("a");
    let _old_b = site.start("b");
    // b at its new address has a data directory of its own, so its counter starts afresh.
    let new_port = free_port();
    let _new_b = site.start_instance("b", new_port);

    // Through a's module, b's counter at the old address goes to 3.
    let through_a = |method: &str| {
        let run = site.call(
            "a",
            "echo.forward",
            &format!(r#"{{"cage": "b", "target": "echo.{method}", "args": {{"key": "n"}}}}"#),
        );
        assert_eq!(run.code, 0, "{run:?}");
        run.stdout.trim().to_owned()
    };
    for n in 1..=3 {
        assert_eq!(through_a("count"), n.to_string());
    }

    // The map now puts b at the new address (the old instance still answers where it was).
    site.write(
        "config/config_execute_on.toml",
        &map_with_b_at(&format!("127.0.0.1:{new_port}")),
    );
    // Then the module's calls reach the instance whose counter was never touched.
    eventually(
        Duration::from_secs(30),
        "a module's ctx.call reaches b at its new address",
        || (through_a("count_get") == "0").then_some(()),
    );
    assert_eq!(through_a("count"), "1", "and stay there");
}
