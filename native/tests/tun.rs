//! The pump with `ip` framing on a real TUN device, in a network namespace
//! that the test creates. Needs root and /dev/net/tun; without them the
//! test prints one line saying why and returns.
//!
//! The namespace has one interface, `splice0`, with the documentation
//! addresses 192.0.2.1/24 (RFC 5737) and 2001:db8::1/64 (RFC 3849). Packets
//! that the pump writes to the TUN fd are UDP datagrams to port 5555 of
//! those addresses, where sockets in the namespace receive them. Datagrams
//! that sockets in the namespace send to port 6666 of 192.0.2.2 and
//! 2001:db8::2 leave through the TUN device, and the pump reads them. No
//! packet leaves the namespace.

mod common;

use std::os::fd::RawFd;
use std::time::Duration;

use common::*;
use tls_splice::{Direction, Framing, Side};

const TIMEOUT: Duration = Duration::from_secs(60);
const LOCAL: [u8; 4] = [192, 0, 2, 1];
const REMOTE: [u8; 4] = [192, 0, 2, 2];
const LOCAL6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
const REMOTE6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const LOCAL_PORT: u16 = 5555;
const REMOTE_PORT: u16 = 6666;

/// File descriptors created inside the test namespace.
struct Namespace {
    tun: RawFd,
    /// UDP socket bound to LOCAL:LOCAL_PORT.
    receiver: RawFd,
    /// UDP socket connected to REMOTE:REMOTE_PORT.
    sender: RawFd,
    /// The same two over IPv6.
    receiver6: RawFd,
    sender6: RawFd,
}

fn os_error(call: &str) -> String {
    format!("{call}: {}", std::io::Error::last_os_error())
}

fn sockaddr6(addr: [u8; 16], port: u16) -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain data.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as u16;
    sa.sin6_port = port.to_be();
    sa.sin6_addr.s6_addr = addr;
    sa
}

/// `struct in6_ifreq` from linux/ipv6.h, which the libc crate lacks.
#[repr(C)]
struct In6Ifreq {
    addr: libc::in6_addr,
    prefix_len: u32,
    ifindex: libc::c_int,
}

fn sockaddr(addr: [u8; 4], port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(addr);
    sa
}

/// Moves the calling thread into a new network namespace and creates the
/// TUN device `name` there. Returns an error, the reason to skip, only when
/// the machine offers no namespace or no TUN device; TUNSETIFF failing
/// afterwards is a test failure.
///
/// # Safety
///
/// Plain system calls on descriptors the caller then owns.
unsafe fn open_tun_in_new_namespace(name: &std::ffi::CStr) -> Result<(RawFd, libc::ifreq), String> {
    if libc::unshare(libc::CLONE_NEWNET) != 0 {
        return Err(os_error("unshare(CLONE_NEWNET)"));
    }
    let tun = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
    if tun < 0 {
        return Err(os_error("open /dev/net/tun"));
    }
    let mut ifr: libc::ifreq = std::mem::zeroed();
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.to_bytes_with_nul()) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    assert_eq!(
        libc::ioctl(tun, libc::TUNSETIFF, &mut ifr),
        0,
        "{}",
        os_error("ioctl TUNSETIFF")
    );
    Ok((tun, ifr))
}

