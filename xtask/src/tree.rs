//! Assembly of a buildable Node.js v22.22.2 tree.
//!
//! Debian's `.orig` tarball is the full Node.js source minus `tools/gyp`,
//! the JavaScript dependencies and most of `deps/`. Those come from registry
//! packages: gyp from PyPI, the JavaScript dependencies from npm (two of them
//! bundled with esbuild the way Node's `tools/dep_updaters` scripts do), and
//! the C/C++ dependencies are built as static libraries into a prefix that
//! `configure` receives through its `--shared-*` options.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cache::{Layout, State};
use crate::fetch::{self, Sources};
use crate::Options;

/// Makes sure the tree exists as a git repository with the pristine source
/// tagged `base`, assembling it when needed.
pub fn ensure_tree(layout: &Layout, opts: &Options) -> Result<State> {
    let sh = Shell::new()?;
    let mut state = layout.load_state()?;
    let requested = requested_source(opts)?;
    let tree_ready = state.base_commit.is_some() && layout.tree.join(".git").is_dir();
    if tree_ready {
        match (&requested, &state.tree_source) {
            (None, _) => return Ok(state),
            (Some(want), Some(have)) if want == have => return Ok(state),
            (Some(want), have) => bail!(
                "the cache folder {} already holds a tree from {}, not {want}; \
                 use another --cache-dir or delete {}",
                layout.root.display(),
                have.as_deref().unwrap_or("an unknown source"),
                layout.tree.display()
            ),
        }
    }

    let started = Instant::now();
    if layout.tree.exists() {
        eprintln!(
            "fetch-node: removing the incomplete tree {}",
            layout.tree.display()
        );
        std::fs::remove_dir_all(&layout.tree)?;
    }
    if layout.am_worktree.exists() {
        std::fs::remove_dir_all(&layout.am_worktree)?;
    }
    let source = match (&opts.node_src, &opts.node_tarball) {
        (Some(dir), _) => {
            copy_upstream_dir(&sh, Path::new(dir), &layout.tree)?;
            state.bundled_deps = true;
            requested.clone().unwrap()
        }
        (None, Some(tarball)) => {
            unpack_upstream_tarball(&sh, layout, Path::new(tarball))?;
            state.bundled_deps = true;
            requested.clone().unwrap()
        }
        (None, None) => {
            let sources = Sources::load(layout)?;
            fetch::download_all(&sh, layout, &sources)?;
            build_static_deps(&sh, layout, &sources)?;
            assemble_from_registries(&sh, layout, &sources)?;
            state.bundled_deps = false;
            "registries".to_string()
        }
    };
    check_node_version(layout, &Sources::load(layout)?.node_version)?;
    let base = commit_base(&sh, layout)?;

    state.tree_source = Some(source);
    state.base_commit = Some(base);
    state.patches_hash = None;
    state.patched_commit = None;
    state.configure_hash = None;
    state.built_commit = None;
    state.full_build_done = false;
    layout.save_state(&state)?;
    eprintln!(
        "fetch-node: tree ready at {} in {}",
        layout.tree.display(),
        crate::progress::format_duration(started.elapsed())
    );
    Ok(state)
}

fn requested_source(opts: &Options) -> Result<Option<String>> {
    if let Some(dir) = &opts.node_src {
        let dir = Path::new(dir)
            .canonicalize()
            .with_context(|| format!("--node-src {dir}: folder not found"))?;
        return Ok(Some(format!("dir:{}", dir.display())));
    }
    if let Some(tarball) = &opts.node_tarball {
        let sha = fetch::sha256_file(Path::new(tarball))
            .with_context(|| format!("--node-tarball {tarball}: cannot read the file"))?;
        return Ok(Some(format!("tarball:{sha}")));
    }
    Ok(None)
}

fn check_node_version(layout: &Layout, expected: &str) -> Result<()> {
    let header = std::fs::read_to_string(layout.tree.join("src/node_version.h"))
        .context("the tree has no src/node_version.h; is it a Node.js source tree?")?;
    let number = |name: &str| {
        header.lines().find_map(|line| {
            line.strip_prefix(&format!("#define {name} "))
                .map(|value| value.trim().to_string())
        })
    };
    let version = format!(
        "{}.{}.{}",
        number("NODE_MAJOR_VERSION").unwrap_or_default(),
        number("NODE_MINOR_VERSION").unwrap_or_default(),
        number("NODE_PATCH_VERSION").unwrap_or_default()
    );
    if version != expected {
        bail!("the tree is Node.js {version}, but the patches target {expected}");
    }
    Ok(())
}

