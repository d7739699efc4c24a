//! `cargo xtask demo`: the project's main job end to end. The patched node
//! connects to `openssl s_server` over loopback TLS 1.3, hands the session to
//! `tlsSocket.spliceTo()` with one end of a UNIX socketpair as the fd, and the
//! xtask moves a known byte stream through both directions:
//!
//! ```text
//! client -> server: xtask -> socketpair -> node splice -> TLS -> s_server stdout -> xtask
//! server -> client: xtask -> s_server stdin -> TLS -> node splice -> socketpair -> xtask
//! ```
//!
//! The demo passes when each side received exactly what the other sent
//! (same length and SHA-256) and the splice's own byte counters agree.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::build;
use crate::cache::Layout;
use crate::fetch::hex;
use crate::Options;

/// Bytes sent in each direction unless `--bytes` sets another count (256 MiB).
const DEFAULT_BYTES: u64 = 256 << 20;
/// Time allowed for the transfer, from starting s_server to both children
/// exiting, unless `--timeout` sets another limit. The build is not counted.
const DEFAULT_TIMEOUT_SECS: u64 = 120;

/// Number of the fd that node's end of the socketpair has in the node process.
const CHILD_FD: RawFd = 3;
/// Size of each read and write on the xtask's side of the pipes.
const CHUNK_SIZE: usize = 64 * 1024;
/// Seeds of the two data streams. They differ, so that data that arrives
/// in the wrong direction cannot match.
const CLIENT_TO_SERVER_SEED: u64 = 0x9e37_79b9_7f4a_7c15;
const SERVER_TO_CLIENT_SEED: u64 = 0xd1b5_4a32_d192_ed03;
/// How often the main thread checks whether the transfer has finished.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The client that node runs, written to the scratch folder. Arguments:
/// port, CA certificate file, fd to splice. It prints two JSON lines on
/// stdout: the negotiated session after the handshake, and `handle.stats`
/// after the splice closed. Every failure goes to stderr with exit code 1.
const CLIENT_SCRIPT: &str = r#"'use strict';
// Written by `cargo xtask demo`, which deletes it after a successful run.
const fs = require('fs');
const tls = require('tls');

const port = Number(process.argv[2]);
const ca = fs.readFileSync(process.argv[3]);
const fd = Number(process.argv[4]);

// s_server starts listening a moment after the xtask starts it. A probe
// connection would use up its single accept (-naccept 1), so the client
// itself retries a refused connection.
const maxAttempts = 100;
const retryDelayMs = 50;

function fail(message) {
  process.stderr.write(`demo client: ${message}\n`);
  process.exit(1);
}

function connect(attempt) {
  const socket = tls.connect({
    host: '127.0.0.1',
    port,
    servername: 'localhost',
    ca,
    minVersion: 'TLSv1.3',
  });
  const onConnectError = (err) => {
    if (err.code === 'ECONNREFUSED' && attempt < maxAttempts) {
      setTimeout(connect, retryDelayMs, attempt + 1);
      return;
    }
    fail(`connection to 127.0.0.1:${port} failed (attempt ${attempt}): ${err.stack}`);
  };
  socket.once('error', onConnectError);
  socket.once('secureConnect', () => {
    socket.off('error', onConnectError);
    splice(socket);
  });
}

function splice(socket) {
  socket.on('error', (err) => fail(`TLS socket error: ${err.stack}`));
  const session = {
    protocol: socket.getProtocol(),
    cipher: socket.getCipher().standardName,
  };
  process.stdout.write(`${JSON.stringify(session)}\n`);

  const handle = socket.spliceTo({ fd, direction: 'duplex', end: true });
  const ended = [];
  handle.on('end', (direction) => ended.push(direction));
  handle.on('error', (err) => fail(`splice error: ${err.stack}`));
  handle.on('close', () => {
    process.stdout.write(`${JSON.stringify(handle.stats)}\n`);
    if (ended.length !== 2) {
      fail(`the splice closed after 'end' for [${ended}] only; expected 'in' and 'out'`);
    }
  });
  handle.start();
}

connect(1);
"#;

/// Session parameters that the client script prints after the handshake.
#[derive(Debug, Deserialize)]
struct Session {
    protocol: String,
    cipher: String,
}

/// `handle.stats` of the splice, as the client script prints it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpliceStats {
    /// Cleartext the splice wrote to the fd: the server -> client direction.
    bytes_in: u64,
    /// Bytes the splice read from the fd for `SSL_write`: client -> server.
    bytes_out: u64,
}

