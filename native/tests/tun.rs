//! The pump with `ip` framing on a real TUN device, in a network namespace
//! that the test creates. Needs root and /dev/net/tun; without them the
//! test prints one line saying why and returns.
//!
//! The namespace holds one interface, `splice0`, with address 192.0.2.1/24
//! (TEST-NET-1, RFC 5737). Packets that the pump writes to the TUN fd are
//! UDP datagrams to 192.0.2.1:5555, where a socket in the namespace receives
//! them. Datagrams that a socket in the namespace sends to 192.0.2.2:6666
//! leave through the TUN device, and the pump reads them. No packet leaves
//! the namespace.

mod common;

use std::os::fd::RawFd;
use std::time::Duration;

use common::*;
use tls_splice::{Direction, Framing};

const TIMEOUT: Duration = Duration::from_secs(60);
const LOCAL: [u8; 4] = [192, 0, 2, 1];
const REMOTE: [u8; 4] = [192, 0, 2, 2];
const LOCAL_PORT: u16 = 5555;
const REMOTE_PORT: u16 = 6666;

/// File descriptors created inside the test namespace.
struct Namespace {
    tun: RawFd,
    /// UDP socket bound to LOCAL:LOCAL_PORT.
    receiver: RawFd,
    /// UDP socket connected to REMOTE:REMOTE_PORT.
    sender: RawFd,
}

fn os_error(what: &str) -> String {
    format!("{what}: {}", std::io::Error::last_os_error())
}

fn sockaddr(addr: [u8; 4], port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(addr);
    sa
}

