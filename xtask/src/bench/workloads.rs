//! One measurement per call: start the peer and the forwarder, drive the
//! xtask's end of fd 3, and return what the forwarder used.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

use super::process::{
    collect_text, monotonic_ns, pinned_command, pipe, proc_status_kib, seqpacket_pair,
    spawn_pinned, Measured, Peer, PeerEvent, Usage, CHILD_FD,
};
use super::{indent, Cipher, Env, Sample, Shape, Variant, Workload};

mod tun;

/// Size of the xtask's reads and writes on its end of a stream fd.
const CHUNK_SIZE: usize = 64 * 1024;
/// Events that `perf stat` counts for the report's explanation of a loss.
pub const PERF_EVENTS: &str = "task-clock,context-switches,cpu-migrations,page-faults,\
     raw_syscalls:sys_enter,syscalls:sys_enter_read,syscalls:sys_enter_write,\
     syscalls:sys_enter_writev,syscalls:sys_enter_sendmsg,syscalls:sys_enter_recvfrom,\
     syscalls:sys_enter_epoll_pwait,syscalls:sys_enter_poll,syscalls:sys_enter_futex";
/// W5: time after the handshake at which the forwarder's idle RSS is read,
/// and after which the peer starts sending.
const STALL_BASELINE_DELAY: Duration = Duration::from_millis(250);
const STALL_START_DELAY_MS: u64 = 500;
/// W5: interval of the peer's progress lines.
const STALL_PROGRESS_MS: u64 = 100;
/// Time that a peer gets to exit after its last event before it is killed.
const PEER_EXIT_GRACE: Duration = Duration::from_secs(5);

/// The JSON argument of peer.js, whose header describes the fields.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PeerConfig<'a> {
    #[serde(skip)]
    cipher: Cipher,
    key: &'a Path,
    cert: &'a Path,
    ciphersuite: &'static str,
    mode: &'static str,
    bytes: u64,
    packets: u64,
    packet_size: usize,
    framing: &'static str,
    rate: u64,
    start_delay_ms: u64,
    progress_ms: u64,
}

impl<'a> PeerConfig<'a> {
    fn new(env: &'a Env, cipher: Cipher, mode: &'static str) -> PeerConfig<'a> {
        PeerConfig {
            cipher,
            key: &env.key,
            cert: &env.cert,
            ciphersuite: cipher.suite(),
            mode,
            bytes: 0,
            packets: 0,
            packet_size: env.settings.packet_size,
            framing: "length16",
            rate: 0,
            start_delay_ms: 0,
            progress_ms: 0,
        }
    }
}

/// The line that forwarder.js prints when its pump has finished.
#[derive(Debug, Deserialize)]
struct ForwarderReport {
    elu: f64,
}

/// Measurements of a finished transfer.
struct Transfer {
    usage: Usage,
    seconds: f64,
    elu: Option<f64>,
}

/// Runs one measurement of `workload`.
pub fn measure(
    env: &Env,
    workload: Workload,
    variant: Variant,
    cipher: Cipher,
    run: usize,
) -> Result<Sample> {
    let settings = &env.settings;
    let (transfer, amount) = match workload {
        Workload::W1 => (
            stream_in(env, variant, cipher, settings.stream_bytes)?,
            settings.stream_bytes,
        ),
        Workload::W2 => (
            stream_out(env, variant, cipher, settings.stream_bytes)?,
            settings.stream_bytes,
        ),
        Workload::W3 => (
            packets(env, variant, cipher, settings.packets, 0)?,
            2 * settings.packets,
        ),
        Workload::W3Tun => (
            tun::packets(env, variant, cipher, settings.packets)?,
            2 * settings.packets,
        ),
        Workload::W4 => {
            let count = (settings.fixed_rate as f64 * settings.fixed_rate_seconds) as u64;
            (
                packets(env, variant, cipher, count, settings.fixed_rate)?,
                2 * count,
            )
        }
        Workload::W5 => return stalled_sink(env, variant, cipher, run),
    };
    Ok(Sample {
        workload: Some(workload),
        shape: None,
        variant,
        cipher,
        run,
        amount,
        seconds: transfer.seconds,
        user_seconds: transfer.usage.user_seconds,
        system_seconds: transfer.usage.system_seconds,
        max_rss_kib: transfer.usage.max_rss_kib,
        elu: transfer.elu,
        rss_growth_kib: None,
        peer_accepted: None,
        peer_blocked: None,
    })
}

