//! The deployment files under `deploy/` agree with each other and with the workspace: the
//! systemd unit, the Kubernetes manifests and the Dockerfile run the `cage` binary this
//! workspace builds, on the site they set up, with the port, data directory and cluster map
//! that the site files in the ConfigMap name.
//!
//! Nothing here starts a cage. The site files inside the ConfigMap are read as plain TOML, not
//! with the cage's own parser: this test is about the deployment files agreeing, and the cage's
//! parser has its own tests.

use serde::Deserialize;
use serde_yaml_ng::Value as Yaml;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The cage's `shutdown_grace` when its file names none.
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const KUBERNETES_DIR: &str = "deploy/kubernetes";
const SYSTEMD_UNIT: &str = "deploy/systemd/cage@.service";
const DOCKERFILE: &str = "deploy/Dockerfile";
/// Where the systemd unit's site is.
const SYSTEMD_SITE: &str = "/etc/cage";

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel))
        .unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

fn toml_file(what: &str, text: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"))
}

/// The `cage` binary the workspace builds: the `[[bin]]` of the runtime crate, and its package.
struct Binary {
    package: String,
    name: String,
}

fn binary() -> Binary {
    let manifest = toml_file("runtime/cage/Cargo.toml", &read("runtime/cage/Cargo.toml"));
    let package = manifest["package"]["name"]
        .as_str()
        .expect("package.name")
        .to_owned();
    let bins = manifest["bin"]
        .as_array()
        .expect("runtime/cage/Cargo.toml has [[bin]]");
    assert_eq!(
        bins.len(),
        1,
        "runtime/cage/Cargo.toml: expected one [[bin]]"
    );
    let name = bins[0]["name"].as_str().expect("[[bin]] name").to_owned();
    Binary { package, name }
}

// ---------------------------------------------------------------------------------------------
// YAML

/// One object of a manifest file.
struct Object {
    file: String,
    doc: Yaml,
}

impl Object {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or_default()
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or_default()
    }

    /// The value at a dotted path (numbers index lists), or a failure naming file and path.
    fn at(&self, path: &str) -> &Yaml {
        at(
            &self.doc,
            path,
            &format!("{} ({} {})", self.file, self.kind(), self.name()),
        )
    }
}

fn at<'a>(value: &'a Yaml, path: &str, whose: &str) -> &'a Yaml {
    let mut v = value;
    for part in path.split('.') {
        let next = match part.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(part),
        };
        v = next.unwrap_or_else(|| panic!("{whose}: no `{path}` (missing at `{part}`)"));
    }
    v
}

fn text<'a>(value: &'a Yaml, path: &str, whose: &str) -> &'a str {
    at(value, path, whose)
        .as_str()
        .unwrap_or_else(|| panic!("{whose}: `{path}` is not a string"))
}

fn list<'a>(value: &'a Yaml, path: &str, whose: &str) -> &'a [Yaml] {
    at(value, path, whose)
        .as_sequence()
        .unwrap_or_else(|| panic!("{whose}: `{path}` is not a list"))
}

fn number(value: &Yaml, path: &str, whose: &str) -> u64 {
    at(value, path, whose)
        .as_u64()
        .unwrap_or_else(|| panic!("{whose}: `{path}` is not a number"))
}

/// The list entry whose `name` is `name`.
fn entry<'a>(items: &'a [Yaml], name: &str) -> Option<&'a Yaml> {
    items.iter().find(|i| i["name"].as_str() == Some(name))
}

/// Every object of every YAML file in `deploy/kubernetes`.
struct Kube {
    /// The YAML files, by name.
    files: BTreeSet<String>,
    objects: Vec<Object>,
}

