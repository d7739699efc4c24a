//! Downloads from the package registries, each verified against the SHA-256
//! pinned in `xtask/sources.json`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::cache::Layout;

#[derive(Debug, Deserialize)]
pub struct Sources {
    pub node_version: String,
    pub debian: DebianSource,
    pub pypi: Vec<Package>,
    pub crates: Vec<Package>,
    pub npm: Vec<Package>,
}

#[derive(Debug, Deserialize)]
pub struct DebianSource {
    pub package: String,
    pub version: String,
    /// Suites searched for the source package. The machine's own `deb`
    /// entries usually name a stable release that carries an older Node.js.
    pub suites: Vec<String>,
    pub file: String,
    pub sha256: String,
    /// Size in bytes, shown before the download starts.
    pub size: u64,
}

#[derive(Debug, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// PyPI only: download the source distribution instead of a wheel.
    #[serde(default)]
    pub sdist: bool,
    pub file: String,
    pub sha256: String,
    /// Size in bytes, shown before the download starts.
    pub size: u64,
}

impl Sources {
    pub fn load(layout: &Layout) -> Result<Sources> {
        let path = layout.repo.join("xtask/sources.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("invalid {}", path.display()))
    }

    pub fn npm(&self, name: &str) -> Result<&Package> {
        self.npm
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("npm package {name} is missing from xtask/sources.json"))
    }

    pub fn pypi(&self, name: &str) -> Result<&Package> {
        self.pypi
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("PyPI package {name} is missing from xtask/sources.json"))
    }

    pub fn crate_(&self, name: &str) -> Result<&Package> {
        self.crates
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("crate {name} is missing from xtask/sources.json"))
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks `path` against its pinned hash. A file that does not match is
/// deleted, so that the next run downloads it again.
fn verify(path: &Path, expected: &str) -> Result<()> {
    let actual = sha256_file(path)?;
    if actual != expected {
        let _ = std::fs::remove_file(path);
        bail!(
            "SHA-256 mismatch for {}: expected {expected}, got {actual}; the file was \
             deleted. If the new file is the right one, update xtask/sources.json",
            path.display()
        );
    }
    Ok(())
}

/// Returns true when `path` already has the pinned content.
fn already_verified(path: &Path, expected: &str) -> bool {
    path.is_file() && sha256_file(path).map(|h| h == expected).unwrap_or(false)
}

fn describe_size(bytes: u64) -> String {
    if bytes >= 1024 * 1024 {
        format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", (bytes as f64 / 1024.0).ceil())
    }
}

/// Downloads every pinned input into `layout.downloads`.
pub fn download_all(sh: &Shell, layout: &Layout, sources: &Sources) -> Result<()> {
    download_debian(sh, layout, &sources.debian)?;
    for package in &sources.pypi {
        download_pypi(sh, layout, package)?;
    }
    for package in &sources.crates {
        download_crate(sh, layout, package)?;
    }
    for package in &sources.npm {
        download_npm(sh, layout, package)?;
    }
    Ok(())
}

pub fn debian_tarball(layout: &Layout, source: &DebianSource) -> PathBuf {
    layout.downloads.join("debian").join(&source.file)
}

