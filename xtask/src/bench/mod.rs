//! `cargo xtask bench`: spliceTo against JavaScript pumps, socat and a
//! minimal C forwarder, side by side on the patched node, in one run.
//!
//! Every measurement starts a TLS peer (`xtask/bench/peer.js`, a TLS 1.3
//! server on 127.0.0.1) and one forwarder, which connects to it and moves the
//! cleartext to or from its fd 3. The xtask owns the other end of fd 3 and
//! drives it from helper threads. The forwarder's CPU time and peak RSS come
//! from `wait4`. The peer, the forwarder and the helper threads all run on
//! one CPU, because on a small VM processes on different cores spend their
//! time in cross-core wake-ups instead of forwarding.
//!
//! Workloads:
//! - W1: TLS -> pipe, bulk.
//! - W2: pipe -> TLS, bulk.
//! - W3: 1400-byte packets both ways at once over a SOCK_SEQPACKET socketpair,
//!   and again over a TUN device in a network namespace of its own
//!   (`framing: 'ip'`).
//! - W4: the same packets at a fixed rate, to compare CPU and event-loop
//!   utilization at equal work.
//! - W5: a sink that never reads while the peer offers 1 GiB: RSS growth of
//!   the forwarder and whether the peer is blocked.

mod chart;
mod markdown;
mod process;
mod report;
mod workloads;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::{cmd, Shell};

use crate::cache::Layout;
use crate::progress::format_duration;
use crate::Options;

const PEER_SCRIPT: &str = include_str!("../../bench/peer.js");
const FORWARDER_SCRIPT: &str = include_str!("../../bench/forwarder.js");
const C_FORWARDER: &str = include_str!("../../bench/forward.c");

/// Runs of each measurement in a full run. The median of five runs ignores
/// up to two outlier runs.
const DEFAULT_RUNS: usize = 5;
/// Packet size of W3 and W4, the size of a full packet on a tunnel with a
/// 1400-byte MTU.
const PACKET_SIZE: usize = 1400;
/// Bytes that the peer offers to the stalled sink of W5.
const STALL_OFFER: u64 = 1 << 30;
/// W4 offers this share of the slowest variant's W3 packet rate, well below
/// every variant's maximum.
pub const FIXED_RATE_SHARE: f64 = 0.4;
/// W4's rate when W3 has no results to derive it from, packets/s each way.
const FALLBACK_FIXED_RATE: u64 = 1_000;

/// One way of forwarding, the unit of comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    Splice,
    Pipe,
    Pipeline,
    Data,
    Socat,
    C,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Splice,
        Variant::Pipe,
        Variant::Pipeline,
        Variant::Data,
        Variant::Socat,
        Variant::C,
    ];

    /// Returns the name used in the forwarder script's arguments and in the
    /// JSON.
    pub fn key(self) -> &'static str {
        match self {
            Variant::Splice => "splice",
            Variant::Pipe => "pipe",
            Variant::Pipeline => "pipeline",
            Variant::Data => "data",
            Variant::Socat => "socat",
            Variant::C => "c",
        }
    }

    /// Returns the name in the report's tables.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Splice => "spliceTo",
            Variant::Pipe => "pipe()",
            Variant::Pipeline => "pipeline()",
            Variant::Data => "'data'/'drain'",
            Variant::Socat => "socat -b 65536",
            Variant::C => "C SSL_read/write loop",
        }
    }

    /// Returns whether the variant is a JavaScript pump.
    pub fn is_js(self) -> bool {
        matches!(self, Variant::Pipe | Variant::Pipeline | Variant::Data)
    }

    /// Returns whether the forwarder is the node script, which reports ELU.
    pub fn runs_node(self) -> bool {
        !matches!(self, Variant::Socat | Variant::C)
    }
}

/// The TLS 1.3 cipher suite that the peer offers, and so every forwarder
/// negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Cipher {
    #[serde(rename = "TLS_AES_128_GCM_SHA256")]
    Aes128Gcm,
    #[serde(rename = "TLS_CHACHA20_POLY1305_SHA256")]
    Chacha20Poly1305,
}