/// Runs the demo: builds node unless `--no-build`, then moves the data and
/// prints the report. Fails when any byte differs or a process fails.
pub fn run_demo(layout: &Layout, opts: &Options) -> Result<()> {
    let bytes = opts.bytes.unwrap_or(DEFAULT_BYTES);
    let timeout = Duration::from_secs(opts.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let node = node_for_demo(layout, opts)?;
    check_splice_api(&node)?;

    // The lock on the cache folder keeps other runs out of this folder.
    let scratch = layout.tmp.join("demo");
    if scratch.exists() {
        std::fs::remove_dir_all(&scratch).with_context(|| {
            format!(
                "cannot remove the previous demo folder {}",
                scratch.display()
            )
        })?;
    }
    std::fs::create_dir_all(&scratch)
        .with_context(|| format!("cannot create {}", scratch.display()))?;

    let result = run_in(&scratch, &node, bytes, timeout);
    match &result {
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&scratch);
        }
        Err(_) => eprintln!(
            "demo: the key, certificate and client script are kept in {}",
            scratch.display()
        ),
    }
    result
}

/// Returns the node binary to run, built the same way as `build-node`
/// unless `--no-build` was given.
fn node_for_demo(layout: &Layout, opts: &Options) -> Result<PathBuf> {
    if opts.no_patches {
        bail!(
            "--no-patches builds node without tlsSocket.spliceTo(), which the demo needs; drop it"
        );
    }
    if !opts.no_build {
        return build::build_node(layout, opts);
    }
    let binary = layout.node_binary();
    let state = layout.load_state()?;
    if !state.full_build_done || !binary.exists() {
        bail!(
            "--no-build: no complete node build in {}; run `cargo xtask build-node` or drop --no-build",
            layout.tree.display()
        );
    }
    // Unlike `test --no-build`, a mismatch is only reported: the demo runs
    // whatever binary is there, and check_splice_api() rejects one that
    // lacks the API.
    let patched = state.patched_commit.as_deref();
    if patched.is_none() || state.built_commit.as_deref() != patched {
        eprintln!(
            "demo: warning: {} was not built from the current patches by `cargo xtask build-node`; \
             running it anyway because of --no-build",
            binary.display()
        );
    }
    Ok(binary)
}

/// Fails with a clear message when `node` has no `tlsSocket.spliceTo()`.
fn check_splice_api(node: &Path) -> Result<()> {
    let probe =
        "process.exit(typeof require('tls').TLSSocket.prototype.spliceTo === 'function' ? 0 : 3)";
    let status = Command::new(node)
        .args(["-e", probe])
        .status()
        .with_context(|| format!("cannot run {}", node.display()))?;
    match status.code() {
        Some(0) => Ok(()),
        Some(3) => bail!(
            "{} has no tlsSocket.spliceTo(); the patches in patches/ do not add the API yet",
            node.display()
        ),
        _ => bail!("{} failed to start ({status})", node.display()),
    }
}

/// Creates the key, certificate and client script in `scratch`, runs the
/// transfer and prints the report.
fn run_in(scratch: &Path, node: &Path, bytes: u64, timeout: Duration) -> Result<()> {
    let sh = Shell::new()?;
    let key = scratch.join("key.pem");
    let cert = scratch.join("cert.pem");
    cmd!(
        sh,
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes
         -keyout {key} -out {cert} -days 1 -subj /CN=localhost
         -addext subjectAltName=DNS:localhost"
    )
    .quiet()
    .ignore_stderr()
    .run()
    .context("openssl req failed to create the demo certificate; is openssl installed?")?;
    let script = scratch.join("client.js");
    std::fs::write(&script, CLIENT_SCRIPT)?;

    let port = free_port()?;
    eprintln!(
        "demo: moving {bytes} bytes each way between {} and openssl s_server on 127.0.0.1:{port}",
        node.display()
    );
    let outcome = transfer(node, &script, &cert, &key, port, bytes, timeout)?;
    report(&outcome, bytes)
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago. Another
/// process could take it before s_server binds it. s_server then fails with
/// "Address already in use", which the error report shows.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a port on 127.0.0.1")?;
    Ok(listener.local_addr()?.port())
}

