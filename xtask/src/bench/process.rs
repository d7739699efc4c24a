//! Processes and threads of one measurement: the TLS peer, the forwarder
//! under test with its CPU time and peak RSS from `wait4`, the fds between
//! them, and the xtask's helper threads pinned to the benchmark CPU.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;

/// The fd number of the forwarder's end of the pipe or socketpair.
pub const CHILD_FD: RawFd = 3;

/// Returns CLOCK_MONOTONIC in nanoseconds, the clock that Node's
/// `process.hrtime.bigint()` reads, so times from the peer, the forwarder
/// and the xtask compare directly.
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec, and CLOCK_MONOTONIC always exists
    // on Linux.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(result, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, CPU_ZERO and CPU_SET only write inside
    // it, and pid 0 means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Starts a thread pinned to `cpu` that runs `work`.
pub fn spawn_pinned<T: Send + 'static>(
    cpu: usize,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> JoinHandle<std::io::Result<T>> {
    std::thread::spawn(move || {
        pin_current_thread(cpu)?;
        work()
    })
}

/// Creates a pipe with both ends close-on-exec: (read end, write end).
pub fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2 failed");
    }
    // SAFETY: pipe2 succeeded, so both fds are open and have no other owner.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Creates a blocking AF_UNIX SOCK_SEQPACKET socketpair, close-on-exec.
pub fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    let result = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error()).context("socketpair(SOCK_SEQPACKET) failed");
    }
    // SAFETY: socketpair succeeded, so both fds are open and unowned.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Makes `fd` the child's fd 3 after fork. The parent's fds are all
/// close-on-exec, but the copy that `dup2` makes is not. When `fd` already
/// is 3, its flag is cleared directly.
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

/// Returns a command that runs `program` pinned to `cpu` with taskset.
/// taskset execs the program, so the child's pid is the program's.
pub fn pinned_command(cpu: usize, program: &Path) -> Command {
    let mut command = Command::new("taskset");
    command.arg("-c").arg(cpu.to_string()).arg(program);
    command
}