fn copy_upstream_dir(sh: &Shell, src: &Path, dest: &Path) -> Result<()> {
    if !src.join("deps/openssl").is_dir() || !src.join("tools/gyp").is_dir() {
        bail!(
            "--node-src {}: not a complete upstream tree (deps/openssl or tools/gyp is \
             missing); pass the unpacked official release tarball",
            src.display()
        );
    }
    eprintln!(
        "fetch-node: copying {} to {}",
        src.display(),
        dest.display()
    );
    std::fs::create_dir_all(dest)?;
    cmd!(sh, "cp -a --no-preserve=ownership {src}/. {dest}/").run()?;
    for generated in [
        "out",
        ".git",
        "config.gypi",
        "config.status",
        "icu_config.gypi",
    ] {
        let path = dest.join(generated);
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn unpack_upstream_tarball(sh: &Shell, layout: &Layout, tarball: &Path) -> Result<()> {
    let staging = layout.work.join("upstream");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    eprintln!("fetch-node: unpacking {}", tarball.display());
    cmd!(sh, "tar --no-same-owner -xf {tarball} -C {staging}").run()?;
    let top = single_subdir(&staging)?;
    if !top.join("deps/openssl").is_dir() {
        bail!(
            "{}: not an upstream release tarball (deps/openssl is missing)",
            tarball.display()
        );
    }
    std::fs::rename(&top, &layout.tree)?;
    Ok(())
}

fn single_subdir(dir: &Path) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir())
        .collect();
    if dirs.len() != 1 {
        bail!(
            "expected one folder in {}, found {}",
            dir.display(),
            dirs.len()
        );
    }
    Ok(dirs.remove(0))
}

/// Unpacks a registry archive into a fresh folder under `layout.work`.
fn unpack(sh: &Shell, layout: &Layout, kind: &str, file: &str) -> Result<PathBuf> {
    let archive = layout.downloads.join(kind).join(file);
    let dest = layout.work.join(kind).join(file);
    if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    std::fs::create_dir_all(&dest)?;
    if file.ends_with(".whl") {
        cmd!(sh, "python3 -m zipfile -e {archive} {dest}")
            .quiet()
            .run()?;
    } else {
        cmd!(sh, "tar --no-same-owner -xzf {archive} -C {dest}")
            .quiet()
            .run()?;
    }
    Ok(dest)
}

/// Compiles c-ares, llhttp, ada, simdutf and simdjson into static `-fPIC`
/// libraries under `layout.deps_prefix`.
fn build_static_deps(sh: &Shell, layout: &Layout, sources: &Sources) -> Result<()> {
    let prefix = &layout.deps_prefix;
    if prefix.exists() {
        std::fs::remove_dir_all(prefix)?;
    }
    let include = prefix.join("include");
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&include)?;
    std::fs::create_dir_all(&lib)?;
    let objects = layout.work.join("objects");
    if objects.exists() {
        std::fs::remove_dir_all(&objects)?;
    }

    let llhttp = unpack(sh, layout, "pypi", &sources.pypi("llhttp")?.file)?;
    let llhttp_lib = single_subdir(&llhttp)?.join("lib");
    eprintln!("fetch-node: compiling llhttp");
    static_library(
        sh,
        "gcc",
        &[],
        &objects.join("llhttp"),
        &lib.join("libllhttp.a"),
        &[
            llhttp_lib.join("api.c"),
            llhttp_lib.join("http.c"),
            llhttp_lib.join("llhttp.c"),
        ],
    )?;
    copy_into(&llhttp_lib.join("llhttp.h"), &include)?;

    let ada = unpack(sh, layout, "pypi", &sources.pypi("ada-url")?.file)?;
    let ada_src = single_subdir(&ada)?.join("ada_url");
    eprintln!("fetch-node: compiling ada");
    static_library(
        sh,
        "g++",
        &["-std=c++20"],
        &objects.join("ada"),
        &lib.join("libada.a"),
        &[ada_src.join("ada.cpp")],
    )?;
    copy_into(&ada_src.join("ada.h"), &include)?;
    copy_into(&ada_src.join("ada_c.h"), &include)?;

    let simdutf = unpack(sh, layout, "crates", &sources.crate_("simdutf")?.file)?;
    let simdutf_src = single_subdir(&simdutf)?.join("cpp");
    eprintln!("fetch-node: compiling simdutf");
    static_library(
        sh,
        "g++",
        &["-std=c++20"],
        &objects.join("simdutf"),
        &lib.join("libsimdutf.a"),
        &[simdutf_src.join("simdutf.cpp")],
    )?;
    copy_into(&simdutf_src.join("simdutf.h"), &include)?;

    let simdjson = unpack(sh, layout, "crates", &sources.crate_("simdjson-sys")?.file)?;
    let simdjson_src = single_subdir(&simdjson)?.join("vendor/simdjson");
    eprintln!("fetch-node: compiling simdjson");
    static_library(
        sh,
        "g++",
        &["-std=c++20"],
        &objects.join("simdjson"),
        &lib.join("libsimdjson.a"),
        &[simdjson_src.join("simdjson.cpp")],
    )?;
    copy_into(&simdjson_src.join("simdjson.h"), &include)?;

    let pycares = unpack(sh, layout, "pypi", &sources.pypi("pycares")?.file)?;
    let cares_src = single_subdir(&pycares)?.join("deps/c-ares");
    let cares_build = objects.join("c-ares");
    eprintln!("fetch-node: building c-ares with CMake");
    let prefix_arg = format!("-DCMAKE_INSTALL_PREFIX={}", prefix.display());
    cmd!(
        sh,
        "cmake -S {cares_src} -B {cares_build} -G Ninja -DCMAKE_BUILD_TYPE=Release
         -DCARES_STATIC=ON -DCARES_SHARED=OFF -DCARES_STATIC_PIC=ON
         -DCARES_BUILD_TOOLS=OFF -DCARES_BUILD_TESTS=OFF
         {prefix_arg} -DCMAKE_INSTALL_LIBDIR=lib"
    )
    .quiet()
    .ignore_stdout()
    .run()?;
    cmd!(sh, "ninja -C {cares_build} install")
        .quiet()
        .ignore_stdout()
        .run()?;
    Ok(())
}

