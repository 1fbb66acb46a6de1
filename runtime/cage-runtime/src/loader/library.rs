//! [`LoadedModule`]: one loaded version of a module, `dlopen`ed from a private copy.
//!
//! glibc caches `dlopen` by path, so every version is copied under a unique name first. The
//! copy is unloaded and deleted when the last `Arc` to it drops, i.e. when the last call that
//! started on this version has finished.

pub use super::descriptor::Described;
use super::descriptor::{self, DescriptorFields};
use super::{elf_check, LoadError};
use cage_sdk::abi::{
    self, Bytes, CallFn, EntryFn, FreeFn, HostContext, ModuleDescriptor, OwnedBytes,
};
use cage_sdk::{CallError, ErrorKind};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// A loaded, validated version of a module, ready to be called from any thread.
pub struct LoadedModule {
    /// Module name, as in its descriptor.
    pub name: String,
    /// Module version, as in its descriptor.
    pub version: String,
    /// Exported method names.
    pub methods: Vec<String>,
    /// SHA-256 of the library file, hex.
    pub sha256: String,
    /// When this version was loaded.
    pub loaded_at: SystemTime,
    /// The file it was loaded from.
    pub source: PathBuf,
    copy: PathBuf,
    /// Whether dropping this deletes `copy` (the cage's own load made it; a worker's did not).
    owns_copy: bool,
    /// The mapped library, or none when only worker processes map it.
    code: Option<Code>,
}

/// A library mapped into this process, and its two functions.
struct Code {
    call: CallFn,
    free: FreeFn,
    library: ManuallyDrop<libloading::Library>,
}

/// Loads a version's private copy in another process (a worker) and says what it found there;
/// `None` for a module whose code runs in this process, which then maps it itself. Given by
/// the cage's wiring, so a module run in workers is never mapped, nor its initialisers run,
/// in the cage.
pub type Probe =
    std::sync::Arc<dyn Fn(&str, &Path) -> Option<Result<Described, String>> + Send + Sync>;

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("sha256", &self.sha256)
            .finish()
    }
}

/// Hex SHA-256 of `bytes`, as `sha256sum` prints it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bytes of a descriptor text field, refused unread if longer than the limit.
fn raw(b: Bytes, what: &str) -> Result<Vec<u8>, LoadError> {
    descriptor::check_len(b.len, what)?;
    // SAFETY: the descriptor points at static data of the loaded library.
    Ok(unsafe { b.as_slice() }.to_vec())
}

/// Writes `bytes` as the new file `copy`, readable by this user only. The copy is created new
/// (`O_EXCL`, which also refuses a symlink), so nothing planted at its name is ever opened: not a
/// FIFO that would block the write, not a link that would send it elsewhere. A leftover of that
/// name is removed first.
fn write_copy(copy: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(copy)
    };
    let io = |action: &str, source| LoadError::Io {
        action: format!("{action} {}", copy.display()),
        source,
    };
    let mut file = match create() {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(copy).map_err(|e| io("remove the leftover", e))?;
            create()
        }
        r => r,
    }
    .map_err(|e| io("create", e))?;
    file.write_all(bytes).map_err(|e| io("write", e))
}

impl LoadedModule {
    /// Validates `bytes` (read from `source`) as module `expected`, writes them to a private copy
    /// in `copy_dir` named with `tag`, and loads that copy.
    /// With a `probe` that takes the module, the copy is loaded in a worker process instead.
    pub fn load(
        expected: &str,
        source: &Path,
        bytes: &[u8],
        copy_dir: &Path,
        tag: &str,
        probe: Option<&Probe>,
    ) -> Result<Self, LoadError> {
        elf_check::check(bytes)?;
        let sha256 = sha256_hex(bytes);
        std::fs::create_dir_all(copy_dir).map_err(|source| LoadError::Io {
            action: format!("create {}", copy_dir.display()),
            source,
        })?;
        let copy = copy_dir.join(format!("lib{expected}.{tag}.{}.so", &sha256[..12]));
        write_copy(&copy, bytes)?;
        let opened = match probe.and_then(|probe| probe(expected, &copy)) {
            Some(Ok(described)) => Ok(Self::described(described, sha256, source, &copy, None)),
            Some(Err(reason)) => Err(LoadError::Worker(reason)),
            None => Self::open(expected, source, &copy, sha256),
        };
        match opened {
            Ok(m) => Ok(m),
            Err(e) => {
                let _ = std::fs::remove_file(&copy);
                Err(e)
            }
        }
    }

