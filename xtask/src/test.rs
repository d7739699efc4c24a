//! `cargo xtask test`: the three tiers.
//!
//! 1. `cargo test` of the workspace: the pump on real fds, no Node build.
//! 2. `node-tests/` copied into the tree's `test/parallel/` and run by Node's
//!    `tools/test.py` on the patched binary.
//! 3. Node's own `test/parallel/test-tls-*.js` on the patched binary,
//!    compared with `xtask/tls-baseline.json`, recorded on the unpatched build.
//!
//! Tiers 2 and 3 need a complete build tree. Without one they do not run,
//! and the command prints a loud line about it; it never reports them as
//! passed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::{cmd, Shell};

use crate::build;
use crate::cache::Layout;
use crate::Options;

/// Pass, fail and skip counts of one tier.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    passed: usize,
    failed: usize,
    skipped: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

/// Node's `test-tls-*` results on the unpatched build.
#[derive(Debug, Serialize, Deserialize)]
struct Baseline {
    /// What binary and configuration the baseline was recorded on.
    build: String,
    /// Number of test files the pattern matched.
    total: usize,
    /// Tests that fail on the unpatched build, with the reason.
    failing: BTreeMap<String, String>,
    /// Tests that test.py skips on this build, with the skip message.
    skipped: BTreeMap<String, String>,
}

const TLS_PATTERN: &str = "parallel/test-tls-*";

fn baseline_path(layout: &Layout) -> PathBuf {
    layout.repo.join("xtask/tls-baseline.json")
}

pub fn run_tests(layout: &Layout, opts: &Options) -> Result<()> {
    let explicit_tiers = opts.tiers.is_some();
    let tiers = opts.tiers.clone().unwrap_or_else(|| vec![1, 2, 3]);
    let mut total = Counts::default();
    let mut not_run: Vec<String> = Vec::new();
    let mut problems: Vec<String> = Vec::new();

    if tiers.contains(&1) {
        let counts = tier1(layout)?;
        println!(
            "tier 1 (cargo test): {} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        );
        if counts.failed > 0 {
            problems.push(format!("tier 1: {} Rust test(s) failed", counts.failed));
        }
        total += counts;
    }

    let wants_node = tiers.contains(&2) || tiers.contains(&3);
    let node = if wants_node {
        node_for_tests(layout, opts, &mut not_run)?
    } else {
        None
    };
    if let Some(node) = &node {
        if tiers.contains(&2) {
            let (counts, failures) = tier2(layout, node, opts)?;
            println!(
                "tier 2 (node-tests): {} passed, {} failed, {} skipped",
                counts.passed, counts.failed, counts.skipped
            );
            if counts.passed + counts.failed == 0 {
                problems.push("tier 2: no test ran; is node-tests/ empty?".to_string());
            }
            for failure in failures {
                problems.push(format!("tier 2: {failure} failed"));
            }
            total += counts;
        }
        if tiers.contains(&3) {
            let (counts, new_failures) = tier3(layout, node, opts)?;
            println!(
                "tier 3 (Node's test-tls-*): {} passed, {} failed as in the baseline, {} skipped",
                counts.passed, counts.failed, counts.skipped
            );
            for failure in &new_failures {
                problems.push(format!("tier 3: {failure} fails on the patched build only"));
            }
            // Failures recorded in the baseline are expected: the total
            // counts them as neither passed nor failed.
            total += Counts {
                failed: new_failures.len(),
                ..counts
            };
        }
    }

    for line in &not_run {
        println!("{line}");
    }
    if explicit_tiers && !not_run.is_empty() {
        problems.push("tiers requested with --tier could not run (see the line above)".to_string());
    }
    for problem in &problems {
        println!("FAILED: {problem}");
    }
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    if !problems.is_empty() {
        bail!("{} problem(s); see FAILED lines above", problems.len());
    }
    Ok(())
}

/// Returns the binary for tiers 2 and 3, rebuilding it incrementally when a
/// complete build exists. Without one, records why the tiers did not run.
fn node_for_tests(
    layout: &Layout,
    opts: &Options,
    not_run: &mut Vec<String>,
) -> Result<Option<PathBuf>> {
    let state = layout.load_state()?;
    let binary = layout.node_binary();
    if !state.full_build_done || !binary.exists() {
        not_run.push(format!(
            "!!! TIERS 2 AND 3 DID NOT RUN: no complete Node.js build in {} \
             (a first build takes about three hours on 2 cores, less with \
             `--ccache-seed`; run `cargo xtask build-node`, then this command again) !!!",
            layout.tree.display()
        ));
        return Ok(None);
    }
    if opts.no_build {
        let patched = state.patched_commit.as_deref();
        if patched.is_none() || state.built_commit.as_deref() != patched {
            bail!("--no-build: the binary does not match the current patches; run `cargo xtask build-node`");
        }
        return Ok(Some(binary));
    }
    let build_opts = Options {
        jobs: opts.jobs,
        ..Options::default()
    };
    Ok(Some(build::build_node(layout, &build_opts)?))
}

fn tier1(layout: &Layout) -> Result<Counts> {
    let repo = &layout.repo;
    let output = Command::new("cargo")
        .args(["test", "--workspace", "--no-fail-fast", "--manifest-path"])
        .arg(repo.join("Cargo.toml"))
        .output()
        .context("cannot run cargo test")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    let mut counts = Counts::default();
    let mut saw_result = false;
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("test result: ") else {
            continue;
        };
        saw_result = true;
        let number = |word: &str| -> usize {
            rest.split(';')
                .find_map(|part| {
                    let part = part
                        .trim()
                        .trim_start_matches("ok. ")
                        .trim_start_matches("FAILED. ");
                    part.strip_suffix(word).and_then(|n| n.trim().parse().ok())
                })
                .unwrap_or(0)
        };
        counts.passed += number("passed");
        counts.failed += number("failed");
        counts.skipped += number("ignored");
    }
    if !output.status.success() && counts.failed == 0 {
        eprint!("{stderr}");
        bail!("cargo test failed before running tests (see the output above)");
    }
    if !saw_result {
        bail!("cargo test printed no result line");
    }
    Ok(counts)
}