/// Creates the namespace, the TUN device and the UDP sockets. Runs on a
/// thread of its own, because `unshare` moves only the calling thread.
/// Returns an error, the reason to skip, only when the machine has no
/// namespaces or no TUN device for us; any later failure panics.
fn create_namespace() -> Result<Namespace, String> {
    std::thread::spawn(|| -> Result<Namespace, String> {
        // SAFETY: plain system calls on descriptors this thread creates;
        // the ifreq structures are zero-initialized plain data.
        unsafe {
            let (tun, mut ifr) = open_tun_in_new_namespace(c"splice0")?;
            let setup = |result: Result<(), String>| result.unwrap_or_else(|err| panic!("{err}"));
            let control = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let address = sockaddr(LOCAL, 0);
            std::ptr::copy_nonoverlapping(
                (&address as *const libc::sockaddr_in).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_addr as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            );
            if libc::ioctl(control, libc::SIOCSIFADDR, &mut ifr) != 0 {
                setup(Err(os_error("ioctl SIOCSIFADDR")));
            }
            let mask = sockaddr([255, 255, 255, 0], 0);
            std::ptr::copy_nonoverlapping(
                (&mask as *const libc::sockaddr_in).cast::<u8>(),
                (&mut ifr.ifr_ifru.ifru_netmask as *mut libc::sockaddr).cast::<u8>(),
                std::mem::size_of::<libc::sockaddr_in>(),
            );
            if libc::ioctl(control, libc::SIOCSIFNETMASK, &mut ifr) != 0 {
                setup(Err(os_error("ioctl SIOCSIFNETMASK")));
            }
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(control, libc::SIOCSIFFLAGS, &mut ifr) != 0 {
                setup(Err(os_error("ioctl SIOCSIFFLAGS")));
            }
            libc::close(control);

            // Duplicate address detection would keep the IPv6 address
            // tentative, and unusable, for about a second.
            let sysctl = "/proc/sys/net/ipv6/conf/splice0/accept_dad";
            setup(std::fs::write(sysctl, "0").map_err(|err| format!("write {sysctl}: {err}")));
            let control6 = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let request = In6Ifreq {
                addr: libc::in6_addr { s6_addr: LOCAL6 },
                prefix_len: 64,
                ifindex: libc::if_nametoindex(c"splice0".as_ptr()) as libc::c_int,
            };
            if libc::ioctl(control6, libc::SIOCSIFADDR, &request) != 0 {
                setup(Err(os_error("ioctl SIOCSIFADDR (IPv6)")));
            }
            libc::close(control6);

            let receiver = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let size: libc::c_int = 8 << 20;
            libc::setsockopt(
                receiver,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            );
            let bind_to = sockaddr(LOCAL, LOCAL_PORT);
            if libc::bind(receiver, (&bind_to as *const libc::sockaddr_in).cast(), 16) != 0 {
                setup(Err(os_error("bind")));
            }
            let sender = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let connect_to = sockaddr(REMOTE, REMOTE_PORT);
            if libc::connect(sender, (&connect_to as *const libc::sockaddr_in).cast(), 16) != 0 {
                setup(Err(os_error("connect")));
            }
            let receiver6 = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            libc::setsockopt(
                receiver6,
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            );
            let bind_to6 = sockaddr6(LOCAL6, LOCAL_PORT);
            // The kernel may take a moment to make a new IPv6 address usable.
            let mut attempts = 0;
            while libc::bind(
                receiver6,
                (&bind_to6 as *const libc::sockaddr_in6).cast(),
                28,
            ) != 0
            {
                let errno = std::io::Error::last_os_error().raw_os_error();
                if errno != Some(libc::EADDRNOTAVAIL) || attempts == 200 {
                    setup(Err(os_error("bind (IPv6)")));
                }
                attempts += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            let sender6 = libc::socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let connect_to6 = sockaddr6(REMOTE6, REMOTE_PORT);
            if libc::connect(
                sender6,
                (&connect_to6 as *const libc::sockaddr_in6).cast(),
                28,
            ) != 0
            {
                setup(Err(os_error("connect (IPv6)")));
            }
            Ok(Namespace {
                tun,
                receiver,
                sender,
                receiver6,
                sender6,
            })
        }
    })
    .join()
    .unwrap()
}

/// Internet checksum (RFC 1071) over the concatenation of `parts`, each of
/// even length except possibly the last.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for part in parts {
        for word in part.chunks(2) {
            let high = u32::from(word[0]) << 8;
            let low = word.get(1).map_or(0, |&b| u32::from(b));
            sum += high | low;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Builds an IPv6 UDP packet from REMOTE6 to LOCAL6 carrying `payload`, with the
/// UDP checksum that IPv6 requires (RFC 8200, section 8.1).
fn udp6_packet(payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut packet = vec![0u8; 40 + udp_len];
    packet[0] = 0x60;
    packet[1] = 0x20; // traffic class bits
    packet[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    packet[6] = libc::IPPROTO_UDP as u8;
    packet[7] = 64;
    packet[8..24].copy_from_slice(&REMOTE6);
    packet[24..40].copy_from_slice(&LOCAL6);
    packet[40..42].copy_from_slice(&REMOTE_PORT.to_be_bytes());
    packet[42..44].copy_from_slice(&LOCAL_PORT.to_be_bytes());
    packet[44..46].copy_from_slice(&(udp_len as u16).to_be_bytes());
    packet[48..].copy_from_slice(payload);
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&REMOTE6);
    pseudo.extend_from_slice(&LOCAL6);
    pseudo.extend_from_slice(&(udp_len as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, libc::IPPROTO_UDP as u8]);
    let sum = match checksum(&[&pseudo, &packet[40..]]) {
        0 => 0xffff,
        sum => sum,
    };
    packet[46..48].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// Builds an IPv4 UDP packet from REMOTE to LOCAL carrying `payload`, with a valid
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
    let sum = checksum(&[&packet[..20]]);
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
        let packet = Framing::Ip
            .parse(rest)
            .expect("valid IP stream")
            .expect("whole packet");
        let bytes = &rest[..packet.len];
        let (header, protocol) = match bytes[0] >> 4 {
            4 => (usize::from(bytes[0] & 0x0f) * 4, bytes[9]),
            _ => (40, bytes[6]),
        };
        let is_udp_to_remote = protocol == libc::IPPROTO_UDP as u8
            && bytes.len() >= header + 8
            && u16::from_be_bytes([bytes[header + 2], bytes[header + 3]]) == REMOTE_PORT;
        if is_udp_to_remote {
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
    // Even packets are IPv4, odd ones IPv6, in both directions.
    let to_tun = payloads(2000, 51);
    let from_tun = payloads(2000, 52);
    let stream: Vec<u8> = to_tun
        .iter()
        .enumerate()
        .flat_map(|(i, payload)| {
            if i % 2 == 0 {
                udp_packet(payload, i as u16)
            } else {
                udp6_packet(payload)
            }
        })
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

    let receive = |fd: RawFd, count: usize| {
        // A datagram the kernel dropped fails the test instead of hanging it.
        let timeout = libc::timeval {
            tv_sec: 20,
            tv_usec: 0,
        };
        // SAFETY: setting SO_RCVTIMEO on our own socket.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        std::thread::spawn(move || {
            let mut received = Vec::new();
            let mut buf = vec![0u8; 2000];
            while received.len() < count {
                // SAFETY: `buf` is writable.
                let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
                assert!(n >= 0, "recv failed: {}", std::io::Error::last_os_error());
                received.push(buf[..n as usize].to_vec());
            }
            received
        })
    };
    let receiver4 = receive(namespace.receiver, to_tun.len().div_ceil(2));
    let receiver6 = receive(namespace.receiver6, to_tun.len() / 2);

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(
            namespace.tun,
            Direction::Duplex,
            Framing::Ip,
            64 * 1024,
            false,
        )
        .unwrap();
    // The TUN queue takes 500 packets (txqueuelen) and drops the rest, so
    // the sender waits for the pump after every 100 datagrams.
    for (i, payload) in from_tun.iter().enumerate() {
        // SAFETY: sending from a readable slice.
        let sender = if i % 2 == 0 {
            namespace.sender
        } else {
            namespace.sender6
        };
        let n = unsafe { libc::send(sender, payload.as_ptr().cast(), payload.len(), 0) };
        assert_eq!(
            n as usize,
            payload.len(),
            "{}",
            std::io::Error::last_os_error()
        );
        let sent = i as u64 + 1;
        if sent % 100 == 0 {
            harness.run_until(TIMEOUT, |h| {
                h.splice.as_ref().unwrap().stats().packets_out >= sent
            });
        }
    }
    let expected_in = to_tun.len() as u64;
    let expected_out = from_tun.len() as u64;
    harness.run_until(TIMEOUT, |h| {
        let stats = h.splice.as_ref().unwrap().stats();
        stats.packets_in >= expected_in && stats.packets_out >= expected_out
    });
    let stats = harness.splice.as_ref().unwrap().stats();
    harness.splice.as_mut().unwrap().stop();
    harness.run_until_closed(TIMEOUT);
    assert_eq!(harness.events(), vec![Event::Closed]);
    drop(harness);

    assert_eq!(stats.packets_in, expected_in);
    let received4 = receiver4.join().unwrap();
    let received6 = receiver6.join().unwrap();
    let expected4: Vec<Vec<u8>> = to_tun.iter().step_by(2).cloned().collect();
    let expected6: Vec<Vec<u8>> = to_tun.iter().skip(1).step_by(2).cloned().collect();
    assert!(
        received4 == expected4,
        "IPv4 datagrams from the TUN device differ"
    );
    assert!(
        received6 == expected6,
        "IPv6 datagrams from the TUN device differ"
    );
    let result = peer_thread.join().unwrap();
    let sent_through = udp_payloads_in_stream(&result.received);
    assert_eq!(sent_through.len(), from_tun.len());
    assert!(
        sent_through == from_tun,
        "packets read from the TUN device differ"
    );
    for fd in [
        namespace.tun,
        namespace.receiver,
        namespace.sender,
        namespace.receiver6,
        namespace.sender6,
    ] {
        close(fd);
    }
}

/// Creates a namespace with a TUN device behind a token-bucket qdisc that
/// drops what exceeds its small queue, and an AF_PACKET socket that sends
/// through it. A send that the qdisc drops fails with ENOBUFS
/// (`net_xmit_errno` in the packet socket's send path), which is the error a
/// busy device gives a packet writer.
fn create_rate_limited_device() -> Result<(RawFd, RawFd), String> {
    std::thread::spawn(|| -> Result<(RawFd, RawFd), String> {
        // SAFETY: plain system calls on descriptors this thread creates;
        // the ifreq and sockaddr_ll structures are zeroed plain data.
        unsafe {
            let (tun, mut ifr) = open_tun_in_new_namespace(c"splice1")?;
            let control = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            assert_eq!(
                libc::ioctl(control, libc::SIOCSIFFLAGS, &mut ifr),
                0,
                "{}",
                os_error("SIOCSIFFLAGS")
            );
            libc::close(control);

            // A child process forked from this thread shares its namespace.
            let status = std::process::Command::new("tc")
                .args([
                    "qdisc", "add", "dev", "splice1", "root", "tbf", "rate", "2mbit", "burst",
                    "3000", "limit", "3000",
                ])
                .status()
                .map_err(|err| format!("cannot run tc (iproute2): {err}"))?;
            assert!(status.success(), "tc qdisc add failed");

            let packet = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                (libc::ETH_P_IP as u16).to_be() as i32,
            );
            assert!(packet >= 0, "{}", os_error("socket(AF_PACKET)"));
            let mut address: libc::sockaddr_ll = std::mem::zeroed();
            address.sll_family = libc::AF_PACKET as u16;
            address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
            address.sll_ifindex = libc::if_nametoindex(c"splice1".as_ptr()) as i32;
            let rc = libc::bind(
                packet,
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            );
            assert_eq!(rc, 0, "{}", os_error("bind(AF_PACKET)"));
            Ok((tun, packet))
        }
    })
    .join()
    .unwrap()
}