impl Cipher {
    pub fn suite(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Cipher::Chacha20Poly1305 => "TLS_CHACHA20_POLY1305_SHA256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Workload {
    W1,
    W2,
    W3,
    /// W3 over a TUN device instead of a socketpair.
    W3Tun,
    W4,
    W5,
}

impl Workload {
    pub fn title(self) -> &'static str {
        match self {
            Workload::W1 => "W1: TLS -> pipe, bulk",
            Workload::W2 => "W2: pipe -> TLS, bulk",
            Workload::W3 => "W3: 1400-byte packets both ways over SOCK_SEQPACKET",
            Workload::W3Tun => "W3: 1400-byte packets both ways over a TUN device",
            Workload::W4 => "W4: 1400-byte packets at a fixed rate",
            Workload::W5 => "W5: stalled sink, peer offering 1 GiB",
        }
    }

    /// Returns the zero-length transfer whose CPU time is subtracted as the
    /// forwarder's fixed cost, or None where CPU per unit is not reported.
    /// The TUN workload uses the socketpair's: the xtask, not the forwarder,
    /// creates the namespace and the device.
    pub fn startup_shape(self) -> Option<Shape> {
        match self {
            Workload::W1 => Some(Shape::StreamIn),
            Workload::W2 => Some(Shape::StreamOut),
            Workload::W3 | Workload::W3Tun | Workload::W4 => Some(Shape::Packets),
            Workload::W5 => None,
        }
    }

    pub fn moves_packets(self) -> bool {
        matches!(self, Workload::W3 | Workload::W3Tun | Workload::W4)
    }

    /// Returns whether `variant` can run this workload. socat cannot cut the
    /// TLS stream into IP packets, so it has no TUN measurement.
    pub fn supports(self, variant: Variant) -> bool {
        !(self == Workload::W3Tun && variant == Variant::Socat)
    }
}

/// The kind of transfer of a start-up measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Shape {
    StreamIn,
    StreamOut,
    Packets,
}

/// Sizes and repetitions of one invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub quick: bool,
    pub runs: usize,
    pub startup_runs: usize,
    /// The CPU that the peer, the forwarder and the helper threads share.
    pub cpu: usize,
    /// Bytes moved per run in W1 and W2.
    pub stream_bytes: u64,
    /// Packets sent each way per run in W3, over the socketpair and over
    /// the TUN device.
    pub packets: u64,
    pub packet_size: usize,
    /// W4: packets per second each way, and for how long. The rate is set
    /// from W3's results in the same run (see `fixed_rate_from`).
    pub fixed_rate: u64,
    pub fixed_rate_seconds: f64,
    /// W5: bytes offered and seconds the sink stays stalled.
    pub stall_offer: u64,
    pub stall_seconds: f64,
    /// Time allowed for one measurement, after which its processes are
    /// killed and the benchmark fails.
    pub run_timeout_seconds: u64,
    /// Workloads and ciphers to measure, in order.
    pub configs: Vec<(Workload, Cipher)>,
}

impl Settings {
    fn new(opts: &Options, cpu: usize) -> Result<Settings> {
        let quick = opts.quick;
        let runs = opts.runs.unwrap_or(if quick { 2 } else { DEFAULT_RUNS });
        if runs == 0 {
            bail!("--runs must be at least 1");
        }
        let aes = Cipher::Aes128Gcm;
        let chacha = Cipher::Chacha20Poly1305;
        let configs = if quick {
            vec![
                (Workload::W1, aes),
                (Workload::W2, aes),
                (Workload::W3, aes),
                (Workload::W3Tun, aes),
                (Workload::W4, aes),
                (Workload::W5, aes),
            ]
        } else {
            vec![
                (Workload::W1, aes),
                (Workload::W1, chacha),
                (Workload::W2, aes),
                (Workload::W2, chacha),
                (Workload::W3, aes),
                (Workload::W3Tun, aes),
                (Workload::W4, aes),
                (Workload::W5, aes),
            ]
        };
        Ok(Settings {
            quick,
            runs,
            startup_runs: if quick { 1 } else { 3 },
            cpu,
            stream_bytes: if quick { 32 << 20 } else { 512 << 20 },
            packets: if quick { 5_000 } else { 30_000 },
            packet_size: PACKET_SIZE,
            fixed_rate: 0,
            fixed_rate_seconds: if quick { 1.0 } else { 3.0 },
            stall_offer: STALL_OFFER,
            stall_seconds: if quick { 1.0 } else { 3.0 },
            run_timeout_seconds: if quick { 30 } else { 120 },
            configs,
        })
    }
}

