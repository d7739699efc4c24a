//! The pump with stream framing on pipes and socketpairs, against real
//! OpenSSL sessions and a real libuv loop.

mod common;

use std::cell::Cell;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tls_splice::pump::MAX_RECORD;
use tls_splice::{Direction, Framing, Side};

const TIMEOUT: Duration = Duration::from_secs(60);
const HWM: usize = 64 * 1024;

#[test]
fn decrypt_to_pipe_is_byte_identical() {
    for (i, cipher) in ALL_CIPHERS.into_iter().enumerate() {
        let data = random_bytes(3 << 20, 10 + i as u64);
        let (host, host_sock, peer, peer_sock) = connect(cipher);
        let peer_data = data.clone();
        let peer_thread = std::thread::spawn(move || {
            run_peer(peer, peer_sock, PeerPlan::sending(peer_data, 40_000, 1))
        });
        let (read_end, write_end) = pipe();
        let reader = std::thread::spawn(move || read_all_with_stalls(read_end, usize::MAX, 2));

        let mut harness = Harness::new(host, host_sock);
        harness
            .start(write_end, Direction::In, Framing::Stream, HWM, true)
            .unwrap();
        harness.run_until_closed(TIMEOUT);
        let stats = harness.splice.as_ref().unwrap().stats();
        assert_eq!(
            harness.events(),
            vec![Event::Ended(Side::In, Ok(())), Event::Closed],
            "{cipher:?}"
        );
        drop(harness);
        close(write_end);

        let received = reader.join().unwrap();
        assert_eq!(received.len(), data.len(), "{cipher:?}");
        assert_eq!(sha256(&received), sha256(&data), "{cipher:?}");
        assert_eq!(stats.bytes_in, data.len() as u64);
        assert_eq!(stats.packets_in, 0);
        peer_thread.join().unwrap();
    }
}

#[test]
fn encrypt_from_pipe_is_byte_identical() {
    for (i, cipher) in ALL_CIPHERS.into_iter().enumerate() {
        let data = random_bytes(3 << 20, 20 + i as u64);
        let (host, host_sock, peer, peer_sock) = connect(cipher);
        let peer_thread = std::thread::spawn(move || {
            run_peer(peer, peer_sock, PeerPlan::sending(Vec::new(), 40_000, 3))
        });
        let (read_end, write_end) = pipe();
        let source = data.clone();
        let writer = std::thread::spawn(move || {
            write_all_chunked(write_end, &source, 4);
            close(write_end);
        });

        let mut harness = Harness::new(host, host_sock);
        harness
            .start(read_end, Direction::Out, Framing::Stream, HWM, true)
            .unwrap();
        harness.run_until_closed(TIMEOUT);
        let stats = harness.splice.as_ref().unwrap().stats();
        assert_eq!(
            harness.events(),
            vec![Event::Ended(Side::Out, Ok(())), Event::Closed],
            "{cipher:?}"
        );
        assert!(
            harness.state.borrow().shutdown_requested,
            "close_notify was not requested"
        );
        writer.join().unwrap();

        // The peer ends when it has read close_notify.
        let result = peer_thread.join().unwrap();
        drop(harness);
        close(read_end);
        assert!(result.got_close_notify, "{cipher:?}: no close_notify");
        assert_eq!(result.received.len(), data.len(), "{cipher:?}");
        assert_eq!(sha256(&result.received), sha256(&data), "{cipher:?}");
        assert_eq!(stats.bytes_out, data.len() as u64);
    }
}

fn set_buffer_sizes(fd: i32, size: i32) {
    for option in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: setting an int socket option on our own socket.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                option,
                (&size as *const i32).cast(),
                4,
            )
        };
        assert_eq!(rc, 0);
    }
}