/// A child process that is killed, if still running, when this is dropped.
struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot wait for {}", self.name))
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Deterministic pseudo-random bytes from xorshift64, so that a dropped,
/// repeated or reordered chunk changes the digest.
struct ByteStream {
    state: u64,
}

impl ByteStream {
    fn new(seed: u64) -> ByteStream {
        assert_ne!(seed, 0, "xorshift64 stays at zero forever");
        ByteStream { state: seed }
    }

    /// Fills `buf` with the next bytes of the stream. The stream is the same
    /// for any split into calls, as long as every call but the last fills a
    /// multiple of 8 bytes.
    fn fill(&mut self, buf: &mut [u8]) {
        for word in buf.chunks_mut(8) {
            let mut x = self.state;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.state = x;
            word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
        }
    }
}

/// Length and digest of the stream that one side sent.
struct Sent {
    bytes: u64,
    sha256: String,
}

/// Length and digest of the stream that one side received, with the times
/// of its first and last byte.
struct Received {
    bytes: u64,
    sha256: String,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
}

impl Received {
    /// Time from the first to the last byte received.
    fn duration(&self) -> Duration {
        match (self.first_at, self.last_at) {
            (Some(first), Some(last)) => last - first,
            _ => Duration::ZERO,
        }
    }
}

/// Writes `bytes` bytes of the stream seeded with `seed` to `writer`.
fn send_stream(writer: &mut impl Write, seed: u64, bytes: u64) -> std::io::Result<Sent> {
    let mut stream = ByteStream::new(seed);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut left = bytes;
    while left > 0 {
        let len = left.min(CHUNK_SIZE as u64) as usize;
        stream.fill(&mut buf[..len]);
        hasher.update(&buf[..len]);
        writer.write_all(&buf[..len])?;
        left -= len as u64;
    }
    writer.flush()?;
    Ok(Sent {
        bytes,
        sha256: hex(&hasher.finalize()),
    })
}

/// Reads `reader` to EOF, counting into `progress`. Sends on `complete`
/// once `expected` bytes have arrived.
fn receive_stream(
    reader: &mut impl Read,
    expected: u64,
    progress: &AtomicU64,
    complete: Option<mpsc::Sender<()>>,
) -> std::io::Result<Received> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut received = Received {
        bytes: 0,
        sha256: String::new(),
        first_at: None,
        last_at: None,
    };
    let mut complete = complete;
    loop {
        let len = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(len) => len,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let now = Instant::now();
        received.first_at.get_or_insert(now);
        received.last_at = Some(now);
        hasher.update(&buf[..len]);
        received.bytes += len as u64;
        progress.store(received.bytes, Ordering::Relaxed);
        if received.bytes >= expected {
            if let Some(complete) = complete.take() {
                let _ = complete.send(());
            }
        }
    }
    received.sha256 = hex(&hasher.finalize());
    Ok(received)
}