    /// Loads the file `path` where it lies, with the same checks as [`LoadedModule::load`] but
    /// no copy made and none deleted: a worker process's view of a version's private copy,
    /// which the cage owns.
    pub fn open_in_place(expected: &str, path: &Path) -> Result<Self, LoadError> {
        let bytes = std::fs::read(path).map_err(|source| LoadError::Io {
            action: format!("read {}", path.display()),
            source,
        })?;
        elf_check::check(&bytes)?;
        let mut module = Self::open(expected, path, path, sha256_hex(&bytes))?;
        module.owns_copy = false;
        Ok(module)
    }

    /// The private copy this version was loaded from (the file its worker processes load).
    pub fn copy(&self) -> &Path {
        &self.copy
    }

    fn open(expected: &str, source: &Path, copy: &Path, sha256: String) -> Result<Self, LoadError> {
        // RTLD_NOW: an unresolvable symbol fails here, at load, instead of at some later call.
        // SAFETY: the file was proven a whole ELF shared object exporting our entry symbol;
        // running its initialisers is the accepted cost of loading a module.
        let library = unsafe {
            libloading::os::unix::Library::open(
                Some(copy),
                libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL,
            )
        }
        .map_err(|e| LoadError::Dlopen(e.to_string()))?;
        let library: libloading::Library = library.into();
        // SAFETY: the symbol's type is fixed by the ABI for this entry name.
        let entry: EntryFn = unsafe {
            *library
                .get::<EntryFn>(abi::ENTRY_SYMBOL.as_bytes())
                .map_err(|e| LoadError::Dlopen(e.to_string()))?
        };
        // SAFETY: the entry function takes nothing and returns a pointer to a static descriptor.
        let descriptor: *const ModuleDescriptor = unsafe { entry() };
        if descriptor.is_null() {
            return Err(LoadError::BadDescriptor(
                "entry symbol returned null".into(),
            ));
        }
        // The ABI version is the first field in every version of the descriptor, so it is safe
        // to read before trusting the rest of the layout.
        // SAFETY: non-null pointer to the module's static descriptor.
        let abi_version = unsafe { std::ptr::addr_of!((*descriptor).abi_version).read() };
        if abi_version != abi::ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                found: format!("a descriptor of ABI {abi_version}"),
                expected: abi::ABI_VERSION,
                symbol: abi::ENTRY_SYMBOL,
            });
        }
        // SAFETY: same ABI version, so the layout is ours.
        let d = unsafe { &*descriptor };
        descriptor::check_table(d.method_count, d.methods.is_null())?;
        let mut fields = DescriptorFields {
            abi_version,
            descriptor_size: d.descriptor_size,
            ..DescriptorFields::default()
        };
        if (d.descriptor_size as usize) >= std::mem::size_of::<ModuleDescriptor>() {
            fields.name = raw(d.name, "module name")?;
            fields.version = raw(d.version, "module version")?;
            for i in 0..d.method_count {
                // SAFETY: `methods` points at `method_count` entries, checked non-null above.
                fields
                    .methods
                    .push(raw(unsafe { *d.methods.add(i) }, "method name")?);
            }
        }
        // Checked before the library is kept: a module refused here is unmapped again.
        let described = descriptor::check(expected, &fields)?;
        let code = Code {
            call: d.call,
            free: d.free,
            library: ManuallyDrop::new(library),
        };
        Ok(Self::described(described, sha256, source, copy, Some(code)))
    }

    /// The version `described`, loaded now from its private `copy` of `source`; `code` is the
    /// mapped library, none when it runs only in worker processes.
    fn described(
        described: Described,
        sha256: String,
        source: &Path,
        copy: &Path,
        code: Option<Code>,
    ) -> Self {
        let Described {
            name,
            version,
            methods,
        } = described;
        LoadedModule {
            name,
            version,
            methods,
            sha256,
            loaded_at: SystemTime::now(),
            source: source.to_owned(),
            copy: copy.to_owned(),
            owns_copy: true,
            code,
        }
    }

    /// Whether the module exports `method`.
    pub fn has_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }

    /// Runs `method` with JSON `args` in this version, on the calling thread.
    pub fn call(
        &self,
        host: &HostContext,
        method: &str,
        args: &[u8],
    ) -> Result<Vec<u8>, CallError> {
        let (status, bytes) = self.call_raw(host, method, args);
        decode_outcome(&self.name, status, bytes)
    }

    /// Runs `method` as [`LoadedModule::call`] does, answering the ABI status and the bytes
    /// as the module wrote them (a worker passes them on to its cage unread).
    pub fn call_raw(&self, host: &HostContext, method: &str, args: &[u8]) -> (u32, Vec<u8>) {
        let Some(code) = &self.code else {
            let e = CallError::with_kind(
                ErrorKind::Internal,
                format!(
                    "module {} {} is loaded in worker processes only, not in the cage",
                    self.name, self.version
                ),
            );
            return (
                abi::status::ERROR,
                serde_json::to_vec(&e).unwrap_or_default(),
            );
        };
        let mut out = OwnedBytes::empty();
        // SAFETY: the module's `call` never unwinds (the SDK catches panics) and writes `out`;
        // `host`, `method` and `args` outlive the call.
        let status = unsafe {
            (code.call)(
                host,
                Bytes::from_slice(method.as_bytes()),
                Bytes::from_slice(args),
                &mut out,
            )
        };
        // SAFETY: `out` is the module's live buffer; copy it, then give it back to its allocator.
        let bytes = unsafe { out.as_slice() }.to_vec();
        // SAFETY: the module allocated `out`, so the module's `free` releases it, once.
        unsafe { (code.free)(out) };
        (status, bytes)
    }
}

