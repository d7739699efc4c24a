//! The pump with `ip` and `length16` framing on packet sockets, and the
//! ways a splice ends: framing errors, fd errors, truncation and `stop()`.

mod common;

use std::time::Duration;

use common::*;
use tls_splice::framing::{FramingError, FramingErrorKind};
use tls_splice::{Direction, Framing, Side, SpliceError};

const TIMEOUT: Duration = Duration::from_secs(60);
const HWM: usize = 64 * 1024;

/// Builds `count` random IPv4 and IPv6 packets, including a header-only
/// IPv4 packet, a zero-payload IPv6 packet and non-zero traffic classes.
fn ip_packets(count: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let mut packets = Vec::with_capacity(count);
    for i in 0..count {
        let v6 = match i {
            0 => false,
            1 => true,
            _ => rng.below(2) == 0,
        };
        let len = match i {
            0 => 20,
            1 => 40,
            _ if v6 => 40 + rng.below(1460),
            _ => 20 + rng.below(1480),
        };
        let mut packet = vec![0u8; len];
        rng.fill(&mut packet);
        if v6 {
            // Version 6, traffic class and flow label from the random bytes.
            packet[0] = 0x60 | (packet[0] & 0x0f);
            packet[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
        } else {
            packet[0] = 0x45;
            packet[1] = 0xb8; // DSCP EF
            packet[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        }
        packets.push(packet);
    }
    packets
}

fn length16_stream(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for packet in packets {
        stream.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        stream.extend_from_slice(packet);
    }
    stream
}

/// Receives packets from `fd` until EOF or `count` packets, one `recv`
/// each, so that every write of the pump is seen as one packet.
fn receive_packets(fd: i32, count: usize) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut buf = vec![0u8; 70_000];
    let mut rng = Rng::new(count as u64);
    while packets.len() < count {
        // Short stalls fill the socket buffer, so the pump meets EAGAIN in
        // the middle of the packet stream and must retry the same packet.
        if rng.below(500) == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: `buf` is writable.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        assert!(n >= 0, "recv failed: {}", std::io::Error::last_os_error());
        let n = n as usize;
        assert!(n <= buf.len(), "packet of {n} bytes truncated");
        packets.push(buf[..n].to_vec());
    }
    packets
}

/// Sends TLS stream `stream` from the peer and splices the decrypt
/// direction into a packet socketpair of type `kind`.
fn decrypt_packets(
    stream: Vec<u8>,
    framing: Framing,
    kind: i32,
    count: usize,
    max_write: usize,
) -> (Vec<Vec<u8>>, Vec<Event>, tls_splice::Stats, Vec<u8>, usize) {
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let peer_thread = std::thread::spawn(move || {
        run_peer(peer, peer_sock, PeerPlan::sending(stream, max_write, 11))
    });
    let (ours, theirs) = socketpair(kind);
    let reader = std::thread::spawn(move || receive_packets(theirs, count));

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(ours, Direction::In, framing, HWM, false)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    let stats = harness.splice.as_ref().unwrap().stats();
    let events = harness.events();
    let given_back = harness.state.borrow().given_back.clone();
    let blocked = harness.state.borrow().times_stopped_reading;
    drop(harness);
    peer_thread.join().unwrap();
    let received = if events.first() == Some(&Event::Ended(Side::In, Ok(()))) {
        reader.join().unwrap()
    } else {
        // The reader waits for packets that will not come: unblock it.
        // SAFETY: shutting down our own socket.
        unsafe { libc::shutdown(ours, libc::SHUT_RDWR) };
        Vec::new()
    };
    close(ours);
    (received, events, stats, given_back, blocked)
}

#[test]
fn ip_packets_arrive_one_write_each() {
    let packets = ip_packets(10_000, 1);
    let stream = packets.concat();
    let (received, events, stats, _, blocked) = decrypt_packets(
        stream,
        Framing::Ip,
        libc::SOCK_SEQPACKET,
        packets.len(),
        40_000,
    );
    assert_eq!(events, vec![Event::Ended(Side::In, Ok(())), Event::Closed]);
    assert!(
        blocked > 0,
        "the socket never refused a packet; EAGAIN was not exercised"
    );
    assert_eq!(received.len(), packets.len());
    assert!(received == packets, "packets differ");
    assert_eq!(stats.packets_in, packets.len() as u64);
    assert_eq!(
        stats.bytes_in,
        packets.iter().map(Vec::len).sum::<usize>() as u64
    );
}

#[test]
fn ip_packets_split_into_tiny_records_reassemble() {
    // Records of 1 to 7 bytes: every packet header is split.
    let packets = ip_packets(150, 2);
    let stream = packets.concat();
    let (received, events, stats, _, _) =
        decrypt_packets(stream, Framing::Ip, libc::SOCK_SEQPACKET, packets.len(), 7);
    assert_eq!(events, vec![Event::Ended(Side::In, Ok(())), Event::Closed]);
    assert!(received == packets, "packets differ");
    assert_eq!(stats.packets_in, packets.len() as u64);
}

#[test]
fn length16_packets_include_empty_datagrams() {
    let mut packets = ip_packets(2000, 3);
    packets[5] = Vec::new();
    packets[6] = vec![0x99; 3];
    let stream = length16_stream(&packets);
    let (received, events, stats, _, _) = decrypt_packets(
        stream,
        Framing::Length16,
        libc::SOCK_DGRAM,
        packets.len(),
        3000,
    );
    assert_eq!(events, vec![Event::Ended(Side::In, Ok(())), Event::Closed]);
    assert!(received == packets, "packets differ");
    assert_eq!(stats.packets_in, packets.len() as u64);
    assert_eq!(
        stats.bytes_in,
        packets.iter().map(Vec::len).sum::<usize>() as u64
    );
}

#[test]
fn length16_packets_over_seqpacket() {
    let packets = ip_packets(3000, 5);
    let stream = length16_stream(&packets);
    let (received, events, stats, _, _) = decrypt_packets(
        stream,
        Framing::Length16,
        libc::SOCK_SEQPACKET,
        packets.len(),
        20_000,
    );
    assert_eq!(events, vec![Event::Ended(Side::In, Ok(())), Event::Closed]);
    assert!(received == packets, "packets differ");
    assert_eq!(stats.packets_in, packets.len() as u64);
}

#[test]
fn bad_ip_version_stops_before_the_bad_packet() {
    let good = ip_packets(3, 4);
    let mut stream = good.concat();
    let bad_offset = stream.len() as u64;
    stream.extend_from_slice(&[0x50, 0, 0, 40]);
    stream.extend_from_slice(&[0u8; 36]);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let peer_thread = std::thread::spawn(move || {
        run_peer(peer, peer_sock, PeerPlan::sending(stream, 40_000, 12))
    });
    let (ours, theirs) = socketpair(libc::SOCK_SEQPACKET);

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(ours, Direction::In, Framing::Ip, HWM, false)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    let expected_error = SpliceError::Framing(FramingError {
        offset: bad_offset,
        kind: FramingErrorKind::BadVersion(5),
    });
    assert_eq!(
        harness.events(),
        vec![Event::Ended(Side::In, Err(expected_error)), Event::Closed]
    );
    // The bytes from the bad header on go back to the host, not to the fd.
    let given_back = harness.state.borrow().given_back.clone();
    assert_eq!(&given_back[..4], &[0x50, 0, 0, 40]);
    drop(harness);
    peer_thread.join().unwrap();

    // SAFETY: ending our own socket so that the reader sees EOF.
    unsafe { libc::shutdown(ours, libc::SHUT_WR) };
    let mut received = Vec::new();
    let mut buf = vec![0u8; 2000];
    loop {
        // SAFETY: `buf` is writable.
        let n = unsafe { libc::recv(theirs, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            break;
        }
        received.push(buf[..n as usize].to_vec());
    }
    assert!(received == good, "only the good packets reach the fd");
    close(ours);
    close(theirs);
}

#[test]
fn closed_sink_ends_with_epipe() {
    ignore_sigpipe();
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Chacha20);
    let data = random_bytes(256 * 1024, 13);
    let mut peer_plan = PeerPlan::sending(data, 40_000, 13);
    peer_plan.close_after_send = false;
    peer_plan.timeout = Duration::from_secs(5);
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, peer_plan));
    let (read_end, write_end) = pipe();
    close(read_end);

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(write_end, Direction::In, Framing::Stream, HWM, true)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    let expected = SpliceError::Fd {
        syscall: "write",
        errno: libc::EPIPE,
        fd: write_end,
    };
    assert_eq!(
        harness.events(),
        vec![Event::Ended(Side::In, Err(expected)), Event::Closed]
    );
    // The decrypted bytes the fd refused go back to the host, which reads
    // the transport again.
    assert!(!harness.state.borrow().given_back.is_empty());
    assert!(harness.state.borrow().reading);
    drop(harness);
    close(write_end);
    // The peer never gets close_notify here and stops at its timeout.
    let _ = peer_thread.join();
}