/// Creates the namespace, the TUN device and the two UDP sockets. Runs on
/// a thread of its own, because `unshare` moves only the calling thread.
fn create_namespace() -> Result<Namespace, String> {
    std::thread::spawn(|| -> Result<Namespace, String> {
        // SAFETY: plain system calls on descriptors this thread creates;
        // the ifreq structures are zero-initialized plain data.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(os_error("unshare(CLONE_NEWNET)"));
            }
            let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
            if tun < 0 {
                return Err(os_error("open /dev/net/tun"));
            }
            let mut ifr: libc::ifreq = std::mem::zeroed();
            for (dst, src) in ifr.ifr_name.iter_mut().zip(b"splice0\0") {
                *dst = *src as libc::c_char;
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
            if libc::ioctl(tun, libc::TUNSETIFF, &mut ifr) != 0 {
                return Err(os_error("ioctl TUNSETIFF"));
            }
            let control = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let address = sockaddr(LOCAL, 0);
            std::ptr::copy_nonoverlapping(
                (&address as *const libc::sockaddr_in).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            );
            if libc::ioctl(control, libc::SIOCSIFADDR, &mut ifr) != 0 {
                return Err(os_error("ioctl SIOCSIFADDR"));
            }
            let mask = sockaddr([255, 255, 255, 0], 0);
            std::ptr::copy_nonoverlapping(
                (&mask as *const libc::sockaddr_in).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_netmask as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            );
            if libc::ioctl(control, libc::SIOCSIFNETMASK, &mut ifr) != 0 {
                return Err(os_error("ioctl SIOCSIFNETMASK"));
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(control, libc::SIOCSIFFLAGS, &mut ifr) != 0 {
                return Err(os_error("ioctl SIOCSIFFLAGS"));
            }
            libc::close(control);

            let receiver = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let size: libc::c_int = 8 << 20;
            libc::setsockopt(receiver, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, (&size as *const libc::c_int).cast(), 4);
            let bind_to = sockaddr(LOCAL, LOCAL_PORT);
            if libc::bind(receiver, (&bind_to as *const libc::sockaddr_in).cast(), 16) != 0 {
                return Err(os_error("bind"));
            }
            let sender = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let connect_to = sockaddr(REMOTE, REMOTE_PORT);
            if libc::connect(sender, (&connect_to as *const libc::sockaddr_in).cast(), 16) != 0 {
                return Err(os_error("connect"));
            }
            Ok(Namespace { tun, receiver, sender })
        }
    })
    .join()
    .unwrap()
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 UDP packet from REMOTE to LOCAL carrying `payload`, with a valid
/// header checksum and no UDP checksum (allowed for IPv4, RFC 768).
fn udp_packet(payload: &[u8], id: u16) -> Vec<u8> {
    let total = 20 + 8 + payload.len();
    let mut packet = vec![0u8; total];
    packet[0] = 0x45;
    packet[1] = 0x10;
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[8] = 64;
    packet[9] = libc::IPPROTO_UDP as u8;
    packet[12..16].copy_from_slice(&REMOTE);
    packet[16..20].copy_from_slice(&LOCAL);
    let sum = checksum(&packet[..20]);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet[20..22].copy_from_slice(&REMOTE_PORT.to_be_bytes());
    packet[22..24].copy_from_slice(&LOCAL_PORT.to_be_bytes());
    packet[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    packet[28..].copy_from_slice(payload);
    packet
}

fn payloads(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    (0..count)
        .map(|i| {
            let mut payload = vec![0u8; if i == 0 { 0 } else { rng.below(1400) }];
            rng.fill(&mut payload);
            payload
        })
        .collect()
}

/// Extracts the payloads of the UDP datagrams to REMOTE_PORT from a stream
/// of IP packets; other packets (router solicitations and the like) are
/// skipped.
fn udp_payloads_in_stream(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    let mut offset = 0;
    while offset < stream.len() {
        let rest = &stream[offset..];
        let packet = Framing::Ip.parse(rest).expect("valid IP stream").expect("whole packet");
        let bytes = &rest[..packet.len];
        let is_udp_to_remote = bytes[0] >> 4 == 4
            && bytes[9] == libc::IPPROTO_UDP as u8
            && u16::from_be_bytes([bytes[22], bytes[23]]) == REMOTE_PORT;
        if is_udp_to_remote {
            let header = usize::from(bytes[0] & 0x0f) * 4;
            found.push(bytes[header + 8..].to_vec());
        }
        offset += packet.len;
    }
    found
}

#[test]
fn tun_device_carries_packets_both_ways() {
    let namespace = match create_namespace() {
        Ok(namespace) => namespace,
        Err(reason) => {
            report_skip(&format!(
                "SKIPPED tun_device_carries_packets_both_ways: cannot create a TUN device in a new \
                 network namespace ({reason}); it needs root and /dev/net/tun"
            ));
            return;
        }
    };
    let to_tun = payloads(2000, 51);
    let from_tun = payloads(2000, 52);
    let stream: Vec<u8> = to_tun
        .iter()
        .enumerate()
        .flat_map(|(i, payload)| udp_packet(payload, i as u16))
        .collect();

    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let plan = PeerPlan {
        send: stream,
        max_write: 5000,
        close_after_send: false,
        abort_after_send: false,
        reset: false,
        timeout: TIMEOUT,
        seed: 53,
        progress: None,
    };
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, plan));

    let receiver = namespace.receiver;
    let expected_count = to_tun.len();
    let receiver_thread = std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 2000];
        while received.len() < expected_count {
            // SAFETY: `buf` is writable.
            let n = unsafe { libc::recv(receiver, buf.as_mut_ptr().cast(), buf.len(), 0) };
            assert!(n >= 0, "recv failed: {}", std::io::Error::last_os_error());
            received.push(buf[..n as usize].to_vec());
        }
        received
    });

    let mut harness = Harness::new(host, host_sock);
    harness.start(namespace.tun, Direction::Duplex, Framing::Ip, 64 * 1024, false).unwrap();
    // The TUN queue holds 500 packets (txqueuelen) and drops the rest, so
    // the sender waits for the pump after every 100 datagrams.
    for (i, payload) in from_tun.iter().enumerate() {
        // SAFETY: sending from a readable slice.
        let n = unsafe { libc::send(namespace.sender, payload.as_ptr().cast(), payload.len(), 0) };
        assert_eq!(n as usize, payload.len(), "{}", std::io::Error::last_os_error());
        let sent = i as u64 + 1;
        if sent % 100 == 0 {
            harness.run_until(TIMEOUT, |h| h.splice.as_ref().unwrap().stats().packets_out >= sent);
        }
    }
    let wanted_in = to_tun.len() as u64;
    let wanted_out = from_tun.len() as u64;
    harness.run_until(TIMEOUT, |h| {
        let stats = h.splice.as_ref().unwrap().stats();
        stats.packets_in >= wanted_in && stats.packets_out >= wanted_out
    });
    let stats = harness.splice.as_ref().unwrap().stats();
    harness.splice.as_mut().unwrap().stop();
    harness.run_until_closed(TIMEOUT);
    assert_eq!(harness.events(), vec![Event::Closed]);
    drop(harness);

    let received = receiver_thread.join().unwrap();
    assert_eq!(stats.packets_in, wanted_in);
    assert!(received == to_tun, "datagrams from the TUN device differ");
    let result = peer_thread.join().unwrap();
    let sent_through = udp_payloads_in_stream(&result.received);
    assert_eq!(sent_through.len(), from_tun.len());
    assert!(sent_through == from_tun, "packets read from the TUN device differ");
    for fd in [namespace.tun, namespace.receiver, namespace.sender] {
        close(fd);
    }
}