impl Kube {
    fn load() -> Kube {
        let dir = workspace().join(KUBERNETES_DIR);
        let mut files = BTreeSet::new();
        let mut objects = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{KUBERNETES_DIR}: {e}")) {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                continue;
            }
            let rel = format!("{KUBERNETES_DIR}/{name}");
            let source = read(&rel);
            for (i, document) in serde_yaml_ng::Deserializer::from_str(&source).enumerate() {
                let doc = Yaml::deserialize(document)
                    .unwrap_or_else(|e| panic!("{rel}: document {} is not valid YAML: {e}", i + 1));
                if doc.is_null() {
                    continue;
                }
                let object = Object {
                    file: rel.clone(),
                    doc,
                };
                assert!(
                    object.doc["apiVersion"].as_str().is_some() && !object.kind().is_empty(),
                    "{rel}: document {} has no apiVersion or kind",
                    i + 1
                );
                assert!(
                    object.kind() == "Kustomization" || !object.name().is_empty(),
                    "{rel}: the {} has no metadata.name",
                    object.kind()
                );
                objects.push(object);
            }
            files.insert(name);
        }
        Kube { files, objects }
    }

    /// The one object of `kind`.
    fn one(&self, kind: &str) -> &Object {
        let found: Vec<&Object> = self.objects.iter().filter(|o| o.kind() == kind).collect();
        assert_eq!(
            found.len(),
            1,
            "{KUBERNETES_DIR}: expected one {kind}, found {}",
            found.len()
        );
        found[0]
    }

    fn named(&self, kind: &str, name: &str) -> &Object {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| panic!("{KUBERNETES_DIR}: no {kind} named {name:?}"))
    }

    /// The text of `key` in ConfigMap `name`.
    fn config_map_entry(&self, name: &str, key: &str) -> &str {
        let map = self.named("ConfigMap", name);
        // Keys such as `billing.toml` hold a dot, so no dotted path here.
        map.at("data")
            .get(key)
            .and_then(Yaml::as_str)
            .unwrap_or_else(|| panic!("{}: ConfigMap {name} has no data key {key:?}", map.file))
    }
}

/// Where a file or directory inside a container comes from.
#[derive(Debug, PartialEq)]
enum Source {
    ConfigMap {
        name: String,
        key: String,
        mode: u32,
    },
    Secret {
        name: String,
        key: String,
        mode: u32,
    },
    EmptyDir,
    /// The StatefulSet's volumeClaimTemplate of that name.
    Claim(String),
    /// A volume of another type.
    Other(String),
}

/// Kubernetes' mode for files of ConfigMap and Secret volumes that set none (0644).
const KUBE_DEFAULT_MODE: u32 = 0o644;

/// The StatefulSet and the pods it makes.
struct StatefulSet<'a> {
    object: &'a Object,
}

