//! The pump: one splice between a TLS session and a file descriptor.
//!
//! Ownership of the buffers:
//!
//! - Decrypt direction (`in`, TLS -> fd). The host writes ciphertext into
//!   OpenSSL's read BIO and calls `on_tls_input`. The pump decrypts with
//!   `SSL_read` into its ring and writes the ring to the fd. When the fd
//!   blocks, the pump keeps what it decrypted, requests that the host stop reading
//!   the transport, and stops calling `SSL_read`, so the rest of the
//!   ciphertext stays in the BIO and the peer's TCP window closes.
//! - Encrypt direction (`out`, fd -> TLS). When the fd is readable the pump
//!   reads it, passes the bytes to `SSL_write` at once, and asks the host to
//!   flush the encrypted output. OpenSSL's memory BIO never refuses a write,
//!   so the host's backlog of encrypted bytes is the only brake: at the
//!   high-water mark the pump stops polling the fd until the host reports
//!   that the transport drained.
//!
//! Everything runs on the libuv loop's thread. The host must not call back
//! into the pump from inside a `Host` method.

use std::os::fd::RawFd;
use std::ptr;

use openssl_sys as ossl;

use crate::error::SpliceError;
use crate::framing::{Framing, FramingError, LENGTH16_PREFIX, MAX_PACKET};
use crate::ring::Ring;
use crate::uv;

/// Largest TLS record plaintext (RFC 8446, section 5.1).
pub const MAX_RECORD: usize = 16 * 1024;
/// Default bytes per direction before backpressure.
pub const DEFAULT_HIGH_WATER_MARK: usize = 64 * 1024;
/// Reads from the fd per readiness callback, so that one busy fd cannot
/// starve the rest of the loop.
const READS_PER_CALLBACK: usize = 64;
/// Largest read from a stream fd. A 64 KiB read becomes four TLS records in
/// one `SSL_write` and costs a quarter of the system calls of record-sized
/// reads (measured with `perf stat` on `cargo xtask bench`'s W2).
const MAX_STREAM_READ: usize = 64 * 1024;
/// Delay before retrying a packet write that failed with ENOBUFS or ENOSPC.
/// The fd polls writable in that state, so polling would spin.
const NOBUFS_RETRY_MS: u64 = 1;
/// POLLERR reports in a row after which the pump gives up with EIO, because
/// retrying the I/O did not surface the error.
const MAX_POLL_ERRORS: u32 = 3;

/// Directions of the session that a splice moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// TLS -> fd.
    In,
    /// fd -> TLS.
    Out,
    Duplex,
}

impl Direction {
    pub fn has_in(self) -> bool {
        self != Direction::Out
    }

    pub fn has_out(self) -> bool {
        self != Direction::In
    }
}

/// One direction of a splice, as reported to the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    In,
    Out,
}

/// Options fixed when the splice is created.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub fd: RawFd,
    pub direction: Direction,
    pub framing: Framing,
    /// Bytes per direction before backpressure.
    pub high_water_mark: usize,
    /// Propagate EOF: shut down the fd's write side after `close_notify`, and
    /// send `close_notify` after EOF on the fd.
    pub end: bool,
    /// Close the fd when the splice has released it.
    pub auto_close: bool,
}

/// Byte and packet counters. Packets are counted only for packet framings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Cleartext bytes written to the fd (packet prefixes excluded).
    pub bytes_in: u64,
    /// Bytes read from the fd and passed to `SSL_write` (prefixes excluded).
    pub bytes_out: u64,
    pub packets_in: u64,
    pub packets_out: u64,
}

/// Services the pump needs from the object that owns the TLS session.
pub trait Host {
    /// Writes what OpenSSL put into the write BIO to the transport.
    fn flush_encrypted(&mut self);
    /// Encrypted bytes not yet accepted by the transport: pending in the
    /// write BIO plus queued on the transport.
    fn encrypted_backlog(&self) -> usize;
    /// Starts or stops reading ciphertext from the transport.
    fn set_transport_reading(&mut self, reading: bool);
    /// Sends `close_notify`, flushes, and half-closes the transport.
    fn shutdown_tls(&mut self);
    /// Reports that a direction ended, cleanly or with an error. The pump
    /// calls it at most once per spliced direction (the `done` and `Done`
    /// states guard it).
    fn direction_ended(&mut self, side: Side, result: Result<(), SpliceError>);
    /// Returns decrypted bytes that were not written to the fd, in order,
    /// so that the host can deliver them to its own reader.
    fn give_back(&mut self, first: &[u8], second: &[u8]);
    /// Reports that the fd is no longer polled (and is closed with
    /// `auto_close`). This is the last call.
    fn closed(&mut self);
}

/// Why the decrypt direction is waiting for the fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blocked {
    /// A write returned EAGAIN; the poll handle watches for writability.
    Writable,
    /// A packet write failed with ENOBUFS or ENOSPC; a timer retries it,
    /// because the fd polls writable in that state and polling would spin.
    Buffers,
}