/// Reads a child's output to the end, as text.
fn collect_text(mut reader: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Results of the transfer, after both children exited.
struct Outcome {
    client_sent: Sent,
    server_received: Received,
    server_sent: Sent,
    client_received: Received,
    session: Session,
    stats: SpliceStats,
}

/// Makes `fd` the child's fd 3 after fork. Rust opens every fd with
/// `O_CLOEXEC`. The copy that `dup2` makes has the flag cleared, and when
/// `fd` already is 3 the flag is cleared directly.
fn pass_as_child_fd(command: &mut Command, fd: RawFd) {
    // SAFETY: the closure runs in the child between fork and exec, where
    // only async-signal-safe functions may run. dup2 and fcntl are on that
    // list (signal-safety(7)), and the closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            let result = if fd == CHILD_FD {
                libc::fcntl(fd, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, CHILD_FD)
            };
            if result == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Starts `openssl s_server` for one TLS 1.3 session on 127.0.0.1:`port`.
/// -quiet makes it write only the received cleartext to stdout, and
/// -naccept 1 makes it exit after the session. It ends the session at EOF
/// on stdin or when it reads the client's close_notify.
fn spawn_server(cert: &Path, key: &Path, port: u16) -> Result<ChildGuard> {
    let mut command = Command::new("openssl");
    command
        .args(["s_server", "-accept", &format!("127.0.0.1:{port}")])
        .args(["-naccept", "1", "-quiet", "-tls1_3"])
        .arg("-cert")
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command
        .spawn()
        .context("cannot start openssl s_server; is openssl installed?")?;
    Ok(ChildGuard {
        name: "openssl s_server",
        child,
    })
}

/// Starts node on the client script, with `fd` as its fd 3.
fn spawn_client(
    node: &Path,
    script: &Path,
    cert: &Path,
    port: u16,
    fd: RawFd,
) -> Result<ChildGuard> {
    let mut command = Command::new(node);
    command
        .arg(script)
        .arg(port.to_string())
        .arg(cert)
        .arg(CHILD_FD.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    pass_as_child_fd(&mut command, fd);
    let child = command
        .spawn()
        .with_context(|| format!("cannot start {}", node.display()))?;
    Ok(ChildGuard {
        name: "node",
        child,
    })
}

/// The threads that move the two streams, and how far each receiver got.
struct Pumps {
    /// Writes the server -> client stream into s_server's stdin, and hands
    /// stdin back instead of closing it, because s_server ends the session
    /// at EOF on stdin.
    feeder: JoinHandle<std::io::Result<(Sent, ChildStdin)>>,
    /// Reads the client -> server stream from s_server's stdout.
    drain: JoinHandle<std::io::Result<Received>>,
    /// Writes the client -> server stream into the socketpair.
    writer: JoinHandle<std::io::Result<Sent>>,
    /// Reads the server -> client stream from the socketpair.
    reader: JoinHandle<std::io::Result<Received>>,
    server_progress: Arc<AtomicU64>,
    client_progress: Arc<AtomicU64>,
}

impl Pumps {
    /// Starts the four threads. `socket` is the xtask's end of the
    /// socketpair. Nothing waits past `deadline`.
    fn start(
        server: &mut ChildGuard,
        socket: &UnixStream,
        bytes: u64,
        deadline: Instant,
    ) -> Result<Pumps> {
        let mut stdin = server
            .child
            .stdin
            .take()
            .context("s_server has no stdin pipe")?;
        let mut stdout = server
            .child
            .stdout
            .take()
            .context("s_server has no stdout pipe")?;
        let server_progress = Arc::new(AtomicU64::new(0));
        let client_progress = Arc::new(AtomicU64::new(0));
        let (client_complete, client_complete_rx) = mpsc::channel();

        let feeder = std::thread::spawn(move || {
            let sent = send_stream(&mut stdin, SERVER_TO_CLIENT_SEED, bytes)?;
            Ok((sent, stdin))
        });
        let progress = Arc::clone(&server_progress);
        let drain = std::thread::spawn(move || receive_stream(&mut stdout, bytes, &progress, None));

        let mut writer_end = socket.try_clone()?;
        let writer = std::thread::spawn(move || {
            let sent = send_stream(&mut writer_end, CLIENT_TO_SERVER_SEED, bytes)?;
            // EOF on the fd makes the splice send close_notify, and s_server
            // ends the whole session when it reads close_notify. So the
            // write side closes only after the server -> client stream
            // arrived, or after the reader gave up and dropped the sender.
            let _ =
                client_complete_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()));
            writer_end.shutdown(Shutdown::Write)?;
            Ok(sent)
        });
        let mut reader_end = socket.try_clone()?;
        let progress = Arc::clone(&client_progress);
        let reader = std::thread::spawn(move || {
            receive_stream(&mut reader_end, bytes, &progress, Some(client_complete))
        });

        Ok(Pumps {
            feeder,
            drain,
            writer,
            reader,
            server_progress,
            client_progress,
        })
    }

    fn all_finished(&self) -> bool {
        self.feeder.is_finished()
            && self.drain.is_finished()
            && self.writer.is_finished()
            && self.reader.is_finished()
    }
}

