//! Module state for one call: reads see the call's own pending writes; writes are kept until
//! the call succeeds, then committed in one batch (with the executed mark of a queued call).
//! The first state access takes the module's state lock, held until the call's writes are
//! committed, so calls of one module that use state never interleave their read-modify-writes.

use super::CallScope;
use cage_sdk::abi::{Bytes, OwnedBytes};
use cage_sdk::{CallError, ErrorKind};
use std::collections::{BTreeMap, HashMap};
use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use tokio::sync::OwnedMutexGuard;

/// Longest state key, in bytes.
const KEY_MAX: usize = 1024;

/// One state lock per module of the cage.
#[derive(Default)]
pub struct StateLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl StateLocks {
    fn lock(&self, module: &str) -> OwnedMutexGuard<()> {
        let lock = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(module.to_owned())
            .or_default()
            .clone();
        // Executor threads are plain threads, outside any async runtime: blocking is allowed.
        lock.blocking_lock_owned()
    }
}

/// The state a call has touched: its pending writes and, once it touched state, the lock.
#[derive(Default)]
pub struct StateTx {
    /// Pending writes; `None` deletes.
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// The module's state lock, held from the first access.
    pub lock: Option<OwnedMutexGuard<()>>,
}

fn check_key(key: &[u8]) -> Result<(), CallError> {
    if key.is_empty() || key.len() > KEY_MAX {
        return Err(CallError::bad_arguments(format!(
            "a state key must be 1 to {KEY_MAX} bytes"
        )));
    }
    Ok(())
}

impl CallScope {
    fn state_tx(&self) -> std::cell::RefMut<'_, StateTx> {
        let mut tx = self.state.borrow_mut();
        if tx.lock.is_none() {
            tx.lock = Some(self.env.state_locks.lock(&self.module));
        }
        tx
    }

    fn state_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, CallError> {
        check_key(key)?;
        let tx = self.state_tx();
        if let Some(pending) = tx.writes.get(key) {
            return Ok(pending.clone());
        }
        self.env
            .store
            .state_get(&self.module, key)
            .map_err(|e| CallError::with_kind(ErrorKind::Internal, format!("state storage: {e}")))
    }

    fn state_put(&self, key: &[u8], value: Option<Vec<u8>>) -> Result<(), CallError> {
        check_key(key)?;
        self.state_tx().writes.insert(key.to_vec(), value);
        Ok(())
    }
}

/// # Safety
/// As the ABI's `HostStateGetFn`.
pub(super) unsafe extern "C" fn host_state_get(
    data: *const c_void,
    key: Bytes,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the running call; the view is live.
        let (scope, key) = unsafe { (&*(data as *const CallScope), key.as_slice()) };
        Ok(match scope.state_get(key)? {
            Some(value) => [&[1u8][..], &value].concat(),
            None => vec![0u8],
        })
    }));
    // SAFETY: the module passes a writable slot.
    unsafe { super::answer(out, result) }
}

/// # Safety
/// As the ABI's `HostStatePutFn`.
pub(super) unsafe extern "C" fn host_state_put(
    data: *const c_void,
    key: Bytes,
    value: Bytes,
    present: u32,
    out: *mut OwnedBytes,
) -> u32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host set `data` to the scope of the running call; the views are live.
        let (scope, key, value) = unsafe {
            (
                &*(data as *const CallScope),
                key.as_slice(),
                value.as_slice(),
            )
        };
        scope
            .state_put(key, (present != 0).then(|| value.to_vec()))
            .map(|()| Vec::new())
    }));
    // SAFETY: the module passes a writable slot.
    unsafe { super::answer(out, result) }
}