/// Runs a zero-length transfer of `shape`: the forwarder's fixed cost.
pub fn measure_startup(
    env: &Env,
    shape: Shape,
    variant: Variant,
    cipher: Cipher,
    run: usize,
) -> Result<Sample> {
    let transfer = match shape {
        Shape::StreamIn => stream_in(env, variant, cipher, 0)?,
        Shape::StreamOut => stream_out(env, variant, cipher, 0)?,
        Shape::Packets => packets(env, variant, cipher, 0, 0)?,
    };
    Ok(Sample {
        workload: None,
        shape: Some(shape),
        variant,
        cipher,
        run,
        amount: 0,
        seconds: transfer.seconds,
        user_seconds: transfer.usage.user_seconds,
        system_seconds: transfer.usage.system_seconds,
        max_rss_kib: transfer.usage.max_rss_kib,
        elu: transfer.elu,
        rss_growth_kib: None,
        peer_accepted: None,
        peer_blocked: None,
    })
}

/// Returns a command that runs `program` on the benchmark CPU, under
/// `perf stat` when `env.perf_output` is set.
fn base_command(env: &Env, program: &Path) -> Command {
    let Some(perf_output) = &env.perf_output else {
        return pinned_command(env.settings.cpu, program);
    };
    let mut command = pinned_command(env.settings.cpu, Path::new("perf"));
    command
        .args(["stat", "-x", ",", "-e", PERF_EVENTS, "-o"])
        .arg(perf_output)
        .arg("--")
        .arg(program);
    command
}

/// Returns the forwarder's command line. `direction` is 'in', 'out' or
/// 'duplex', and `framing` is 'stream', 'length16' or 'ip'.
fn forwarder_command(
    env: &Env,
    variant: Variant,
    port: u16,
    direction: &str,
    framing: &str,
) -> Command {
    match variant {
        Variant::Socat => {
            let mut command = base_command(env, Path::new("socat"));
            command.args(["-b", "65536"]);
            match direction {
                "in" => {
                    command.arg("-u");
                }
                "out" => {
                    command.arg("-U");
                }
                _ => {}
            }
            // socat cannot add or strip packet lengths, so for packets the
            // peer sends and expects them bare.
            command
                .arg(format!("OPENSSL:127.0.0.1:{port},verify=0,nodelay"))
                .arg(format!("FD:{CHILD_FD}"));
            command
        }
        Variant::C => {
            let mut command = base_command(env, &env.c_forwarder);
            command
                .arg(port.to_string())
                .arg(direction)
                .arg(framing)
                .arg(CHILD_FD.to_string());
            command
        }
        _ => {
            let config = serde_json::json!({
                "port": port,
                "variant": variant.key(),
                "direction": direction,
                "framing": framing,
            });
            let mut command = base_command(env, &env.node);
            command.arg(&env.forwarder_script).arg(config.to_string());
            command
        }
    }
}

/// A peer and a forwarder that are running.
struct Running {
    peer: Peer,
    forwarder: Measured,
    forwarder_stdout: Option<JoinHandle<String>>,
    /// The cipher suite the session must use.
    cipher: Cipher,
    deadline: Instant,
    timeout: Duration,
}

impl Running {
    /// Starts the peer with `config`, waits until it listens, then starts
    /// the forwarder with `fd` as its fd 3.
    fn start(
        env: &Env,
        variant: Variant,
        config: &PeerConfig,
        direction: &str,
        framing: &str,
        fd: &OwnedFd,
    ) -> Result<Running> {
        let timeout = env.run_timeout();
        let deadline = Instant::now() + timeout;
        let mut peer_command = pinned_command(env.settings.cpu, &env.node);
        peer_command
            .arg(&env.peer_script)
            .arg(serde_json::to_string(config)?);
        let mut peer = Peer::spawn(peer_command)?;
        let port = peer.wait_for(deadline, "listening", |event| match event {
            PeerEvent::Listening { port } => Some(*port),
            _ => None,
        })?;
        let command = forwarder_command(env, variant, port, direction, framing);
        let mut forwarder = Measured::spawn(variant.label(), command, Some(fd.as_raw_fd()))?;
        let forwarder_stdout = forwarder.stdout.take().map(collect_text);
        Ok(Running {
            peer,
            forwarder,
            forwarder_stdout,
            cipher: config.cipher,
            deadline,
            timeout,
        })
    }

