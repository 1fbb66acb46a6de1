//! The module registry actor: which version of each module serves new calls, and hot reload.
//!
//! A file event (or the periodic rescan, for events a watcher missed) makes the registry
//! *examine* a module file: stat it; if it differs from the last version examined, wait for it
//! to settle, read it, prove it whole and load it on a blocking thread; then swap the new
//! version in. Calls hold an `Arc` of the version they started on, so they finish on old code,
//! and the old library is unloaded when the last of them ends.

use crate::loader::file_watch::{module_file, module_of_file, settle_and_read, FileStamp};
use crate::loader::library::sha256_hex;
use crate::loader::{LoadError, LoadedModule};
use crate::transport::protocol::{unix_ms, ModuleInfo};
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use notify::Watcher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

/// A file that never stops changing for this long is rejected.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// The current version of a module for a new call.
#[derive(Message)]
#[rtype(result = "Result<Arc<LoadedModule>, CallError>")]
pub struct Resolve(pub String);

/// A listing of every served module.
#[derive(Message)]
#[rtype(result = "Vec<ModuleInfo>")]
pub struct ListModules;

/// A file in the modules directory may have changed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FileChanged(pub PathBuf);

#[derive(Message)]
#[rtype(result = "()")]
struct Examined {
    module: String,
    outcome: Outcome,
}

enum Outcome {
    Loaded(LoadedModule, FileStamp),
    Unchanged(FileStamp),
    Rejected(LoadError, Option<FileStamp>),
}

struct Slot {
    file: PathBuf,
    current: Option<Arc<LoadedModule>>,
    examined: Option<FileStamp>,
    last_error: Option<(SystemTime, String)>,
    examining: bool,
    again: bool,
    draining: Vec<Weak<LoadedModule>>,
    loads: u64,
    rejected: u64,
}

/// The registry actor of one cage.
pub struct ModuleRegistry {
    cage: String,
    modules_dir: PathBuf,
    copy_dir: PathBuf,
    debounce: Duration,
    rescan: Duration,
    slots: BTreeMap<String, Slot>,
    seq: u64,
    watcher: Option<Box<dyn Watcher>>,
}

