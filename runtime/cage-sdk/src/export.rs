//! The machinery behind [`crate::export_module!`]: panic capture, argument decoding, result encoding.
//!
//! Everything here runs inside the module; the cage only ever sees a status code and bytes.

use crate::abi::{self, Bytes, HostContext, OwnedBytes};
use crate::ctx::Ctx;
use crate::error::{CallError, ErrorKind};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe, PanicHookInfo};
use std::sync::{Mutex, Once};

/// Panic messages seen by this module's hook and the places they were raised, newest last.
///
/// The hook cannot hand the location to `dispatch` through a thread-local (that would pin the
/// library in memory), so `dispatch` looks its panic up here by message.
static PANIC_PLACES: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
/// Panics remembered at most; older ones are forgotten.
const PANIC_PLACES_KEPT: usize = 64;
static INSTALL_HOOK: Once = Once::new();

/// Replaces std's default panic hook for this module (each cdylib has its own std, so this does
/// not touch the cage or other modules). The default hook asks for the current thread's handle,
/// which registers a thread-local destructor: after that `dlclose` can never unmap the library,
/// and every hot reload of a module that once panicked would leak the old version.
fn install_panic_hook() {
    INSTALL_HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info: &PanicHookInfo<'_>| {
            let place = info
                .location()
                .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_else(|| "unknown place".to_owned());
            let mut places = PANIC_PLACES.lock().unwrap_or_else(|p| p.into_inner());
            if places.len() >= PANIC_PLACES_KEPT {
                places.remove(0);
            }
            places.push((panic_message(info.payload()), place));
        }));
    });
}

/// Where the panic with `message` was raised, if the hook saw it.
fn take_panic_place(message: &str) -> Option<String> {
    let mut places = PANIC_PLACES.lock().unwrap_or_else(|p| p.into_inner());
    let i = places.iter().rposition(|(m, _)| m == message)?;
    Some(places.remove(i).1)
}

/// What one method call produced, before it crosses the boundary.
#[derive(Debug)]
pub struct Outcome {
    status: u32,
    bytes: Vec<u8>,
}

impl Outcome {
    /// A successful JSON result.
    pub fn ok(json: Vec<u8>) -> Self {
        Outcome {
            status: abi::status::OK,
            bytes: json,
        }
    }

    /// A failure.
    pub fn error(error: &CallError) -> Self {
        let bytes = serde_json::to_vec(error).unwrap_or_else(|_| {
            br#"{"kind":"internal","message":"error did not encode"}"#.to_vec()
        });
        Outcome {
            status: abi::status::ERROR,
            bytes,
        }
    }
}

/// Decodes `args`, runs `method`, and encodes its result or error.
pub fn invoke<A, R, F>(method: F, ctx: &Ctx, args: &[u8]) -> Outcome
where
    A: DeserializeOwned,
    R: Serialize,
    F: FnOnce(&Ctx, A) -> Result<R, CallError>,
{
    // An empty argument body means "no arguments", so `()` methods take `null` or nothing.
    let args = if args.is_empty() {
        b"null".as_slice()
    } else {
        args
    };
    let args: A = match serde_json::from_slice(args) {
        Ok(a) => a,
        Err(e) => {
            return Outcome::error(&CallError::bad_arguments(format!(
                "{}.{}: {e}",
                ctx.module(),
                ctx.method()
            )))
        }
    };
    match method(ctx, args) {
        Ok(result) => match serde_json::to_vec(&result) {
            Ok(json) => Outcome::ok(json),
            Err(e) => Outcome::error(&CallError::with_kind(
                ErrorKind::Internal,
                format!(
                    "result of {}.{} did not encode: {e}",
                    ctx.module(),
                    ctx.method()
                ),
            )),
        },
        Err(error) => Outcome::error(&error),
    }
}

/// The outcome for a method name the module does not export.
pub fn unknown_method(module: &str, method: &str) -> Outcome {
    Outcome::error(&CallError::with_kind(
        ErrorKind::UnknownMethod,
        format!("module {module} has no method {method:?}"),
    ))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}