struct Decrypt {
    done: bool,
    blocked: Option<Blocked>,
    ring: Ring,
    /// Offset in the decrypted stream of the ring's first byte.
    offset: u64,
    /// The peer's `close_notify` was read; the ring is being written out.
    close_notify: bool,
    /// Whether the pump asked the host to stop reading the transport.
    transport_stopped: bool,
    /// The transport ended; no more ciphertext will arrive.
    transport_eof: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EncryptState {
    /// Polling the fd for input.
    Running,
    /// The transport backlog reached the high-water mark, or OpenSSL
    /// refused a write until it has read something (TLS 1.2 renegotiation).
    BlockedOnTls,
    /// EOF on the fd; `close_notify` was sent and the transport is draining.
    Ending,
    Done,
}

struct Encrypt {
    state: EncryptState,
    /// The host paused the direction until its own earlier writes are sent.
    /// Nothing is read from the fd meanwhile.
    held: bool,
    buf: Box<[u8]>,
    /// End of the bytes read from the fd; `buf[written..pending]` is not yet
    /// accepted by `SSL_write`. The bytes contain `pending_payload` bytes
    /// of payload and `pending_packets` packets, length prefixes excluded.
    pending: usize,
    written: usize,
    pending_payload: usize,
    pending_packets: u64,
    /// EOF was read from the fd after the bytes in `pending`.
    eof: bool,
    /// The fd is a datagram socket: a zero-length read is an empty packet,
    /// not EOF.
    datagram: bool,
    /// The fd is a datagram or seqpacket socket, so `recv` with `MSG_TRUNC`
    /// reports the full length of a packet that did not fit.
    packet_socket: bool,
}

/// Outcome of writing the ring to the fd.
enum Flush {
    /// Everything writable was written.
    Done,
    Blocked(Blocked),
}

/// Outcome of decrypting into the ring.
enum Fill {
    /// Bytes were added to the ring, or it is full.
    Progress,
    /// OpenSSL needs more ciphertext.
    WantRead,
    /// The peer sent `close_notify`.
    CloseNotify,
    Error(SpliceError),
}

/// Outcome of reading the fd.
enum Read {
    /// `Encrypt::pending` contains bytes to encrypt.
    Data,
    WouldBlock,
    Eof,
}

/// One splice. Lives in a `Box` because libuv handles point back at it;
/// its owner must keep it until `Host::closed` was called.
pub struct Splice {
    config: Config,
    ssl: *mut ossl::SSL,
    host: Box<dyn Host>,
    stats: Stats,
    decrypt: Option<Decrypt>,
    encrypt: Option<Encrypt>,
    poll: *mut uv::uv_poll_t,
    timer: *mut uv::uv_timer_t,
    /// libuv handles not yet closed; `closed()` is reported at zero.
    open_handles: usize,
    /// Events the poll handle currently watches.
    polled_events: i32,
    /// File status flags of the fd before the splice, restored at the end.
    saved_flags: i32,
    fd_is_socket: bool,
    /// Packet writes retried after ENOBUFS or ENOSPC, for traces and tests.
    nobufs_retries: u64,
    /// POLLERR reports in a row without other events; see `handle_poll`.
    poll_errors: u32,
    /// A direction ended with an error.
    failed: bool,
    released: bool,
    closed: bool,
}

extern "C" {
    // Not bound by openssl-sys; part of OpenSSL's public API since 1.0.2.
    fn ERR_set_mark() -> libc::c_int;
    fn ERR_pop_to_mark() -> libc::c_int;
}

/// Scopes OpenSSL's thread-local error queue to one libuv callback, so that
/// errors the pump's `SSL_read`/`SSL_write` left behind (after the host
/// read them in `direction_ended`) do not leak into the host's next
/// OpenSSL call. The host's own entry points are scoped by the host.
struct ErrorMark;

impl ErrorMark {
    fn set() -> ErrorMark {
        // SAFETY: plain calls on the calling thread's error queue.
        unsafe { ERR_set_mark() };
        ErrorMark
    }
}

impl Drop for ErrorMark {
    fn drop(&mut self) {
        // SAFETY: as in `set`.
        unsafe { ERR_pop_to_mark() };
    }
}

extern "C" fn on_poll(handle: *mut uv::uv_poll_t, status: i32, events: i32) {
    let _mark = ErrorMark::set();
    // SAFETY: `data` points at the Splice that owns the handle, and the
    // Splice lives until the handle's close callback ran.
    let splice = unsafe { &mut *((*handle).data as *mut Splice) };
    splice.handle_poll(status, events);
}

extern "C" fn on_timer(handle: *mut uv::uv_timer_t) {
    let _mark = ErrorMark::set();
    // SAFETY: as in `on_poll`.
    let splice = unsafe { &mut *((*handle).data as *mut Splice) };
    splice.handle_timer();
}

extern "C" fn on_handle_closed(handle: *mut uv::uv_handle_t) {
    // SAFETY: as in `on_poll`. libuv is done with the handle, so its memory
    // is freed here with the layout it was allocated with.
    unsafe {
        let splice = &mut *((*handle).data as *mut Splice);
        if handle as *mut uv::uv_poll_t == splice.poll {
            std::alloc::dealloc(handle.cast(), std::alloc::Layout::new::<uv::uv_poll_t>());
            splice.poll = ptr::null_mut();
        } else {
            debug_assert_eq!(handle as *mut uv::uv_timer_t, splice.timer);
            std::alloc::dealloc(handle.cast(), std::alloc::Layout::new::<uv::uv_timer_t>());
            splice.timer = ptr::null_mut();
        }
        splice.handle_closed();
    }
}

/// Returns the size of the encrypt direction's read buffer: the largest
/// stream read, or room for a record's worth of packets plus the largest one.
fn encrypt_buffer_size(framing: Framing, high_water_mark: usize) -> usize {
    if framing.is_packet() {
        MAX_RECORD + MAX_PACKET + LENGTH16_PREFIX
    } else {
        MAX_STREAM_READ.min(high_water_mark.max(MAX_RECORD))
    }
}

/// Allocates zeroed memory for a libuv handle of type `T`.
fn alloc_handle<T>() -> *mut T {
    let layout = std::alloc::Layout::new::<T>();
    // SAFETY: libuv handles are plain C structs, non-zero-sized, that the
    // matching uv_*_init initializes.
    let handle = unsafe { std::alloc::alloc_zeroed(layout) as *mut T };
    assert!(!handle.is_null(), "out of memory allocating a libuv handle");
    handle
}

impl Splice {
    /// Creates a splice and starts polling `config.fd` on `uv_loop`.
    ///
    /// Cleartext already buffered in OpenSSL is not read here: the host calls
    /// `on_tls_input` once the splice is in place.
    ///
    /// # Safety
    ///
    /// `ssl` must be a TLS session whose handshake is complete, and it and
    /// `uv_loop` must outlive the splice (until `Host::closed`).
    pub unsafe fn start(
        config: Config,
        ssl: *mut ossl::SSL,
        uv_loop: *mut uv::uv_loop_t,
        host: Box<dyn Host>,
    ) -> Result<Box<Splice>, SpliceError> {
        let fd = config.fd;
        let high_water_mark = config.high_water_mark.max(1);
        let packet_room = if config.framing.is_packet() {
            MAX_PACKET + LENGTH16_PREFIX
        } else {
            0
        };
        let decrypt = config.direction.has_in().then(|| Decrypt {
            done: false,
            blocked: None,
            ring: Ring::new(high_water_mark.max(packet_room) + MAX_RECORD),
            offset: 0,
            close_notify: false,
            transport_stopped: false,
            transport_eof: false,
        });
        let encrypt = config.direction.has_out().then(|| Encrypt {
            state: EncryptState::Running,
            held: false,
            buf: vec![0; encrypt_buffer_size(config.framing, high_water_mark)].into_boxed_slice(),
            pending: 0,
            written: 0,
            pending_payload: 0,
            pending_packets: 0,
            eof: false,
            datagram: socket_type(fd) == Some(libc::SOCK_DGRAM),
            packet_socket: matches!(
                socket_type(fd),
                Some(libc::SOCK_DGRAM | libc::SOCK_SEQPACKET)
            ),
        });

        let saved_flags = libc::fcntl(fd, libc::F_GETFL);
        if saved_flags < 0 {
            return Err(SpliceError::last_os_error("fcntl", fd));
        }

        let mut splice = Box::new(Splice {
            config: Config {
                high_water_mark,
                ..config
            },
            ssl,
            host,
            stats: Stats::default(),
            decrypt,
            encrypt,
            poll: ptr::null_mut(),
            timer: ptr::null_mut(),
            open_handles: 0,
            polled_events: 0,
            saved_flags,
            fd_is_socket: socket_type(fd).is_some(),
            nobufs_retries: 0,
            poll_errors: 0,
            failed: false,
            released: false,
            closed: false,
        });
        let data = &mut *splice as *mut Splice as *mut libc::c_void;

        let poll = alloc_handle::<uv::uv_poll_t>();
        // uv_poll_init sets O_NONBLOCK on the fd; release_fd restores the
        // saved flags. It fails with EEXIST when the loop already watches
        // the fd, and with EPERM for files that epoll cannot watch.
        let rc = uv::uv_poll_init(uv_loop, poll, fd);
        if rc != 0 {
            std::alloc::dealloc(poll.cast(), std::alloc::Layout::new::<uv::uv_poll_t>());
            libc::fcntl(fd, libc::F_SETFL, saved_flags);
            return Err(SpliceError::Fd {
                syscall: "uv_poll_init",
                errno: -rc,
                fd,
            });
        }
        (*poll).data = data;
        splice.poll = poll;
        splice.open_handles += 1;

        let timer = alloc_handle::<uv::uv_timer_t>();
        let rc = uv::uv_timer_init(uv_loop, timer);
        assert_eq!(rc, 0, "uv_timer_init failed");
        (*timer).data = data;
        splice.timer = timer;
        splice.open_handles += 1;

        splice.update_poll();
        Ok(splice)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Returns whether the fd was released and `Host::closed` was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Bytes the pump holds for the decrypt direction: decrypted, not yet
    /// written to the fd.
    pub fn buffered_in(&self) -> usize {
        self.decrypt.as_ref().map_or(0, |d| d.ring.len())
    }

    /// Describes the state of both directions, for traces and test failures.
    pub fn describe(&self) -> String {
        let decrypt = self.decrypt.as_ref().map(|d| {
            format!(
                "in: done={} blocked={:?} buffered={} close_notify={} transport_stopped={} eof={}",
                d.done,
                d.blocked,
                d.ring.len(),
                d.close_notify,
                d.transport_stopped,
                d.transport_eof
            )
        });
        let encrypt = self.encrypt.as_ref().map(|e| {
            format!(
                "out: {:?} pending={} eof={}",
                e.state,
                e.pending - e.written,
                e.eof
            )
        });
        format!(
            "splice fd {}: {}; {}; polled={} released={}",
            self.config.fd,
            decrypt.unwrap_or_default(),
            encrypt.unwrap_or_default(),
            self.polled_events,
            self.released
        )
    }

    /// Returns how many packet writes were retried after ENOBUFS or ENOSPC.
    pub fn nobufs_retries(&self) -> u64 {
        self.nobufs_retries
    }

    /// Returns whether the pump wants the transport read. A host that starts
    /// reading for its own reasons checks this first.
    pub fn wants_transport_reading(&self) -> bool {
        self.decrypt.as_ref().map_or(true, |d| !d.transport_stopped)
    }

    // ----- entry points for the host -----

    /// Queues cleartext that the host decrypted before the splice took over
    /// the decrypt direction (bytes its reader had not consumed yet). They
    /// are written to the fd before anything the pump decrypts, so the host
    /// calls this before the first `on_tls_input`. Ignored without a decrypt
    /// direction.
    pub fn push_decrypted(&mut self, data: &[u8]) {
        if let Some(d) = &mut self.decrypt {
            debug_assert!(!d.done, "push_decrypted after the decrypt direction ended");
            d.ring.push(data);
        }
    }

    /// Ciphertext was added to OpenSSL's read BIO. The host flushes the
    /// write BIO afterwards, as it does after its own `SSL_read`.
    pub fn on_tls_input(&mut self) {
        self.run_decrypt();
        // Reading may have completed a renegotiation that held a write.
        if matches!(&self.encrypt, Some(e) if e.state == EncryptState::BlockedOnTls && e.pending > 0)
        {
            self.run_encrypt(false);
        }
        self.update_poll();
    }

    /// The transport ended (EOF or reset). What the read BIO contains is still
    /// decrypted and written out; without `close_notify` the decrypt
    /// direction then ends with `SpliceError::Truncated`.
    pub fn on_transport_eof(&mut self) {
        if let Some(d) = &mut self.decrypt {
            d.transport_eof = true;
        }
        self.run_decrypt();
        self.update_poll();
    }

    /// Notes that the transport accepted queued encrypted bytes, and resumes
    /// polling the fd when the backlog fell below the high-water mark.
    pub fn on_encrypted_drained(&mut self) {
        let backlog = self.host.encrypted_backlog();
        let brake = self.encrypt_brake();
        let Some(e) = &mut self.encrypt else { return };
        match e.state {
            EncryptState::BlockedOnTls if backlog < brake => {
                if e.pending > 0 {
                    self.run_encrypt(true);
                } else {
                    e.state = EncryptState::Running;
                }
            }
            EncryptState::Ending if backlog == 0 => {
                e.state = EncryptState::Done;
                self.host.direction_ended(Side::Out, Ok(()));
                self.release_if_done();
            }
            _ => {}
        }
        self.update_poll();
    }

    /// Pauses or resumes the encrypt direction. The host pauses it while its
    /// own writes from before the splice are still pending, so that they
    /// reach the transport before any fd input.
    pub fn hold_encrypt(&mut self, held: bool) {
        let Some(e) = &mut self.encrypt else { return };
        if e.held == held {
            return;
        }
        e.held = held;
        if !held && e.state == EncryptState::Running {
            self.run_encrypt(true);
        }
        self.update_poll();
    }

    /// Stops the splice. Nothing more is read from the fd, bytes read but
    /// not yet encrypted are passed to `SSL_write`, decrypted bytes not yet
    /// written are handed back with `Host::give_back`, and the fd is
    /// released. Directions that had not ended report nothing: the host
    /// takes them back. Idempotent.
    pub fn stop(&mut self) {
        if self.released {
            return;
        }
        if matches!(&self.encrypt, Some(e) if e.pending > 0) {
            // NOTE: OpenSSL refuses writes only while a TLS 1.2
            // renegotiation waits for the peer; such bytes are dropped here.
            let _ = self.write_pending();
            self.host.flush_encrypted();
        }
        if let Some(e) = &mut self.encrypt {
            e.state = EncryptState::Done;
        }
        let mut resume = false;
        if let Some(d) = &mut self.decrypt {
            d.done = true;
            d.blocked = None;
            resume = std::mem::take(&mut d.transport_stopped);
        }
        self.give_back_decrypted();
        if resume {
            // The host reads for itself again, from where the pump stopped.
            self.host.set_transport_reading(true);
        }
        self.release_fd();
    }

    // ----- libuv callbacks -----

    fn handle_poll(&mut self, status: i32, events: i32) {
        if self.released {
            return;
        }
        let mut events = events;
        if status < 0 {
            // libuv reports POLLERR as UV_EBADF and stops the handle. On a
            // valid fd the error belongs to the I/O itself (a pipe whose
            // reader left, a socket with SO_ERROR set), so the pump tries
            // the I/O it was waiting for and reports that call's errno.
            let pollerr = status == uv::uv_errno_t_UV_EBADF;
            // SAFETY: F_GETFD only inspects the descriptor.
            let valid = unsafe { libc::fcntl(self.config.fd, libc::F_GETFD) } >= 0;
            self.polled_events = 0;
            self.poll_errors += 1;
            if !pollerr || !valid || self.poll_errors > MAX_POLL_ERRORS {
                let errno = if pollerr && valid { libc::EIO } else { -status };
                let error = SpliceError::Fd {
                    syscall: "poll",
                    errno,
                    fd: self.config.fd,
                };
                self.fail_decrypt(error);
                self.fail_encrypt(error);
                return;
            }
            events = (uv::uv_poll_event_UV_READABLE | uv::uv_poll_event_UV_WRITABLE) as i32;
        } else {
            self.poll_errors = 0;
        }
        if events & uv::uv_poll_event_UV_WRITABLE as i32 != 0 {
            if let Some(d) = &mut self.decrypt {
                if d.blocked == Some(Blocked::Writable) {
                    d.blocked = None;
                    self.run_decrypt();
                }
            }
        }
        if events & (uv::uv_poll_event_UV_READABLE | uv::uv_poll_event_UV_DISCONNECT) as i32 != 0 {
            self.run_encrypt(true);
        }
        // SSL_read may have queued a key update or alert reply.
        self.flush();
        self.update_poll();
    }

    fn handle_timer(&mut self) {
        if let Some(d) = &mut self.decrypt {
            if d.blocked == Some(Blocked::Buffers) {
                d.blocked = None;
                self.run_decrypt();
                self.flush();
                self.update_poll();
            }
        }
    }

    /// Requests a flush of the write BIO from one of the pump's own libuv
    /// callbacks. A write that completes synchronously drains the backlog
    /// here, and no drain notification follows for it, so the encrypt
    /// direction checks its own brake afterwards.
    fn flush(&mut self) {
        if self.released {
            return;
        }
        self.host.flush_encrypted();
        let backlog = self.host.encrypted_backlog();
        let brake = self.encrypt_brake();
        let Some(e) = &mut self.encrypt else { return };
        match e.state {
            EncryptState::BlockedOnTls if e.pending == 0 && backlog < brake => {
                e.state = EncryptState::Running;
            }
            EncryptState::Ending if backlog == 0 => {
                e.state = EncryptState::Done;
                self.host.direction_ended(Side::Out, Ok(()));
                self.release_if_done();
            }
            _ => {}
        }
    }

    fn handle_closed(&mut self) {
        self.open_handles -= 1;
        if self.open_handles > 0 {
            return;
        }
        if self.config.auto_close {
            // SAFETY: closing an fd the caller handed over with autoClose.
            unsafe { libc::close(self.config.fd) };
        }
        self.closed = true;
        self.host.closed();
    }

    // ----- decrypt direction -----

    fn run_decrypt(&mut self) {
        loop {
            let Some(d) = &mut self.decrypt else { return };
            if d.done || d.blocked.is_some() {
                return;
            }
            match self.flush_decrypted() {
                Ok(Flush::Done) => {}
                Ok(Flush::Blocked(why)) => return self.block_decrypt(why),
                Err(error) => return self.fail_decrypt(error),
            }
            let d = self.decrypt.as_mut().unwrap();
            if d.close_notify {
                if d.ring.is_empty() {
                    return self.finish_decrypt();
                }
                // Only a packet cut short by close_notify can remain.
                let error = SpliceError::PartialPacket {
                    offset: d.offset,
                    len: d.ring.len(),
                };
                return self.fail_decrypt(error);
            }
            match self.fill_ring() {
                Fill::Progress => {}
                Fill::WantRead => {
                    let d = self.decrypt.as_mut().unwrap();
                    if d.transport_eof {
                        return self.fail_decrypt(SpliceError::Truncated);
                    }
                    if d.transport_stopped {
                        d.transport_stopped = false;
                        self.host.set_transport_reading(true);
                    }
                    return;
                }
                Fill::CloseNotify => self.decrypt.as_mut().unwrap().close_notify = true,
                Fill::Error(error) => return self.fail_decrypt(error),
            }
        }
    }

    /// Decrypts into the ring until it is full or OpenSSL needs more input.
    fn fill_ring(&mut self) -> Fill {
        let ssl = self.ssl;
        let d = self.decrypt.as_mut().unwrap();
        let mut progress = false;
        loop {
            let space = d.ring.tail_space();
            if space.is_empty() {
                return Fill::Progress;
            }
            let len = space.len().min(i32::MAX as usize) as i32;
            // SAFETY: `space` is writable for `len` bytes, and the session
            // is valid for the splice's life.
            let n = unsafe { ossl::SSL_read(ssl, space.as_mut_ptr().cast(), len) };
            if n > 0 {
                d.ring.commit(n as usize);
                progress = true;
                continue;
            }
            // SAFETY: as above.
            let code = unsafe { ossl::SSL_get_error(ssl, n) };
            return match code {
                ossl::SSL_ERROR_WANT_READ | ossl::SSL_ERROR_WANT_WRITE if progress => {
                    Fill::Progress
                }
                ossl::SSL_ERROR_WANT_READ | ossl::SSL_ERROR_WANT_WRITE => Fill::WantRead,
                // Bytes decrypted before the alert are written first.
                ossl::SSL_ERROR_ZERO_RETURN => Fill::CloseNotify,
                _ => Fill::Error(SpliceError::Tls { ssl_error: code }),
            };
        }
    }

    /// Writes the ring to the fd: all of it for stream framing, whole
    /// packets, one write each, otherwise.
    fn flush_decrypted(&mut self) -> Result<Flush, SpliceError> {
        let fd = self.config.fd;
        let socket = self.fd_is_socket;
        let framing = self.config.framing;
        let d = self.decrypt.as_mut().unwrap();
        if !framing.is_packet() {
            while !d.ring.is_empty() {
                let (first, second) = d.ring.front(d.ring.len());
                match write_fd(fd, first, second, socket) {
                    Ok(n) => {
                        d.ring.consume(n);
                        d.offset += n as u64;
                        self.stats.bytes_in += n as u64;
                    }
                    Err(libc::EAGAIN) => return Ok(Flush::Blocked(Blocked::Writable)),
                    Err(errno) => {
                        return Err(SpliceError::Fd {
                            syscall: "write",
                            errno,
                            fd,
                        })
                    }
                }
            }
            return Ok(Flush::Done);
        }
        loop {
            let mut header = [0u8; 6];
            let have = d.ring.peek(0, &mut header);
            let packet = match framing.parse(&header[..have]) {
                Ok(Some(packet)) => packet,
                Ok(None) => return Ok(Flush::Done),
                Err(kind) => {
                    return Err(SpliceError::Framing(FramingError {
                        offset: d.offset,
                        kind,
                    }))
                }
            };
            if d.ring.len() < packet.wire_len() {
                return Ok(Flush::Done);
            }
            let (first, second) = d.ring.front(packet.wire_len());
            let (first, second) = skip_prefix(first, second, packet.prefix);
            match write_fd(fd, first, second, socket) {
                Ok(n) if n == packet.len => {
                    d.ring.consume(packet.wire_len());
                    d.offset += packet.wire_len() as u64;
                    self.stats.bytes_in += packet.len as u64;
                    self.stats.packets_in += 1;
                }
                Ok(n) => {
                    return Err(SpliceError::ShortPacketWrite {
                        fd,
                        written: n,
                        len: packet.len,
                    })
                }
                Err(libc::EAGAIN) => return Ok(Flush::Blocked(Blocked::Writable)),
                // A TUN device reports a full queue this way; the packet is
                // retried, never dropped.
                Err(libc::ENOBUFS) | Err(libc::ENOSPC) => {
                    return Ok(Flush::Blocked(Blocked::Buffers))
                }
                Err(errno) => {
                    return Err(SpliceError::Fd {
                        syscall: "write",
                        errno,
                        fd,
                    })
                }
            }
        }
    }

    fn block_decrypt(&mut self, why: Blocked) {
        let d = self.decrypt.as_mut().unwrap();
        d.blocked = Some(why);
        if !d.transport_stopped && !d.transport_eof {
            d.transport_stopped = true;
            self.host.set_transport_reading(false);
        }
        if why == Blocked::Buffers {
            self.nobufs_retries += 1;
            // SAFETY: the timer is open until release_fd.
            unsafe { uv::uv_timer_start(self.timer, Some(on_timer), NOBUFS_RETRY_MS, 0) };
        }
    }

    /// Ends the decrypt direction after `close_notify`.
    fn finish_decrypt(&mut self) {
        let d = self.decrypt.as_mut().unwrap();
        d.done = true;
        if d.transport_stopped {
            // The host reads the transport again, to see its EOF.
            d.transport_stopped = false;
            self.host.set_transport_reading(true);
        }
        if self.config.end {
            // SAFETY: shutdown on the caller's fd. Pipes and character
            // devices return ENOTSOCK because they have no half-close.
            let rc = unsafe { libc::shutdown(self.config.fd, libc::SHUT_WR) };
            if rc != 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                if errno != libc::ENOTSOCK && errno != libc::ENOTCONN {
                    self.host.direction_ended(
                        Side::In,
                        Err(SpliceError::Fd {
                            syscall: "shutdown",
                            errno,
                            fd: self.config.fd,
                        }),
                    );
                    return self.release_if_done();
                }
            }
        }
        self.host.direction_ended(Side::In, Ok(()));
        self.release_if_done();
    }

