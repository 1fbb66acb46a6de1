//! The dashboard in a real browser (headless Chromium through WebDriver): an operator sees a
//! failing call with its error, drops the fixed module, presses Retry now, and sees the call
//! gone and counted as succeeded. A screenshot of the page is saved.

mod support;

use fantoccini::{ClientBuilder, Locator};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{cage_bin, eventually, free_port, module_so, workspace, Site};

/// A child process killed when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Set (to anything but `0`) where the browser must be there: its absence fails the test
/// instead of skipping it (`.ci/run` sets it).
const REQUIRE: &str = "CAGES_REQUIRE_BROWSER";

/// How to get what the test needs.
const INSTALL: &str = "apt-get install chromium chromium-driver";

/// Chromium and its ChromeDriver (`CHROMIUM`, `CHROMEDRIVER`, else Debian's paths), or `None`
/// after saying the test is skipped and how to enable it, unless [`REQUIRE`] is set.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let tool = |env: &str, default: &str| {
        PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_owned()))
    };
    let (chromium, driver) = (
        tool("CHROMIUM", "/usr/bin/chromium"),
        tool("CHROMEDRIVER", "/usr/bin/chromedriver"),
    );
    let missing: Vec<String> = [&chromium, &driver]
        .iter()
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if missing.is_empty() {
        return Some((chromium, driver));
    }
    let why = format!(
        "the browser test needs Chromium and its ChromeDriver, and {} is not there: install them \
         (`{INSTALL}`, as .ci/run does) or set CHROMIUM and CHROMEDRIVER to them",
        missing.join(" and ")
    );
    if std::env::var(REQUIRE).is_ok_and(|v| v != "0") {
        panic!("{why} ({REQUIRE} is set, so this is a failure, not a skip)");
    }
    // Straight to stderr: the test harness captures `eprintln!` of a passing test, and a skip
    // must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED operator_retries_a_fixed_call_from_the_dashboard: {why}; {REQUIRE}=1 makes this a failure"
    );
    None
}

fn wait_for_port(port: u16, what: &str) {
    eventually(Duration::from_secs(30), what, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| ())
    });
}

#[test]
fn operator_retries_a_fixed_call_from_the_dashboard() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };

    // Two cages: front hands a charge to back, whose billing module has a bug. The queue
    // retries only after an hour, so nothing but the operator's button runs it again.
    let mut site = Site::new();
    site.write(
        "config/config_execute_on.toml",
        "[queues.slow]\nfirst_retry = \"1h\"\nmax_delay = \"1h\"\ngive_up_after = \"3d\"\n",
    );
    site.cage("front", &["echo"], "");
    site.cage("back", &["billing"], "");
    site.install("echo", &module_so("echo", &[]));
    site.install("billing", &module_so("billing", &[]));
    let _front = site.start("front");
    let back = site.start("back");
    let id = site.enqueue(
        "back",
        "billing.charge",
        r#"{"customer":"ann","cents":500}"#,
        &["--from", "front", "--queue", "slow"],
    );
    eventually(
        Duration::from_secs(30),
        "the first attempt failed on back",
        || {
            site.listing("pending", Some("back"))
                .iter()
                .any(|c| {
                    c["record"]["call"]["id"] == id
                        && c["record"]["attempts"]
                            .as_array()
                            .is_some_and(|a| !a.is_empty())
                })
                .then_some(())
        },
    );

    let port = free_port();
    let dashboard = Reaped(
        Command::new(cage_bin())
            .args([
                "dashboard",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--site",
            ])
            .arg(site.path())
            .env("CAGE_DASHBOARD_TOKEN", "browser-test-token-0123456789")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(port, "the dashboard listens");
    let driver_port = free_port();
    let driver = Reaped(
        Command::new(&chromedriver)
            .arg(format!("--port={driver_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(driver_port, "chromedriver listens");

    let profile = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let screenshot = workspace().join("target/screenshots/dashboard-retry-now.png");
    let save = |png: &[u8], name: &str| {
        let path = workspace().join("target/screenshots").join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{driver_port}"))
            .await
            .expect("a Chromium session through chromedriver");

        // Logging in leads to the cages page: both cages up.
        browser
            .goto(&format!("{base}/login?token=browser-test-token-0123456789"))
            .await
            .unwrap();
        let cages = browser
            .find(Locator::Css("table#cages"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(cages.contains("front") && cages.contains("back"), "{cages}");
        let up = browser
            .find_all(Locator::Css("table#cages td.up"))
            .await
            .unwrap();
        assert_eq!(up.len(), 2, "both cages up: {cages}");

        // The queue page shows the pending call with its error.
        browser
            .goto(&format!("{base}/queue/back/slow"))
            .await
            .unwrap();
        let row = browser
            .find(Locator::Css(&format!("tr[data-call='{id}']")))
            .await
            .unwrap();
        let text = row.text().await.unwrap();
        assert!(
            text.contains("billing.charge") && text.contains("rounding bug"),
            "{text}"
        );
        save(
            &browser.screenshot().await.unwrap(),
            "dashboard-pending.png",
        );

        // The fixed module is dropped in; once it is loaded, the operator presses Retry now.
        site.install_atomic("billing", &module_so("billing", &["no-default"]));
        eventually(
            Duration::from_secs(30),
            "the fixed billing is loaded",
            || {
                site.cage_cmd(&["modules", "back", "--json"])
                    .stdout
                    .contains("\"version\": \"0.9.1\"")
                    .then_some(())
            },
        );
        let button = format!("tr[data-call='{id}'] button[data-action='retry-now']");
        browser
            .find(Locator::Css(&button))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        // The click posts a form; the page with the notice loads after the click returns.
        let notice = browser
            .wait()
            .at_most(Duration::from_secs(30))
            .for_element(Locator::Css(".notice"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(notice.contains("retry-now: done"), "{notice}");

        // The call leaves the queue and is counted as succeeded.
        let started = Instant::now();
        loop {
            browser
                .goto(&format!("{base}/queue/back/slow"))
                .await
                .unwrap();
            let gone = browser
                .find(Locator::Css(&format!("tr[data-call='{id}']")))
                .await
                .is_err();
            let succeeded = browser
                .find(Locator::Css("#succeeded"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if gone && succeeded == "1" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the call is still listed (succeeded: {succeeded})\n{}",
                back.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let failed = browser
            .find(Locator::Css("#failed"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(failed, "1", "the one failed attempt before the fix");
        save(
            &browser.screenshot().await.unwrap(),
            "dashboard-retry-now.png",
        );

        // The modules page counts the method's calls and errors.
        browser.goto(&format!("{base}/modules")).await.unwrap();
        let row = browser
            .find(Locator::Css(
                "table.module[data-module='billing'] tr[data-method='charge']",
            ))
            .await
            .unwrap();
        let text = row.text().await.unwrap();
        assert!(
            text.contains("rounding bug"),
            "the last error stays visible: {text}"
        );
        browser.close().await.unwrap();
    });
    assert!(
        screenshot.metadata().unwrap().len() > 1000,
        "a screenshot was saved"
    );
    drop((dashboard, driver));
}
