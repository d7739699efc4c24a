//! The patch set: `patches/*.patch` applied with `git am` on top of the
//! pristine tree, and exported back with `git format-patch`.
//!
//! `git am` runs in a separate worktree. The build tree then checks out the
//! resulting commit, which rewrites only the files whose content differs, so
//! ninja recompiles only what a changed patch touches.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::cache::Layout;
use crate::fetch::hex;

/// Identity and dates for `git am`, fixed so that applying the same patches
/// always yields the same commit ids.
fn git_identity(sh: &Shell) -> Vec<xshell::PushEnv<'_>> {
    vec![
        sh.push_env("GIT_COMMITTER_NAME", "xtask"),
        sh.push_env("GIT_COMMITTER_EMAIL", "xtask@localhost"),
    ]
}

pub fn patch_files(layout: &Layout) -> Result<Vec<PathBuf>> {
    let dir = layout.repo.join("patches");
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "patch"))
            .collect(),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", dir.display())),
    };
    files.sort();
    Ok(files)
}

fn patches_hash(base: &str, files: &[PathBuf]) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(base.as_bytes());
    for file in files {
        hasher.update(file.file_name().unwrap().as_encoded_bytes());
        hasher.update([0]);
        hasher.update(std::fs::read(file)?);
        hasher.update([0]);
    }
    Ok(hex(&hasher.finalize()))
}

fn head(sh: &Shell, dir: &std::path::Path) -> Result<String> {
    Ok(cmd!(sh, "git -C {dir} rev-parse HEAD").quiet().read()?)
}

/// Lists tracked files with uncommitted changes in the build tree.
fn dirty_files(sh: &Shell, layout: &Layout) -> Result<String> {
    let tree = &layout.tree;
    Ok(
        cmd!(sh, "git -C {tree} status --porcelain --untracked-files=no")
            .quiet()
            .read()?,
    )
}

/// Applies `patches/` (or no patch with `no_patches`) to the build tree and
/// returns the resulting commit. Returns early when nothing changed.
pub fn apply(layout: &Layout, no_patches: bool) -> Result<String> {
    let sh = Shell::new()?;
    let mut state = layout.load_state()?;
    let base = state
        .base_commit
        .clone()
        .context("no source tree yet; run `cargo xtask fetch-node`")?;
    let files = if no_patches {
        Vec::new()
    } else {
        patch_files(layout)?
    };
    let hash = patches_hash(&base, &files)?;
    let tree = &layout.tree;
    let current = head(&sh, tree)?;

    let dirty = dirty_files(&sh, layout)?;
    if !dirty.is_empty() {
        bail!(
            "the build tree {} has uncommitted changes:\n{dirty}\n\
             commit them there and run `cargo xtask patches export`, or discard them \
             with `git -C {} checkout -- .`",
            tree.display(),
            tree.display()
        );
    }
    let known = [Some(base.clone()), state.patched_commit.clone()];
    if !known.contains(&Some(current.clone())) {
        bail!(
            "the build tree {} is at commit {current}, which is neither the pristine \
             tree nor the last applied patch set; export your commits with \
             `cargo xtask patches export`, or reset with `git -C {} checkout --detach base`",
            tree.display(),
            tree.display()
        );
    }
    if state.patches_hash.as_deref() == Some(hash.as_str())
        && state.patched_commit.as_deref() == Some(current.as_str())
    {
        return Ok(current);
    }

    let am = &layout.am_worktree;
    if !am.join(".git").exists() {
        cmd!(sh, "git -C {tree} worktree prune").quiet().run()?;
        cmd!(sh, "git -C {tree} worktree add -q --detach {am} base")
            .quiet()
            .run()?;
    }
    cmd!(sh, "git -C {am} checkout -q -f --detach base")
        .quiet()
        .run()?;
    let _identity = git_identity(&sh);
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let output = cmd!(
            sh,
            "git -C {am} am --3way --committer-date-is-author-date {file}"
        )
        .quiet()
        .ignore_status()
        .output()?;
        if !output.status.success() {
            let _ = cmd!(sh, "git -C {am} am --abort")
                .quiet()
                .ignore_status()
                .run();
            // git's own advice (`git am --continue`) does not apply: the
            // attempt was made, and aborted, in a private worktree.
            let details: String = [output.stdout, output.stderr]
                .iter()
                .flat_map(|bytes| {
                    String::from_utf8_lossy(bytes)
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                })
                .filter(|line| !line.starts_with("hint:") && !line.contains("git am --"))
                .map(|line| format!("  {line}\n"))
                .collect();
            bail!(
                "patch {name} does not apply to Node.js v22.22.2:\n{details}\
                 The build tree is unchanged. Fix the change as a commit in {} \
                 and run `cargo xtask patches export`.",
                layout.tree.display()
            );
        }
        eprintln!("build-node: applied {name}");
    }
    let patched = head(&sh, am)?;
    if patched != current {
        cmd!(sh, "git -C {tree} checkout -q --detach {patched}")
            .quiet()
            .run()?;
    }
    state.patches_hash = Some(hash);
    state.patched_commit = Some(patched.clone());
    layout.save_state(&state)?;
    Ok(patched)
}

/// Writes the commits between `base` and the build tree's HEAD into
/// `patches/`, replacing the previous patch files.
pub fn export(layout: &Layout) -> Result<()> {
    let sh = Shell::new()?;
    let tree = &layout.tree;
    let dirty = dirty_files(&sh, layout)?;
    if !dirty.is_empty() {
        bail!(
            "the build tree {} has uncommitted changes:\n{dirty}\ncommit them first \
             (`git -C {} commit -a`), one commit per patch",
            tree.display(),
            tree.display()
        );
    }
    let count: usize = cmd!(sh, "git -C {tree} rev-list --count base..HEAD")
        .quiet()
        .read()?
        .parse()?;
    let out_dir = layout.repo.join("patches");
    std::fs::create_dir_all(&out_dir)?;
    for old in patch_files(layout)? {
        std::fs::remove_file(old)?;
    }
    if count > 0 {
        cmd!(
            sh,
            "git -C {tree} format-patch -q --zero-commit --no-signature
             --no-numbered -o {out_dir} base..HEAD"
        )
        .quiet()
        .run()?;
    }
    // The exported files now describe HEAD; record that so the next build
    // does not re-apply them.
    let mut state = layout.load_state()?;
    let base = state
        .base_commit
        .clone()
        .context("no base commit recorded")?;
    state.patches_hash = Some(patches_hash(&base, &patch_files(layout)?)?);
    state.patched_commit = Some(head(&sh, tree)?);
    layout.save_state(&state)?;
    eprintln!(
        "patches export: wrote {count} patch file(s) to {}",
        out_dir.display()
    );
    Ok(())
}
