//! `cargo xtask`: builds a patched Node.js, runs the three test tiers and
//! manages the patch set. Run `cargo xtask help` for the commands.

mod bench;
mod build;
mod cache;
mod demo;
mod fetch;
mod patches;
mod progress;
mod test;
mod tree;

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

const HELP: &str = "\
cargo xtask COMMAND [OPTIONS]

Commands:
  fetch-node          download, verify and assemble the Node.js v22.22.2 source tree
  build-node          apply patches/, build native/ and build the patched node
  node -- ARGS        run the patched node with ARGS
  test                run the test tiers: cargo test, node-tests/, Node's test-tls-*
  demo                build node as build-node does, then splice a TLS 1.3 session
                      with openssl s_server into a UNIX socketpair, move data
                      both ways and compare SHA-256 digests (the main job)
  bench               compare spliceTo with JavaScript pumps, socat and a C forwarder
                      on the patched node; writes doc/benchmarks.{md,json,svg}
  patches export      write the commits of the build tree back into patches/
  patches apply       apply patches/ to the build tree without building
  baseline            record Node's test-tls-* results of the unpatched build
  help                print this text

Options:
  --cache-dir DIR     where sources, builds and the compiler cache live
                      (default: $TLS_SPLICE_CACHE_DIR, else ~/.cache/node-tls-splice)
  --node-src DIR      use a complete upstream Node.js source tree instead of
                      assembling one from registry packages (fetch-node, build-node, demo)
  --node-tarball FILE use an upstream release tarball (node-v22.22.2.tar.gz or .xz)
  --no-patches        build-node: build the tree without patches/ (for `baseline`)
  --ccache-seed FILE  build-node, demo: unpack this ccache archive (a tar of a ccache
                      folder from an earlier build) into an empty compiler cache
  --jobs N            parallel compile jobs (default: number of CPUs)
  --tier LIST         test: comma-separated tiers to run, e.g. 1,3 (default: 1,2,3)
  --no-build          test, demo: do not rebuild node (test also requires a
                      binary built from the current patches)
  --bytes N           demo: bytes to send in each direction (default: 256M);
                      K, M and G mean KiB, MiB and GiB
  --quick             bench: small sizes and 2 runs, a smoke check of about a minute;
                      writes into the cache folder's tmp/bench/out unless --write
  --write             bench: write a --quick run's results into doc/ as well
  --runs N            bench: runs of each measurement (default: 5, with --quick 2)
  --timeout SECS      demo: seconds allowed for the transfer, after which
                      node and s_server are killed (default: 120)
";

/// Command-line options shared by the commands.
#[derive(Debug, Default)]
pub struct Options {
    pub cache_dir: Option<String>,
    pub node_src: Option<String>,
    pub node_tarball: Option<String>,
    pub no_patches: bool,
    pub ccache_seed: Option<String>,
    pub jobs: Option<usize>,
    pub tiers: Option<Vec<u8>>,
    pub no_build: bool,
    /// Bytes that `demo` sends in each direction.
    pub bytes: Option<u64>,
    /// Seconds that `demo` allows for the transfer.
    pub timeout_secs: Option<u64>,
    /// `bench`: small sizes and few runs.
    pub quick: bool,
    /// `bench`: write a quick run's results into doc/.
    pub write: bool,
    /// `bench`: runs of each measurement.
    pub runs: Option<usize>,
    /// Arguments after `--`, passed to `node`.
    pub rest: Vec<String>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut opts = Options::default();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .with_context(|| format!("option {name} requires a value"))
        };
        match arg.as_str() {
            "--" => {
                opts.rest = args.by_ref().collect();
            }
            "--cache-dir" => opts.cache_dir = Some(value("--cache-dir")?),
            "--node-src" => opts.node_src = Some(value("--node-src")?),
            "--node-tarball" => opts.node_tarball = Some(value("--node-tarball")?),
            "--no-patches" => opts.no_patches = true,
            "--ccache-seed" => opts.ccache_seed = Some(value("--ccache-seed")?),
            "--no-build" => opts.no_build = true,
            "--quick" => opts.quick = true,
            "--write" => opts.write = true,
            "--runs" => {
                let text = value("--runs")?;
                let runs = text
                    .parse::<usize>()
                    .ok()
                    .filter(|runs| *runs > 0)
                    .with_context(|| {
                        format!("invalid --runs value {text:?}: expected a positive integer")
                    })?;
                opts.runs = Some(runs);
            }
            "--bytes" => opts.bytes = Some(demo::parse_byte_count(&value("--bytes")?)?),
            "--timeout" => {
                let text = value("--timeout")?;
                let secs = text
                    .parse::<u64>()
                    .ok()
                    .filter(|secs| *secs > 0)
                    .with_context(|| {
                        format!("invalid --timeout value {text:?}: expected a positive integer")
                    })?;
                opts.timeout_secs = Some(secs);
            }
            "--jobs" | "-j" => {
                let text = value("--jobs")?;
                let jobs = text
                    .parse::<usize>()
                    .ok()
                    .filter(|jobs| *jobs > 0)
                    .with_context(|| {
                        format!("invalid --jobs value {text:?}: expected a positive integer")
                    })?;
                opts.jobs = Some(jobs);
            }
            "--tier" => {
                let text = value("--tier")?;
                let mut tiers = Vec::new();
                for part in text.split(',') {
                    match part.trim() {
                        "1" => tiers.push(1),
                        "2" => tiers.push(2),
                        "3" => tiers.push(3),
                        other => bail!("invalid --tier value {other:?}: expected 1, 2 or 3"),
                    }
                }
                opts.tiers = Some(tiers);
            }
            "-h" | "--help" => positional.insert(0, "help".to_string()),
            flag if flag.starts_with('-') => {
                bail!(
                    "unknown option {flag:?}; run `cargo xtask help` for the list \
                     (node's own options go after `--`)"
                )
            }
            _ => positional.push(arg),
        }
    }
    if opts.node_src.is_some() && opts.node_tarball.is_some() {
        bail!("--node-src and --node-tarball are mutually exclusive; pass one of them");
    }

    let command: Vec<&str> = positional.iter().map(String::as_str).collect();
    if matches!(command.as_slice(), [] | ["help"]) {
        print!("{HELP}");
        return Ok(());
    }
    let layout = cache::Layout::new(&opts)?;
    // `node` only reads the binary; everything else may change the tree.
    let _lock = if command.as_slice() == ["node"] {
        None
    } else {
        Some(layout.lock()?)
    };
    match command.as_slice() {
        ["fetch-node"] => {
            tree::ensure_tree(&layout, &opts)?;
            Ok(())
        }
        ["build-node"] => {
            let node = build::build_node(&layout, &opts)?;
            println!("{}", node.display());
            Ok(())
        }
        ["node"] => build::run_node(&layout, &opts.rest),
        ["test"] => test::run_tests(&layout, &opts),
        ["demo"] => demo::run_demo(&layout, &opts),
        ["bench"] => bench::run_bench(&layout, &opts),
        ["baseline"] => test::record_baseline(&layout, &opts),
        ["patches", "export"] => patches::export(&layout),
        ["patches", "apply"] => {
            tree::ensure_tree(&layout, &opts)?;
            patches::apply(&layout, opts.no_patches)?;
            Ok(())
        }
        ["node", ..] => bail!(
            "unexpected arguments {:?}; pass node's arguments after `--`, as in \
             `cargo xtask node -- -p process.versions`",
            command[1..].join(" ")
        ),
        _ => bail!(
            "unknown command {:?}; run `cargo xtask help` for the list",
            command.join(" ")
        ),
    }
}