/// Reads a child's output to the end, as text.
pub fn collect_text(mut reader: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Sends SIGKILL to `pid` if it has not been reaped yet.
fn kill_pid(pid: libc::pid_t) {
    // SAFETY: kill has no memory effects. The pid belongs to a child that
    // this process has not reaped, so it cannot have been reused.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Exit status and resource use of a reaped child.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Raw wait status, as `waitpid` returns it.
    pub status: i32,
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// Peak resident set size (`ru_maxrss`, the same as VmHWM), in KiB.
    pub max_rss_kib: u64,
}

impl Usage {
    pub fn success(&self) -> bool {
        libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0
    }

    pub fn describe_status(&self) -> String {
        if libc::WIFEXITED(self.status) {
            format!("exit code {}", libc::WEXITSTATUS(self.status))
        } else if libc::WIFSIGNALED(self.status) {
            format!("signal {}", libc::WTERMSIG(self.status))
        } else {
            format!("wait status {:#x}", self.status)
        }
    }
}

fn timeval_seconds(time: libc::timeval) -> f64 {
    time.tv_sec as f64 + time.tv_usec as f64 / 1e6
}

/// Blocks until `pid` exits and returns its status and rusage.
fn wait4(pid: libc::pid_t) -> std::io::Result<Usage> {
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: `status` and `usage` are valid for writes.
        let result = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if result == pid {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(Usage {
        status,
        user_seconds: timeval_seconds(usage.ru_utime),
        system_seconds: timeval_seconds(usage.ru_stime),
        max_rss_kib: usage.ru_maxrss as u64,
    })
}

/// A child process reaped by a waiter thread with `wait4`, so that its
/// rusage is available. Killed on drop if still running.
pub struct Measured {
    name: String,
    pid: libc::pid_t,
    exited: mpsc::Receiver<std::io::Result<Usage>>,
    usage: Option<Usage>,
    pub stdout: Option<ChildStdout>,
    stderr: Option<JoinHandle<String>>,
}

impl Measured {
    /// Spawns `command` with piped stdout and stderr and, when given, `fd`
    /// as the child's fd 3.
    pub fn spawn(name: &str, mut command: Command, fd: Option<RawFd>) -> Result<Measured> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(fd) = fd {
            pass_as_child_fd(&mut command, fd);
        }
        let mut child: Child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({command:?})"))?;
        let pid = child.id() as libc::pid_t;
        let stdout = child.stdout.take();
        let stderr = child.stderr.take().map(collect_text);
        // std's Child is dropped without wait(), because the waiter thread
        // reaps the process with wait4, which also returns its rusage.
        drop(child);
        let (sender, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(wait4(pid));
        });
        Ok(Measured {
            name: name.to_string(),
            pid,
            exited,
            usage: None,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the usage once the child has exited, or None if it is still
    /// running.
    pub fn try_usage(&mut self) -> Result<Option<Usage>> {
        if self.usage.is_none() {
            match self.exited.try_recv() {
                Ok(result) => {
                    let usage =
                        result.with_context(|| format!("wait4 for {} failed", self.name))?;
                    self.usage = Some(usage);
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => {
                    bail!("the waiter thread of {} ended without a status", self.name)
                }
            }
        }
        Ok(self.usage)
    }

    /// Waits until the child exits or `deadline` passes. Returns None on
    /// timeout, leaving the child running.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<Usage>> {
        if let Some(usage) = self.usage {
            return Ok(Some(usage));
        }
        let timeout = deadline.saturating_duration_since(Instant::now());
        match self.exited.recv_timeout(timeout) {
            Ok(result) => {
                let usage = result.with_context(|| format!("wait4 for {} failed", self.name))?;
                self.usage = Some(usage);
                Ok(Some(usage))
            }
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the waiter thread of {} ended without a status", self.name)
            }
        }
    }

    /// Kills the child if it is still running and returns its usage.
    pub fn kill(&mut self) -> Result<Usage> {
        if self.try_usage()?.is_none() {
            kill_pid(self.pid);
        }
        match self.wait_until(Instant::now() + Duration::from_secs(10))? {
            Some(usage) => Ok(usage),
            None => bail!(
                "{} (pid {}) did not exit after SIGKILL",
                self.name,
                self.pid
            ),
        }
    }

    /// Returns the child's stderr once it has exited.
    pub fn take_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|handle| handle.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Measured {
    fn drop(&mut self) {
        if matches!(self.try_usage(), Ok(None)) {
            kill_pid(self.pid);
        }
    }
}

/// Reads the value in KiB of a field such as `VmRSS` from
/// /proc/PID/status.
pub fn proc_status_kib(pid: libc::pid_t, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let prefix = format!("{field}:");
    let line = text
        .lines()
        .find(|line| line.starts_with(&prefix))
        .with_context(|| format!("{path} has no {field} line"))?;
    line[prefix.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("invalid {field} line in {path}: {line:?}"))
}

/// A line that the TLS peer prints on stdout.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "event", rename_all = "camelCase")]
pub enum PeerEvent {
    Listening {
        port: u16,
    },
    Connected {
        #[serde(deserialize_with = "ns_from_string")]
        at: u64,
        cipher: String,
        protocol: String,
    },
    Progress {
        accepted: u64,
    },
    #[serde(rename_all = "camelCase")]
    Done {
        #[serde(default)]
        sent: Option<u64>,
        #[serde(default)]
        received: Option<u64>,
        #[serde(default)]
        sent_packets: Option<u64>,
        #[serde(default)]
        received_packets: Option<f64>,
        #[serde(deserialize_with = "ns_from_string")]
        last_ns: u64,
    },
}

/// Parses a nanosecond time that Node prints as a decimal string, because a
/// JSON number would lose precision above 2^53.
pub fn ns_from_string<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

/// The running TLS peer and the events it has printed so far.
pub struct Peer {
    pub process: Measured,
    events: mpsc::Receiver<Result<PeerEvent, String>>,
    /// Every event received, in order.
    pub seen: Vec<PeerEvent>,
}

impl Peer {
    pub fn spawn(command: Command) -> Result<Peer> {
        let mut process = Measured::spawn("TLS peer", command, None)?;
        let stdout = process
            .stdout
            .take()
            .context("the peer has no stdout pipe")?;
        let (sender, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = serde_json::from_str::<PeerEvent>(&line)
                    .map_err(|err| format!("invalid peer line {line:?}: {err}"));
                if sender.send(event).is_err() {
                    break;
                }
            }
        });
        Ok(Peer {
            process,
            events,
            seen: Vec::new(),
        })
    }

    /// Waits for the next event that `select` accepts, keeping every event
    /// in `seen`. Fails at `deadline` or when the peer's stdout ends.
    pub fn wait_for<T>(
        &mut self,
        deadline: Instant,
        what: &str,
        mut select: impl FnMut(&PeerEvent) -> Option<T>,
    ) -> Result<T> {
        loop {
            let timeout = deadline.saturating_duration_since(Instant::now());
            let event = match self.events.recv_timeout(timeout) {
                Ok(Ok(event)) => event,
                Ok(Err(message)) => bail!("{message}"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("timed out waiting for the TLS peer's '{what}' event")
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let stderr = self.process.take_stderr();
                    return Err(anyhow!(
                        "the TLS peer exited before its '{what}' event; its stderr:\n{}",
                        super::indent(&stderr)
                    ));
                }
            };
            self.seen.push(event.clone());
            if let Some(value) = select(&event) {
                return Ok(value);
            }
        }
    }

    /// Takes the events that arrived since the last call without waiting.
    pub fn drain_events(&mut self) -> Result<()> {
        while let Ok(event) = self.events.try_recv() {
            self.seen.push(event.map_err(|message| anyhow!(message))?);
        }
        Ok(())
    }
}
