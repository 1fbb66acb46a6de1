//! The module registry actor: which version of each module serves new calls, and hot reload.
//!
//! A file event (or the periodic rescan, for events a watcher missed) makes the registry
//! *examine* a module file: stat it; if it differs from the last version examined, wait for it
//! to settle, read it, prove it whole and load it on a thread of its own; then swap the new
//! version in. Calls hold an `Arc` of the version they started on, so they finish on old code,
//! and the old library is unloaded when the last of them ends.
//!
//! No file can hold the registry up: what is not a regular file or is over `max_module_bytes`
//! is refused from its `stat` and never read ([`crate::loader::module_file`]); each examination
//! runs on its own plain thread, which neither a pool that requests can fill nor the runtime's
//! shutdown waits for; one that never finishes (a hung filesystem) is given up after
//! [`STUCK_AFTER`]. A refusal is logged once per version of the file.

use crate::loader::file_watch::{module_file, module_of_file, settle_and_read, FileStamp};
use crate::loader::library::sha256_hex;
use crate::loader::library::Probe;
use crate::loader::{LoadError, LoadedModule};
use crate::model::clock::unix_ms;
use crate::transport::protocol::ModuleInfo;
use actix::prelude::*;
use cage_sdk::{CallError, ErrorKind};
use notify::Watcher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

/// A file that never stops changing for this long is rejected.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

/// At start-up a file still changing after this long is left to the background examination:
/// the cage starts serving its other modules instead of waiting for it.
const STARTUP_SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How long the file must stay unchanged at start-up (no earlier version can be serving yet).
const STARTUP_DEBOUNCE: Duration = Duration::from_millis(20);

/// An examination still running after this long is given up: the file is refused until it
/// changes, and the module's later files are examined again.
pub const STUCK_AFTER: Duration = Duration::from_secs(2 * SETTLE_LIMIT.as_secs());

/// How the registry watches and reads module files.
#[derive(Clone)]
pub struct WatchSettings {
    /// How long a module file must stay unchanged before it is read.
    pub debounce: Duration,
    /// How often every module file is looked at again, in case a file event was missed.
    pub rescan: Duration,
    /// Largest module file read; a larger one is refused unread.
    pub max_module_bytes: u64,
    /// Loads modules run in worker processes in a worker instead of this process.
    pub probe: Option<Probe>,
    /// How many pending calls here target each method of a module, asked when a new version of
    /// it loads (off the registry's thread), to say which methods it lacks.
    pub in_use: Option<MethodsInUse>,
    /// A new version lacking methods that pending calls target is refused (the one loaded
    /// stays); otherwise it loads, and the gap is logged and shown.
    pub strict_methods: bool,
}

/// How many pending calls target each method of module `name` on this cage.
pub type MethodsInUse = Arc<dyn Fn(&str) -> BTreeMap<String, usize> + Send + Sync>;

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
    /// Which examination this is the outcome of.
    id: u64,
    outcome: Outcome,
}

/// An examination under way.
#[derive(Clone, Copy)]
struct Examining {
    id: u64,
    since: Instant,
    /// The file's stamp when it started, to remember as refused if it never finishes.
    stamp: Option<FileStamp>,
}

enum Outcome {
    /// Loaded; with the methods it lacks that pending calls target, and how many target each.
    Loaded(LoadedModule, FileStamp, Vec<(String, usize)>),
    Unchanged(FileStamp),
    Rejected(LoadError, Option<FileStamp>),
}

struct Slot {
    file: PathBuf,
    current: Option<Arc<LoadedModule>>,
    examined: Option<FileStamp>,
    last_error: Option<(SystemTime, String)>,
    examining: Option<Examining>,
    again: bool,
    draining: Vec<Weak<LoadedModule>>,
    loads: u64,
    rejected: u64,
    /// Methods the loaded version lacks that pending calls targeted when it loaded.
    missing: Vec<(String, usize)>,
}

/// The registry actor of one cage.
pub struct ModuleRegistry {
    cage: String,
    modules_dir: PathBuf,
    copy_dir: PathBuf,
    settings: WatchSettings,
    slots: BTreeMap<String, Slot>,
    seq: u64,
    watcher: Option<Box<dyn Watcher>>,
}