/// Starts s_server and node, moves the two streams concurrently, and waits
/// for both children to exit, killing them after `timeout`.
fn transfer(
    node: &Path,
    script: &Path,
    cert: &Path,
    key: &Path,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Outcome> {
    let deadline = Instant::now() + timeout;
    let mut server = spawn_server(cert, key, port)?;
    let (xtask_end, node_end) = UnixStream::pair().context("cannot create a UNIX socketpair")?;
    let mut client = spawn_client(node, script, cert, port, node_end.as_raw_fd())?;
    // Only node may hold this end, or the xtask would never see EOF.
    drop(node_end);

    let server_stderr = collect_text(server.child.stderr.take().unwrap());
    let client_stdout = collect_text(client.child.stdout.take().unwrap());
    let client_stderr = collect_text(client.child.stderr.take().unwrap());
    let pumps = Pumps::start(&mut server, &xtask_end, bytes, deadline)?;

    let mut server_status = None;
    let mut client_status = None;
    let mut timed_out = false;
    loop {
        if server_status.is_none() {
            server_status = server.try_wait()?;
        }
        if client_status.is_none() {
            client_status = client.try_wait()?;
        }
        if server_status.is_some() && client_status.is_some() && pumps.all_finished() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            // node first, so that its output shows the state at the timeout
            // and not its reaction to s_server's death.
            client.kill();
            server.kill();
            // Wakes the threads that block on the socketpair.
            let _ = xtask_end.shutdown(Shutdown::Both);
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }

    let feeder = pumps
        .feeder
        .join()
        .expect("the s_server stdin thread panicked");
    let drain = pumps
        .drain
        .join()
        .expect("the s_server stdout thread panicked");
    let writer = pumps
        .writer
        .join()
        .expect("the socketpair writer thread panicked");
    let reader = pumps
        .reader
        .join()
        .expect("the socketpair reader thread panicked");
    let client_stdout = client_stdout.join().unwrap_or_default();
    let outputs = format!(
        "node stderr:\n{}\nnode stdout:\n{}\nopenssl s_server stderr:\n{}",
        indent(&client_stderr.join().unwrap_or_default()),
        indent(&client_stdout),
        indent(&server_stderr.join().unwrap_or_default())
    );

    if timed_out {
        bail!(
            "timed out after {} s with {} of {bytes} bytes client -> server and {} of {bytes} bytes \
             server -> client received; killed node, then s_server (pass --timeout SECS for more time)\n{outputs}",
            timeout.as_secs(),
            pumps.server_progress.load(Ordering::Relaxed),
            pumps.client_progress.load(Ordering::Relaxed),
        );
    }
    let client_status = client_status.unwrap();
    let server_status = server_status.unwrap();
    if !client_status.success() {
        bail!("node failed ({client_status})\n{outputs}");
    }
    if !server_status.success() {
        bail!("openssl s_server failed ({server_status})\n{outputs}");
    }

    let io_error =
        |what: &str, err: std::io::Error| anyhow::anyhow!("{what} failed: {err}\n{outputs}");
    // Dropping s_server's stdin here is safe, because s_server has exited.
    let (server_sent, _) = feeder.map_err(|err| io_error("writing to s_server's stdin", err))?;
    let server_received = drain.map_err(|err| io_error("reading s_server's stdout", err))?;
    let client_sent = writer.map_err(|err| io_error("writing to the socketpair", err))?;
    let client_received = reader.map_err(|err| io_error("reading the socketpair", err))?;
    let (session, stats) =
        parse_client_output(&client_stdout).map_err(|err| anyhow::anyhow!("{err:#}\n{outputs}"))?;

    Ok(Outcome {
        client_sent,
        server_received,
        server_sent,
        client_received,
        session,
        stats,
    })
}

/// Parses the two JSON lines of the client script: the session, then
/// `handle.stats`.
fn parse_client_output(stdout: &str) -> Result<(Session, SpliceStats)> {
    let mut lines = stdout.lines().filter(|line| !line.trim().is_empty());
    let (Some(session_line), Some(stats_line), None) = (lines.next(), lines.next(), lines.next())
    else {
        bail!("node printed {stdout:?}, but the demo expects two JSON lines: the session and handle.stats");
    };
    let session = serde_json::from_str(session_line)
        .with_context(|| format!("invalid session line from node: {session_line:?}"))?;
    let stats = serde_json::from_str(stats_line)
        .with_context(|| format!("invalid handle.stats line from node: {stats_line:?}"))?;
    Ok((session, stats))
}

/// Indents each line of a child's output for the error report.
fn indent(text: &str) -> String {
    if text.trim().is_empty() {
        return "    (empty)".to_string();
    }
    text.lines()
        .map(|line| format!("    {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Prints one line per direction and the verdict. Fails when a length,
/// digest or splice counter differs.
fn report(outcome: &Outcome, bytes: u64) -> Result<()> {
    println!(
        "session: {}, {}",
        outcome.session.protocol, outcome.session.cipher
    );
    let directions = [
        (
            "client -> server",
            &outcome.client_sent,
            &outcome.server_received,
            outcome.stats.bytes_out,
            "bytesOut",
        ),
        (
            "server -> client",
            &outcome.server_sent,
            &outcome.client_received,
            outcome.stats.bytes_in,
            "bytesIn",
        ),
    ];
    let mut problems = Vec::new();
    // NOTE: node, s_server and the xtask's threads share the CPUs, so the
    // rate is that of the whole chain, a lower bound for the splice alone.
    for (name, sent, received, counted, counter) in directions {
        let seconds = received.duration().as_secs_f64();
        let rate = if seconds > 0.0 {
            format!("{:.1} MB/s", received.bytes as f64 / seconds / 1e6)
        } else {
            "too fast to time".to_string()
        };
        println!(
            "{name}: {} bytes in {seconds:.3} s, {rate}, sha256 {}",
            received.bytes, received.sha256
        );
        if received.bytes != sent.bytes || received.sha256 != sent.sha256 {
            problems.push(format!(
                "{name}: sent {} bytes with sha256 {}, received {} bytes with sha256 {}",
                sent.bytes, sent.sha256, received.bytes, received.sha256
            ));
        }
        if counted != bytes {
            problems.push(format!(
                "{name}: handle.stats.{counter} is {counted}, expected {bytes}"
            ));
        }
    }
    if !problems.is_empty() {
        for problem in &problems {
            println!("FAILED: {problem}");
        }
        bail!("integrity check failed; see FAILED lines above");
    }
    println!("integrity: OK");
    Ok(())
}

/// Parses a byte count for `--bytes`: a positive integer, optionally
/// followed by K, M or G for KiB, MiB or GiB.
pub fn parse_byte_count(text: &str) -> Result<u64> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((index, _)) => text.split_at(index),
        None => (text, ""),
    };
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        _ => bail!(
            "invalid --bytes value {text:?}: expected a number, optionally followed by K, M or G"
        ),
    };
    let count = digits
        .parse::<u64>()
        .ok()
        .filter(|count| *count > 0)
        .and_then(|count| count.checked_mul(1 << shift))
        .with_context(|| {
            format!("invalid --bytes value {text:?}: expected a positive byte count")
        })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse() {
        assert_eq!(parse_byte_count("4096").unwrap(), 4096);
        assert_eq!(parse_byte_count("64K").unwrap(), 64 << 10);
        assert_eq!(parse_byte_count("256M").unwrap(), 256 << 20);
        assert_eq!(parse_byte_count("1GiB").unwrap(), 1 << 30);
        assert!(parse_byte_count("0").is_err());
        assert!(parse_byte_count("").is_err());
        assert!(parse_byte_count("12X").is_err());
        assert!(parse_byte_count("-5").is_err());
        assert!(parse_byte_count("99999999999999999999G").is_err());
    }

    #[test]
    fn client_output_parses() {
        let stdout = "{\"protocol\":\"TLSv1.3\",\"cipher\":\"TLS_AES_256_GCM_SHA384\"}\n\
                      {\"bytesIn\":5,\"bytesOut\":7,\"packetsIn\":0,\"packetsOut\":0}\n";
        let (session, stats) = parse_client_output(stdout).unwrap();
        assert_eq!(session.protocol, "TLSv1.3");
        assert_eq!(session.cipher, "TLS_AES_256_GCM_SHA384");
        assert_eq!(stats.bytes_in, 5);
        assert_eq!(stats.bytes_out, 7);
    }

    #[test]
    fn client_output_without_stats_fails() {
        let stdout = "{\"protocol\":\"TLSv1.3\",\"cipher\":\"TLS_AES_128_GCM_SHA256\"}\n";
        assert!(parse_client_output(stdout).is_err());
        assert!(parse_client_output("").is_err());
        assert!(parse_client_output("{}\n{}\n{}\n").is_err());
    }

    #[test]
    fn byte_stream_ignores_chunking() {
        let mut whole = vec![0u8; 1003];
        ByteStream::new(7).fill(&mut whole);
        let mut parts = vec![0u8; 1003];
        let mut stream = ByteStream::new(7);
        stream.fill(&mut parts[..512]);
        stream.fill(&mut parts[512..1000]);
        stream.fill(&mut parts[1000..]);
        assert_eq!(whole, parts);
    }

    #[test]
    fn byte_streams_differ_by_seed() {
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        ByteStream::new(CLIENT_TO_SERVER_SEED).fill(&mut a);
        ByteStream::new(SERVER_TO_CLIENT_SEED).fill(&mut b);
        assert_ne!(a, b);
    }
}