fn static_library(
    sh: &Shell,
    compiler: &str,
    flags: &[&str],
    object_dir: &Path,
    archive: &Path,
    sources: &[PathBuf],
) -> Result<()> {
    std::fs::create_dir_all(object_dir)?;
    let mut objects = Vec::new();
    for source in sources {
        let stem = source.file_stem().context("source file without a name")?;
        let object = object_dir.join(stem).with_extension("o");
        let include_dir = source.parent().context("source file without a folder")?;
        cmd!(
            sh,
            "{compiler} -O2 -fPIC {flags...} -I{include_dir} -c {source} -o {object}"
        )
        .quiet()
        .run()?;
        objects.push(object);
    }
    cmd!(sh, "ar rcs {archive} {objects...}").quiet().run()?;
    Ok(())
}

fn copy_into(file: &Path, dir: &Path) -> Result<()> {
    let name = file.file_name().context("file without a name")?;
    std::fs::copy(file, dir.join(name))
        .with_context(|| format!("cannot copy {}", file.display()))?;
    Ok(())
}

fn copy_dir(sh: &Shell, src: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    cmd!(sh, "cp -r {src}/. {dest}/").quiet().run()?;
    Ok(())
}

fn assemble_from_registries(sh: &Shell, layout: &Layout, sources: &Sources) -> Result<()> {
    let tree = &layout.tree;
    let debian = &sources.debian;
    let tarball = fetch::debian_tarball(layout, debian);
    let staging = layout.work.join("debian");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    eprintln!("fetch-node: unpacking {}", debian.file);
    cmd!(sh, "tar --no-same-owner -xf {tarball} -C {staging}")
        .quiet()
        .run()?;
    std::fs::rename(single_subdir(&staging)?, tree)?;

    // gyp and the `packaging` module it imports, where configure.py and
    // tools/gyp_node.py look for them.
    let pylib = tree.join("tools/gyp/pylib");
    let gyp = unpack(sh, layout, "pypi", &sources.pypi("gyp-next")?.file)?;
    copy_dir(sh, &gyp.join("gyp"), &pylib.join("gyp"))?;
    let packaging = unpack(sh, layout, "pypi", &sources.pypi("packaging")?.file)?;
    copy_dir(sh, &packaging.join("packaging"), &pylib.join("packaging"))?;

    let acorn = unpack(sh, layout, "npm", &sources.npm("acorn")?.file)?;
    copy_dir(sh, &acorn.join("package"), &tree.join("deps/acorn/acorn"))?;
    let walk = unpack(sh, layout, "npm", &sources.npm("acorn-walk")?.file)?;
    copy_dir(
        sh,
        &walk.join("package"),
        &tree.join("deps/acorn/acorn-walk"),
    )?;

    let lexer = unpack(sh, layout, "npm", &sources.npm("cjs-module-lexer")?.file)?;
    let lexer_dest = tree.join("deps/cjs-module-lexer");
    copy_dir(sh, &lexer.join("package/dist"), &lexer_dest.join("dist"))?;
    for file in ["lexer.js", "LICENSE", "README.md"] {
        copy_into(&lexer.join("package").join(file), &lexer_dest)?;
    }

    let esbuild = unpack(sh, layout, "npm", &sources.npm("@esbuild/linux-x64")?.file)?
        .join("package/bin/esbuild");
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        bail!(
            "the pinned esbuild binary is for linux-x64 only; this machine is {}-{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
    }

    // minimatch: bundle the CommonJS build with its two dependencies.
    let modules = layout.work.join("minimatch-bundle/node_modules");
    if modules.exists() {
        std::fs::remove_dir_all(&modules)?;
    }
    for name in ["minimatch", "brace-expansion", "balanced-match"] {
        let package = unpack(sh, layout, "npm", &sources.npm(name)?.file)?;
        copy_dir(sh, &package.join("package"), &modules.join(name))?;
    }
    let minimatch_dest = tree.join("deps/minimatch");
    std::fs::create_dir_all(&minimatch_dest)?;
    let outfile = format!("--outfile={}", minimatch_dest.join("index.js").display());
    {
        let _dir = sh.push_dir(modules.join("minimatch"));
        cmd!(sh, "{esbuild} ./dist/commonjs/index.js --bundle --platform=node {outfile} --log-level=warning")
            .quiet()
            .run()?;
    }
    copy_into(&modules.join("minimatch/LICENSE.md"), &minimatch_dest)?;

    // undici: the fetch entry point bundled into one file, with the options of
    // undici's own `build:node` script, then recoded to Latin-1.
    let undici = unpack(sh, layout, "npm", &sources.npm("undici")?.file)?.join("package");
    {
        let _dir = sh.push_dir(&undici);
        cmd!(
            sh,
            "{esbuild} index-fetch.js --bundle --platform=node --outfile=undici-fetch.js
             --define:esbuildDetection=1 --keep-names --log-level=warning"
        )
        .quiet()
        .run()?;
    }
    let undici_dest = tree.join("deps/undici");
    std::fs::create_dir_all(&undici_dest)?;
    let bundle = std::fs::read_to_string(undici.join("undici-fetch.js"))?;
    std::fs::write(undici_dest.join("undici.js"), restrict_to_latin1(&bundle))?;
    copy_into(&undici.join("LICENSE"), &undici_dest)?;

    // node.gyp names this file as an input of the FIPS install step. The
    // shared OpenSSL build never runs that step, but the path must exist.
    let openssl_dir = tree.join("deps/openssl");
    std::fs::create_dir_all(&openssl_dir)?;
    std::fs::write(
        openssl_dir.join("nodejs-openssl.cnf"),
        "# OpenSSL configuration used by the FIPS install step of node.gyp.\n\
         # This tree links the system OpenSSL, which never runs that step.\n\
         nodejs_conf = nodejs_init\n\n[nodejs_init]\n",
    )?;
    Ok(())
}