/// Paths and settings that every measurement uses.
#[derive(Clone)]
pub struct Env {
    pub node: PathBuf,
    pub peer_script: PathBuf,
    pub forwarder_script: PathBuf,
    pub c_forwarder: PathBuf,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub settings: Settings,
    /// When set, the forwarder runs under `perf stat`, writing its counts
    /// to this file.
    pub perf_output: Option<PathBuf>,
}

impl Env {
    pub fn run_timeout(&self) -> Duration {
        Duration::from_secs(self.settings.run_timeout_seconds)
    }
}

/// One measurement of one forwarder process.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub workload: Option<Workload>,
    /// For start-up measurements: the transfer they stand in for.
    pub shape: Option<Shape>,
    pub variant: Variant,
    pub cipher: Cipher,
    /// Index of the run, from 0. Variants alternate within each run.
    pub run: usize,
    /// Bytes (W1, W2) or packets, both directions together (W3, W4), moved.
    pub amount: u64,
    /// Seconds from the end of the handshake at the peer to the last byte
    /// or packet arriving at its receiver.
    pub seconds: f64,
    pub user_seconds: f64,
    pub system_seconds: f64,
    pub max_rss_kib: u64,
    /// `performance.eventLoopUtilization()` from the handshake to the end of
    /// the pump, for the node variants.
    pub elu: Option<f64>,
    /// W5: the forwarder's VmHWM at the end minus its VmRSS after the
    /// handshake, in KiB.
    pub rss_growth_kib: Option<i64>,
    /// W5: bytes the peer's TLS socket had passed on when the stall ended.
    pub peer_accepted: Option<u64>,
    /// W5: whether the peer passed on no more bytes during the second half
    /// of the stall.
    pub peer_blocked: Option<bool>,
}

impl Sample {
    pub fn cpu_seconds(&self) -> f64 {
        self.user_seconds + self.system_seconds
    }
}

/// Indents each line of a child's output for an error report.
pub fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)".to_string();
    }
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Returns `items` rotated left by `by`, so that each run starts with a
/// different variant.
fn rotated<T: Copy>(items: &[T], by: usize) -> Vec<T> {
    let mut order = items.to_vec();
    if !order.is_empty() {
        let shift = by % order.len();
        order.rotate_left(shift);
    }
    order
}

/// Runs the benchmark and writes the report.
pub fn run_bench(layout: &Layout, opts: &Options) -> Result<()> {
    let started = Instant::now();
    let node = layout.node_binary();
    check_node(&node)?;
    check_tools()?;
    let cpu = benchmark_cpu();
    let settings = Settings::new(opts, cpu)?;

    // The lock on the cache folder keeps other runs out of this folder.
    let scratch = layout.tmp.join("bench");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch)
            .with_context(|| format!("cannot remove {}", scratch.display()))?;
    }
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;
    let mut env = prepare(&scratch, node, settings)?;

    let machine = report::Machine::describe(&env)?;
    eprintln!(
        "bench: {} on {} ({} CPUs); peer, forwarder and helpers pinned to CPU {}",
        if env.settings.quick {
            "quick run"
        } else {
            "full run"
        },
        machine.cpu_model,
        machine.cpus,
        env.settings.cpu
    );

    let startup = measure_startup(&env)?;
    let samples = measure_workloads(&mut env, &startup, &scratch)?;

    let mut results = report::Results::new(machine, &env.settings, startup, samples);
    let profiles = profile_losses(&env, &scratch, &results)?;
    results.profiles = profiles;

    let out_dir = if env.settings.quick && !opts.write {
        scratch.join("out")
    } else {
        layout.repo.join("doc")
    };
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    report::write_all(&results, &out_dir)?;
    println!("{}", report::summary_text(&results));
    eprintln!(
        "bench: wrote benchmarks.md, benchmarks.json and benchmarks.svg in {} after {}",
        out_dir.display(),
        format_duration(started.elapsed())
    );
    if env.settings.quick && !opts.write {
        eprintln!("bench: a quick run leaves doc/ alone; pass --write to record it there");
    }
    Ok(())
}

/// Returns W4's rate, packets per second each way: `FIXED_RATE_SHARE` of
/// the slowest variant's median W3 rate (which counts both directions),
/// rounded down to a multiple of 100.
fn fixed_rate_from(samples: &[Sample]) -> u64 {
    let Some(slowest) = report::slowest_median_throughput(samples, Workload::W3) else {
        return FALLBACK_FIXED_RATE;
    };
    let each_way = slowest * FIXED_RATE_SHARE / 2.0;
    ((each_way / 100.0).floor() as u64 * 100).max(100)
}