    /// Returns an error that carries `message` and the outputs of both
    /// processes, after killing them.
    fn failure(&mut self, message: impl std::fmt::Display) -> anyhow::Error {
        let _ = self.forwarder.kill();
        let _ = self.peer.process.kill();
        let stdout = self
            .forwarder_stdout
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        let name = self.forwarder.name().to_string();
        let stderr = self.forwarder.take_stderr();
        let peer_stderr = self.peer.process.take_stderr();
        anyhow!(
            "{message}\n{name} stderr:\n{}\n{name} stdout:\n{}\nTLS peer stderr:\n{}",
            indent(&stderr),
            indent(&stdout),
            indent(&peer_stderr)
        )
    }

    /// Returns the CLOCK_MONOTONIC time at which the peer finished the
    /// handshake, and checks that it negotiated the expected cipher suite.
    fn connected_at(&mut self) -> Result<u64> {
        let select = |event: &PeerEvent| match event {
            PeerEvent::Connected {
                at,
                cipher,
                protocol,
            } => Some((*at, cipher.clone(), protocol.clone())),
            _ => None,
        };
        let seen = self.peer.seen.iter().find_map(select);
        let (at, cipher, protocol) = match seen {
            Some(connected) => connected,
            None => {
                let deadline = self.deadline;
                match self.peer.wait_for(deadline, "connected", select) {
                    Ok(connected) => connected,
                    Err(err) => return Err(self.failure(format!("{err:#}"))),
                }
            }
        };
        if cipher != self.cipher.suite() || protocol != "TLSv1.3" {
            let message = format!(
                "the session uses {protocol} with {cipher}, expected TLSv1.3 with {}",
                self.cipher.suite()
            );
            return Err(self.failure(message));
        }
        Ok(at)
    }

    /// Waits for the forwarder to exit successfully and returns its usage.
    fn wait_forwarder(&mut self) -> Result<Usage> {
        let usage = match self.forwarder.wait_until(self.deadline)? {
            Some(usage) => usage,
            None => {
                let message = format!(
                    "timed out after {} s; killed the forwarder and the TLS peer",
                    self.timeout.as_secs()
                );
                return Err(self.failure(message));
            }
        };
        if !usage.success() {
            let message = format!(
                "{} failed ({})",
                self.forwarder.name(),
                usage.describe_status()
            );
            return Err(self.failure(message));
        }
        Ok(usage)
    }

    /// Waits for the peer's 'done' event, then for the peer to exit.
    fn wait_peer_done(&mut self) -> Result<PeerEvent> {
        let deadline = self.deadline;
        let done = self.peer.wait_for(deadline, "done", |event| match event {
            PeerEvent::Done { .. } => Some(event.clone()),
            _ => None,
        });
        let done = match done {
            Ok(done) => done,
            Err(err) => return Err(self.failure(format!("{err:#}"))),
        };
        if self
            .peer
            .process
            .wait_until(Instant::now() + PEER_EXIT_GRACE)?
            .is_none()
        {
            return Err(self.failure("the TLS peer did not exit after its 'done' event"));
        }
        Ok(done)
    }

    /// Returns the ELU that the node forwarder printed, or None for the
    /// other variants.
    fn forwarder_elu(&mut self, variant: Variant) -> Result<Option<f64>> {
        let stdout = self
            .forwarder_stdout
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default();
        if !variant.runs_node() {
            return Ok(None);
        }
        let line = stdout.lines().rev().find(|line| line.starts_with('{'));
        let Some(line) = line else {
            return Err(self.failure("the node forwarder printed no report line"));
        };
        let report: ForwarderReport = serde_json::from_str(line)
            .with_context(|| format!("invalid report line from the forwarder: {line:?}"))?;
        Ok(Some(report.elu))
    }
}

/// Bytes moved at the xtask's end of a stream fd, and the time of the last.
struct Moved {
    bytes: u64,
    last_ns: u64,
}

/// Joins a helper thread, turning a panic into an error.
fn join<T>(handle: JoinHandle<std::io::Result<T>>, what: &str) -> Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("the {what} thread panicked"))?
        .with_context(|| format!("{what} failed"))
}