    fn fail_decrypt(&mut self, error: SpliceError) {
        let Some(d) = &mut self.decrypt else { return };
        if d.done {
            return;
        }
        d.done = true;
        d.blocked = None;
        self.failed = true;
        let resume = d.transport_stopped;
        d.transport_stopped = false;
        // The socket stays usable after an fd error: JS gets the bytes that
        // did not reach the fd, and reads the transport again.
        self.give_back_decrypted();
        if resume {
            self.host.set_transport_reading(true);
        }
        self.host.direction_ended(Side::In, Err(error));
        self.release_if_done();
    }

    fn give_back_decrypted(&mut self) {
        let Some(d) = &mut self.decrypt else { return };
        if d.ring.is_empty() {
            return;
        }
        let len = d.ring.len();
        let (first, second) = d.ring.front(len);
        self.host.give_back(first, second);
        d.ring.consume(len);
        d.offset += len as u64;
    }

    // ----- encrypt direction -----

    /// Moves fd input to `SSL_write` until the fd has nothing more, the
    /// backlog reaches the high-water mark, or the callback's read budget is
    /// spent. `flush` requests a host flush at the end; the host's own
    /// cycle flushes otherwise.
    /// Returns the backlog at which the encrypt direction stops reading the
    /// fd. One more read on top of a smaller backlog keeps the bytes held
    /// for this direction within the high-water mark plus one record.
    fn encrypt_brake(&self) -> usize {
        let hwm = self.config.high_water_mark;
        match &self.encrypt {
            Some(e) if !self.config.framing.is_packet() => {
                (hwm + MAX_RECORD).saturating_sub(e.buf.len()).max(1)
            }
            _ => hwm,
        }
    }