/// Measures every configured workload and cipher, rotating the order of
/// the variants from run to run.
fn measure_workloads(env: &mut Env, startup: &Startup, scratch: &Path) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    let configs = env.settings.configs.clone();
    for (workload, cipher) in configs {
        if workload == Workload::W4 {
            env.settings.fixed_rate = fixed_rate_from(&samples);
            eprintln!(
                "bench: W4 offers {} packets/s each way",
                env.settings.fixed_rate
            );
        }
        let variants: Vec<Variant> = Variant::ALL
            .into_iter()
            .filter(|&variant| workload.supports(variant))
            .collect();
        for run in 0..env.settings.runs {
            for variant in rotated(&variants, run) {
                let sample =
                    workloads::measure(env, workload, variant, cipher, run).with_context(|| {
                        format!(
                            "{} with {} ({}, run {}) failed; the scripts, key and certificate \
                             are kept in {}",
                            workload.title(),
                            variant.label(),
                            cipher.suite(),
                            run + 1,
                            scratch.display()
                        )
                    })?;
                eprintln!(
                    "bench: {} {} run {}/{}: {}",
                    workload.title(),
                    cipher.suite(),
                    run + 1,
                    env.settings.runs,
                    report::describe_sample(&sample, startup)
                );
                samples.push(sample);
            }
        }
    }
    Ok(samples)
}

/// Fails with a clear message when `node` is missing or has no spliceTo().
fn check_node(node: &Path) -> Result<()> {
    if !node.exists() {
        bail!(
            "no node binary at {}; run `cargo xtask build-node` first",
            node.display()
        );
    }
    let probe =
        "process.exit(typeof require('tls').TLSSocket.prototype.spliceTo === 'function' ? 0 : 3)";
    let status = std::process::Command::new(node)
        .args(["-e", probe])
        .status()
        .with_context(|| format!("cannot run {}", node.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => bail!(
            "{} has no tlsSocket.spliceTo(); rebuild it with `cargo xtask build-node`",
            node.display()
        ),
        _ => bail!("{} failed to start ({status})", node.display()),
    }
}

/// Fails when a program that the benchmark runs is not installed.
fn check_tools() -> Result<()> {
    let tools = [
        ("socat", "socat"),
        ("taskset", "util-linux"),
        ("openssl", "openssl"),
        ("cc", "build-essential"),
    ];
    for (tool, package) in tools {
        if which(tool).is_none() {
            bail!("{tool} not found in PATH; install it with `apt-get install {package}`");
        }
    }
    Ok(())
}

/// Returns the path of `program` in PATH, if any.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Returns the CPU for the benchmark's processes: the last one the xtask
/// may run on, which on a 2-CPU machine leaves CPU 0 to the rest.
fn benchmark_cpu() -> usize {
    // SAFETY: cpu_set_t is plain data that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
            if let Some(cpu) = (0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&cpu| libc::CPU_ISSET(cpu, &set))
            {
                return cpu;
            }
        }
    }
    0
}

/// Writes the scripts, compiles the C forwarder and creates a throwaway key
/// and certificate in `scratch`.
fn prepare(scratch: &Path, node: PathBuf, settings: Settings) -> Result<Env> {
    let sh = Shell::new()?;
    let key = scratch.join("key.pem");
    let cert = scratch.join("cert.pem");
    cmd!(
        sh,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
         -keyout {key} -out {cert} -days 1 -subj /CN=localhost"
    )
    .quiet()
    .ignore_stderr()
    .run()
    .context("openssl req failed to create the benchmark certificate")?;

    let peer_script = scratch.join("peer.js");
    let forwarder_script = scratch.join("forwarder.js");
    let source = scratch.join("forward.c");
    let c_forwarder = scratch.join("forward");
    std::fs::write(&peer_script, PEER_SCRIPT)?;
    std::fs::write(&forwarder_script, FORWARDER_SCRIPT)?;
    std::fs::write(&source, C_FORWARDER)?;
    cmd!(sh, "cc -O2 -Wall -o {c_forwarder} {source} -lssl -lcrypto")
        .quiet()
        .run()
        .context("cannot compile the C forwarder; are build-essential and libssl-dev installed?")?;

    Ok(Env {
        node,
        peer_script,
        forwarder_script,
        c_forwarder,
        key,
        cert,
        settings,
        perf_output: None,
    })
}

