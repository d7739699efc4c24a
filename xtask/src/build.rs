//! `build-node`: the patched tree, the static library from `native/`,
//! configure when its inputs changed, then an incremental ninja build.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::cache::{Layout, State};
use crate::fetch::hex;
use crate::progress::{format_duration, run_ninja};
use crate::{patches, tree, Options};

/// Folder of the tree, named by the patch set's gyp file, that receives the
/// library and its headers. The patch makes git ignore it.
const NATIVE_OUT: &str = "deps/tls_splice/out";
const LIBRARY_NAME: &str = "libtls_splice.a";

/// Builds the patched `node` and returns its path.
pub fn build_node(layout: &Layout, opts: &Options) -> Result<PathBuf> {
    let started = Instant::now();
    let sh = Shell::new()?;
    tree::ensure_tree(layout, opts)?;
    let commit = patches::apply(layout, opts.no_patches)?;
    let mut state = layout.load_state()?;

    let native_changed = if layout.tree.join("deps/tls_splice").is_dir() {
        build_native(&sh, layout, &state)?
    } else {
        false
    };
    let configured = configure(&sh, layout, &mut state)?;
    if native_changed && layout.node_binary().exists() {
        // gyp does not list prebuilt libraries as link inputs, so ninja
        // cannot see that the Rust library changed. Removing the binary
        // makes ninja run the final link again, and nothing else.
        std::fs::remove_file(layout.node_binary())?;
    }

    prepare_ccache(&sh, layout, opts.ccache_seed.as_deref())?;
    let ccache_before = ccache_counts(&sh, layout);
    std::fs::create_dir_all(&layout.logs)?;
    let log = layout.logs.join("ninja.log");
    let jobs = opts.jobs.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let mut command = Command::new("ninja");
    command
        .current_dir(&layout.tree)
        .args(["-C", "out/Release", "-j", &jobs.to_string(), "node"])
        .env("CCACHE_DIR", &layout.ccache);
    let run = run_ninja(command, &log, Duration::from_secs(20))?;
    let ccache_after = ccache_counts(&sh, layout);

    state.built_commit = Some(commit);
    state.full_build_done = true;
    layout.save_state(&state)?;

    let mut summary = format!(
        "build-node: {} in {}",
        if run.steps_run == 0 {
            "node is up to date".to_string()
        } else {
            format!("ran {} ninja steps", run.steps_run)
        },
        format_duration(started.elapsed())
    );
    if let (Some(before), Some(after)) = (ccache_before, ccache_after) {
        let hits = after.0.saturating_sub(before.0);
        let misses = after.1.saturating_sub(before.1);
        if hits + misses > 0 {
            summary.push_str(&format!(" (ccache: {hits} hits, {misses} misses)"));
        }
    }
    let mut changed = Vec::new();
    if configured {
        changed.push("configure");
    }
    if native_changed {
        changed.push("native library");
    }
    if !changed.is_empty() {
        summary.push_str(&format!("; rerun: {}", changed.join(", ")));
    }
    eprintln!("{summary}");
    Ok(layout.node_binary())
}

/// Runs the patched binary with `args` and exits with its status.
pub fn run_node(layout: &Layout, args: &[String]) -> Result<()> {
    let node = layout.node_binary();
    if !node.exists() {
        bail!(
            "no patched node at {}; run `cargo xtask build-node` first",
            node.display()
        );
    }
    let status = Command::new(&node)
        .args(args)
        .status()
        .with_context(|| format!("cannot run {}", node.display()))?;
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        // A shell reports death by signal N as 128 + N.
        let code = status
            .code()
            .or_else(|| status.signal().map(|signal| 128 + signal));
        std::process::exit(code.unwrap_or(1));
    }
    Ok(())
}

/// Creates the compiler cache, seeded from `seed` when it is empty. ccache
/// hashes every input, so a seed from another machine can only add hits.
fn prepare_ccache(sh: &Shell, layout: &Layout, seed: Option<&str>) -> Result<()> {
    let dir = &layout.ccache;
    std::fs::create_dir_all(dir)?;
    let empty = std::fs::read_dir(dir)?.next().is_none();
    match seed {
        Some(seed) if empty => {
            eprintln!("build-node: seeding the compiler cache from {seed}");
            cmd!(sh, "tar --no-same-owner -xf {seed} -C {dir}")
                .quiet()
                .run()
                .with_context(|| format!("cannot unpack the ccache seed {seed}"))?;
        }
        Some(seed) => eprintln!(
            "build-node: the compiler cache {} is not empty; not unpacking {seed}",
            dir.display()
        ),
        None => {}
    }
    let config = dir.join("ccache.conf");
    if !config.exists() {
        // A full build fills about 0.2 GB compressed (measured for v22.22.2);
        // the limit leaves room for several configurations.
        std::fs::write(&config, "max_size = 20G\n")?;
    }
    Ok(())
}