impl ModuleRegistry {
    /// A registry serving `modules` from `modules_dir`, loading private copies into `copy_dir`.
    /// Loads every module that is present now, before returning, so a cage answers calls as
    /// soon as it listens.
    pub fn new(
        cage: &str,
        modules: &[String],
        modules_dir: &Path,
        copy_dir: &Path,
        debounce: Duration,
        rescan: Duration,
    ) -> Self {
        // Copies left by an earlier process of this cage are never in use: clear them.
        if let Ok(entries) = std::fs::read_dir(copy_dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut registry = ModuleRegistry {
            cage: cage.to_owned(),
            modules_dir: modules_dir.to_owned(),
            copy_dir: copy_dir.to_owned(),
            debounce,
            rescan,
            slots: BTreeMap::new(),
            seq: 0,
            watcher: None,
        };
        for name in modules {
            let file = module_file(modules_dir, name);
            let slot = Slot {
                file: file.clone(),
                current: None,
                examined: None,
                last_error: None,
                examining: false,
                again: false,
                draining: Vec::new(),
                loads: 0,
                rejected: 0,
            };
            registry.slots.insert(name.clone(), slot);
            let tag = registry.next_tag();
            let outcome = examine_file(
                name,
                &file,
                None,
                None,
                copy_dir,
                &tag,
                Duration::from_millis(20),
            );
            registry.apply(name, outcome);
        }
        registry
    }

    fn next_tag(&mut self) -> String {
        self.seq += 1;
        format!("{}-{}", std::process::id(), self.seq)
    }

    /// Starts examining `name`'s file on a blocking thread unless it is unchanged or already
    /// being examined.
    fn examine(&mut self, name: &str, ctx: &mut Context<Self>) {
        let tag = self.next_tag();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.examining {
            slot.again = true;
            return;
        }
        let stamp = FileStamp::of(&slot.file).ok().flatten();
        if stamp == slot.examined {
            return;
        }
        slot.examining = true;
        let (file, previous, current_hash) = (
            slot.file.clone(),
            slot.examined,
            slot.current.as_ref().map(|m| m.sha256.clone()),
        );
        let (name, copy_dir, debounce, addr) = (
            name.to_owned(),
            self.copy_dir.clone(),
            self.debounce,
            ctx.address(),
        );
        actix_rt::task::spawn_blocking(move || {
            let outcome = examine_file(
                &name,
                &file,
                previous,
                current_hash,
                &copy_dir,
                &tag,
                debounce,
            );
            addr.do_send(Examined {
                module: name,
                outcome,
            });
        });
    }

    fn apply(&mut self, name: &str, outcome: Outcome) {
        let cage = self.cage.clone();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let file = slot.file.display().to_string();
        match outcome {
            Outcome::Loaded(module, stamp) => {
                slot.examined = Some(stamp);
                slot.loads += 1;
                let new = Arc::new(module);
                match slot.current.replace(new.clone()) {
                    Some(old) => {
                        tracing::info!(cage, module = name, file, "swapped in version {} (sha256 {}) for {}; calls already running finish on the old code", new.version, &new.sha256[..12], old.version);
                        slot.draining.push(Arc::downgrade(&old));
                    }
                    None => tracing::info!(
                        cage,
                        module = name,
                        file,
                        "loaded version {} (sha256 {}), methods: {}",
                        new.version,
                        &new.sha256[..12],
                        new.methods.join(", ")
                    ),
                }
            }
            Outcome::Unchanged(stamp) => slot.examined = Some(stamp),
            Outcome::Rejected(error, stamp) => {
                slot.examined = stamp;
                let keeping = match &slot.current {
                    Some(m) => format!("keeping version {} loaded", m.version),
                    None => {
                        "module not loaded: calls to it fail until a valid file arrives".to_owned()
                    }
                };
                tracing::error!(
                    cage,
                    module = name,
                    file,
                    "module {name}: {file} rejected: {error} — {keeping}"
                );
                slot.last_error = Some((SystemTime::now(), error.to_string()));
                slot.rejected += 1;
            }
        }
        slot.draining.retain(|w| w.strong_count() > 0);
    }

    fn start_watching(&mut self, ctx: &mut Context<Self>) {
        if let Err(e) = std::fs::create_dir_all(&self.modules_dir) {
            tracing::error!(dir = %self.modules_dir.display(), "cannot create the modules directory: {e}");
        }
        let addr = ctx.address();
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                for path in event.paths {
                    if module_of_file(&path).is_some() {
                        addr.do_send(FileChanged(path));
                    }
                }
            }
        };
        let watcher: notify::Result<Box<dyn Watcher>> = notify::recommended_watcher(handler.clone())
            .and_then(|mut w| w.watch(&self.modules_dir, notify::RecursiveMode::NonRecursive).map(|_| Box::new(w) as Box<dyn Watcher>))
            .or_else(|e| {
                tracing::warn!(dir = %self.modules_dir.display(), "file events unavailable ({e}); polling every second instead");
                let config = notify::Config::default().with_poll_interval(Duration::from_secs(1));
                let mut w = notify::PollWatcher::new(handler, config)?;
                w.watch(&self.modules_dir, notify::RecursiveMode::NonRecursive)?;
                Ok(Box::new(w) as Box<dyn Watcher>)
            });
        match watcher {
            Ok(w) => self.watcher = Some(w),
            Err(e) => {
                tracing::error!(dir = %self.modules_dir.display(), "cannot watch modules ({e}); relying on the periodic rescan")
            }
        }
    }
}