#[test]
fn duplex_over_socketpair_with_small_buffers() {
    let to_fd = random_bytes(6 << 20, 31);
    let from_fd = random_bytes(6 << 20, 32);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    // TCP buffers of 64 KiB keep the transport the bottleneck now and then,
    // without making delayed ACKs the pace of the whole test, as 8 KiB did.
    set_buffer_sizes(host_sock.as_raw_fd(), 64 * 1024);
    set_buffer_sizes(peer_sock.as_raw_fd(), 64 * 1024);
    let peer_data = to_fd.clone();
    let peer_thread = std::thread::spawn(move || {
        run_peer(peer, peer_sock, PeerPlan::sending(peer_data, 40_000, 5))
    });

    let (ours, theirs) = socketpair(libc::SOCK_STREAM);
    set_buffer_sizes(ours, 4 * 1024);
    set_buffer_sizes(theirs, 4 * 1024);
    // SAFETY: a second descriptor of our own socket for the writer thread.
    let theirs_writer = unsafe { libc::dup(theirs) };
    let source = from_fd.clone();
    let writer = std::thread::spawn(move || {
        write_all_chunked(theirs_writer, &source, 6);
        // SAFETY: half-close of our own socket, which is EOF for the pump.
        unsafe { libc::shutdown(theirs_writer, libc::SHUT_WR) };
        close(theirs_writer);
    });
    let reader = std::thread::spawn(move || read_all_with_stalls(theirs, usize::MAX, 7));

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(ours, Direction::Duplex, Framing::Stream, HWM, true)
        .unwrap();
    harness.run_until_closed(TIMEOUT);
    let events = harness.events();
    assert!(
        events.contains(&Event::Ended(Side::In, Ok(()))),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Ended(Side::Out, Ok(()))),
        "{events:?}"
    );
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(events.last(), Some(&Event::Closed));
    // The encrypt direction stops reading the fd once the backlog reaches
    // HWM + 16 KiB minus one 64 KiB read, so one more read stays within the
    // bound. A backlog that reaches this brake means the transport fell behind.
    let max_backlog = harness.state.borrow().max_backlog_seen;
    assert!(
        max_backlog >= HWM + 16 * 1024 - 64 * 1024,
        "the transport never pushed back: max backlog {max_backlog}"
    );
    let blocked_in = harness.state.borrow().times_stopped_reading;
    assert!(
        blocked_in > 0,
        "the fd never pushed back on the decrypt direction"
    );
    let stats = harness.splice.as_ref().unwrap().stats();
    let result = peer_thread.join().unwrap();
    drop(harness);
    writer.join().unwrap();
    let received = reader.join().unwrap();
    close(ours);
    close(theirs);

    assert_eq!(received.len(), to_fd.len());
    assert_eq!(sha256(&received), sha256(&to_fd));
    assert!(result.got_close_notify);
    assert_eq!(result.received.len(), from_fd.len());
    assert_eq!(sha256(&result.received), sha256(&from_fd));
    assert_eq!(stats.bytes_in, to_fd.len() as u64);
    assert_eq!(stats.bytes_out, from_fd.len() as u64);
}