    fn run_encrypt(&mut self, flush: bool) {
        if matches!(&self.encrypt, Some(e) if e.held) {
            return;
        }
        let mut reads = 0;
        loop {
            let Some(e) = &mut self.encrypt else { return };
            match e.state {
                EncryptState::Running | EncryptState::BlockedOnTls => {}
                EncryptState::Ending | EncryptState::Done => break,
            }
            if e.pending > 0 {
                match self.write_pending() {
                    Ok(true) => self.encrypt.as_mut().unwrap().state = EncryptState::Running,
                    Ok(false) => {
                        self.encrypt.as_mut().unwrap().state = EncryptState::BlockedOnTls;
                        break;
                    }
                    Err(error) => {
                        self.fail_encrypt(error);
                        break;
                    }
                }
            }
            if self.encrypt.as_ref().unwrap().eof {
                if self.failed {
                    // EOF after the other direction failed: the host stops
                    // the splice, so this direction neither sends
                    // close_notify nor reports a clean end.
                    self.encrypt.as_mut().unwrap().state = EncryptState::Done;
                    self.release_if_done();
                } else {
                    self.finish_encrypt();
                }
                break;
            }
            let brake = self.encrypt_brake();
            if self.host.encrypted_backlog() >= brake {
                self.host.flush_encrypted();
                if self.host.encrypted_backlog() >= brake {
                    self.encrypt.as_mut().unwrap().state = EncryptState::BlockedOnTls;
                    return;
                }
            }
            if reads == READS_PER_CALLBACK {
                break;
            }
            reads += 1;
            match self.read_fd() {
                Ok(Read::Data) => {}
                Ok(Read::WouldBlock) => break,
                Ok(Read::Eof) => self.encrypt.as_mut().unwrap().eof = true,
                Err(error) => {
                    self.fail_encrypt(error);
                    break;
                }
            }
        }
        if flush {
            self.flush();
        }
    }