/// Reads a pipe to EOF, counting bytes and timing the last one.
fn drain_pipe(read_end: OwnedFd) -> std::io::Result<Moved> {
    let mut reader = std::fs::File::from(read_end);
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut moved = Moved {
        bytes: 0,
        last_ns: 0,
    };
    loop {
        let length = match reader.read(&mut buf) {
            Ok(0) => return Ok(moved),
            Ok(length) => length,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        moved.bytes += length as u64;
        moved.last_ns = monotonic_ns();
    }
}

/// Writes `bytes` bytes into a pipe, then closes it: EOF for the reader.
fn fill_pipe(write_end: OwnedFd, bytes: u64) -> std::io::Result<()> {
    let mut writer = std::fs::File::from(write_end);
    let buf = vec![0x5au8; CHUNK_SIZE];
    let mut left = bytes;
    while left > 0 {
        let length = left.min(CHUNK_SIZE as u64) as usize;
        writer.write_all(&buf[..length])?;
        left -= length as u64;
    }
    Ok(())
}

/// W1: the peer sends `bytes`; the forwarder writes them into a pipe that
/// a pinned xtask thread drains.
fn stream_in(env: &Env, variant: Variant, cipher: Cipher, bytes: u64) -> Result<Transfer> {
    let mut config = PeerConfig::new(env, cipher, "send");
    config.bytes = bytes;
    let (read_end, write_end) = pipe()?;
    let mut running = Running::start(env, variant, &config, "in", "stream", &write_end)?;
    // Only the forwarder may hold the write end, or the drain gets no EOF.
    drop(write_end);
    let drain = spawn_pinned(env.settings.cpu, move || drain_pipe(read_end));

    let usage = running.wait_forwarder()?;
    let moved = join(drain, "pipe drain")?;
    let done = running.wait_peer_done()?;
    let connected_at = running.connected_at()?;
    let elu = running.forwarder_elu(variant)?;

    let PeerEvent::Done { sent, .. } = done else {
        unreachable!("wait_peer_done returns only 'done' events")
    };
    if moved.bytes != bytes || sent != Some(bytes) {
        return Err(running.failure(format!(
            "the peer sent {sent:?} bytes and the pipe received {}, expected {bytes}",
            moved.bytes
        )));
    }
    Ok(Transfer {
        usage,
        seconds: seconds_between(connected_at, moved.last_ns),
        elu,
    })
}

/// W2: a pinned xtask thread writes `bytes` into a pipe; the forwarder
/// sends them to the peer, which counts them.
fn stream_out(env: &Env, variant: Variant, cipher: Cipher, bytes: u64) -> Result<Transfer> {
    let config = PeerConfig::new(env, cipher, "receive");
    let (read_end, write_end) = pipe()?;
    let mut running = Running::start(env, variant, &config, "out", "stream", &read_end)?;
    drop(read_end);
    let source = spawn_pinned(env.settings.cpu, move || fill_pipe(write_end, bytes));

    let usage = running.wait_forwarder()?;
    join(source, "pipe source")?;
    let done = running.wait_peer_done()?;
    let connected_at = running.connected_at()?;
    let elu = running.forwarder_elu(variant)?;

    let PeerEvent::Done {
        received, last_ns, ..
    } = done
    else {
        unreachable!("wait_peer_done returns only 'done' events")
    };
    if received != Some(bytes) {
        return Err(running.failure(format!(
            "the peer received {received:?} bytes, expected {bytes}"
        )));
    }
    Ok(Transfer {
        usage,
        seconds: seconds_between(connected_at, last_ns),
        elu,
    })
}

/// Datagrams and bytes received at the xtask's end of the packet socket.
struct PacketsReceived {
    bytes: u64,
    datagrams: u64,
    /// Datagrams whose size was not the packet size.
    wrong_sizes: u64,
    last_ns: u64,
}

/// Reads datagrams from `socket` until `expected` bytes arrived or EOF,
/// then signals `received_all`.
fn receive_packets(
    mut socket: std::fs::File,
    expected: u64,
    packet_size: usize,
    received_all: mpsc::Sender<()>,
) -> std::io::Result<PacketsReceived> {
    let mut buf = vec![0u8; 65536];
    let mut received = PacketsReceived {
        bytes: 0,
        datagrams: 0,
        wrong_sizes: 0,
        last_ns: monotonic_ns(),
    };
    while received.bytes < expected {
        let length = match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(length) => length,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        received.bytes += length as u64;
        received.datagrams += 1;
        if length != packet_size {
            received.wrong_sizes += 1;
        }
        received.last_ns = monotonic_ns();
    }
    let _ = received_all.send(());
    Ok(received)
}

/// Sends `count` packets on `socket` once `go` delivers the start time,
/// paced to `rate` packets per second unless it is 0. Shuts down the write
/// side once `received_all` fires, which ends the forwarder's encrypt
/// direction.
fn send_packets(
    mut socket: std::fs::File,
    count: u64,
    packet_size: usize,
    rate: u64,
    go: mpsc::Receiver<u64>,
    received_all: mpsc::Receiver<()>,
    deadline: Instant,
) -> std::io::Result<()> {
    let packet = vec![0xa5u8; packet_size];
    let Ok(start_ns) = go.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
        return Ok(());
    };
    for index in 0..count {
        if let Some(offset_ns) = (index * 1_000_000_000).checked_div(rate) {
            sleep_until_ns(start_ns + offset_ns);
        }
        socket.write_all(&packet)?;
    }

    // An early EOF would end the encrypt direction with close_notify while
    // the peer's packets are still on their way, and the peer ends its
    // side when it reads close_notify.
    let _ = received_all.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    // SAFETY: shutdown has no memory effects on a valid fd.
    unsafe {
        libc::shutdown(socket.as_raw_fd(), libc::SHUT_WR);
    }
    Ok(())
}