/// Reads ccache's cumulative (hits, misses) counters.
fn ccache_counts(sh: &Shell, layout: &Layout) -> Option<(u64, u64)> {
    let dir = &layout.ccache;
    let _env = sh.push_env("CCACHE_DIR", dir);
    let text = cmd!(sh, "ccache --print-stats")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    let mut hits = 0;
    let mut misses = 0;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(value) = value.parse::<u64>() else {
            continue;
        };
        match key {
            "direct_cache_hit" | "preprocessed_cache_hit" => hits += value,
            "cache_miss" => misses += value,
            _ => {}
        }
    }
    Some((hits, misses))
}

/// Builds the `configure` command line for the tree.
fn configure_args(layout: &Layout, state: &State) -> Vec<String> {
    let mut args: Vec<String> = [
        "--ninja",
        "--without-intl",
        "--without-sqlite",
        "--without-amaro",
        "--without-npm",
        "--without-corepack",
        "--without-inspector",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if state.bundled_deps {
        // An upstream tree bundles OpenSSL and every other dependency.
        return args;
    }
    for lib in ["openssl", "zlib", "brotli", "nghttp2", "zstd"] {
        args.push(format!("--shared-{lib}"));
    }
    let prefix = layout.deps_prefix.display().to_string();
    for lib in ["cares", "http-parser", "ada", "simdutf", "simdjson"] {
        args.push(format!("--shared-{lib}"));
        if lib == "http-parser" {
            args.push("--shared-http-parser-libname=llhttp".to_string());
        }
        args.push(format!("--shared-{lib}-includes={prefix}/include"));
        args.push(format!("--shared-{lib}-libpath={prefix}/lib"));
    }
    args
}

/// Runs configure when the flags or a configure input changed since the last
/// run. Returns whether it ran.
fn configure(sh: &Shell, layout: &Layout, state: &mut State) -> Result<bool> {
    let args = configure_args(layout, state);
    let tree = &layout.tree;
    // Configure reads configure.py, the gyp files and gyp itself; their blob
    // ids from git identify their content.
    let listing = cmd!(sh, "git -C {tree} ls-tree -r HEAD").quiet().read()?;
    let mut hasher = Sha256::new();
    for arg in &args {
        hasher.update(arg.as_bytes());
        hasher.update([0]);
    }
    for line in listing.lines() {
        let path = line.split('\t').nth(1).unwrap_or("");
        let relevant = path.ends_with(".gyp")
            || path.ends_with(".gypi")
            || path == "configure"
            || path == "configure.py"
            || path.starts_with("tools/gyp/")
            || path.starts_with("tools/configure.d/")
            || path == "tools/gyp_node.py";
        if relevant {
            hasher.update(line.as_bytes());
            hasher.update([b'\n']);
        } else if path.starts_with("lib/") {
            // configure.py lists lib/ into config.gypi: names matter, not
            // contents.
            hasher.update(path.as_bytes());
            hasher.update([b'\n']);
        }
    }
    let hash = hex(&hasher.finalize());
    let build_ninja = tree.join("out/Release/build.ninja");
    if state.configure_hash.as_deref() == Some(hash.as_str()) && build_ninja.is_file() {
        return Ok(false);
    }
    eprintln!("build-node: running configure");
    let _dir = sh.push_dir(tree);
    let _cc = sh.push_env("CC", "ccache gcc");
    let _cxx = sh.push_env("CXX", "ccache g++");
    // gyp builds every V8 host tool twice when these are set, and ninja then
    // fails on duplicate rules.
    let output = cmd!(sh, "python3 configure.py {args...}")
        .env_remove("CC_host")
        .env_remove("CXX_host")
        .quiet()
        .ignore_status()
        .output()?;
    if !output.status.success() {
        bail!(
            "configure failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    state.configure_hash = Some(hash);
    layout.save_state(state)?;
    Ok(true)
}

/// Builds `native/` as a static library against the tree's libuv headers
/// and the OpenSSL that `node` links, and installs the library and the
/// generated bridge headers into the tree when their content changed.
/// Returns whether the library changed.
fn build_native(sh: &Shell, layout: &Layout, state: &State) -> Result<bool> {
    let repo = &layout.repo;
    let target = &layout.target;
    let uv_include = layout.tree.join("deps/uv/include");
    let _uv = sh.push_env("TLS_SPLICE_UV_INCLUDE", &uv_include);
    let _openssl = if state.bundled_deps {
        Some(bundled_openssl_env(sh, layout)?)
    } else {
        None
    };
    // Source paths end up in the library (panic locations, debug line
    // tables). Mapping the checkout to a fixed name keeps the library's
    // bytes, and so node's link, the same for every clone.
    let remap = format!("--remap-path-prefix={}=/tls-splice", repo.display());
    let _rustflags = sh.push_env("RUSTFLAGS", &remap);
    let _cxxflags = sh.push_env(
        "CXXFLAGS",
        format!("-ffile-prefix-map={}=/tls-splice", repo.display()),
    );
    eprintln!("build-node: building the native static library");
    cmd!(
        sh,
        "cargo build --quiet --release --manifest-path {repo}/Cargo.toml
         --package tls-splice --lib --target-dir {target}"
    )
    .quiet()
    .run()
    .context("cargo build of native/ failed")?;

    let out = layout.tree.join(NATIVE_OUT);
    let mut changed = install_if_changed(
        &target.join("release").join(LIBRARY_NAME),
        &out.join(LIBRARY_NAME),
    )?;
    let bridge = target.join("cxxbridge");
    let headers = [
        (bridge.join("rust/cxx.h"), out.join("include/rust/cxx.h")),
        (
            bridge.join("tls-splice/src/ffi.rs.h"),
            out.join("include/tls-splice/ffi.rs.h"),
        ),
        (
            repo.join("native/include/tls-splice/tls_splice_host.h"),
            out.join("include/tls-splice/tls_splice_host.h"),
        ),
    ];
    for (from, to) in headers {
        changed |= install_if_changed(&from, &to)?;
    }
    Ok(changed)
}

/// Copies `from` to `to` unless `to` already has the same bytes, so that
/// the file's modification time changes only with its content.
fn install_if_changed(from: &Path, to: &Path) -> Result<bool> {
    let new = std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    if std::fs::read(to).ok().as_deref() == Some(new.as_slice()) {
        return Ok(false);
    }
    std::fs::create_dir_all(to.parent().unwrap())?;
    std::fs::write(to, new)?;
    Ok(true)
}

/// Points `openssl-sys` at the headers of an upstream tree's bundled
/// OpenSSL, so that Rust and `node` share one definition of `SSL`. node.gyp,
/// not cargo, links the library itself.
// NOTE: never run here, because no upstream tarball is reachable from the
// package registries; only the registry-assembled tree was built.
fn bundled_openssl_env<'a>(sh: &'a Shell, layout: &Layout) -> Result<Vec<xshell::PushEnv<'a>>> {
    let include = layout.work.join("bundled-openssl-include");
    let tree = &layout.tree;
    if include.exists() {
        std::fs::remove_dir_all(&include)?;
    }
    std::fs::create_dir_all(&include)?;
    let public = tree.join("deps/openssl/openssl/include");
    cmd!(sh, "cp -r {public}/. {include}/").quiet().run()?;
    // The generated headers (opensslconf.h and friends) live per platform.
    let generated = tree.join("deps/openssl/config/archs/linux-x86_64/no-asm/include");
    if !generated.is_dir() {
        bail!(
            "{} is missing; bundled OpenSSL is supported on linux-x86_64 only",
            generated.display()
        );
    }
    cmd!(sh, "cp -r {generated}/. {include}/").quiet().run()?;
    let lib = layout.work.join("bundled-openssl-lib");
    std::fs::create_dir_all(&lib)?;
    Ok(vec![
        sh.push_env("OPENSSL_INCLUDE_DIR", include),
        sh.push_env("OPENSSL_LIB_DIR", lib),
        sh.push_env("OPENSSL_NO_PKG_CONFIG", "1"),
    ])
}