/// Reads, checks and loads one module file; never panics the registry, whatever the file holds.
fn examine_file(
    name: &str,
    file: &Path,
    previous: Option<FileStamp>,
    current_hash: Option<String>,
    copy_dir: &Path,
    tag: &str,
    debounce: Duration,
) -> Outcome {
    let (bytes, stamp) = match settle_and_read(file, debounce, SETTLE_LIMIT) {
        Ok(read) => read,
        Err(e) => return Outcome::Rejected(e, FileStamp::of(file).ok().flatten().or(previous)),
    };
    if current_hash.as_deref() == Some(sha256_hex(&bytes).as_str()) {
        return Outcome::Unchanged(stamp);
    }
    match LoadedModule::load(name, file, &bytes, copy_dir, tag) {
        Ok(module) => Outcome::Loaded(module, stamp),
        Err(e) => Outcome::Rejected(e, Some(stamp)),
    }
}

impl Actor for ModuleRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_watching(ctx);
        // Belt and braces: events can be lost (overflow, network filesystems), a stat per module
        // every few seconds is cheap.
        ctx.run_interval(self.rescan, |this, ctx| {
            let names: Vec<String> = this.slots.keys().cloned().collect();
            for name in names {
                this.examine(&name, ctx);
            }
        });
        // A file that appeared between `new` and now would have no event: look once more.
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in names {
            self.examine(&name, ctx);
        }
    }
}

impl Handler<FileChanged> for ModuleRegistry {
    type Result = ();

    fn handle(&mut self, FileChanged(path): FileChanged, ctx: &mut Context<Self>) {
        if let Some(name) = module_of_file(&path) {
            let name = name.to_owned();
            self.examine(&name, ctx);
        }
    }
}

impl Handler<Examined> for ModuleRegistry {
    type Result = ();

    fn handle(&mut self, msg: Examined, ctx: &mut Context<Self>) {
        self.apply(&msg.module, msg.outcome);
        let again = match self.slots.get_mut(&msg.module) {
            Some(slot) => {
                slot.examining = false;
                std::mem::take(&mut slot.again)
            }
            None => false,
        };
        if again {
            self.examine(&msg.module, ctx);
        }
    }
}

impl Handler<Resolve> for ModuleRegistry {
    type Result = Result<Arc<LoadedModule>, CallError>;

    fn handle(&mut self, Resolve(name): Resolve, _: &mut Context<Self>) -> Self::Result {
        match self.slots.get(&name) {
            Some(Slot {
                current: Some(m), ..
            }) => Ok(m.clone()),
            Some(slot) => Err(CallError::with_kind(
                ErrorKind::UnknownModule,
                format!(
                    "module {name} is not loaded: {}",
                    slot.last_error
                        .as_ref()
                        .map(|(_, e)| format!("{}: {e}", slot.file.display()))
                        .unwrap_or_else(|| "no valid file yet".into())
                ),
            )),
            None => Err(CallError::with_kind(
                ErrorKind::UnknownModule,
                format!(
                    "cage {} serves no module {name:?} (it serves: {})",
                    self.cage,
                    self.slots.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            )),
        }
    }
}

impl Handler<ListModules> for ModuleRegistry {
    type Result = Vec<ModuleInfo>;

    fn handle(&mut self, _: ListModules, _: &mut Context<Self>) -> Self::Result {
        self.slots
            .iter_mut()
            .map(|(name, slot)| {
                slot.draining.retain(|w| w.strong_count() > 0);
                let m = slot.current.as_ref();
                ModuleInfo {
                    name: name.clone(),
                    file: slot.file.display().to_string(),
                    version: m.map(|m| m.version.clone()),
                    methods: m.map(|m| m.methods.clone()).unwrap_or_default(),
                    sha256: m.map(|m| m.sha256.clone()),
                    loaded_at_ms: m.map(|m| unix_ms(m.loaded_at)),
                    last_error: slot.last_error.as_ref().map(|(_, e)| e.clone()),
                    last_error_at_ms: slot.last_error.as_ref().map(|(t, _)| unix_ms(*t)),
                    draining_versions: slot.draining.len(),
                    loads: slot.loads,
                    rejected: slot.rejected,
                }
            })
            .collect()
    }
}