/// Runs one call behind the C ABI: nothing unwinds out of here, whatever `route` does.
///
/// # Safety
/// `host` must be a live host context, `method`/`args` valid views and `out` writable, as the
/// cage guarantees when it calls a module.
pub unsafe fn dispatch(
    host: *const HostContext,
    method: Bytes,
    args: Bytes,
    out: *mut OwnedBytes,
    route: impl FnOnce(&Ctx, &str, &[u8]) -> Outcome,
) -> u32 {
    install_panic_hook();
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the cage keeps the context and views alive for the call.
        let ctx = unsafe { Ctx::from_raw(host) };
        let method = std::str::from_utf8(unsafe { method.as_slice() }).unwrap_or("");
        let args = unsafe { args.as_slice() };
        route(&ctx, method, args)
    }));
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(payload) => {
            // Dropping a payload can itself panic; leak it rather than risk unwinding across FFI.
            let message = panic_message(&*payload);
            std::mem::forget(payload);
            let text = match take_panic_place(&message) {
                Some(place) => format!("panic: {message} (at {place})"),
                None => format!("panic: {message}"),
            };
            Outcome::error(&CallError::with_kind(ErrorKind::Panic, text))
        }
    };
    // SAFETY: the cage passes a writable slot.
    unsafe { out.write(OwnedBytes::from_vec(outcome.bytes)) };
    outcome.status
}

/// Frees a buffer this module returned from a call.
///
/// # Safety
/// `buf` must come from this module's [`dispatch`] and be freed once.
pub unsafe extern "C" fn free_bytes(buf: OwnedBytes) {
    // SAFETY: guaranteed by the caller: the buffer is ours and freed once.
    drop(unsafe { buf.into_vec() });
}

/// Exports a module: its name, version and methods, behind the versioned entry symbol.
///
/// Each method is a function `fn(&Ctx, Args) -> Result<Output, CallError>` where `Args` is
/// `Deserialize` and `Output` is `Serialize`; the method's name is the function's name.
#[macro_export]
macro_rules! export_module {
    (name: $name:literal, version: $version:expr, methods: [$($method:ident),* $(,)?] $(,)?) => {
        /// Entry symbol of this module, read by the cage when it loads the library.
        #[unsafe(no_mangle)]
        pub extern "C" fn cage_module_v1() -> *const $crate::abi::ModuleDescriptor {
            const METHOD_COUNT: usize = [$(stringify!($method)),*].len();
            static METHODS: [$crate::abi::Bytes; METHOD_COUNT] =
                [$($crate::abi::Bytes::from_static(stringify!($method))),*];

            unsafe extern "C" fn call(
                host: *const $crate::abi::HostContext,
                method: $crate::abi::Bytes,
                args: $crate::abi::Bytes,
                out: *mut $crate::abi::OwnedBytes,
            ) -> u32 {
                // SAFETY: forwarded unchanged from the cage, which upholds `dispatch`'s contract.
                unsafe {
                    $crate::export::dispatch(host, method, args, out, |ctx, method, args| {
                        match method {
                            $(stringify!($method) => $crate::export::invoke($method, ctx, args),)*
                            other => $crate::export::unknown_method($name, other),
                        }
                    })
                }
            }

            static DESCRIPTOR: $crate::abi::ModuleDescriptor = $crate::abi::ModuleDescriptor {
                abi_version: $crate::abi::ABI_VERSION,
                descriptor_size: ::std::mem::size_of::<$crate::abi::ModuleDescriptor>() as u32,
                name: $crate::abi::Bytes::from_static($name),
                version: $crate::abi::Bytes::from_static($version),
                methods: METHODS.as_ptr(),
                method_count: METHOD_COUNT,
                call,
                free: $crate::export::free_bytes,
            };
            &DESCRIPTOR
        }
    };
}
