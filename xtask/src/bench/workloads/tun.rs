//! W3 over a TUN device: the forwarder's fd 3 is a TUN device with
//! `framing: 'ip'`, in a network namespace that the measuring thread
//! creates for itself, so the host's interfaces are never touched.
//!
//! Inside the namespace, tun0 has the address 10.77.0.1/24. A pinned xtask
//! thread sends UDP datagrams from 10.77.0.1 to 10.77.0.2, which the kernel
//! routes into tun0, so the forwarder reads them from fd 3 as IPv4 packets
//! (fd -> TLS). The peer sends IPv4/UDP packets from 10.77.0.2 to
//! 10.77.0.1:7002 (see peer.js), which the forwarder writes into tun0 and
//! the kernel delivers to another pinned xtask thread (TLS -> fd). The peer
//! and the forwarder are started from the same thread, so they run in the
//! namespace too and talk over its own loopback device.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{join, monotonic_ns, seconds_between, spawn_pinned, PacketsReceived, PeerConfig};
use super::{Cipher, Env, PeerEvent, Running, Transfer, Variant};

const TUN_NAME: &str = "tun0";
const LOCAL_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const REMOTE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PREFIX_LENGTH: u8 = 24;
/// The UDP port at LOCAL_ADDRESS that the peer's packets go to, fixed in
/// peer.js.
const PEER_PACKET_PORT: u16 = 7002;
/// The UDP port at REMOTE_ADDRESS that the xtask's packets go to. No
/// socket listens there: the packets end at the peer.
const XTASK_PACKET_PORT: u16 = 7003;
/// Bytes of the IPv4 and UDP headers in front of each UDP payload.
const IPV4_UDP_HEADER_SIZE: usize = 28;
/// Receive buffer of the UDP socket that counts the peer's packets. The
/// receiving thread shares its CPU with the forwarder, so the buffer must
/// hold a large part of a run's packets (an estimated 2.3 KB each in the kernel).
const RECEIVE_BUFFER_BYTES: libc::c_int = 256 << 20;
/// Read timeout of the receiving socket, so that it checks the deadline.
const RECEIVE_POLL: Duration = Duration::from_millis(100);
/// TUNSETIFF, `_IOW('T', 202, int)` in linux/if_tun.h.
const TUNSETIFF: libc::c_ulong = 0x400454ca;

/// `struct ifreq` as TUNSETIFF reads it: the name and `ifr_flags`, padded
/// to the 40 bytes of the kernel's union.
#[repr(C)]
struct InterfaceRequest {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    padding: [u8; 22],
}

/// Measures W3 over a TUN device: the peer and a pinned xtask thread each
/// send `count` packets as fast as they go, and each receives the other's.
pub(super) fn packets(env: &Env, variant: Variant, cipher: Cipher, count: u64) -> Result<Transfer> {
    // The namespace belongs to the calling thread only, so a thread of its
    // own keeps the rest of the xtask in the host's namespace.
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_new_network_namespace()?;
                let tun = create_tun(count)?;
                measure(env, variant, cipher, count, tun)
            })
            .join()
            .map_err(|_| anyhow!("the TUN measurement thread panicked"))?
    })
}

/// Moves the calling thread into a new network namespace, which ends when
/// the last thread, process and socket in it are gone.
fn enter_new_network_namespace() -> Result<()> {
    // SAFETY: unshare has no memory effects; CLONE_NEWNET changes only the
    // calling thread's namespace.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("unshare(CLONE_NEWNET) failed: {err}; the TUN measurement must run as root");
    }
    Ok(())
}

/// Creates and configures tun0 in the current thread's network namespace.
/// Its transmit queue has room for more than `count` packets, because UDP has no
/// backpressure: a full queue would drop the xtask's packets.
fn create_tun(count: u64) -> Result<OwnedFd> {
    // The kernel's IPv6 router solicitations would enter the device as
    // packets that the peer does not expect.
    for conf in ["all", "default"] {
        let path = format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6");
        std::fs::write(&path, "1").with_context(|| format!("cannot write 1 to {path}"))?;
    }

    // SAFETY: the path is a NUL-terminated literal.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        let err = std::io::Error::last_os_error();
        bail!("cannot open /dev/net/tun: {err}");
    }
    // SAFETY: `raw` is a new fd that nothing else owns.
    let tun = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut request = InterfaceRequest {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        padding: [0; 22],
    };
    request.name[..TUN_NAME.len()].copy_from_slice(TUN_NAME.as_bytes());
    // SAFETY: TUNSETIFF reads and writes one struct ifreq, which `request`
    // lays out.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut request) } != 0 {
        let err = std::io::Error::last_os_error();
        bail!("TUNSETIFF for {TUN_NAME} failed: {err}");
    }

    let queue_length = (count + 1000).to_string();
    let address = format!("{LOCAL_ADDRESS}/{PREFIX_LENGTH}");
    run_ip(&["link", "set", "lo", "up"])?;
    run_ip(&["addr", "add", &address, "dev", TUN_NAME])?;
    run_ip(&["link", "set", TUN_NAME, "txqueuelen", &queue_length, "up"])?;
    Ok(tun)
}