/// W3 and W4: the peer and a pinned xtask thread each send `count`
/// packets, paced to `rate` packets per second unless it is 0, and each
/// receives the other's.
fn packets(env: &Env, variant: Variant, cipher: Cipher, count: u64, rate: u64) -> Result<Transfer> {
    let packet_size = env.settings.packet_size;
    let mut config = PeerConfig::new(env, cipher, "packets");
    config.packets = count;
    config.rate = rate;
    if variant == Variant::Socat {
        config.framing = "none";
    }
    let (ours, theirs) = seqpacket_pair()?;
    let mut running = Running::start(env, variant, &config, "duplex", "length16", &theirs)?;
    drop(theirs);

    let socket = std::fs::File::from(ours);
    let receiving = socket.try_clone()?;
    let (received_all, received_all_rx) = mpsc::channel::<()>();
    let (go, go_rx) = mpsc::channel::<u64>();
    let deadline = running.deadline;
    let expected_bytes = count * packet_size as u64;
    let receiver = spawn_pinned(env.settings.cpu, move || {
        receive_packets(receiving, expected_bytes, packet_size, received_all)
    });
    let sender = spawn_pinned(env.settings.cpu, move || {
        send_packets(
            socket,
            count,
            packet_size,
            rate,
            go_rx,
            received_all_rx,
            deadline,
        )
    });

    // The xtask's packets start when the handshake is done, as the peer's do.
    let connected_at = running.connected_at()?;
    let _ = go.send(monotonic_ns());
    let usage = running.wait_forwarder()?;
    let received = join(receiver, "packet receiver")?;
    join(sender, "packet sender")?;
    let done = running.wait_peer_done()?;
    let elu = running.forwarder_elu(variant)?;

    let PeerEvent::Done {
        sent_packets,
        received_packets,
        last_ns,
        ..
    } = done
    else {
        unreachable!("wait_peer_done returns only 'done' events")
    };
    let mut problems = Vec::new();
    if received.bytes != expected_bytes {
        problems.push(format!(
            "the packet socket received {} bytes, expected {expected_bytes}",
            received.bytes
        ));
    }
    // socat forwards whatever each SSL_read returns, so only the framed
    // variants keep one packet per datagram.
    if variant != Variant::Socat && received.wrong_sizes > 0 {
        problems.push(format!(
            "{} of {} datagrams were not {packet_size} bytes long",
            received.wrong_sizes, received.datagrams
        ));
    }
    if sent_packets != Some(count) || received_packets != Some(count as f64) {
        problems.push(format!(
            "the peer sent {sent_packets:?} and received {received_packets:?} packets, \
             expected {count}"
        ));
    }
    if !problems.is_empty() {
        return Err(running.failure(problems.join("; ")));
    }
    Ok(Transfer {
        usage,
        seconds: seconds_between(connected_at, last_ns.max(received.last_ns)),
        elu,
    })
}

