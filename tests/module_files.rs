//! Module files that are not what they seem never hold a cage up: a FIFO, a device behind a
//! symlink, a file over `max_module_bytes` or one that is not ELF is refused from its `stat` or
//! its first bytes, logged once with the file and the reason, shown by `cage modules`; the
//! cage starts, serves its other modules, takes later files and stops on SIGTERM.

mod support;
use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{eventually, module_so, RunningCage, Site};

/// A short grace, so a cage that stops does so soon (test sites rescan every 500 ms).
const SETTINGS: &str = "shutdown_grace = \"2s\"\n";

fn shout(site: &Site) -> String {
    site.call("front", "echo.shout", r#""hi""#)
        .stdout
        .trim()
        .to_owned()
}

fn charge(site: &Site) -> support::Run {
    site.call(
        "front",
        "billing.charge",
        r#"{"customer":"ann","cents":250}"#,
    )
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(status.success(), "mkfifo {}", path.display());
}

/// Puts `make`'s file in place of `target` by rename, as `mv` would.
fn replace_with(site: &Site, target: &Path, make: impl FnOnce(&Path)) {
    let tmp = site.path().join("modules/.incoming");
    let _ = std::fs::remove_file(&tmp);
    make(&tmp);
    std::fs::rename(&tmp, target).unwrap();
}

/// A sparse file of `len` bytes starting with `head`: costs no disk, and reads as `len` bytes.
fn sparse(path: &Path, head: &[u8], len: u64) {
    std::fs::write(path, head).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The first log line refusing `file_name` for `reason`, once there is one.
fn rejection(cage: &RunningCage, file_name: &str, reason: &str) -> String {
    eventually(
        Duration::from_secs(20),
        &format!("{file_name} is rejected: {reason}"),
        || {
            cage.log()
                .lines()
                .find(|l| l.contains(file_name) && l.contains("rejected") && l.contains(reason))
                .map(str::to_owned)
        },
    )
}

fn rejections(cage: &RunningCage, file_name: &str, reason: &str) -> usize {
    cage.log()
        .lines()
        .filter(|l| l.contains(file_name) && l.contains("rejected") && l.contains(reason))
        .count()
}

/// What `cage modules` says about `module`.
fn listed(site: &Site, module: &str) -> serde_json::Value {
    let run = site.cage_cmd(&["modules", "front", "--json"]);
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == module)
        .unwrap_or_else(|| panic!("{module} not listed: {list}"))
        .clone()
}

/// Most memory the cage process ever had resident, in bytes.
fn peak_rss(cage: &RunningCage) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", cage.pid())).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

/// No load in these tests may take memory near a file's size: the files are hundreds of MiB
/// to GiB, a cage serving echo stays far below this.
const READ_WHOLE: u64 = 256 * 1024 * 1024;

/// Sends SIGTERM and waits for the process to exit (well past its 2 s grace before failing).
fn stop(cage: &mut RunningCage) {
    let status = Command::new("kill")
        .arg(cage.pid().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    eventually(
        Duration::from_secs(30),
        "the cage exits after SIGTERM",
        || (!cage.alive()).then_some(()),
    );
    assert!(cage.log().contains("stopped"), "{}", cage.log());
}

#[test]
fn a_fifo_dropped_into_a_running_cage_is_refused_and_later_files_still_load() {
    let mut site = Site::new();
    site.cage("front", &["echo", "billing"], SETTINGS);
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("front");
    assert_eq!(shout(&site), r#""HI""#);

    // A FIFO where a module not loaded yet is expected.
    let billing = site.module_path("billing");
    mkfifo(&billing);
    let line = rejection(&cage, "libbilling.so", "not a regular file (a FIFO)");
    assert!(
        line.contains("module billing:") && line.contains("no version loaded"),
        "{line}"
    );
    // A FIFO moved over a loaded module: the loaded version keeps answering.
    replace_with(&site, &site.module_path("echo"), mkfifo);
    let line = rejection(&cage, "libecho.so", "not a regular file (a FIFO)");
    assert!(line.contains("keeping version 1.0.0 loaded"), "{line}");
    assert_eq!(shout(&site), r#""HI""#);
    let run = charge(&site);
    assert_eq!(run.code, 13, "{run:?}");
    assert!(
        run.stderr.contains("not a regular file (a FIFO)"),
        "{run:?}"
    );
    for module in ["echo", "billing"] {
        let m = listed(&site, module);
        assert!(
            m["last_error"]
                .as_str()
                .unwrap()
                .contains("not a regular file (a FIFO)"),
            "{m}"
        );
    }

    // Once per file version, not once per rescan: rescans every 500 ms for 2 s add none.
    std::thread::sleep(Duration::from_secs(2));
    for file in ["libbilling.so", "libecho.so"] {
        assert_eq!(
            rejections(&cage, file, "a FIFO"),
            1,
            "{file}: {}",
            cage.log()
        );
    }

    // Valid files moved in later are examined and served.
    site.install_atomic("billing", &module_so("billing", &["no-default"]));
    let run = eventually(Duration::from_secs(20), "billing answers", || {
        let run = charge(&site);
        (run.code == 0).then_some(run)
    });
    assert!(run.stdout.contains("\"cents\": 250"), "{run:?}");
    site.install_atomic("echo", &module_so("echo", &["v2"]));
    eventually(Duration::from_secs(20), "echo v2 answers", || {
        (shout(&site) == r#""HI!""#).then_some(())
    });

    stop(&mut cage);
}

#[test]
fn a_cage_started_with_a_fifo_and_a_socket_present_serves_its_other_modules() {
    let mut site = Site::new();
    site.cage("front", &["echo", "billing", "orders"], SETTINGS);
    site.install("echo", &module_so("echo", &[]));
    mkfifo(&site.module_path("billing"));
    let _socket = std::os::unix::net::UnixListener::bind(site.module_path("orders")).unwrap();
    // `start` returns once the cage answers a ping.
    let mut cage = site.start("front");
    assert_eq!(shout(&site), r#""HI""#);
    rejection(&cage, "libbilling.so", "not a regular file (a FIFO)");
    rejection(&cage, "liborders.so", "not a regular file (a socket)");
    let run = charge(&site);
    assert_eq!(run.code, 13, "{run:?}");

    std::fs::remove_file(site.module_path("billing")).unwrap();
    site.install_atomic("billing", &module_so("billing", &["no-default"]));
    eventually(Duration::from_secs(20), "billing answers", || {
        (charge(&site).code == 0).then_some(())
    });
    stop(&mut cage);
}

#[test]
fn a_symlink_to_dev_zero_is_refused_without_growing_the_cage() {
    let mut site = Site::new();
    site.cage("front", &["echo", "billing"], SETTINGS);
    site.install("echo", &module_so("echo", &[]));
    // One present at start, one moved over a loaded module.
    std::os::unix::fs::symlink("/dev/zero", site.module_path("billing")).unwrap();
    let mut cage = site.start("front");
    rejection(
        &cage,
        "libbilling.so",
        "not a regular file (a character device)",
    );
    replace_with(&site, &site.module_path("echo"), |p| {
        std::os::unix::fs::symlink("/dev/zero", p).unwrap()
    });
    let line = rejection(
        &cage,
        "libecho.so",
        "not a regular file (a character device)",
    );
    assert!(line.contains("keeping version 1.0.0 loaded"), "{line}");
    assert_eq!(shout(&site), r#""HI""#);
    assert!(listed(&site, "billing")["last_error"]
        .as_str()
        .unwrap()
        .contains("character device"),);
    assert!(peak_rss(&cage) < READ_WHOLE, "peak RSS {}", peak_rss(&cage));
    stop(&mut cage);
}

#[test]
fn files_over_max_module_bytes_are_refused_unread() {
    let mut site = Site::new();
    // The default limit (512 MiB) for echo, a cage file's own for the second cage.
    site.cage("front", &["echo", "billing"], SETTINGS);
    site.cage(
        "small",
        &["orders"],
        &format!("{SETTINGS}max_module_bytes = \"64MiB\"\n"),
    );
    site.install("echo", &module_so("echo", &[]));
    let mut front = site.start("front");
    let mut small = site.start("small");

    // ELF magic up front, so only the size can refuse them.
    sparse(&site.module_path("billing"), b"\x7fELF", 3 << 30);
    let line = rejection(&front, "libbilling.so", "is over max_module_bytes");
    assert!(
        line.contains(
            "3.0 GiB (3221225472 bytes) is over max_module_bytes = 512.0 MiB (536870912 bytes)"
        ),
        "{line}"
    );
    sparse(&site.module_path("orders"), b"\x7fELF", 100 << 20);
    let line = rejection(&small, "liborders.so", "is over max_module_bytes");
    assert!(
        line.contains("(104857600 bytes) is over max_module_bytes = 64.0 MiB (67108864 bytes)"),
        "{line}"
    );
    assert!(listed(&site, "billing")["last_error"]
        .as_str()
        .unwrap()
        .contains("over max_module_bytes"));
    assert_eq!(shout(&site), r#""HI""#);
    assert!(
        peak_rss(&front) < READ_WHOLE,
        "peak RSS {}",
        peak_rss(&front)
    );
    assert!(
        peak_rss(&small) < READ_WHOLE,
        "peak RSS {}",
        peak_rss(&small)
    );
    stop(&mut front);
    stop(&mut small);
}

#[test]
fn a_large_file_that_is_not_elf_is_refused_from_its_first_bytes() {
    let mut site = Site::new();
    site.cage("front", &["echo", "billing"], SETTINGS);
    site.install("echo", &module_so("echo", &[]));
    let mut cage = site.start("front");
    // Under the 512 MiB limit, so it is opened; its first bytes are all that may be read.
    sparse(&site.module_path("billing"), b"MZ\x90\x00", 400 << 20);
    let line = rejection(&cage, "libbilling.so", "no ELF magic at start of file");
    assert!(line.contains("no version loaded"), "{line}");
    assert!(peak_rss(&cage) < READ_WHOLE, "peak RSS {}", peak_rss(&cage));
    assert_eq!(shout(&site), r#""HI""#);
    stop(&mut cage);
}

#[test]
fn a_bad_max_module_bytes_stops_the_cage_from_starting_with_its_place() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "max_module_bytes = \"lots\"\n");
    let run = site.cage_cmd(&["run", "front"]);
    assert_eq!(run.code, 3, "{run:?}");
    assert!(
        run.stderr.contains("cages/front.toml:5:20")
            && run
                .stderr
                .contains("max_module_bytes: expected a byte size such as \"512MiB\""),
        "{run:?}"
    );
}