/// Sends `data` from a peer that then closes the TCP connection without
/// `close_notify` (with a FIN, or an RST when `reset`), and returns what
/// reached the fd. The decrypt direction must end as truncated.
fn receive_until_abort(cipher: Cipher, data: &[u8], reset: bool, seed: u64) -> Vec<u8> {
    let (host, host_sock, peer, peer_sock) = connect(cipher);
    let mut peer_plan = PeerPlan::sending(data.to_vec(), 40_000, seed);
    peer_plan.abort_after_send = true;
    peer_plan.reset = reset;
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, peer_plan));
    let (read_end, write_end) = pipe();
    let reader = std::thread::spawn(move || read_all_with_stalls(read_end, usize::MAX, seed + 1));

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(write_end, Direction::In, Framing::Stream, HWM, true)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    assert_eq!(
        harness.events(),
        vec![
            Event::Ended(Side::In, Err(SpliceError::Truncated)),
            Event::Closed
        ]
    );
    drop(harness);
    close(write_end);
    peer_thread.join().unwrap();
    reader.join().unwrap()
}

#[test]
fn eof_without_close_notify_is_truncation() {
    let data = random_bytes(1 << 20, 14);
    let received = receive_until_abort(Cipher::Tls12Aes128Gcm, &data, false, 14);
    // Everything the peer sent before the EOF reached the fd first.
    assert_eq!(received.len(), data.len());
    assert_eq!(sha256(&received), sha256(&data));
}