/// CPU seconds of zero-length transfers, by variant, transfer shape and
/// cipher: process start, handshake and exit.
pub type Startup = BTreeMap<(Variant, Shape, Cipher), Vec<f64>>;

/// Measures each variant's fixed cost for every transfer shape the
/// configured workloads use.
fn measure_startup(env: &Env) -> Result<Startup> {
    let mut needed: Vec<(Shape, Cipher)> = env
        .settings
        .configs
        .iter()
        .filter_map(|&(workload, cipher)| Some((workload.startup_shape()?, cipher)))
        .collect();
    needed.sort();
    needed.dedup();
    let mut startup = Startup::new();
    for (shape, cipher) in needed {
        for run in 0..env.settings.startup_runs {
            for variant in rotated(&Variant::ALL, run) {
                let sample = workloads::measure_startup(env, shape, variant, cipher, run)
                    .with_context(|| {
                        format!(
                            "start-up measurement {shape:?} with {} ({}) failed",
                            variant.label(),
                            cipher.suite()
                        )
                    })?;
                startup
                    .entry((variant, shape, cipher))
                    .or_default()
                    .push(sample.cpu_seconds());
            }
        }
        eprintln!(
            "bench: start-up cost measured for {shape:?}, {}",
            cipher.suite()
        );
    }
    Ok(startup)
}

/// Runs spliceTo and the best JavaScript variant once more under
/// `perf stat` for every workload where spliceTo lost, so the report can
/// show where the time went.
fn profile_losses(
    env: &Env,
    scratch: &Path,
    results: &report::Results,
) -> Result<Vec<report::Profile>> {
    let losses = results.losses();
    if losses.is_empty() {
        return Ok(Vec::new());
    }
    if which("perf").is_none() {
        eprintln!(
            "bench: spliceTo lost in {} workload(s), but perf is not installed \
             (apt-get install linux-perf), so the report has no counts",
            losses.len()
        );
        return Ok(Vec::new());
    }
    let mut profiles = Vec::new();
    for loss in losses {
        for variant in [Variant::Splice, loss.best_js] {
            let output = scratch.join(format!(
                "perf-{:?}-{}-{}.csv",
                loss.workload,
                loss.cipher.suite(),
                variant.key()
            ));
            let profiled = Env {
                perf_output: Some(output.clone()),
                ..env.clone()
            };
            let sample = workloads::measure(&profiled, loss.workload, variant, loss.cipher, 0)
                .with_context(|| {
                    format!(
                        "perf stat run of {} in {} failed",
                        variant.label(),
                        loss.workload.title()
                    )
                })?;
            let text = std::fs::read_to_string(&output)
                .with_context(|| format!("perf stat wrote no {}", output.display()))?;
            profiles.push(report::Profile::parse(
                loss.workload,
                loss.cipher,
                variant,
                sample.amount,
                &text,
            ));
        }
        eprintln!(
            "bench: perf stat counts taken for {}",
            loss.workload.title()
        );
    }
    Ok(profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w3_sample(variant: Variant, packets_per_second: f64) -> Sample {
        Sample {
            workload: Some(Workload::W3),
            shape: None,
            variant,
            cipher: Cipher::Aes128Gcm,
            run: 0,
            amount: packets_per_second as u64,
            seconds: 1.0,
            user_seconds: 0.0,
            system_seconds: 0.0,
            max_rss_kib: 0,
            elu: None,
            rss_growth_kib: None,
            peer_accepted: None,
            peer_blocked: None,
        }
    }

    #[test]
    fn fixed_rate_follows_slowest_variant() {
        let samples = [
            w3_sample(Variant::Splice, 90_000.0),
            w3_sample(Variant::Pipe, 9_950.0),
        ];
        // 40% of 9,950 packets/s, halved for one direction, rounded down.
        assert_eq!(fixed_rate_from(&samples), 1_900);
        assert_eq!(fixed_rate_from(&[]), FALLBACK_FIXED_RATE);
        assert_eq!(fixed_rate_from(&[w3_sample(Variant::C, 10.0)]), 100);
    }

    #[test]
    fn rotation_starts_each_run_elsewhere() {
        assert_eq!(rotated(&[1, 2, 3], 0), vec![1, 2, 3]);
        assert_eq!(rotated(&[1, 2, 3], 4), vec![2, 3, 1]);
    }
}