/// Replaces the characters outside Latin-1 with `?`, as undici's release
/// script (`scripts/strip-comments.js`) does by transcoding to Latin-1 and
/// back before it writes the file as UTF-8.
fn restrict_to_latin1(text: &str) -> String {
    text.chars()
        .map(|c| if u32::from(c) <= 0xff { c } else { '?' })
        .collect()
}

/// Commits the pristine tree and tags it `base`; creates the worktree in
/// which `git am` applies the patches.
fn commit_base(sh: &Shell, layout: &Layout) -> Result<String> {
    let tree = &layout.tree;
    let am = &layout.am_worktree;
    eprintln!("fetch-node: recording the pristine tree as git tag `base`");
    let _env = [
        sh.push_env("GIT_AUTHOR_NAME", "xtask"),
        sh.push_env("GIT_AUTHOR_EMAIL", "xtask@localhost"),
        sh.push_env("GIT_COMMITTER_NAME", "xtask"),
        sh.push_env("GIT_COMMITTER_EMAIL", "xtask@localhost"),
        sh.push_env("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
        sh.push_env("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
    ];
    cmd!(sh, "git -C {tree} init -q -b pristine")
        .quiet()
        .run()?;
    // -f: the tarball contains files that Node's .gitignore lists.
    cmd!(sh, "git -C {tree} add -A -f .").quiet().run()?;
    cmd!(
        sh,
        "git -C {tree} commit -q --no-verify -m 'Node.js v22.22.2 source tree'"
    )
    .quiet()
    .run()?;
    cmd!(sh, "git -C {tree} tag -f base")
        .quiet()
        .ignore_stdout()
        .run()?;
    cmd!(sh, "git -C {tree} worktree add -q --detach {am} base")
        .quiet()
        .run()?;
    let commit = cmd!(sh, "git -C {tree} rev-parse HEAD").quiet().read()?;
    Ok(commit)
}