#[test]
fn bad_fd_is_rejected_at_start() {
    let (host, host_sock, _peer, _peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let mut harness = Harness::new(host, host_sock);
    // Above any descriptor this process opens; a closed low number could be
    // reused by a test running in parallel.
    let fd = 1 << 20;
    let error = harness
        .start(fd, Direction::In, Framing::Stream, HWM, true)
        .unwrap_err();
    assert_eq!(
        error,
        SpliceError::Fd {
            syscall: "fcntl",
            errno: libc::EBADF,
            fd
        }
    );
}

#[test]
fn regular_file_cannot_be_polled() {
    let (host, host_sock, _peer, _peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let mut harness = Harness::new(host, host_sock);
    let file = std::fs::File::open("/proc/self/exe").unwrap();
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let error = harness
        .start(fd, Direction::Out, Framing::Stream, HWM, true)
        .unwrap_err();
    assert_eq!(
        error,
        SpliceError::Fd {
            syscall: "uv_poll_init",
            errno: libc::EPERM,
            fd
        }
    );
}

#[test]
fn stop_gives_back_unwritten_bytes() {
    let data = random_bytes(4 << 20, 16);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let mut peer_plan = PeerPlan::sending(data.clone(), 40_000, 16);
    peer_plan.close_after_send = false;
    peer_plan.timeout = Duration::from_secs(10);
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, peer_plan));
    let (read_end, write_end) = pipe();

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(write_end, Direction::In, Framing::Stream, HWM, true)
        .unwrap();
    // Let the pipe fill up and the pump block on it.
    harness.run_until(TIMEOUT, |h| h.state.borrow().times_stopped_reading > 0);
    harness.splice.as_mut().unwrap().stop();
    harness.splice.as_mut().unwrap().stop();
    harness.run_until_closed(TIMEOUT);
    assert_eq!(harness.events(), vec![Event::Closed]);
    let stats = harness.splice.as_ref().unwrap().stats();
    let given_back = harness.state.borrow().given_back.clone();
    assert!(!given_back.is_empty());
    assert!(
        harness.state.borrow().reading,
        "the host must read the transport again"
    );
    drop(harness);
    close(write_end);

    // The pipe contains the first bytes, and the host got the next ones, in order.
    let in_pipe = read_all_with_stalls(read_end, usize::MAX, 17);
    close(read_end);
    assert_eq!(in_pipe.len() as u64, stats.bytes_in);
    let delivered = [in_pipe, given_back].concat();
    assert_eq!(&delivered[..], &data[..delivered.len()]);
    let _ = peer_thread.join();
}