#[test]
fn enobufs_from_a_busy_device_loses_no_packet() {
    let (tun, packet_socket) = match create_rate_limited_device() {
        Ok(fds) => fds,
        Err(reason) => {
            report_skip(&format!(
                "SKIPPED enobufs_from_a_busy_device_loses_no_packet: cannot set up a rate-limited \
                 TUN device ({reason}); it needs root, /dev/net/tun and tc"
            ));
            return;
        }
    };
    let packets: Vec<Vec<u8>> = payloads(300, 61)
        .iter()
        .enumerate()
        .map(|(i, payload)| udp_packet(payload, i as u16))
        .collect();
    let stream = packets.concat();

    // The packets leave the device through the TUN fd, where this thread
    // collects the IPv4 ones.
    let expected = packets.len();
    let reader = std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 2000];
        let deadline = std::time::Instant::now() + TIMEOUT;
        while received.len() < expected && std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: tun,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd; `buf` is writable.
            unsafe {
                if libc::poll(&mut pfd, 1, 100) > 0 {
                    let n = libc::read(tun, buf.as_mut_ptr().cast(), buf.len());
                    // The kernel sends its own IPv6 packets (MLD reports,
                    // router solicitations) through the device too.
                    if n > 0 && buf[0] >> 4 == 4 {
                        received.push(buf[..n as usize].to_vec());
                    }
                }
            }
        }
        received
    });

    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let plan = PeerPlan {
        send: stream,
        max_write: 16_000,
        close_after_send: true,
        abort_after_send: false,
        reset: false,
        timeout: TIMEOUT,
        seed: 62,
        progress: None,
    };
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, plan));
    let mut harness = Harness::new(host, host_sock);
    harness
        .start(packet_socket, Direction::In, Framing::Ip, 64 * 1024, false)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    assert_eq!(
        harness.events(),
        vec![Event::Ended(Side::In, Ok(())), Event::Closed]
    );
    let retries = harness.splice.as_ref().unwrap().nobufs_retries();
    drop(harness);
    peer_thread.join().unwrap();

    let received = reader.join().unwrap();
    assert!(
        retries > 0,
        "the device never answered ENOBUFS; the retry path was not exercised"
    );
    assert_eq!(received.len(), packets.len(), "packets were lost");
    for (i, (got, want)) in received.iter().zip(&packets).enumerate() {
        assert!(
            got == want,
            "packet {i} differs: got {} bytes {:02x?}, expected {} bytes {:02x?}",
            got.len(),
            &got[..got.len().min(32)],
            want.len(),
            &want[..want.len().min(32)]
        );
    }
    close(tun);
    close(packet_socket);
}