/// Fetches the Debian source tarball with `apt-get source`, through a private
/// apt configuration whose `deb-src` entries are derived from the machine's
/// `deb` entries. The system's apt configuration is never modified.
fn download_debian(sh: &Shell, layout: &Layout, source: &DebianSource) -> Result<()> {
    let dest_dir = layout.downloads.join("debian");
    let dest = dest_dir.join(&source.file);
    if already_verified(&dest, &source.sha256) {
        return Ok(());
    }
    std::fs::create_dir_all(&dest_dir)?;
    let parts = layout.apt.join("sources.list.d");
    let lists = layout.apt.join("lists");
    let cache = layout.apt.join("cache");
    for dir in [
        &parts,
        &lists.join("partial"),
        &cache.join("archives/partial"),
    ] {
        std::fs::create_dir_all(dir)?;
    }
    let entries = derive_deb_src_entries(&source.suites)?;
    std::fs::write(parts.join("node-source.sources"), entries)?;

    let apt_opts = [
        "-o".to_string(),
        "Dir::Etc::SourceList=/dev/null".to_string(),
        "-o".to_string(),
        format!("Dir::Etc::SourceParts={}", parts.display()),
        "-o".to_string(),
        format!("Dir::State::Lists={}", lists.display()),
        "-o".to_string(),
        format!("Dir::Cache={}", cache.display()),
    ];
    let apt_opts_ref = &apt_opts;
    eprintln!("fetch-node: updating the private deb-src package lists");
    cmd!(sh, "apt-get -q {apt_opts_ref...} update")
        .quiet()
        .ignore_stdout()
        .run()
        .context("apt-get update with the private deb-src list failed")?;

    let spec = format!("{}={}", source.package, source.version);
    eprintln!(
        "fetch-node: downloading {} ({}) with apt-get source",
        source.file,
        describe_size(source.size)
    );
    let _dir = sh.push_dir(&dest_dir);
    // Only the .orig tarball is served; the .dsc and the Debian tarball
    // return 404, so apt-get exits non-zero although the tarball arrived.
    // The file and its hash decide.
    let output = cmd!(
        sh,
        "apt-get -q {apt_opts_ref...} source --download-only {spec}"
    )
    .quiet()
    .ignore_status()
    .output()?;
    if !dest.is_file() {
        bail!(
            "apt-get source did not produce {}:\n{}",
            source.file,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    verify(&dest, &source.sha256)?;
    eprintln!("fetch-node: {} verified", source.file);
    Ok(())
}

/// Builds deb822 `deb-src` entries from the machine's `deb` entries: the same
/// archive URIs, keyrings and components, with the given suites. Security
/// archives are skipped because they do not carry the other suites.
fn derive_deb_src_entries(suites: &[String]) -> Result<String> {
    let mut archives: Vec<(String, Option<String>, String)> = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            files.push(entry.path());
        }
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy().to_string();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|line| {
                        line.strip_prefix(key)
                            .and_then(|rest| rest.strip_prefix(':'))
                            .map(|value| value.trim().to_string())
                    })
                };
                let (Some(types), Some(uris), Some(stanza_suites)) =
                    (field("Types"), field("URIs"), field("Suites"))
                else {
                    continue;
                };
                if !types.split_whitespace().any(|t| t == "deb")
                    || stanza_suites.contains("-security")
                {
                    continue;
                }
                let components = field("Components").unwrap_or_else(|| "main".to_string());
                for uri in uris.split_whitespace() {
                    archives.push((uri.to_string(), field("Signed-By"), components.clone()));
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let line = line.trim();
                let Some(rest) = line.strip_prefix("deb ") else {
                    continue;
                };
                let mut signed_by = None;
                let mut words: Vec<&str> = Vec::new();
                let rest = if let Some(options) = rest.trim().strip_prefix('[') {
                    let (options, after) = options.split_once(']').unwrap_or((options, ""));
                    for option in options.split_whitespace() {
                        if let Some(path) = option.strip_prefix("signed-by=") {
                            signed_by = Some(path.to_string());
                        }
                    }
                    after
                } else {
                    rest
                };
                words.extend(rest.split_whitespace());
                if words.len() < 3 || words[1].contains("-security") {
                    continue;
                }
                archives.push((words[0].to_string(), signed_by, words[2..].join(" ")));
            }
        }
    }
    archives.dedup_by(|a, b| a.0 == b.0);
    if archives.is_empty() {
        bail!(
            "no usable `deb` entry in /etc/apt/sources.list or /etc/apt/sources.list.d; \
             the Debian source tarball cannot be located"
        );
    }
    let mut out = String::new();
    for (uri, signed_by, components) in archives {
        out.push_str("Types: deb-src\n");
        out.push_str(&format!("URIs: {uri}\n"));
        out.push_str(&format!("Suites: {}\n", suites.join(" ")));
        out.push_str(&format!("Components: {components}\n"));
        if let Some(keyring) = signed_by {
            out.push_str(&format!("Signed-By: {keyring}\n"));
        }
        out.push('\n');
    }
    Ok(out)
}

fn download_pypi(sh: &Shell, layout: &Layout, package: &Package) -> Result<()> {
    let dest_dir = layout.downloads.join("pypi");
    let dest = dest_dir.join(&package.file);
    if already_verified(&dest, &package.sha256) {
        return Ok(());
    }
    std::fs::create_dir_all(&dest_dir)?;
    let spec = format!("{}=={}", package.name, package.version);
    eprintln!(
        "fetch-node: downloading {spec} from PyPI ({})",
        describe_size(package.size)
    );
    // One package per call: pip download of several sdists at once failed here.
    let binary_flag: &[&str] = if package.sdist {
        &["--no-binary", ":all:"]
    } else {
        &[]
    };
    cmd!(
        sh,
        "python3 -m pip download --quiet --no-deps {binary_flag...} -d {dest_dir} {spec}"
    )
    .quiet()
    .run()
    .with_context(|| format!("pip download {spec} failed"))?;
    verify(&dest, &package.sha256)?;
    eprintln!("fetch-node: {} verified", package.file);
    Ok(())
}

fn download_crate(sh: &Shell, layout: &Layout, package: &Package) -> Result<()> {
    let dest_dir = layout.downloads.join("crates");
    let dest = dest_dir.join(&package.file);
    if already_verified(&dest, &package.sha256) {
        return Ok(());
    }
    std::fs::create_dir_all(&dest_dir)?;
    let spec = format!("{}@{}", package.name, package.version);
    eprintln!(
        "fetch-node: downloading crate {spec} ({})",
        describe_size(package.size)
    );
    // `cargo info` stores the .crate file in cargo's registry cache.
    cmd!(sh, "cargo info --quiet {spec}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("cargo info {spec} failed"))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let registry_cache = cargo_home.join("registry/cache");
    let found = std::fs::read_dir(&registry_cache)
        .with_context(|| format!("cannot read {}", registry_cache.display()))?
        .flatten()
        .map(|entry| entry.path().join(&package.file))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "{} not found under {}",
                package.file,
                registry_cache.display()
            )
        })?;
    std::fs::copy(&found, &dest)?;
    verify(&dest, &package.sha256)?;
    eprintln!("fetch-node: {} verified", package.file);
    Ok(())
}

fn download_npm(sh: &Shell, layout: &Layout, package: &Package) -> Result<()> {
    let dest_dir = layout.downloads.join("npm");
    let dest = dest_dir.join(&package.file);
    if already_verified(&dest, &package.sha256) {
        return Ok(());
    }
    std::fs::create_dir_all(&dest_dir)?;
    let spec = format!("{}@{}", package.name, package.version);
    eprintln!(
        "fetch-node: downloading npm package {spec} ({})",
        describe_size(package.size)
    );
    let _dir = sh.push_dir(&dest_dir);
    cmd!(sh, "npm pack --quiet {spec}")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| format!("npm pack {spec} failed"))?;
    verify(&dest, &package.sha256)?;
    eprintln!("fetch-node: {} verified", package.file);
    Ok(())
}
