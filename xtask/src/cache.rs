//! The cache folder outside the repository: downloads, the assembled and
//! patched Node.js tree with its build output, the compiler cache, and a
//! small JSON state file that records what each step last produced.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::Options;

/// Environment variable that overrides the default cache folder.
pub const CACHE_ENV: &str = "TLS_SPLICE_CACHE_DIR";

/// Paths inside the cache folder. The folder is stable across clones of the
/// repository, so CI and later sessions on the same machine reuse the build.
pub struct Layout {
    /// The repository root (the workspace that contains `xtask/`).
    pub repo: PathBuf,
    pub root: PathBuf,
    pub downloads: PathBuf,
    /// Private apt configuration and package lists for `apt-get source`.
    pub apt: PathBuf,
    /// Scratch space for unpacking and building the shared dependencies.
    pub work: PathBuf,
    /// Static libraries and headers of the dependencies that `node` links
    /// as "shared" (c-ares, llhttp, ada, simdutf, simdjson).
    pub deps_prefix: PathBuf,
    /// The Node.js tree: a git repository whose `base` tag is the pristine
    /// source, with the patches applied as commits on top.
    pub tree: PathBuf,
    /// A linked git worktree where `git am` runs, so that only the files whose
    /// content changed are rewritten in the build tree.
    pub am_worktree: PathBuf,
    pub ccache: PathBuf,
    /// Cargo target folder for the static library linked into `node`.
    pub target: PathBuf,
    pub logs: PathBuf,
    /// Scratch folders of commands that hold the lock, such as `demo`.
    pub tmp: PathBuf,
    pub state_file: PathBuf,
}

impl Layout {
    pub fn new(opts: &Options) -> Result<Layout> {
        let root = match (&opts.cache_dir, std::env::var_os(CACHE_ENV)) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
            _ => default_cache_root()?,
        };
        std::fs::create_dir_all(&root)
            .with_context(|| format!("cannot create the cache folder {}", root.display()))?;
        let root = root.canonicalize()?;
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent folder")?
            .to_path_buf();
        Ok(Layout {
            repo,
            downloads: root.join("downloads"),
            apt: root.join("apt"),
            work: root.join("work"),
            deps_prefix: root.join("deps-prefix"),
            tree: root.join("node"),
            am_worktree: root.join("node-am"),
            ccache: root.join("ccache"),
            target: root.join("target"),
            logs: root.join("logs"),
            tmp: root.join("tmp"),
            state_file: root.join("state.json"),
            root,
        })
    }

    /// Returns the path of the `node` binary that ninja produces in the build tree.
    pub fn node_binary(&self) -> PathBuf {
        self.tree.join("out/Release/node")
    }

    /// Takes an exclusive lock on the cache folder for the life of the
    /// returned file, waiting for another xtask run that holds it.
    pub fn lock(&self) -> Result<std::fs::File> {
        let path = self.root.join("lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                eprintln!(
                    "xtask: waiting for another xtask run that uses {}",
                    self.root.display()
                );
                file.lock()?;
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(err).with_context(|| format!("cannot lock {}", path.display()))
            }
        }
        Ok(file)
    }

    pub fn load_state(&self) -> Result<State> {
        match std::fs::read(&self.state_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "corrupt state file {}; delete it to start over",
                    self.state_file.display()
                )
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(err) => {
                Err(err).with_context(|| format!("cannot read {}", self.state_file.display()))
            }
        }
    }

    pub fn save_state(&self, state: &State) -> Result<()> {
        let tmp = self.state_file.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, &self.state_file)?;
        Ok(())
    }
}

fn default_cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|dir| !dir.is_empty()) {
        return Ok(Path::new(&dir).join("node-tls-splice"));
    }
    let home = std::env::var_os("HOME")
        .filter(|dir| !dir.is_empty())
        .with_context(|| format!("HOME is not set; pass --cache-dir or set {CACHE_ENV}"))?;
    Ok(Path::new(&home).join(".cache/node-tls-splice"))
}

/// Record of what the previous runs produced, so that unchanged steps are skipped.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct State {
    /// Origin of the tree: `registries`, `tarball:SHA256` or `dir:PATH`.
    pub tree_source: Option<String>,
    /// Whether the tree bundles its dependencies (upstream tarball or tree).
    pub bundled_deps: bool,
    /// Commit of the pristine tree (also tagged `base`).
    pub base_commit: Option<String>,
    /// Hash of the patch files last applied, and the resulting commit.
    pub patches_hash: Option<String>,
    pub patched_commit: Option<String>,
    /// Hash of the configure flags and configure-relevant files.
    pub configure_hash: Option<String>,
    /// Commit that the last successful ninja build compiled.
    pub built_commit: Option<String>,
    /// Whether a complete `node` build finished at least once in this tree.
    pub full_build_done: bool,
}