/// What module `module` answered with ABI `status` and `bytes`: its JSON result, or its error.
pub fn decode_outcome(module: &str, status: u32, bytes: Vec<u8>) -> Result<Vec<u8>, CallError> {
    if status == abi::status::OK {
        Ok(bytes)
    } else {
        Err(
            serde_json::from_slice::<CallError>(&bytes).unwrap_or_else(|_| CallError {
                kind: ErrorKind::Internal,
                message: format!(
                    "module {module} returned status {status} with an unreadable error: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }),
        )
    }
}

impl Drop for LoadedModule {
    fn drop(&mut self) {
        if let Some(code) = &mut self.code {
            // SAFETY: no call into this version is running: every call holds an `Arc` to it,
            // and this is the last one going away. Function pointers into it go with `self`.
            unsafe { ManuallyDrop::drop(&mut code.library) };
        }
        if !self.owns_copy {
            return;
        }
        if let Err(e) = std::fs::remove_file(&self.copy) {
            tracing::warn!(module = %self.name, copy = %self.copy.display(), "cannot delete unloaded copy: {e}");
        }
        tracing::debug!(module = %self.name, version = %self.version, "old version unloaded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_replaces_what_was_planted_at_its_name_without_opening_it() {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("libx.1-1.abc.so");
        // A FIFO: writing through it would block until someone reads.
        let c = std::ffi::CString::new(copy.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        write_copy(&copy, b"first").unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), b"first");
        // A symlink: writing through it would overwrite its target.
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep me").unwrap();
        std::fs::remove_file(&copy).unwrap();
        std::os::unix::fs::symlink(&target, &copy).unwrap();
        write_copy(&copy, b"second").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
        assert_eq!(std::fs::read(&copy).unwrap(), b"second");
        let meta = std::fs::symlink_metadata(&copy).unwrap();
        assert!(meta.file_type().is_file());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }
}