    /// Passes the pending fd input to `SSL_write`. Returns `Ok(false)` when
    /// OpenSSL must read before it can write (TLS 1.2 renegotiation); the
    /// same bytes are then retried later, as `SSL_write` requires.
    fn write_pending(&mut self) -> Result<bool, SpliceError> {
        let ssl = self.ssl;
        let e = self.encrypt.as_mut().unwrap();
        while e.written < e.pending {
            let chunk = &e.buf[e.written..e.pending];
            let len = chunk.len().min(i32::MAX as usize) as i32;
            // SAFETY: `chunk` is readable for `len` bytes, and the session is
            // valid for the splice's life.
            let n = unsafe { ossl::SSL_write(ssl, chunk.as_ptr().cast(), len) };
            if n > 0 {
                e.written += n as usize;
                continue;
            }
            // SAFETY: as above.
            let code = unsafe { ossl::SSL_get_error(ssl, n) };
            return match code {
                ossl::SSL_ERROR_WANT_READ | ossl::SSL_ERROR_WANT_WRITE => Ok(false),
                _ => Err(SpliceError::Tls { ssl_error: code }),
            };
        }
        self.stats.bytes_out += e.pending_payload as u64;
        self.stats.packets_out += e.pending_packets;
        e.pending = 0;
        e.written = 0;
        e.pending_payload = 0;
        e.pending_packets = 0;
        Ok(true)
    }

