//! `cage call CAGE MODULE.METHOD 'JSON'`: one synchronous call, result as JSON on stdout.

use super::{exit, target};
use cage_runtime::config::Site;
use cage_runtime::model::ids::new_call_id;
use cage_runtime::transport::client::Client;
use cage_runtime::transport::protocol::{CallFailure, CallRequest};
use cage_sdk::ErrorKind;
use std::process::ExitCode;
use std::time::Duration;

pub fn call(site: &Site, cage: &str, target: &str, args: &str, timeout: Duration) -> ExitCode {
    let (module, method) = match target::split(target) {
        Ok(t) => t,
        Err(code) => return code,
    };
    if let Err(e) = serde_json::from_str::<serde_json::Value>(args) {
        return exit::fail(
            exit::for_kind(ErrorKind::BadArguments),
            format!("arguments for {cage} {target} are not JSON: {e}"),
        );
    }
    let route = match target::route(site, cage) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let request = CallRequest {
        call_id: new_call_id("cli"),
        module: module.to_owned(),
        method: method.to_owned(),
        args: args.as_bytes().to_vec(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let result = match Client::connect(cage, &route) {
        Ok(mut client) => client.call(request),
        Err(e) => Err(Box::new(CallFailure {
            cage: cage.to_owned(),
            module: request.module,
            method: request.method,
            call_id: request.call_id,
            error: e.into_call_error(),
        })),
    };
    match result {
        Ok(bytes) => {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                Err(_) => println!("{}", String::from_utf8_lossy(&bytes)),
            }
            ExitCode::SUCCESS
        }
        Err(failure) => exit::fail(exit::for_kind(failure.error.kind), failure),
    }
}