/// One test's result in test.py's TAP output.
#[derive(Debug, PartialEq)]
enum Outcome {
    Pass,
    Fail,
    Skip(String),
}

/// Parses test.py's TAP output into (test name, outcome, failure output).
fn parse_tap(text: &str) -> Vec<(String, Outcome, String)> {
    let mut results: Vec<(String, Outcome, String)> = Vec::new();
    for line in text.lines() {
        let (ok, rest) = if let Some(rest) = line.strip_prefix("not ok ") {
            (false, rest)
        } else if let Some(rest) = line.strip_prefix("ok ") {
            (true, rest)
        } else {
            if let Some(last) = results.last_mut() {
                if last.1 == Outcome::Fail {
                    last.2.push_str(line);
                    last.2.push('\n');
                }
            }
            continue;
        };
        let name_part = rest.split_once(' ').map(|(_, name)| name).unwrap_or(rest);
        let (name, directive) = match name_part.split_once(" # ") {
            Some((name, directive)) => (name.trim(), Some(directive.trim())),
            None => (name_part.trim(), None),
        };
        let outcome = match (ok, directive) {
            (_, Some(d)) if d.to_ascii_lowercase().starts_with("skip") => Outcome::Skip(
                d.trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .trim()
                    .to_string(),
            ),
            (true, _) => Outcome::Pass,
            (false, _) => Outcome::Fail,
        };
        results.push((name.to_string(), outcome, String::new()));
    }
    results
}