#[test]
fn peer_reset_ends_as_truncation() {
    let data = random_bytes(64 * 1024, 18);
    let received = receive_until_abort(Cipher::Tls13Aes128Gcm, &data, true, 18);
    // An RST may discard queued bytes, but what arrived is an in-order prefix.
    assert_eq!(&received[..], &data[..received.len()]);
}

/// Returns the file status flags of `fd`, or -1 with EBADF once it is closed.
fn status_flags(fd: i32) -> i32 {
    // SAFETY: F_GETFL on any integer only reads.
    unsafe { libc::fcntl(fd, libc::F_GETFL) }
}

#[test]
fn end_restores_flags_and_keeps_fd_open() {
    let data = random_bytes(64 * 1024, 20);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let plan = PeerPlan::sending(data.clone(), 40_000, 20);
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, plan));
    let (read_end, write_end) = pipe();
    let flags_before = status_flags(write_end);
    assert_eq!(flags_before & libc::O_NONBLOCK, 0);
    let reader = std::thread::spawn(move || read_all_with_stalls(read_end, usize::MAX, 21));

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(write_end, Direction::In, Framing::Stream, HWM, true)
        .unwrap();
    // The pump works on a nonblocking fd while the splice lasts.
    assert_ne!(status_flags(write_end) & libc::O_NONBLOCK, 0);
    harness.run_until_closed(TIMEOUT);
    drop(harness);
    peer_thread.join().unwrap();

    // Without autoClose the fd stays open, with the flags it had before.
    assert_eq!(status_flags(write_end), flags_before);
    close(write_end);
    let received = reader.join().unwrap();
    assert_eq!(sha256(&received), sha256(&data));
}

#[test]
fn auto_close_closes_fd_after_the_end() {
    let data = random_bytes(64 * 1024, 22);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let plan = PeerPlan::sending(data.clone(), 40_000, 22);
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, plan));
    let (read_end, write_end) = pipe();
    let reader =
        std::thread::spawn(move || read_until_eof_or_timeout(read_end, Duration::from_secs(20)));

    let mut harness = Harness::new(host, host_sock);
    let config = Config {
        fd: write_end,
        direction: Direction::In,
        framing: Framing::Stream,
        high_water_mark: HWM,
        end: true,
        auto_close: true,
    };
    harness.start_with(config).unwrap();
    harness.run_until(TIMEOUT, |h| {
        h.events().contains(&Event::Ended(Side::In, Ok(())))
    });
    harness.run_until_closed(TIMEOUT);
    assert_eq!(harness.events().last(), Some(&Event::Closed));
    // The pipe's only write end is closed, so the reader reaches EOF after
    // all the data; with the fd still open it would time out.
    let received = reader
        .join()
        .unwrap()
        .expect("no EOF on the pipe: the fd was not closed");
    drop(harness);
    peer_thread.join().unwrap();
    assert_eq!(sha256(&received), sha256(&data));
}

/// Reads `fd` until EOF, or returns None when no byte and no EOF arrives for
/// `timeout`.
fn read_until_eof_or_timeout(fd: i32, timeout: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) } <= 0 {
            return None;
        }
        // SAFETY: `buf` is writable.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            close(fd);
            return Some(out);
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}