impl<'a> StatefulSet<'a> {
    fn pod(&self) -> &'a Yaml {
        self.object.at("spec.template.spec")
    }

    fn whose(&self) -> String {
        format!("{} (StatefulSet {})", self.object.file, self.object.name())
    }

    /// The container named `cage`, or the only one.
    fn container(&self) -> &'a Yaml {
        let containers = list(self.pod(), "containers", &self.whose());
        entry(containers, "cage").unwrap_or_else(|| {
            assert_eq!(
                containers.len(),
                1,
                "{}: no container named `cage`",
                self.whose()
            );
            &containers[0]
        })
    }

    fn init_containers(&self) -> &'a [Yaml] {
        self.pod()["initContainers"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    fn command(&self, container: &Yaml) -> Vec<String> {
        let mut words: Vec<String> = Vec::new();
        for key in ["command", "args"] {
            if let Some(items) = container[key].as_sequence() {
                words.extend(
                    items
                        .iter()
                        .map(|w| w.as_str().unwrap_or_default().to_owned()),
                );
            }
        }
        words
    }

    /// What `path` inside `container` is: the volume behind the deepest mount holding it, and
    /// for ConfigMap and Secret volumes the key and file mode that make that file. `None` if
    /// no mount holds it, or the volume has no such file.
    fn file(&self, container: &Yaml, path: &str) -> Option<Source> {
        let whose = self.whose();
        let mounts = container["volumeMounts"].as_sequence()?;
        let (mount, rel) = mounts
            .iter()
            .filter_map(|m| {
                let mount_path = m["mountPath"].as_str()?.trim_end_matches('/');
                if let Some(sub) = m["subPath"].as_str() {
                    return (mount_path == path).then(|| (m, sub.to_owned()));
                }
                if mount_path == path {
                    return Some((m, String::new()));
                }
                let rel = path.strip_prefix(mount_path)?.strip_prefix('/')?;
                Some((m, rel.to_owned()))
            })
            .max_by_key(|(m, _)| m["mountPath"].as_str().map_or(0, str::len))?;
        let volume_name = text(mount, "name", &whose);
        let volumes = self.pod()["volumes"]
            .as_sequence()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(volume) = entry(volumes, volume_name) else {
            let templates = self.object.doc["spec"]["volumeClaimTemplates"]
                .as_sequence()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let claim = templates
                .iter()
                .any(|t| t["metadata"]["name"].as_str() == Some(volume_name));
            assert!(claim, "{whose}: mount of unknown volume {volume_name:?}");
            return Some(Source::Claim(volume_name.to_owned()));
        };
        if volume.get("emptyDir").is_some() {
            return Some(Source::EmptyDir);
        }
        if let Some(projected) = volume.get("projected") {
            let mode = mode_of(projected, KUBE_DEFAULT_MODE);
            return list(projected, "sources", &whose)
                .iter()
                .find_map(|source| projected_file(source, &rel, mode));
        }
        if let Some(source) = volume.get("persistentVolumeClaim") {
            return Some(Source::Claim(text(source, "claimName", &whose).to_owned()));
        }
        projected_file(volume, &rel, KUBE_DEFAULT_MODE).or_else(|| {
            let kind = volume
                .as_mapping()
                .and_then(|m| m.keys().filter_map(Yaml::as_str).find(|k| *k != "name"))
                .unwrap_or("unknown");
            (!matches!(kind, "configMap" | "secret")).then(|| Source::Other(kind.to_owned()))
        })
    }
}

fn mode_of(value: &Yaml, otherwise: u32) -> u32 {
    value
        .get("defaultMode")
        .or_else(|| value.get("mode"))
        .and_then(Yaml::as_u64)
        .map_or(otherwise, |m| m as u32)
}

/// The file at `rel` of a `configMap` or `secret` volume (or projected source).
fn projected_file(source: &Yaml, rel: &str, default_mode: u32) -> Option<Source> {
    let (kind, spec) = if let Some(spec) = source.get("configMap") {
        ("configMap", spec)
    } else {
        ("secret", source.get("secret")?)
    };
    let name = spec
        .get("name")
        .or_else(|| spec.get("secretName"))
        .and_then(Yaml::as_str)
        .unwrap_or_default()
        .to_owned();
    let mode = mode_of(spec, default_mode);
    let (key, mode) = match spec.get("items").and_then(Yaml::as_sequence) {
        Some(items) => {
            let item = items.iter().find(|i| i["path"].as_str() == Some(rel))?;
            (item["key"].as_str()?.to_owned(), mode_of(item, mode))
        }
        None if !rel.is_empty() && !rel.contains('/') => (rel.to_owned(), mode),
        None => return None,
    };
    Some(match kind {
        "configMap" => Source::ConfigMap { name, key, mode },
        _ => Source::Secret { name, key, mode },
    })
}

// ---------------------------------------------------------------------------------------------
// The Dockerfile

/// The Dockerfile's instructions, continuation lines joined and comments dropped.
struct Dockerfile {
    instructions: Vec<(String, String)>,
}