fn run_test_py(
    layout: &Layout,
    node: &Path,
    patterns: &[String],
    opts: &Options,
) -> Result<Vec<(String, Outcome, String)>> {
    let jobs = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let output = Command::new("python3")
        .current_dir(&layout.tree)
        .args([
            "tools/test.py",
            "-p",
            "tap",
            "--timeout",
            "240",
            "-j",
            &jobs.to_string(),
            "--shell",
        ])
        .arg(node)
        .args(patterns)
        .output()
        .context("cannot run tools/test.py")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let results = parse_tap(&text);
    if results.is_empty() {
        bail!(
            "tools/test.py ran no test for {patterns:?}:\n{}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(results)
}

/// File of the tree that lists the test files tier 2 copied into it.
fn installed_list(layout: &Layout) -> PathBuf {
    layout.root.join("node-tests-installed.json")
}

fn read_installed(layout: &Layout) -> Vec<String> {
    std::fs::read(installed_list(layout))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Runs Node's own test-tls-* files, leaving out the copies of node-tests/
/// that tier 2 puts into the same folder, from this checkout or another.
fn node_tls_tests(
    layout: &Layout,
    node: &Path,
    opts: &Options,
) -> Result<Vec<(String, Outcome, String)>> {
    let mut ours: Vec<String> = std::fs::read_dir(layout.repo.join("node-tests"))
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    ours.extend(read_installed(layout));
    let ours: Vec<String> = ours
        .iter()
        .map(|name| name.trim_end_matches(".js").to_string())
        .collect();
    let results = run_test_py(layout, node, &[TLS_PATTERN.to_string()], opts)?;
    Ok(results
        .into_iter()
        .filter(|(name, _, _)| !ours.iter().any(|own| name.ends_with(&format!("/{own}"))))
        .collect())
}

/// Copies node-tests/ into the tree and runs them.
fn tier2(layout: &Layout, node: &Path, opts: &Options) -> Result<(Counts, Vec<String>)> {
    let source = layout.repo.join("node-tests");
    let mut patterns = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&source)
        .with_context(|| format!("cannot read {}", source.display()))?
        .flatten()
        .map(|entry| entry.path())
        .collect();
    entries.sort();
    // Remove the copies of an earlier run, so that a test deleted or
    // renamed since then does not linger in the tree.
    let parallel = layout.tree.join("test/parallel");
    for name in read_installed(layout) {
        let _ = std::fs::remove_file(parallel.join(&name));
    }
    let mut installed = Vec::new();
    for path in entries {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if path.is_file() && name.starts_with("test-") && name.ends_with(".js") {
            std::fs::copy(&path, parallel.join(&name))?;
            patterns.push(format!("parallel/{}", name.trim_end_matches(".js")));
            installed.push(name);
        } else if path.is_dir() && name == "fixtures" {
            let sh = Shell::new()?;
            let dest = layout.tree.join("test/fixtures/tls-splice");
            std::fs::create_dir_all(&dest)?;
            cmd!(sh, "cp -r {path}/. {dest}/").quiet().run()?;
        }
    }
    std::fs::write(installed_list(layout), serde_json::to_vec(&installed)?)?;
    if patterns.is_empty() {
        return Ok((Counts::default(), Vec::new()));
    }
    let results = run_test_py(layout, node, &patterns, opts)?;
    let mut counts = Counts::default();
    let mut failures = Vec::new();
    for (name, outcome, output) in results {
        match outcome {
            Outcome::Pass => counts.passed += 1,
            Outcome::Skip(reason) => {
                counts.skipped += 1;
                println!("tier 2: {name} skipped: {reason}");
            }
            Outcome::Fail => {
                counts.failed += 1;
                println!("tier 2: {name} FAILED:\n{output}");
                failures.push(name);
            }
        }
    }
    Ok((counts, failures))
}

/// Runs Node's test-tls-* and returns the counts and the failures that the
/// baseline does not list.
fn tier3(layout: &Layout, node: &Path, opts: &Options) -> Result<(Counts, Vec<String>)> {
    let path = baseline_path(layout);
    let baseline: Baseline =
        serde_json::from_str(&std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}; record it with `cargo xtask baseline`",
                path.display()
            )
        })?)
        .with_context(|| format!("invalid {}", path.display()))?;
    let results = node_tls_tests(layout, node, opts)?;
    let mut counts = Counts::default();
    let mut new_failures = Vec::new();
    for (name, outcome, output) in &results {
        match outcome {
            Outcome::Pass => {
                counts.passed += 1;
                if baseline.failing.contains_key(name) {
                    println!("tier 3: {name} passes now, but the baseline lists it as failing");
                }
            }
            Outcome::Skip(_) => counts.skipped += 1,
            Outcome::Fail if baseline.failing.contains_key(name) => counts.failed += 1,
            Outcome::Fail => {
                println!("tier 3: {name} FAILED (not in the baseline):\n{output}");
                new_failures.push(name.clone());
            }
        }
    }
    if results.len() != baseline.total {
        println!(
            "tier 3: {} tests ran, the baseline recorded {}",
            results.len(),
            baseline.total
        );
    }
    Ok((counts, new_failures))
}