/// W5: the forwarder writes into a pipe that no process reads while the peer
/// offers `stall_offer` bytes. Measures the forwarder's RSS growth and
/// whether the peer ends up blocked.
fn stalled_sink(env: &Env, variant: Variant, cipher: Cipher, run: usize) -> Result<Sample> {
    let settings = &env.settings;
    let mut config = PeerConfig::new(env, cipher, "send");
    config.bytes = settings.stall_offer;
    config.start_delay_ms = STALL_START_DELAY_MS;
    config.progress_ms = STALL_PROGRESS_MS;
    let (read_end, write_end) = pipe()?;
    let mut running = Running::start(env, variant, &config, "in", "stream", &write_end)?;
    drop(write_end);

    // The forwarder is idle between the handshake and the peer's first byte.
    let connected_at = running.connected_at()?;
    sleep_until_ns(connected_at + STALL_BASELINE_DELAY.as_nanos() as u64);
    let pid = running.forwarder.pid();
    let baseline_kib = match proc_status_kib(pid, "VmRSS") {
        Ok(kib) => kib,
        Err(err) => return Err(running.failure(format!("{err:#}"))),
    };

    let stall_start_ns = connected_at + STALL_START_DELAY_MS * 1_000_000;
    let stall_ns = (settings.stall_seconds * 1e9) as u64;
    sleep_until_ns(stall_start_ns + stall_ns / 2);
    running.peer.drain_events()?;
    let accepted_halfway = last_accepted(&running.peer.seen);
    sleep_until_ns(stall_start_ns + stall_ns);
    running.peer.drain_events()?;
    let accepted_end = last_accepted(&running.peer.seen);

    if let Some(usage) = running.forwarder.try_usage()? {
        let message = format!(
            "{} exited ({}) while its sink was stalled",
            running.forwarder.name(),
            usage.describe_status()
        );
        return Err(running.failure(message));
    }
    let peak_kib = match proc_status_kib(pid, "VmHWM") {
        Ok(kib) => kib,
        Err(err) => return Err(running.failure(format!("{err:#}"))),
    };
    let usage = running.forwarder.kill()?;
    running.peer.process.kill()?;
    // The pipe stays open, and unread, until the forwarder is gone.
    drop(read_end);
    let _ = running.forwarder_stdout.take().map(|handle| handle.join());

    Ok(Sample {
        workload: Some(Workload::W5),
        shape: None,
        variant,
        cipher,
        run,
        amount: accepted_end,
        seconds: settings.stall_seconds,
        user_seconds: usage.user_seconds,
        system_seconds: usage.system_seconds,
        max_rss_kib: usage.max_rss_kib.max(peak_kib),
        elu: None,
        rss_growth_kib: Some(peak_kib as i64 - baseline_kib as i64),
        peer_accepted: Some(accepted_end),
        peer_blocked: Some(accepted_end == accepted_halfway && accepted_end < settings.stall_offer),
    })
}

/// Returns the peer's last reported count of bytes passed on, or 0.
fn last_accepted(events: &[PeerEvent]) -> u64 {
    events
        .iter()
        .rev()
        .find_map(|event| match event {
            PeerEvent::Progress { accepted } => Some(*accepted),
            _ => None,
        })
        .unwrap_or(0)
}

fn sleep_until_ns(due_ns: u64) {
    let now_ns = monotonic_ns();
    if due_ns > now_ns {
        std::thread::sleep(Duration::from_nanos(due_ns - now_ns));
    }
}

fn seconds_between(start_ns: u64, end_ns: u64) -> f64 {
    end_ns.saturating_sub(start_ns) as f64 / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_accepted_takes_latest_progress() {
        let events = vec![
            PeerEvent::Listening { port: 1 },
            PeerEvent::Progress { accepted: 10 },
            PeerEvent::Progress { accepted: 30 },
        ];
        assert_eq!(last_accepted(&events), 30);
        assert_eq!(last_accepted(&events[..1]), 0);
    }

    #[test]
    fn seconds_between_never_negative() {
        assert_eq!(seconds_between(2_000_000_000, 3_500_000_000), 1.5);
        assert_eq!(seconds_between(5, 1), 0.0);
    }
}
