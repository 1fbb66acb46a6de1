//! Broken module files never take the cage down: each is rejected with a log naming the file
//! and the reason, and the version already loaded keeps answering.

mod support;
use std::io::Write;
use std::time::Duration;
use support::{c_fixture_so, eventually, module_so, Site};

fn shout(site: &Site) -> String {
    site.call("front", "echo.shout", r#""hi""#)
        .stdout
        .trim()
        .to_owned()
}

#[test]
fn truncated_garbage_and_wrong_abi_files_are_rejected_and_the_old_version_keeps_answering() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let v2 = std::fs::read(module_so("echo", &["v2"])).unwrap();
    let mut cage = site.start("front");
    assert_eq!(shout(&site), r#""HI""#);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated release",
            v2[..v2.len() / 2].to_vec(),
            "past end of file",
        ),
        (
            "truncated headers",
            v2[..40].to_vec(),
            "not an ELF shared library",
        ),
        (
            "garbage",
            b"this is not a library at all\n".repeat(100),
            "no ELF magic",
        ),
        (
            "wrong ABI symbol",
            std::fs::read(c_fixture_so("wrong_abi_symbol")).unwrap(),
            "exports cage_module_v2",
        ),
        (
            "wrong ABI descriptor",
            std::fs::read(c_fixture_so("wrong_abi_descriptor")).unwrap(),
            "a descriptor of ABI 7",
        ),
        (
            "not a module",
            std::fs::read(c_fixture_so("not_a_module")).unwrap(),
            "no entry symbol `cage_module_v1`",
        ),
    ];
    for (what, bytes, reason) in cases {
        site.install_bytes("echo", &bytes);
        let line = eventually(
            Duration::from_secs(20),
            &format!("{what} is rejected"),
            || {
                cage.log()
                    .lines()
                    .find(|l| l.contains("rejected") && l.contains(reason))
                    .map(str::to_owned)
            },
        );
        assert!(
            line.contains("modules/libecho.so") && line.contains("keeping version 1.0.0 loaded"),
            "{what}: {line}"
        );
        assert_eq!(
            shout(&site),
            r#""HI""#,
            "{what}: the old version keeps answering"
        );
        let modules = site.cage_cmd(&["modules", "front", "--json"]);
        let list: serde_json::Value = serde_json::from_str(&modules.stdout).unwrap();
        assert!(
            list[0]["last_error"].as_str().unwrap().contains(reason),
            "{what}: {list}"
        );
        assert_eq!(list[0]["version"], "1.0.0");
    }
    assert!(cage.alive());

    // A good build after all that is taken as usual.
    site.install("echo", &module_so("echo", &["v2"]));
    eventually(Duration::from_secs(20), "v2 answers", || {
        (shout(&site) == r#""HI!""#).then_some(())
    });
}

#[test]
fn a_file_written_slowly_is_loaded_only_when_whole() {
    let mut site = Site::new();
    site.cage("front", &["echo"], "");
    site.install("echo", &module_so("echo", &[]));
    let v2 = std::fs::read(module_so("echo", &["v2"])).unwrap();
    let mut cage = site.start("front");

    // Write the new build in chunks with pauses shorter than the debounce, like a slow copy.
    let mut file = std::fs::File::create(site.module_path("echo")).unwrap();
    for chunk in v2.chunks(v2.len() / 20 + 1) {
        file.write_all(chunk).unwrap();
        file.flush().unwrap();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(
            shout(&site),
            r#""HI""#,
            "a partial file must never replace the loaded version"
        );
    }
    drop(file);
    eventually(Duration::from_secs(20), "the whole file is loaded", || {
        (shout(&site) == r#""HI!""#).then_some(())
    });
    assert!(cage.alive());
}