impl Dockerfile {
    fn load() -> Dockerfile {
        let mut instructions = Vec::new();
        let mut current = String::new();
        for line in read(DOCKERFILE).lines() {
            let trimmed = line.trim();
            if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
                continue;
            }
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    current.push_str(part);
                    current.push(' ');
                }
                None => {
                    current.push_str(trimmed);
                    let (keyword, rest) = current.split_once(' ').unwrap_or((&current, ""));
                    instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                    current.clear();
                }
            }
        }
        Dockerfile { instructions }
    }

    /// Where a `COPY --from=…` puts the built file called `file_name`.
    fn installed(&self, file_name: &str) -> Option<String> {
        self.instructions
            .iter()
            .filter(|(k, rest)| k == "COPY" && rest.starts_with("--from="))
            .find_map(|(_, rest)| {
                let words: Vec<&str> = rest
                    .split_whitespace()
                    .filter(|w| !w.starts_with("--"))
                    .collect();
                let (dest, sources) = words.split_last()?;
                sources
                    .iter()
                    .any(|s| s.rsplit('/').next() == Some(file_name))
                    .then(|| match dest.strip_suffix('/') {
                        Some(dir) => format!("{dir}/{file_name}"),
                        None => (*dest).to_owned(),
                    })
            })
    }

    /// The words of every `cargo build` the RUN instructions make.
    fn cargo_builds(&self) -> Vec<Vec<String>> {
        self.instructions
            .iter()
            .filter(|(k, _)| k == "RUN")
            .flat_map(|(_, rest)| rest.split("&&"))
            .map(|command| {
                command
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|words| words.len() >= 2 && words[0] == "cargo" && words[1] == "build")
            .collect()
    }

    /// Whether a release `cargo build` builds `package` (and binary `bin`, if given).
    fn builds(&self, package: &str, bin: Option<&str>) -> bool {
        self.cargo_builds().iter().any(|words| {
            let after = |flag: &str| {
                words
                    .windows(2)
                    .filter(move |w| w[0] == flag)
                    .map(|w| w[1].as_str())
                    .collect::<Vec<_>>()
            };
            words.iter().any(|w| w == "--release")
                && after("-p").contains(&package)
                && bin.is_none_or(|b| after("--bin").contains(&b))
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The systemd unit

/// A unit file as `(section, key, value)` entries in file order.
struct Unit {
    entries: Vec<(String, String, String)>,
}

impl Unit {
    fn load() -> Unit {
        let mut entries = Vec::new();
        let mut section = String::new();
        for (n, line) in read(SYSTEMD_UNIT).lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            assert!(
                !line.ends_with('\\'),
                "{SYSTEMD_UNIT}:{}: continuation lines are not read here",
                n + 1
            );
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name.to_owned();
                continue;
            }
            let (key, value) = line.split_once('=').unwrap_or_else(|| {
                panic!(
                    "{SYSTEMD_UNIT}:{}: expected KEY=VALUE, found {line:?}",
                    n + 1
                )
            });
            entries.push((
                section.clone(),
                key.trim().to_owned(),
                value.trim().to_owned(),
            ));
        }
        Unit { entries }
    }

    /// A setting's value: the last assignment wins, as in systemd.
    fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(s, k, _)| s == "Service" && k == key)
            .map(|(_, _, v)| v.as_str())
    }

    fn expect(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("{SYSTEMD_UNIT}: [Service] sets no {key}="))
    }
}