/// Runs Node's test-tls-* on the unpatched build and writes the baseline.
/// Reasons already written for a test are kept.
pub fn record_baseline(layout: &Layout, opts: &Options) -> Result<()> {
    let state = layout.load_state()?;
    let sh = Shell::new()?;
    let tree = &layout.tree;
    let head = cmd!(sh, "git -C {tree} rev-parse HEAD").quiet().read()?;
    if state.base_commit.as_deref() != Some(head.as_str())
        || state.built_commit.as_deref() != Some(head.as_str())
        || !layout.node_binary().exists()
    {
        bail!(
            "the baseline must be recorded on the unpatched build; run \
             `cargo xtask build-node --no-patches` first"
        );
    }
    let path = baseline_path(layout);
    let previous: Option<Baseline> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok());
    let results = node_tls_tests(layout, &layout.node_binary(), opts)?;
    let mut baseline = Baseline {
        build: "Node.js v22.22.2 without patches, configured by `cargo xtask build-node` \
                (no ICU, no inspector, shared system OpenSSL 3.0)"
            .to_string(),
        total: results.len(),
        failing: BTreeMap::new(),
        skipped: BTreeMap::new(),
    };
    for (name, outcome, output) in results {
        match outcome {
            Outcome::Pass => {}
            Outcome::Skip(reason) => {
                baseline.skipped.insert(name, reason);
            }
            Outcome::Fail => {
                let recorded_reason = previous
                    .as_ref()
                    .and_then(|p| p.failing.get(&name))
                    .cloned();
                let reason = recorded_reason.unwrap_or_else(|| {
                    let first = output
                        .lines()
                        .map(str::trim)
                        .find(|line| line.contains("Error") || line.contains("error"))
                        .unwrap_or("no error line in the output");
                    format!("UNEXPLAINED: {first}")
                });
                baseline.failing.insert(name, reason);
            }
        }
    }
    std::fs::write(&path, serde_json::to_string_pretty(&baseline)? + "\n")?;
    println!(
        "baseline: {} tests, {} failing, {} skipped; written to {}",
        baseline.total,
        baseline.failing.len(),
        baseline.skipped.len(),
        path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_lines_parse() {
        let text = "TAP version 13\n1..3\n\
                    ok 1 parallel/test-tls-a\n  ---\n  duration_ms: 1\n  ...\n\
                    not ok 2 parallel/test-tls-b\n  ---\n  stderr: |-\n    Error: boom\n  ...\n\
                    ok 3 parallel/test-tls-c # skip missing ICU\n";
        let results = parse_tap(text);
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].0, "parallel/test-tls-a");
        assert_eq!(results[0].1, Outcome::Pass);
        assert_eq!(results[1].1, Outcome::Fail);
        assert!(results[1].2.contains("Error: boom"));
        assert_eq!(results[2].1, Outcome::Skip("missing ICU".to_string()));
    }
}