    /// Reads the fd into the encrypt buffer: one chunk for stream framing,
    /// as many packets as fit in one TLS record otherwise.
    fn read_fd(&mut self) -> Result<Read, SpliceError> {
        let fd = self.config.fd;
        let framing = self.config.framing;
        let e = self.encrypt.as_mut().unwrap();
        debug_assert_eq!(e.pending, 0);
        if !framing.is_packet() {
            return match read_retrying(fd, &mut e.buf, false) {
                Ok(0) => Ok(Read::Eof),
                Ok(n) => {
                    e.pending = n;
                    e.pending_payload = n;
                    Ok(Read::Data)
                }
                Err(libc::EAGAIN) => Ok(Read::WouldBlock),
                Err(errno) => Err(SpliceError::Fd {
                    syscall: "read",
                    errno,
                    fd,
                }),
            };
        }

        let prefix = if framing == Framing::Length16 {
            LENGTH16_PREFIX
        } else {
            0
        };
        let max_len = if framing == Framing::Length16 {
            usize::from(u16::MAX)
        } else {
            MAX_PACKET
        };
        let mut pos = 0;
        // Coalesce packets into one record's worth; each read has room for
        // the largest packet, so a TUN read is never truncated.
        while pos < MAX_RECORD && pos + prefix + MAX_PACKET <= e.buf.len() {
            let start = pos + prefix;
            let n = match read_retrying(fd, &mut e.buf[start..start + MAX_PACKET], e.packet_socket)
            {
                Ok(0) if !e.datagram => {
                    e.eof = true;
                    break;
                }
                Ok(n) => n,
                Err(libc::EAGAIN) => break,
                Err(errno) => {
                    let syscall = if e.packet_socket { "recv" } else { "read" };
                    return Err(SpliceError::Fd { syscall, errno, fd });
                }
            };
            if n > max_len {
                return Err(SpliceError::PacketTooLarge {
                    fd,
                    len: n,
                    max: max_len,
                });
            }
            if framing == Framing::Ip {
                match framing.parse(&e.buf[start..start + n]) {
                    Ok(Some(packet)) if packet.len == n => {}
                    _ => return Err(SpliceError::InvalidPacket { fd, len: n }),
                }
            } else {
                e.buf[pos..start].copy_from_slice(&(n as u16).to_be_bytes());
            }
            pos = start + n;
            e.pending_payload += n;
            e.pending_packets += 1;
        }
        e.pending = pos;
        if pos > 0 {
            Ok(Read::Data)
        } else if e.eof {
            Ok(Read::Eof)
        } else {
            Ok(Read::WouldBlock)
        }
    }