/// A systemd time span ("30s", "1min", or plain seconds).
fn systemd_span(value: &str) -> Duration {
    match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => humantime::parse_duration(value)
            .unwrap_or_else(|e| panic!("{SYSTEMD_UNIT}: cannot read the time span {value:?}: {e}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The deployed cage, as the Kubernetes files describe it

/// The cage the StatefulSet runs, with its site files from the ConfigMap.
struct Deployed<'a> {
    sts: StatefulSet<'a>,
    /// `--site` of the container's command.
    site: String,
    /// The cage name of `run NAME`.
    name: String,
    cage_file: toml::Table,
    execute_on: toml::Table,
}

impl<'a> Deployed<'a> {
    fn new(kube: &'a Kube) -> Deployed<'a> {
        let sts = StatefulSet {
            object: kube.one("StatefulSet"),
        };
        let command = sts.command(sts.container());
        let whose = sts.whose();
        let site = option_value(&command, "--site")
            .unwrap_or_else(|| panic!("{whose}: the command {command:?} has no --site"));
        let name = option_value(&command, "run")
            .unwrap_or_else(|| panic!("{whose}: the command {command:?} has no `run NAME`"));
        let cage_path = format!("{site}/cages/{name}.toml");
        let cage_file = deployed_toml(kube, &sts, &cage_path);
        let execute_on =
            deployed_toml(kube, &sts, &format!("{site}/config/config_execute_on.toml"));
        Deployed {
            sts,
            site,
            name,
            cage_file,
            execute_on,
        }
    }

    fn listen(&self) -> SocketAddr {
        let listen = self.cage_file["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("the ConfigMap's cages/{}.toml has no `listen`", self.name));
        listen.parse().unwrap_or_else(|e| {
            panic!(
                "the ConfigMap's cages/{}.toml: listen {listen:?}: {e}",
                self.name
            )
        })
    }

    fn shutdown_grace(&self) -> Duration {
        self.cage_file
            .get("shutdown_grace")
            .map_or(DEFAULT_SHUTDOWN_GRACE, |v| {
                humantime::parse_duration(v.as_str().expect("shutdown_grace is a string"))
                    .expect("shutdown_grace is a duration")
            })
    }
}

/// The word after `flag` in `command`.
fn option_value(command: &[String], flag: &str) -> Option<String> {
    command
        .windows(2)
        .find(|w| w[0] == flag)
        .map(|w| w[1].clone())
}

/// The TOML file the container sees at `path`, which must come from a ConfigMap of the folder.
fn deployed_toml(kube: &Kube, sts: &StatefulSet, path: &str) -> toml::Table {
    match sts.file(sts.container(), path) {
        Some(Source::ConfigMap { name, key, .. }) => toml_file(
            &format!("ConfigMap {name} key {key}"),
            kube.config_map_entry(&name, &key),
        ),
        other => panic!(
            "{}: {path} in the container should come from a ConfigMap, found {other:?}",
            sts.whose()
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The checks

#[test]
fn every_manifest_parses_and_the_kustomization_lists_every_other_file() {
    let kube = Kube::load();
    let kustomization = kube.one("Kustomization");
    assert_eq!(
        kustomization.file,
        format!("{KUBERNETES_DIR}/kustomization.yaml"),
        "the Kustomization is in kustomization.yaml"
    );
    let listed: BTreeSet<String> = list(&kustomization.doc, "resources", &kustomization.file)
        .iter()
        .map(|r| r.as_str().expect("resources are file names").to_owned())
        .collect();
    let files: BTreeSet<String> = kube
        .files
        .iter()
        .filter(|f| *f != "kustomization.yaml")
        .cloned()
        .collect();
    assert_eq!(
        listed, files,
        "{}: `resources` must list exactly the other YAML files of {KUBERNETES_DIR}",
        kustomization.file
    );
}

#[test]
fn the_binary_is_the_cage_binary_the_workspace_builds_and_the_image_installs() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let bin = binary();
    let docker = Dockerfile::load();
    assert!(
        docker.builds(&bin.package, Some(&bin.name)),
        "{DOCKERFILE}: no `cargo build --release -p {} --bin {}` (the [[bin]] of runtime/cage/Cargo.toml); builds: {:?}",
        bin.package,
        bin.name,
        docker.cargo_builds()
    );
    let installed = docker.installed(&bin.name).unwrap_or_else(|| {
        panic!(
            "{DOCKERFILE}: no `COPY --from=…` of target/release/{}",
            bin.name
        )
    });

    let command = deployed.sts.command(deployed.sts.container());
    assert_eq!(
        command.first(),
        Some(&installed),
        "{}: the container's command must start with the binary {DOCKERFILE} installs",
        deployed.sts.whose()
    );
    let exec = Unit::load().expect("ExecStart").to_owned();
    let unit_binary = exec
        .trim_start_matches(['-', '@', '+', '!', ':'])
        .split_whitespace()
        .next();
    assert_eq!(
        unit_binary,
        Some(installed.as_str()),
        "{SYSTEMD_UNIT}: ExecStart must run the binary {DOCKERFILE} installs"
    );
}

#[test]
fn the_container_runs_its_cage_on_the_site_it_mounts() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let (sts, site, name) = (&deployed.sts, &deployed.site, &deployed.name);
    let command = sts.command(sts.container());
    assert_eq!(
        command[1..],
        ["--site", site, "run", name],
        "{}: the command must be `cage --site SITE run NAME`",
        sts.whose()
    );
    // Deployed::new found cages/NAME.toml and config/config_execute_on.toml in ConfigMaps.
    for key in [
        "ca.crt".to_owned(),
        format!("{name}.crt"),
        format!("{name}.key"),
    ] {
        let path = format!("{site}/config/keys/{key}");
        match sts.file(sts.container(), &path) {
            Some(Source::Secret {
                name: secret,
                key: k,
                mode,
            }) => {
                assert_eq!(
                    (secret.as_str(), k.as_str()),
                    ("cage-keys", key.as_str()),
                    "{path}"
                );
                assert!(
                    mode == 0o400 || mode == 0o600,
                    "{}: {path} has mode {mode:#o}; TLS keys must be 0400 or 0600",
                    sts.whose()
                );
            }
            other => panic!(
                "{}: {path} should come from Secret cage-keys, found {other:?}",
                sts.whose()
            ),
        }
    }
    let modules = format!("{site}/modules");
    assert_eq!(
        sts.file(sts.container(), &modules),
        Some(Source::EmptyDir),
        "{}: {modules} should be the emptyDir the init container fills",
        sts.whose()
    );
}

#[test]
fn the_image_carries_the_modules_the_cage_serves_and_the_init_container_copies_them() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let (sts, site) = (&deployed.sts, &deployed.site);
    let docker = Dockerfile::load();
    let modules = deployed.cage_file["modules"]
        .as_array()
        .unwrap_or_else(|| panic!("the ConfigMap's cage file has no `modules` list"));
    assert!(
        !modules.is_empty(),
        "the ConfigMap's cage file serves no module"
    );
    for module in modules {
        let module = module.as_str().expect("module names are strings");
        let crate_manifest = format!("modules/{module}/Cargo.toml");
        let source = std::fs::read_to_string(workspace().join(&crate_manifest)).unwrap_or_else(|e| {
            panic!("the ConfigMap's cage file serves module {module}, but the workspace has no {crate_manifest}: {e}")
        });
        let package = toml_file(&crate_manifest, &source);
        assert_eq!(
            package["package"]["name"].as_str(),
            Some(module),
            "{crate_manifest}: package name"
        );
        assert!(
            docker.builds(module, None),
            "{DOCKERFILE}: no `cargo build --release -p {module}`"
        );
        let file = format!("lib{module}.so");
        assert_eq!(
            docker.installed(&file),
            Some(format!("{site}/modules/{file}")),
            "{DOCKERFILE}: {file} must be installed in the site's modules directory {site}/modules"
        );
    }

    let main = sts.container();
    let image = text(main, "image", &sts.whose());
    let modules_volume = list(main, "volumeMounts", &sts.whose())
        .iter()
        .find(|m| m["mountPath"].as_str() == Some(&format!("{site}/modules")))
        .map(|m| text(m, "name", &sts.whose()))
        .expect("a mount at SITE/modules");
    let fills = sts.init_containers().iter().any(|init| {
        let command = sts.command(init).join(" ");
        let mounted = init["volumeMounts"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|m| m["name"].as_str() == Some(modules_volume))
            .and_then(|m| m["mountPath"].as_str());
        init["image"].as_str() == Some(image)
            && mounted.is_some_and(|at| command.contains(at))
            && command.contains(&format!("{site}/modules/"))
    });
    assert!(
        fills,
        "{}: an init container of image {image} must copy {site}/modules/ into volume {modules_volume:?}",
        sts.whose()
    );
}

#[test]
fn the_port_of_listen_is_the_container_port_the_service_port_and_the_probe_port() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let (sts, whose) = (&deployed.sts, deployed.sts.whose());
    let port = u64::from(deployed.listen().port());
    let container = sts.container();
    let ports = list(container, "ports", &whose);
    let container_port = ports
        .iter()
        .find(|p| p["containerPort"].as_u64() == Some(port))
        .unwrap_or_else(|| panic!("{whose}: no containerPort equal to the port of listen, {port}"));
    let port_name = container_port["name"].as_str();

    // A port given by number must be `port`; by name, the container port of that name.
    let refers_to_port = |value: &Yaml| {
        value.as_u64() == Some(port) || (value.as_str().is_some() && value.as_str() == port_name)
    };
    for probe in ["readinessProbe", "livenessProbe"] {
        let target = at(container, &format!("{probe}.tcpSocket.port"), &whose);
        assert!(
            refers_to_port(target),
            "{whose}: {probe} checks port {target:?}, not {port}"
        );
    }

    let service = kube.one("Service");
    let service_port = list(&service.doc, "spec.ports", &service.file)
        .iter()
        .find(|p| p["name"].as_str() == Some("cage"))
        .unwrap_or_else(|| panic!("{}: no port named `cage`", service.file));
    assert_eq!(
        number(service_port, "port", &service.file),
        port,
        "{}: port `cage`",
        service.file
    );
    if let Some(target) = service_port.get("targetPort") {
        assert!(
            refers_to_port(target),
            "{}: targetPort {target:?} is not the container port {port}",
            service.file
        );
    }
}

#[test]
fn the_data_dir_of_the_cage_file_is_the_claim() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let sts = &deployed.sts;
    let data_dir = deployed.cage_file["data_dir"].as_str().unwrap_or_else(|| {
        panic!(
            "the ConfigMap's cages/{}.toml sets no data_dir",
            deployed.name
        )
    });
    assert_eq!(
        sts.file(sts.container(), data_dir),
        Some(Source::Claim("data".into())),
        "{}: the cage file's data_dir {data_dir} must be where volumeClaimTemplate `data` is mounted",
        sts.whose()
    );
}

#[test]
fn the_cluster_map_names_the_statefulset_pods_through_the_headless_service() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let sts = &deployed.sts;
    let service = kube.one("Service");
    let service_name = text(sts.object.at("spec"), "serviceName", &sts.whose());
    assert_eq!(
        service_name,
        service.name(),
        "{}: serviceName must be the Service",
        sts.whose()
    );
    assert_eq!(
        service.at("spec.clusterIP").as_str(),
        Some("None"),
        "{}: the Service must be headless (clusterIP: None) for per-pod DNS names",
        service.file
    );
    let labels = sts.object.at("spec.template.metadata.labels");
    for (key, value) in service
        .at("spec.selector")
        .as_mapping()
        .expect("selector is a map")
    {
        let (key, value) = (key.as_str().unwrap_or_default(), value.as_str());
        assert_eq!(
            labels.get(key).and_then(Yaml::as_str),
            value,
            "{}: selector {key}: {} does not select the StatefulSet's pods",
            service.file,
            value.unwrap_or_default()
        );
    }

    let port = deployed.listen().port();
    let replicas = number(sts.object.at("spec"), "replicas", &sts.whose());
    let expected: Vec<String> = (0..replicas)
        .map(|i| format!("{}-{i}.{service_name}:{port}", sts.object.name()))
        .collect();
    let cages = deployed.execute_on["cages"]
        .as_table()
        .expect("[cages] in config_execute_on.toml");
    let addresses = |cage: &str| -> Vec<String> {
        cages[cage]["addresses"]
            .as_array()
            .unwrap_or_else(|| panic!("config_execute_on.toml: [cages.{cage}] has no addresses"))
            .iter()
            .map(|a| a.as_str().expect("addresses are strings").to_owned())
            .collect()
    };
    assert!(
        cages.contains_key(&deployed.name),
        "config_execute_on.toml has no [cages.{}]",
        deployed.name
    );
    assert_eq!(
        addresses(&deployed.name),
        expected,
        "config_execute_on.toml: [cages.{}] must list one `<statefulset>-<i>.<service>:<port>` per replica",
        deployed.name
    );
    // The other cages follow the same pattern, for StatefulSets and Services named like the cage.
    for cage in cages.keys() {
        for (i, address) in addresses(cage).iter().enumerate() {
            let prefix = format!("{cage}-{i}.{cage}:");
            assert!(
                address.strip_prefix(&prefix).is_some_and(|p| p.parse::<u16>().is_ok()),
                "config_execute_on.toml: [cages.{cage}] address {i} is {address:?}, expected {prefix}PORT"
            );
        }
    }

    assert_eq!(
        deployed.cage_file.get("tls").and_then(toml::Value::as_bool),
        Some(true),
        "cages/{}.toml listens on {}, beyond loopback, so it needs tls = true",
        deployed.name,
        deployed.listen()
    );
    assert_eq!(
        deployed
            .execute_on
            .get("tls")
            .and_then(|t| t.get("enabled"))
            .and_then(toml::Value::as_bool),
        Some(true),
        "config_execute_on.toml: [tls] enabled = true, so callers use TLS towards the pods"
    );
}

#[test]
fn the_pod_has_time_to_stop_gracefully() {
    let kube = Kube::load();
    let deployed = Deployed::new(&kube);
    let sts = &deployed.sts;
    let grace = number(sts.pod(), "terminationGracePeriodSeconds", &sts.whose());
    assert!(
        Duration::from_secs(grace) > deployed.shutdown_grace(),
        "{}: terminationGracePeriodSeconds {grace} must exceed the cage's shutdown_grace {:?}",
        sts.whose(),
        deployed.shutdown_grace()
    );
}

#[test]
fn the_systemd_unit_runs_cage_name_on_its_state_directory_and_stops_it_gracefully() {
    let unit = Unit::load();
    let exec: Vec<&str> = unit.expect("ExecStart").split_whitespace().collect();
    let after = |flag: &str| exec.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
    assert_eq!(
        after("--site"),
        Some(SYSTEMD_SITE),
        "{SYSTEMD_UNIT}: ExecStart's --site"
    );
    assert_eq!(
        after("run"),
        Some("%i"),
        "{SYSTEMD_UNIT}: ExecStart must run the instance's cage: `run %i`"
    );

    let state = unit.expect("StateDirectory");
    assert_eq!(state, "cage/%i", "{SYSTEMD_UNIT}: StateDirectory");
    assert_eq!(
        after("--data-dir"),
        Some(format!("/var/lib/{state}").as_str()),
        "{SYSTEMD_UNIT}: ExecStart's --data-dir must be the StateDirectory, /var/lib/{state}"
    );

    assert_eq!(
        unit.get("Restart"),
        Some("on-failure"),
        "{SYSTEMD_UNIT}: Restart"
    );
    assert!(
        systemd_span(unit.expect("RestartSec")) >= Duration::from_secs(1),
        "{SYSTEMD_UNIT}: RestartSec under a second"
    );
    assert!(
        unit.get("KillSignal").is_none_or(|s| s == "SIGTERM"),
        "{SYSTEMD_UNIT}: the cage stops gracefully on SIGTERM, not {:?}",
        unit.get("KillSignal")
    );
    let stop = systemd_span(unit.expect("TimeoutStopSec"));
    assert!(
        stop > DEFAULT_SHUTDOWN_GRACE,
        "{SYSTEMD_UNIT}: TimeoutStopSec {stop:?} must exceed the cage's default shutdown_grace {DEFAULT_SHUTDOWN_GRACE:?}"
    );

    assert!(
        unit.get("User").is_some() || unit.get("DynamicUser") == Some("yes"),
        "{SYSTEMD_UNIT}: the cage must not run as root (User= or DynamicUser=yes)"
    );
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
    ] {
        assert_eq!(unit.get(key), Some(value), "{SYSTEMD_UNIT}: {key}");
    }
    assert!(
        unit.get("LimitNOFILE").is_some(),
        "{SYSTEMD_UNIT}: sets no LimitNOFILE"
    );
}