/// Runs `ip` with `args` in the current thread's network namespace.
fn run_ip(args: &[&str]) -> Result<()> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip; install it with `apt-get install iproute2`")?;
    if !output.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Returns the output of `ip -s link show dev tun0`, whose counters show
/// where packets were dropped.
fn tun_counters() -> String {
    match Command::new("ip")
        .args(["-s", "link", "show", "dev", TUN_NAME])
        .output()
    {
        Ok(output) => String::from_utf8_lossy(&output.stdout).into_owned(),
        Err(err) => format!("cannot run ip: {err}"),
    }
}

/// Runs one measurement in the namespace that `tun` belongs to.
fn measure(
    env: &Env,
    variant: Variant,
    cipher: Cipher,
    count: u64,
    tun: OwnedFd,
) -> Result<Transfer> {
    let packet_size = env.settings.packet_size;
    let payload_size = packet_size - IPV4_UDP_HEADER_SIZE;
    let receiving = UdpSocket::bind(SocketAddrV4::new(LOCAL_ADDRESS, PEER_PACKET_PORT))
        .context("cannot bind the UDP socket for the peer's packets")?;
    set_receive_buffer(&receiving)?;
    receiving.set_read_timeout(Some(RECEIVE_POLL))?;
    let sending = UdpSocket::bind(SocketAddrV4::new(LOCAL_ADDRESS, 0))?;
    sending.connect(SocketAddrV4::new(REMOTE_ADDRESS, XTASK_PACKET_PORT))?;

    let mut config = PeerConfig::new(env, cipher, "packets");
    config.packets = count;
    config.framing = "ip";
    let mut running = Running::start(env, variant, &config, "duplex", "ip", &tun)?;
    drop(tun);

    let deadline = running.deadline;
    let (go, go_rx) = mpsc::channel::<u64>();
    let receiver = spawn_pinned(env.settings.cpu, move || {
        receive_datagrams(receiving, count, payload_size, deadline)
    });
    let sender = spawn_pinned(env.settings.cpu, move || {
        send_datagrams(sending, count, payload_size, go_rx, deadline)
    });

    let connected_at = running.connected_at()?;
    let _ = go.send(monotonic_ns());
    let usage = running.wait_forwarder();
    let usage = match usage {
        Ok(usage) => usage,
        Err(err) => return Err(err.context(format!("tun0 counters:\n{}", tun_counters()))),
    };
    let received = join(receiver, "UDP receiver")?;
    join(sender, "UDP sender")?;
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
    if received.datagrams != count {
        problems.push(format!(
            "the UDP socket received {} datagrams, expected {count}",
            received.datagrams
        ));
    }
    if received.wrong_sizes > 0 {
        problems.push(format!(
            "{} of {} datagrams were not {payload_size} bytes long",
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
        problems.push(format!("tun0 counters:\n{}", tun_counters()));
        return Err(running.failure(problems.join("; ")));
    }
    Ok(Transfer {
        usage,
        seconds: seconds_between(connected_at, last_ns.max(received.last_ns)),
        elu,
    })
}

/// Sets the receive buffer of `socket` to RECEIVE_BUFFER_BYTES, beyond
/// net.core.rmem_max, which SO_RCVBUFFORCE allows for root.
fn set_receive_buffer(socket: &UdpSocket) -> Result<()> {
    let size = RECEIVE_BUFFER_BYTES;
    // SAFETY: the option value is a c_int that outlives the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result != 0 {
        let err = std::io::Error::last_os_error();
        bail!("setsockopt(SO_RCVBUFFORCE, {size}) failed: {err}");
    }
    Ok(())
}

/// Receives datagrams until `count` arrived or `deadline` passed.
fn receive_datagrams(
    socket: UdpSocket,
    count: u64,
    payload_size: usize,
    deadline: Instant,
) -> std::io::Result<PacketsReceived> {
    let mut buf = vec![0u8; 65536];
    let mut received = PacketsReceived {
        bytes: 0,
        datagrams: 0,
        wrong_sizes: 0,
        last_ns: monotonic_ns(),
    };
    while received.datagrams < count && Instant::now() < deadline {
        let length = match socket.recv(&mut buf) {
            Ok(length) => length,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                continue
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        received.bytes += length as u64;
        received.datagrams += 1;
        if length != payload_size {
            received.wrong_sizes += 1;
        }
        received.last_ns = monotonic_ns();
    }
    Ok(received)
}

/// Sends `count` datagrams of `payload_size` bytes once `go` delivers the
/// start time. A send that fails with ENOBUFS, when the device's queue is
/// full, is retried until `deadline`.
fn send_datagrams(
    socket: UdpSocket,
    count: u64,
    payload_size: usize,
    go: mpsc::Receiver<u64>,
    deadline: Instant,
) -> std::io::Result<()> {
    let payload = vec![0xa5u8; payload_size];
    if go
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .is_err()
    {
        return Ok(());
    }
    let mut sent = 0;
    while sent < count {
        match socket.send(&payload) {
            Ok(_) => sent += 1,
            Err(err) if err.raw_os_error() == Some(libc::ENOBUFS) && Instant::now() < deadline => {
                std::thread::yield_now();
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