    /// Ends the encrypt direction after EOF on the fd.
    fn finish_encrypt(&mut self) {
        let e = self.encrypt.as_mut().unwrap();
        if self.config.end {
            e.state = EncryptState::Ending;
            self.host.shutdown_tls();
            if self.host.encrypted_backlog() > 0 {
                // on_encrypted_drained completes the direction.
                return;
            }
        }
        self.encrypt.as_mut().unwrap().state = EncryptState::Done;
        self.host.direction_ended(Side::Out, Ok(()));
        self.release_if_done();
    }

    fn fail_encrypt(&mut self, error: SpliceError) {
        let Some(e) = &mut self.encrypt else { return };
        if e.state == EncryptState::Done {
            return;
        }
        e.state = EncryptState::Done;
        self.failed = true;
        self.host.direction_ended(Side::Out, Err(error));
        self.release_if_done();
    }

    // ----- the fd -----

    fn release_if_done(&mut self) {
        let decrypt_done = self.decrypt.as_ref().map_or(true, |d| d.done);
        let encrypt_done = self
            .encrypt
            .as_ref()
            .map_or(true, |e| e.state == EncryptState::Done);
        if decrypt_done && encrypt_done {
            self.release_fd();
        }
    }

    /// Stops polling the fd, restores its flags and closes the libuv
    /// handles. `Host::closed` follows from the close callbacks.
    fn release_fd(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        // SAFETY: both handles were initialized in `start` and are closed
        // only here.
        unsafe {
            uv::uv_poll_stop(self.poll);
            uv::uv_timer_stop(self.timer);
            uv::uv_close(self.poll.cast(), Some(on_handle_closed));
            uv::uv_close(self.timer.cast(), Some(on_handle_closed));
            // The flag belongs to the open file description, which other
            // holders of the fd share; put back what they had.
            libc::fcntl(self.config.fd, libc::F_SETFL, self.saved_flags);
        }
        self.polled_events = 0;
    }