#[test]
fn stalled_sink_bounds_memory_and_stops_the_transport() {
    let data = random_bytes(256 << 20, 41);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    // Fixed socket buffers turn off TCP autotuning, so the stall is quick.
    set_buffer_sizes(host_sock.as_raw_fd(), 64 * 1024);
    set_buffer_sizes(peer_sock.as_raw_fd(), 64 * 1024);
    let progress = Arc::new(AtomicUsize::new(0));
    let mut plan = PeerPlan::sending(data.clone(), 40_000, 8);
    plan.progress = Some(progress.clone());
    let peer_thread = std::thread::spawn(move || run_peer(peer, peer_sock, plan));
    let (read_end, write_end) = pipe();
    // SAFETY: shrinking our own pipe to one page.
    unsafe { libc::fcntl(write_end, libc::F_SETPIPE_SZ, 4096) };

    let mut harness = Harness::new(host, host_sock);
    let max_buffered = Rc::new(Cell::new(0));
    let seen = max_buffered.clone();
    harness.observer = Some(Box::new(move |h: &Harness| {
        if let Some(splice) = &h.splice {
            seen.set(seen.get().max(splice.buffered_in()));
        }
    }));
    harness
        .start(write_end, Direction::In, Framing::Stream, HWM, true)
        .unwrap();

    // No thread reads the pipe: the pump must stop the transport, and the peer
    // must stall with most of its data unsent.
    harness.run_until(TIMEOUT, |h| h.state.borrow().times_stopped_reading > 0);
    let stall_started = Instant::now();
    harness.run_until(TIMEOUT, |_| {
        stall_started.elapsed() > Duration::from_millis(1500)
    });
    let sent_at_stall = progress.load(Ordering::SeqCst);
    harness.run_until(TIMEOUT, |_| {
        stall_started.elapsed() > Duration::from_millis(2000)
    });
    assert!(
        !harness.state.borrow().reading,
        "the transport is still read"
    );
    assert_eq!(
        progress.load(Ordering::SeqCst),
        sent_at_stall,
        "the peer was not blocked"
    );
    assert!(
        sent_at_stall < data.len() / 2,
        "the peer sent {sent_at_stall} bytes into a stalled sink"
    );
    let buffered = harness.splice.as_ref().unwrap().buffered_in();
    assert!(buffered <= HWM + MAX_RECORD, "{buffered} bytes buffered");

    let reader = std::thread::spawn(move || read_all_with_stalls(read_end, usize::MAX, 9));
    harness.run_until_closed(TIMEOUT);
    assert_eq!(
        harness.events(),
        vec![Event::Ended(Side::In, Ok(())), Event::Closed]
    );
    drop(harness);
    close(write_end);
    let received = reader.join().unwrap();
    peer_thread.join().unwrap();
    assert_eq!(received.len(), data.len());
    assert_eq!(sha256(&received), sha256(&data));
    assert!(
        max_buffered.get() <= HWM + MAX_RECORD,
        "max buffered {}",
        max_buffered.get()
    );
}

#[test]
fn held_encrypt_direction_reads_nothing_until_released() {
    let data = random_bytes(256 * 1024, 41);
    let (host, host_sock, peer, peer_sock) = connect(Cipher::Tls13Aes128Gcm);
    let peer_thread = std::thread::spawn(move || {
        run_peer(peer, peer_sock, PeerPlan::sending(Vec::new(), 40_000, 6))
    });
    let (read_end, write_end) = pipe();
    // 64 KiB fit into the pipe, so this write does not wait for a reader.
    let first = &data[..64 * 1024];
    // SAFETY: writing our own buffer to our own pipe.
    let written = unsafe { libc::write(write_end, first.as_ptr().cast(), first.len()) };
    assert_eq!(written, first.len() as isize);

    let mut harness = Harness::new(host, host_sock);
    harness
        .start(read_end, Direction::Out, Framing::Stream, HWM, true)
        .unwrap();
    let splice = harness.splice.as_mut().unwrap();
    splice.hold_encrypt(true);
    // The entry points that resume the direction must not read the fd
    // while it is held, and the fd must not be polled, although it is
    // readable.
    splice.on_encrypted_drained();
    splice.on_tls_input();
    assert_eq!(splice.stats().bytes_out, 0);
    assert!(
        splice.describe().contains("polled=0"),
        "{}",
        splice.describe()
    );

    harness.splice.as_mut().unwrap().hold_encrypt(false);
    let rest = data[64 * 1024..].to_vec();
    let writer = std::thread::spawn(move || {
        write_all_chunked(write_end, &rest, 7);
        close(write_end);
    });
    harness.run_until_closed(TIMEOUT);
    writer.join().unwrap();
    assert_eq!(
        harness.events(),
        vec![Event::Ended(Side::Out, Ok(())), Event::Closed]
    );
    let result = peer_thread.join().unwrap();
    drop(harness);
    close(read_end);
    assert_eq!(sha256(&result.received), sha256(&data));
}
