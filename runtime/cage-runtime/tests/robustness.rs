//! Property tests over untrusted input: whatever bytes or text arrive, the decoders and parsers
//! answer with a value or an error, never a panic, and never allocate past their limits.

use cage_runtime::chains::{object_bytes, parse_steps};
use cage_runtime::config::{CageConfig, ExecuteOn};
use cage_runtime::loader::descriptor::{self, DescriptorFields};
use cage_runtime::loader::elf_check;
use cage_runtime::model::chain::StepSpec;
use cage_runtime::transport::frame;
use cage_runtime::transport::protocol::{CallRequest, Request, RequestFrame, ResponseFrame};
use proptest::prelude::*;
use std::path::Path;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn frame_bodies_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = frame::decode::<RequestFrame>(&bytes);
        let _ = frame::decode::<ResponseFrame>(&bytes);
    }

    #[test]
    fn frame_reader_respects_its_cap(bytes in proptest::collection::vec(any::<u8>(), 0..64), max in 0usize..32) {
        if let Ok(body) = frame::read_blocking(&mut bytes.as_slice(), max) {
            prop_assert!(body.len() <= max);
        }
    }

    #[test]
    fn call_frames_round_trip(id in any::<u64>(), call_id in ".{0,40}", module in "[a-z]{1,12}", method in "[a-z_]{1,12}",
                              args in proptest::collection::vec(any::<u8>(), 0..256), timeout_ms in any::<u64>()) {
        let msg = RequestFrame { id, body: Request::Call(CallRequest { call_id, module, method, args, timeout_ms }) };
        let bytes = frame::encode(&msg).unwrap();
        let body = frame::read_blocking(&mut bytes.as_slice(), 1 << 20).unwrap();
        prop_assert_eq!(frame::decode::<RequestFrame>(&body).unwrap(), msg);
    }

    #[test]
    fn cage_files_parse_or_fail(text in "(?s).{0,300}") {
        let _ = CageConfig::parse("c", Path::new("cages/c.toml"), Path::new("/site"), &text);
    }

    #[test]
    fn cage_files_of_plausible_lines_parse_or_fail(lines in proptest::collection::vec(
        prop_oneof![
            Just("listen = \"127.0.0.1:7401\"".to_owned()),
            Just("modules = [\"echo\"]".to_owned()),
            Just("[[jobs]]".to_owned()),
            Just("name = \"j\"".to_owned()),
            Just("call = \"echo.x\"".to_owned()),
            Just("every = \"0s\"".to_owned()),
            "[a-z_]{1,10} = \"[^\"]{0,10}\"",
            "[a-z_]{1,10} = [0-9]{1,5}",
        ], 0..12)) {
        let text = lines.join("\n");
        if let Err(e) = CageConfig::parse("c", Path::new("cages/c.toml"), Path::new("/site"), &text) {
            prop_assert!(e.to_string().starts_with("cages/c.toml:"), "{}", e);
        }
    }

    #[test]
    fn site_configs_parse_or_fail(text in "(?s).{0,300}") {
        let _ = ExecuteOn::parse(Path::new("config/config_execute_on.toml"), &text);
    }

    #[test]
    fn descriptors_are_checked_without_panic(
        abi_version in prop_oneof![Just(cage_sdk::abi::ABI_VERSION), any::<u32>()],
        descriptor_size in any::<u32>(),
        name in proptest::collection::vec(any::<u8>(), 0..64),
        version in proptest::collection::vec(any::<u8>(), 0..64),
        methods in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..5000), 0..4),
    ) {
        let fields = DescriptorFields { abi_version, descriptor_size, name, version, methods };
        if let Ok(d) = descriptor::check("echo", &fields) {
            prop_assert_eq!(d.name, "echo");
            prop_assert!(d.methods.iter().all(|m| m.len() <= descriptor::TEXT_MAX));
        }
    }

    #[test]
    fn chain_steps_and_inputs_parse_or_fail(steps in "(?s).{0,120}", inputs in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Ok(parsed) = parse_steps(&steps) {
            // A step that parses prints back to a form that parses to the same step.
            for s in parsed {
                prop_assert_eq!(StepSpec::parse(&s.label()).unwrap(), s);
            }
        }
        let _ = StepSpec::parse_dotted(&steps, inputs.clone());
        let _ = object_bytes(&inputs);
    }

    #[test]
    fn arbitrary_bytes_never_pass_as_a_module(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        prop_assert!(elf_check::check(&bytes).is_err());
    }
}

/// A real ELF file with bytes of its headers changed at random: checked without a panic.
#[test]
fn corrupted_elf_headers_are_checked_without_panic() {
    let bytes = std::cell::RefCell::new(std::fs::read(std::env::current_exe().unwrap()).unwrap());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(512));
    runner
        .run(
            &(proptest::collection::vec((0usize..4096, any::<u8>()), 1..8)),
            |edits| {
                // Edit in place and undo afterwards: the file is large, copies would dominate.
                let mut bytes = bytes.borrow_mut();
                let mut undo = Vec::new();
                for (at, value) in edits {
                    let at = at % bytes.len();
                    undo.push((at, bytes[at]));
                    bytes[at] = value;
                }
                let _ = elf_check::check(&bytes);
                for (at, old) in undo.into_iter().rev() {
                    bytes[at] = old;
                }
                Ok(())
            },
        )
        .unwrap();
}