    /// Watches the fd for the events the directions wait for.
    fn update_poll(&mut self) {
        if self.released {
            return;
        }
        let mut events = 0;
        if matches!(&self.encrypt, Some(e) if e.state == EncryptState::Running && !e.held) {
            events |= uv::uv_poll_event_UV_READABLE as i32;
        }
        if matches!(&self.decrypt, Some(d) if !d.done && d.blocked == Some(Blocked::Writable)) {
            events |= uv::uv_poll_event_UV_WRITABLE as i32;
        }
        if events == self.polled_events {
            return;
        }
        // SAFETY: the poll handle is open until release_fd.
        unsafe {
            if events == 0 {
                uv::uv_poll_stop(self.poll);
            } else {
                uv::uv_poll_start(self.poll, events, Some(on_poll));
            }
        }
        self.polled_events = events;
    }
}

impl Drop for Splice {
    fn drop(&mut self) {
        // The libuv handles point at this object until their close
        // callbacks ran.
        assert!(
            self.closed || self.open_handles == 0,
            "Splice dropped before Host::closed; the libuv handles still point at it"
        );
    }
}

/// Reads into `buf`, retrying on EINTR. With `packet_socket`, uses `recv`
/// with `MSG_TRUNC`, which returns the full length of a longer packet.
fn read_retrying(fd: RawFd, buf: &mut [u8], packet_socket: bool) -> Result<usize, i32> {
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe {
            if packet_socket {
                libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC)
            } else {
                libc::read(fd, buf.as_mut_ptr().cast(), buf.len())
            }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// Drops the first `prefix` bytes of a two-part byte sequence.
fn skip_prefix<'a>(first: &'a [u8], second: &'a [u8], prefix: usize) -> (&'a [u8], &'a [u8]) {
    if prefix <= first.len() {
        (&first[prefix..], second)
    } else {
        (&second[prefix - first.len()..], &[])
    }
}

/// Writes two slices with one system call, retrying on EINTR, and returns
/// the number of bytes written or the errno. Sockets get `sendmsg`: a
/// zero-length `writev` to a socket returns 0 without sending anything
/// (Linux `sock_write_iter`), which would drop an empty datagram, and
/// `MSG_NOSIGNAL` turns SIGPIPE into EPIPE.
fn write_fd(fd: RawFd, first: &[u8], second: &[u8], socket: bool) -> Result<usize, i32> {
    let mut iov = [
        libc::iovec {
            iov_base: first.as_ptr() as *mut libc::c_void,
            iov_len: first.len(),
        },
        libc::iovec {
            iov_base: second.as_ptr() as *mut libc::c_void,
            iov_len: second.len(),
        },
    ];
    let count = if second.is_empty() { 1 } else { 2 };
    loop {
        // SAFETY: both iovecs describe live slices; the message header
        // points at them and at nothing else.
        let n = unsafe {
            if socket {
                let mut message: libc::msghdr = std::mem::zeroed();
                message.msg_iov = iov.as_mut_ptr();
                message.msg_iovlen = count as _;
                libc::sendmsg(fd, &message, libc::MSG_NOSIGNAL)
            } else {
                libc::writev(fd, iov.as_ptr(), count)
            }
        };
        if n >= 0 {
            return Ok(n as usize);
        }
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno != libc::EINTR {
            return Err(errno);
        }
    }
}

/// Returns the socket type of `fd`, or None when it is not a socket.
fn socket_type(fd: RawFd) -> Option<i32> {
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the output buffer matches `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut kind as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(kind)
}