impl ModuleRegistry {
    /// A registry serving `modules` from `modules_dir`, loading private copies into `copy_dir`.
    /// Loads every module that is present and settled now, before returning, so a cage answers
    /// calls as soon as it listens; a file that is refused or still changing does not hold
    /// the others up.
    pub fn new(
        cage: &str,
        modules: &[String],
        modules_dir: &Path,
        copy_dir: &Path,
        settings: WatchSettings,
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
            settings: settings.clone(),
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
                examining: None,
                again: false,
                draining: Vec::new(),
                loads: 0,
                rejected: 0,
                missing: Vec::new(),
            };
            registry.slots.insert(name.clone(), slot);
            let (_, tag) = registry.next_tag();
            let examination = Examination {
                name: name.clone(),
                file: file.clone(),
                previous: None,
                current_hash: None,
                copy_dir: copy_dir.to_owned(),
                tag,
                debounce: STARTUP_DEBOUNCE,
                settle_limit: STARTUP_SETTLE_LIMIT,
                max_bytes: settings.max_module_bytes,
                probe: settings.probe.clone(),
                // The first version of a cage's start: calls to methods it lacks fail as
                // unknown methods when they run.
                in_use: None,
                strict: false,
            };
            match examine_file(&examination) {
                // Not refused: the background examination started with the actor takes it
                // once it settles.
                Outcome::Rejected(LoadError::Unsettled { .. }, _) => tracing::info!(
                    cage,
                    module = name.as_str(),
                    file = %file.display(),
                    "module {name}: {} is still changing; it is loaded once it settles",
                    file.display()
                ),
                outcome => registry.apply(name, outcome),
            }
        }
        registry
    }

    /// A number for the next examination, and the tag naming its private copy.
    fn next_tag(&mut self) -> (u64, String) {
        self.seq += 1;
        (self.seq, format!("{}-{}", std::process::id(), self.seq))
    }

    /// Starts examining `name`'s file on a thread of its own unless it is unchanged or already
    /// being examined.
    fn examine(&mut self, name: &str, ctx: &mut Context<Self>) {
        let (id, tag) = self.next_tag();
        let settings = self.settings.clone();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        if slot.examining.is_some() {
            slot.again = true;
            return;
        }
        let stamp = FileStamp::of(&slot.file).ok().flatten();
        if stamp == slot.examined {
            return;
        }
        let examination = Examination {
            name: name.to_owned(),
            file: slot.file.clone(),
            previous: slot.examined,
            current_hash: slot.current.as_ref().map(|m| m.sha256.clone()),
            copy_dir: self.copy_dir.clone(),
            tag,
            debounce: settings.debounce,
            settle_limit: SETTLE_LIMIT,
            max_bytes: settings.max_module_bytes,
            probe: settings.probe.clone(),
            // A new version replacing one: the calls waiting for the old one are counted.
            in_use: settings.in_use.clone().filter(|_| slot.current.is_some()),
            strict: settings.strict_methods,
        };
        let addr = ctx.address();
        // A plain thread, not the runtime's blocking pool: requests cannot fill it ahead of
        // us, and a stuck one does not keep the process from exiting.
        let spawned = std::thread::Builder::new()
            .name(format!("examine-{name}"))
            .spawn(move || {
                let outcome = examine_file(&examination);
                addr.do_send(Examined {
                    module: examination.name,
                    id,
                    outcome,
                });
            });
        match spawned {
            Ok(_) => {
                slot.examining = Some(Examining {
                    id,
                    since: Instant::now(),
                    stamp,
                })
            }
            // Nothing is marked examined, so the next rescan tries again.
            Err(e) => tracing::error!(
                cage = %self.cage,
                module = name,
                "module {name}: cannot start a thread to examine {}: {e}",
                slot.file.display()
            ),
        }
    }

    /// Gives up examinations that have run for longer than [`STUCK_AFTER`] at `now`: their
    /// file is refused until it changes, so the module's next file is examined again.
    fn give_up_stuck(&mut self, now: Instant) {
        let stuck: Vec<(String, Examining)> = self
            .slots
            .iter()
            .filter_map(|(name, slot)| {
                slot.examining
                    .filter(|e| now.duration_since(e.since) > STUCK_AFTER)
                    .map(|e| (name.clone(), e))
            })
            .collect();
        for (name, e) in stuck {
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.examining = None;
            }
            let waited = now.duration_since(e.since);
            self.apply(
                &name,
                Outcome::Rejected(LoadError::Stuck { waited }, e.stamp),
            );
        }
    }

    /// Takes the outcome of an examination; whether the file changed meanwhile and is to be
    /// examined again.
    fn finished(&mut self, msg: Examined) -> bool {
        let Some(slot) = self.slots.get_mut(&msg.module) else {
            return false;
        };
        match slot.examining {
            Some(e) if e.id == msg.id => slot.examining = None,
            // Given up as stuck, and nothing newer under way: its outcome still describes the
            // file version it read.
            None => {}
            // Given up, and a newer examination is under way: that one decides.
            Some(_) => return false,
        }
        let again = std::mem::take(&mut slot.again);
        self.apply(&msg.module, msg.outcome);
        again
    }

    fn apply(&mut self, name: &str, outcome: Outcome) {
        let cage = self.cage.clone();
        let Some(slot) = self.slots.get_mut(name) else {
            return;
        };
        let file = slot.file.display().to_string();
        match outcome {
            Outcome::Loaded(module, stamp, missing) => {
                slot.examined = Some(stamp);
                slot.loads += 1;
                if !missing.is_empty() {
                    tracing::warn!(
                        cage,
                        module = name,
                        file,
                        "version {} lacks method(s) that pending calls target: {}; they fail as unknown methods when they run (strict_methods = true in the cage file refuses such a version)",
                        module.version,
                        missing_words(&missing)
                    );
                }
                slot.missing = missing;
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
                        "no version loaded: calls to it fail until a valid file arrives".to_owned()
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
            // Reads of a module file (by the cage itself, copying it) change nothing.
            if let Some(event) = event
                .ok()
                .filter(|e| !matches!(e.kind, notify::EventKind::Access(_)))
            {
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

/// One examination of a module file: what to read, and what to compare it with.
struct Examination {
    name: String,
    file: PathBuf,
    /// The stamp of the version examined last.
    previous: Option<FileStamp>,
    /// SHA-256 of the version serving now.
    current_hash: Option<String>,
    copy_dir: PathBuf,
    /// Names the private copy.
    tag: String,
    debounce: Duration,
    settle_limit: Duration,
    max_bytes: u64,
    probe: Option<Probe>,
    /// Counts the pending calls per method, to name those the new version lacks.
    in_use: Option<MethodsInUse>,
    /// Refuse a version that lacks any of them.
    strict: bool,
}

/// Reads, checks and loads one module file; never panics the registry, whatever the file holds.
fn examine_file(exam: &Examination) -> Outcome {
    let file = &exam.file;
    let (bytes, stamp) =
        match settle_and_read(file, exam.debounce, exam.settle_limit, exam.max_bytes) {
            Ok(read) => read,
            Err(e) => {
                return Outcome::Rejected(e, FileStamp::of(file).ok().flatten().or(exam.previous))
            }
        };
    if exam.current_hash.as_deref() == Some(sha256_hex(&bytes).as_str()) {
        return Outcome::Unchanged(stamp);
    }
    match LoadedModule::load(
        &exam.name,
        file,
        &bytes,
        &exam.copy_dir,
        &exam.tag,
        exam.probe.as_ref(),
    ) {
        Ok(module) => {
            let missing: Vec<(String, usize)> = exam
                .in_use
                .as_ref()
                .map(|in_use| in_use(&exam.name))
                .unwrap_or_default()
                .into_iter()
                .filter(|(method, _)| !module.methods.contains(method))
                .collect();
            if exam.strict && !missing.is_empty() {
                let e = LoadError::MissingMethods {
                    version: module.version.clone(),
                    missing: missing_words(&missing),
                };
                return Outcome::Rejected(e, Some(stamp));
            }
            Outcome::Loaded(module, stamp, missing)
        }
        Err(e) => Outcome::Rejected(e, Some(stamp)),
    }
}

/// Methods and the pending calls targeting each, in words: `charge (12 calls), refund (1 call)`.
fn missing_words(missing: &[(String, usize)]) -> String {
    missing
        .iter()
        .map(|(m, n)| format!("{m} ({n} call{})", if *n == 1 { "" } else { "s" }))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Actor for ModuleRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_watching(ctx);
        // Belt and braces: events can be lost (overflow, network filesystems), a stat per module
        // every few seconds is cheap.
        ctx.run_interval(self.settings.rescan, |this, ctx| {
            this.give_up_stuck(Instant::now());
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
        let module = msg.module.clone();
        if self.finished(msg) {
            self.examine(&module, ctx);
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
                    workers: Default::default(),
                    missing_methods: slot.missing.clone(),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    const LIMIT: u64 = 1024 * 1024;

    fn settings() -> WatchSettings {
        WatchSettings {
            debounce: Duration::from_millis(10),
            rescan: Duration::from_secs(1),
            max_module_bytes: LIMIT,
            probe: None,
            in_use: None,
            strict_methods: false,
        }
    }

    fn last_error(r: &ModuleRegistry, name: &str) -> Option<String> {
        r.slots[name].last_error.as_ref().map(|(_, e)| e.clone())
    }

    #[test]
    fn start_up_refuses_strange_files_at_once_and_leaves_a_changing_one_for_later() {
        let dir = tempfile::tempdir().unwrap();
        let modules = dir.path().join("modules");
        std::fs::create_dir(&modules).unwrap();
        let c = std::ffi::CString::new(module_file(&modules, "fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        std::os::unix::fs::symlink("/dev/zero", module_file(&modules, "zero")).unwrap();
        std::fs::File::create(module_file(&modules, "big"))
            .unwrap()
            .set_len(LIMIT + 1)
            .unwrap();
        let grow = module_file(&modules, "grow");
        std::fs::write(&grow, b"\x7fELF").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new().append(true).open(grow).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    f.write_all(b"more").unwrap();
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        let names: Vec<String> = ["fifo", "zero", "big", "grow"].map(String::from).into();
        let r = ModuleRegistry::new(
            "demo",
            &names,
            &modules,
            &dir.path().join("copies"),
            settings(),
        );
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        for (name, reason) in [
            ("fifo", "not a regular file (a FIFO)"),
            ("zero", "not a regular file (a character device)"),
            (
                "big",
                "(1048577 bytes) is over max_module_bytes = 1.0 MiB (1048576 bytes)",
            ),
        ] {
            let e = last_error(&r, name).unwrap_or_default();
            assert!(e.contains(reason), "{name}: {e}");
            assert_eq!(r.slots[name].rejected, 1, "{name}");
            assert!(
                r.slots[name].examined.is_some(),
                "{name}: remembered as refused"
            );
        }
        // Still changing: neither refused nor remembered, so the actor examines it once started.
        assert_eq!(last_error(&r, "grow"), None);
        assert_eq!(r.slots["grow"].examined, None);
    }

    #[test]
    fn a_stuck_examination_is_given_up_and_a_late_outcome_yields_to_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("some-file");
        std::fs::write(&file, b"x").unwrap();
        let stamp = FileStamp::of(&file).unwrap();
        let other = stamp.map(|s| FileStamp { size: 99, ..s });
        let mut r = ModuleRegistry::new(
            "demo",
            &["x".to_owned()],
            dir.path(),
            &dir.path().join("copies"),
            settings(),
        );
        let since = Instant::now();
        r.slots.get_mut("x").unwrap().examining = Some(Examining {
            id: 7,
            since,
            stamp,
        });
        r.give_up_stuck(since + STUCK_AFTER / 2);
        assert!(r.slots["x"].examining.is_some(), "not stuck yet");
        r.give_up_stuck(since + STUCK_AFTER + Duration::from_secs(1));
        assert!(r.slots["x"].examining.is_none());
        assert_eq!(
            r.slots["x"].examined, stamp,
            "refused until the file changes"
        );
        let e = last_error(&r, "x").unwrap();
        assert!(e.contains("did not finish after 1m 1s"), "{e}");

        // A newer examination under way decides; the late outcome of the stuck one is dropped.
        r.slots.get_mut("x").unwrap().examining = Some(Examining {
            id: 8,
            since: Instant::now(),
            stamp: other,
        });
        let late = |outcome| Examined {
            module: "x".into(),
            id: 7,
            outcome,
        };
        assert!(!r.finished(late(Outcome::Unchanged(other.unwrap()))));
        assert_eq!(r.slots["x"].examined, stamp);
        assert!(r.slots["x"].examining.is_some());
        r.slots.get_mut("x").unwrap().again = true;
        let again = r.finished(Examined {
            module: "x".into(),
            id: 8,
            outcome: Outcome::Rejected(LoadError::NotElf("no ELF magic".into()), other),
        });
        assert!(again, "a change seen meanwhile is examined next");
        assert!(r.slots["x"].examining.is_none());
        assert_eq!(r.slots["x"].examined, other);
        // With nothing under way, a late outcome still describes the version it read.
        r.finished(late(Outcome::Unchanged(stamp.unwrap())));
        assert_eq!(r.slots["x"].examined, stamp);
    }
}
