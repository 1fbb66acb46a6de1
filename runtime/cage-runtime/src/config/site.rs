//! [`Site`]: a directory holding `cages/`, `config/` and `modules/`, and lookups within it.

use super::{CageConfig, CageRoute, ConfigError, ExecuteOn};
use std::path::{Path, PathBuf};

/// Name of the site-wide file that says where cages are and how queues retry.
pub const EXECUTE_ON_FILE: &str = "config/config_execute_on.toml";

/// A site on disk: the root directory of `cages/`, `config/` and `modules/`.
#[derive(Debug, Clone)]
pub struct Site {
    root: PathBuf,
}

impl Site {
    /// The site rooted at `root` (made absolute against the current directory).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        let root = root.into();
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map(|d| d.join(&root))
                .unwrap_or(root)
        };
        // "./x/." reads badly in error messages; drop the no-op components.
        let root = root
            .components()
            .filter(|c| !matches!(c, std::path::Component::CurDir))
            .collect();
        Site { root }
    }

    /// The site's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the cluster CA and the key pairs of cages and of the CLI are kept.
    pub fn keys_dir(&self) -> PathBuf {
        self.root.join("config").join("keys")
    }

    /// Where module libraries are dropped.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("modules")
    }

    /// The cage file of `name`.
    pub fn cage_file(&self, name: &str) -> PathBuf {
        self.root.join("cages").join(format!("{name}.toml"))
    }

    /// Names of the cages defined in this site (`cages/*.toml`), sorted.
    pub fn cage_names(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("cages"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "toml")
                    .then(|| p.file_stem()?.to_str().map(str::to_owned))
                    .flatten()
            })
            .filter(|n| super::cage_file::valid_name(n))
            .collect();
        names.sort();
        names
    }

    /// Reads and validates the cage file of `name`.
    pub fn cage(&self, name: &str) -> Result<CageConfig, ConfigError> {
        crate::names::check(crate::names::NameKind::Cage, name)?;
        let path = self.cage_file(name);
        if !path.is_file() {
            return Err(ConfigError::NoSuchCage {
                name: name.to_owned(),
                path,
                site: self.root.clone(),
            });
        }
        let source = read(&path)?;
        CageConfig::parse(name, &path, &self.root, &source)
    }

    /// Reads and validates `config/config_execute_on.toml`; a missing file means all defaults.
    pub fn execute_on(&self) -> Result<ExecuteOn, ConfigError> {
        let path = self.root.join(EXECUTE_ON_FILE);
        if !path.exists() {
            return ExecuteOn::parse(&path, "");
        }
        let source = read(&path)?;
        ExecuteOn::parse(&path, &source)
    }

    /// How to reach cage `name`: its `[cages.NAME]` entry, else the listen address of its cage file.
    pub fn route(&self, execute_on: &ExecuteOn, name: &str) -> Result<CageRoute, ConfigError> {
        if let Some(route) = execute_on.cages.get(name) {
            return Ok(route.clone());
        }
        let cage = self.cage(name)?;
        Ok(CageRoute::single(cage.listen, cage.call_timeout).with_tls(cage.tls))
    }
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}
