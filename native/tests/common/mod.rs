//! Test host for the pump: it plays TLSWrap's role with a real TCP loopback
//! connection, a real OpenSSL session over memory BIOs and a real libuv loop,
//! and a peer thread that runs the other end of the TLS session.

#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, IntoRawFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use foreign_types::ForeignType;
use openssl::asn1::Asn1Time;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{Ssl, SslContext, SslContextBuilder, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::{X509Name, X509};
use openssl_sys as ossl;
use sha2::{Digest, Sha256};
use tls_splice::uv;
pub use tls_splice::Config;
use tls_splice::{Direction, Framing, Host, Side, Splice, SpliceError};

/// TLS protocol version and cipher of a test session.
#[derive(Clone, Copy, Debug)]
pub enum Cipher {
    Tls13Aes128Gcm,
    Tls13Chacha20,
    Tls12Aes128Gcm,
    Tls12Chacha20,
}

pub const ALL_CIPHERS: [Cipher; 4] = [
    Cipher::Tls13Aes128Gcm,
    Cipher::Tls13Chacha20,
    Cipher::Tls12Aes128Gcm,
    Cipher::Tls12Chacha20,
];

fn context(cipher: Cipher, server: bool) -> SslContext {
    let method = if server {
        SslMethod::tls_server()
    } else {
        SslMethod::tls_client()
    };
    let mut builder = SslContextBuilder::new(method).unwrap();
    match cipher {
        Cipher::Tls13Aes128Gcm | Cipher::Tls13Chacha20 => {
            builder
                .set_min_proto_version(Some(SslVersion::TLS1_3))
                .unwrap();
            let suite = if matches!(cipher, Cipher::Tls13Aes128Gcm) {
                "TLS_AES_128_GCM_SHA256"
            } else {
                "TLS_CHACHA20_POLY1305_SHA256"
            };
            builder.set_ciphersuites(suite).unwrap();
        }
        Cipher::Tls12Aes128Gcm | Cipher::Tls12Chacha20 => {
            builder
                .set_max_proto_version(Some(SslVersion::TLS1_2))
                .unwrap();
            let list = if matches!(cipher, Cipher::Tls12Aes128Gcm) {
                "ECDHE-ECDSA-AES128-GCM-SHA256"
            } else {
                "ECDHE-ECDSA-CHACHA20-POLY1305"
            };
            builder.set_cipher_list(list).unwrap();
        }
    }
    if server {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let mut name = X509Name::builder().unwrap();
        name.append_entry_by_text("CN", "localhost").unwrap();
        let name = name.build();
        let mut cert = X509::builder().unwrap();
        cert.set_version(2).unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, MessageDigest::sha256()).unwrap();
        builder.set_private_key(&key).unwrap();
        builder.set_certificate(&cert.build()).unwrap();
    } else {
        builder.set_verify(SslVerifyMode::NONE);
    }
    builder.build()
}

/// A TLS session over two memory BIOs, like TLSWrap's `enc_in`/`enc_out`.
pub struct Endpoint {
    pub ssl: Ssl,
    rbio: *mut ossl::BIO,
    wbio: *mut ossl::BIO,
}

// SAFETY: the BIOs belong to the session and move with it; an Endpoint is
// used by one thread at a time.
unsafe impl Send for Endpoint {}

impl Endpoint {
    fn new(cipher: Cipher, server: bool) -> Endpoint {
        let ssl = Ssl::new(&context(cipher, server)).unwrap();
        // SAFETY: fresh memory BIOs, owned by the SSL after SSL_set_bio.
        unsafe {
            let rbio = ossl::BIO_new(ossl::BIO_s_mem());
            let wbio = ossl::BIO_new(ossl::BIO_s_mem());
            ossl::SSL_set_bio(ssl.as_ptr(), rbio, wbio);
            if server {
                ossl::SSL_set_accept_state(ssl.as_ptr());
            } else {
                ossl::SSL_set_connect_state(ssl.as_ptr());
            }
            Endpoint { ssl, rbio, wbio }
        }
    }

    pub fn ptr(&self) -> *mut ossl::SSL {
        self.ssl.as_ptr()
    }

    pub fn pending_out(&self) -> usize {
        // SAFETY: the BIO lives as long as the SSL.
        unsafe {
            ossl::BIO_ctrl(
                self.wbio,
                10, /* BIO_CTRL_PENDING in bio.h */
                0,
                std::ptr::null_mut(),
            ) as usize
        }
    }

    /// Moves encrypted output into `out`.
    pub fn take_out(&self, out: &mut Vec<u8>) {
        let pending = self.pending_out();
        if pending == 0 {
            return;
        }
        let start = out.len();
        out.resize(start + pending, 0);
        // SAFETY: `out` has room for `pending` bytes.
        let n =
            unsafe { ossl::BIO_read(self.wbio, out[start..].as_mut_ptr().cast(), pending as i32) };
        out.truncate(start + n.max(0) as usize);
    }

    /// Feeds ciphertext into the read BIO.
    pub fn put_in(&self, data: &[u8]) {
        // SAFETY: `data` is readable for its length.
        let n = unsafe { ossl::BIO_write(self.rbio, data.as_ptr().cast(), data.len() as i32) };
        assert_eq!(n as usize, data.len());
    }

    /// Marks the read BIO as ended, so that `SSL_read` reports EOF.
    pub fn set_eof(&self) {
        // SAFETY: BIO_CTRL_SET_MEM_EOF_RETURN sets what an empty BIO returns;
        // 0 means EOF.
        unsafe {
            ossl::BIO_ctrl(
                self.rbio,
                ossl::BIO_C_SET_BUF_MEM_EOF_RETURN,
                0,
                std::ptr::null_mut(),
            )
        };
    }
}

/// Runs the handshake over blocking `sock` until both sides are done.
fn handshake(endpoint: &Endpoint, sock: &mut TcpStream) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        // SAFETY: valid session.
        let rc = unsafe { ossl::SSL_do_handshake(endpoint.ptr()) };
        out.clear();
        endpoint.take_out(&mut out);
        if !out.is_empty() {
            sock.write_all(&out).unwrap();
        }
        if rc == 1 {
            return;
        }
        // SAFETY: valid session.
        let code = unsafe { ossl::SSL_get_error(endpoint.ptr(), rc) };
        assert_eq!(code, ossl::SSL_ERROR_WANT_READ, "handshake failed");
        let n = sock.read(&mut buf).unwrap();
        assert!(n > 0, "peer closed during the handshake");
        endpoint.put_in(&buf[..n]);
    }
}

/// Connects a pair: the host side (a memory-BIO session driven by the
/// pump's host) and the peer side, both with handshakes done.
pub fn connect(cipher: Cipher) -> (Endpoint, TcpStream, Endpoint, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let server = Endpoint::new(cipher, true);
        handshake(&server, &mut sock);
        (server, sock)
    });
    let mut sock = TcpStream::connect(addr).unwrap();
    let client = Endpoint::new(cipher, false);
    handshake(&client, &mut sock);
    let (server, server_sock) = server_thread.join().unwrap();
    sock.set_nodelay(true).unwrap();
    (client, sock, server, server_sock)
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let value = self.next().to_le_bytes();
            chunk.copy_from_slice(&value[..chunk.len()]);
        }
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

// ----- the peer -----

/// What the peer thread does: send `send` bytes (then close_notify when
/// `close_after_send`), and collect everything it receives until
/// close_notify or EOF.
pub struct PeerPlan {
    pub send: Vec<u8>,
    /// Largest `SSL_write` chunk; each write is one or more records.
    pub max_write: usize,
    pub close_after_send: bool,
    /// Close the TCP socket without close_notify after sending.
    pub abort_after_send: bool,
    /// With `abort_after_send`: reset the connection (RST) instead of a FIN.
    pub reset: bool,
    /// Give up after this long.
    pub timeout: Duration,
    pub seed: u64,
    /// Receives the number of bytes passed to `SSL_write` so far.
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicUsize>>,
}

impl PeerPlan {
    /// Builds a plan that sends `send` in writes of up to `max_write` bytes,
    /// then `close_notify`, within a 60-second timeout.
    pub fn sending(send: Vec<u8>, max_write: usize, seed: u64) -> PeerPlan {
        PeerPlan {
            send,
            max_write,
            close_after_send: true,
            abort_after_send: false,
            reset: false,
            timeout: Duration::from_secs(60),
            seed,
            progress: None,
        }
    }
}

/// What the peer observed.
#[derive(Debug)]
pub struct PeerResult {
    pub received: Vec<u8>,
    pub got_close_notify: bool,
    pub got_eof: bool,
}

/// Runs the peer side of the session on a nonblocking socket until it has
/// sent everything and the other side closed or the timeout expired.
pub fn run_peer(endpoint: Endpoint, sock: TcpStream, plan: PeerPlan) -> PeerResult {
    sock.set_nonblocking(true).unwrap();
    let fd = sock.as_raw_fd();
    let mut rng = Rng::new(plan.seed);
    let mut sent = 0;
    let mut out: Vec<u8> = Vec::new();
    let mut out_pos = 0;
    let mut received = Vec::new();
    let mut got_close_notify = false;
    let mut got_eof = false;
    let mut shut_down = false;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + plan.timeout;
    loop {
        assert!(
            Instant::now() < deadline,
            "peer timed out: sent {sent}, received {}",
            received.len()
        );
        // Encrypt while the socket keeps up.
        while sent < plan.send.len() && out.len() - out_pos < 256 * 1024 {
            let n = 1 + rng.below(plan.max_write.min(plan.send.len() - sent));
            let chunk = &plan.send[sent..sent + n];
            // SAFETY: valid session; `chunk` is readable.
            let rc = unsafe { ossl::SSL_write(endpoint.ptr(), chunk.as_ptr().cast(), n as i32) };
            assert_eq!(rc as usize, n, "peer SSL_write failed");
            sent += n;
            endpoint.take_out(&mut out);
            if let Some(progress) = &plan.progress {
                progress.store(sent, std::sync::atomic::Ordering::SeqCst);
            }
        }
        if sent == plan.send.len() && !shut_down {
            shut_down = true;
            if plan.abort_after_send {
                // Flush what is queued, then close without close_notify.
                sock.set_nonblocking(false).unwrap();
                (&sock).write_all(&out[out_pos..]).unwrap();
                if plan.reset {
                    // Let the bytes leave before the RST discards the queue.
                    std::thread::sleep(Duration::from_millis(100));
                    let linger = libc::linger {
                        l_onoff: 1,
                        l_linger: 0,
                    };
                    // SAFETY: setting SO_LINGER on our own socket.
                    unsafe {
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_LINGER,
                            (&linger as *const libc::linger).cast(),
                            std::mem::size_of::<libc::linger>() as libc::socklen_t,
                        )
                    };
                }
                drop(sock);
                return PeerResult {
                    received,
                    got_close_notify,
                    got_eof,
                };
            }
            if plan.close_after_send {
                // SAFETY: valid session.
                unsafe { ossl::SSL_shutdown(endpoint.ptr()) };
                endpoint.take_out(&mut out);
            }
        }
        // Write what is queued.
        while out_pos < out.len() {
            match (&sock).write(&out[out_pos..]) {
                Ok(n) => out_pos += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e)
                    if e.kind() == std::io::ErrorKind::BrokenPipe
                        || e.kind() == std::io::ErrorKind::ConnectionReset =>
                {
                    out_pos = out.len();
                }
                Err(e) => panic!("peer write failed: {e}"),
            }
        }
        if out_pos == out.len() {
            out.clear();
            out_pos = 0;
        }
        // Read and decrypt.
        loop {
            match (&sock).read(&mut buf) {
                Ok(0) => {
                    got_eof = true;
                    endpoint.set_eof();
                    break;
                }
                Ok(n) => endpoint.put_in(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    got_eof = true;
                    break;
                }
                Err(e) => panic!("peer read failed: {e}"),
            }
        }
        loop {
            // SAFETY: `buf` is writable.
            let n = unsafe {
                ossl::SSL_read(endpoint.ptr(), buf.as_mut_ptr().cast(), buf.len() as i32)
            };
            if n > 0 {
                received.extend_from_slice(&buf[..n as usize]);
                continue;
            }
            // SAFETY: valid session.
            let code = unsafe { ossl::SSL_get_error(endpoint.ptr(), n) };
            if code == ossl::SSL_ERROR_ZERO_RETURN {
                got_close_notify = true;
            }
            break;
        }
        endpoint.take_out(&mut out);
        let done_sending = sent == plan.send.len() && out.is_empty();
        if done_sending && (got_close_notify || got_eof) {
            return PeerResult {
                received,
                got_close_notify,
                got_eof,
            };
        }
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN | if out.is_empty() { 0 } else { libc::POLLOUT },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, 50) };
    }
}

// ----- the host -----

/// What the host observed from the pump.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Ended(Side, Result<(), SpliceError>),
    Closed,
}

/// State shared between the host (inside the pump) and the harness.
pub struct HostState {
    endpoint: Endpoint,
    tcp: RawFd,
    /// Encrypted bytes taken from the write BIO, not yet written to TCP.
    queue: Vec<u8>,
    queue_pos: usize,
    pub reading: bool,
    pub shutdown_requested: bool,
    tcp_write_shut: bool,
    pub events: Vec<Event>,
    pub given_back: Vec<u8>,
    /// Cleartext the host read itself while the decrypt direction is not
    /// spliced (what JS would read).
    pub js_received: Vec<u8>,
    pub max_backlog_seen: usize,
    pub times_stopped_reading: usize,
}

impl HostState {
    fn backlog(&self) -> usize {
        self.endpoint.pending_out() + (self.queue.len() - self.queue_pos)
    }

    /// Moves the write BIO into the queue and writes as much as TCP takes.
    /// Returns true when the queue is empty afterwards.
    fn flush(&mut self) -> bool {
        self.endpoint.take_out(&mut self.queue);
        while self.queue_pos < self.queue.len() {
            // SAFETY: the slice is readable.
            let n = unsafe {
                libc::send(
                    self.tcp,
                    self.queue[self.queue_pos..].as_ptr().cast(),
                    self.queue.len() - self.queue_pos,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap();
                if errno == libc::EAGAIN {
                    return false;
                }
                // The peer went away; drop the queue as a transport would.
                self.queue_pos = self.queue.len();
                break;
            }
            self.queue_pos += n as usize;
        }
        self.queue.clear();
        self.queue_pos = 0;
        if self.shutdown_requested && !self.tcp_write_shut {
            self.tcp_write_shut = true;
            // SAFETY: shutting down our own socket.
            unsafe { libc::shutdown(self.tcp, libc::SHUT_WR) };
        }
        true
    }
}

/// The `Host` the pump talks to.
struct TestHost(Rc<RefCell<HostState>>);

impl Host for TestHost {
    fn flush_encrypted(&mut self) {
        let mut state = self.0.borrow_mut();
        let backlog = state.backlog();
        state.max_backlog_seen = state.max_backlog_seen.max(backlog);
        state.flush();
    }

    fn encrypted_backlog(&self) -> usize {
        self.0.borrow().backlog()
    }

    fn set_transport_reading(&mut self, reading: bool) {
        let mut state = self.0.borrow_mut();
        if !reading && state.reading {
            state.times_stopped_reading += 1;
        }
        state.reading = reading;
    }

    fn shutdown_tls(&mut self) {
        let mut state = self.0.borrow_mut();
        // SAFETY: valid session.
        unsafe { ossl::SSL_shutdown(state.endpoint.ptr()) };
        state.shutdown_requested = true;
        state.flush();
    }

    fn direction_ended(&mut self, side: Side, result: Result<(), SpliceError>) {
        self.0.borrow_mut().events.push(Event::Ended(side, result));
    }

    fn give_back(&mut self, first: &[u8], second: &[u8]) {
        let mut state = self.0.borrow_mut();
        state.given_back.extend_from_slice(first);
        state.given_back.extend_from_slice(second);
    }

    fn closed(&mut self) {
        self.0.borrow_mut().events.push(Event::Closed);
    }
}

/// A libuv loop with the host side of a session and one splice.
pub struct Harness {
    pub uv_loop: Box<uv::uv_loop_t>,
    pub state: Rc<RefCell<HostState>>,
    pub splice: Option<Box<Splice>>,
    tcp_poll: *mut uv::uv_poll_t,
    tick: *mut uv::uv_timer_t,
    tcp_events: i32,
    tcp_eof: bool,
    /// Called after every loop iteration with the harness.
    pub observer: Option<Box<dyn FnMut(&Harness)>>,
}

extern "C" fn on_tcp(handle: *mut uv::uv_poll_t, status: i32, events: i32) {
    // SAFETY: `data` points at the Harness, which outlives the loop run.
    let harness = unsafe { &mut *((*handle).data as *mut Harness) };
    harness.handle_tcp(status, events);
}

extern "C" fn on_tick(_handle: *mut uv::uv_timer_t) {}

extern "C" fn on_closed(handle: *mut uv::uv_handle_t) {
    // SAFETY: allocated with Box in Harness::new.
    unsafe { drop(Box::from_raw(handle as *mut [u8; 256])) };
}

impl Harness {
    /// Wraps the host side of a connected session. The TCP socket becomes
    /// nonblocking and is read from the loop.
    pub fn new(endpoint: Endpoint, tcp: TcpStream) -> Box<Harness> {
        tcp.set_nonblocking(true).unwrap();
        let tcp = tcp.into_raw_fd();
        let mut uv_loop: Box<uv::uv_loop_t> =
            // SAFETY: uv_loop_init initializes the zeroed struct.
            unsafe { Box::new(std::mem::zeroed()) };
        // SAFETY: fresh loop storage.
        assert_eq!(unsafe { uv::uv_loop_init(&mut *uv_loop) }, 0);
        let state = Rc::new(RefCell::new(HostState {
            endpoint,
            tcp,
            queue: Vec::new(),
            queue_pos: 0,
            reading: true,
            shutdown_requested: false,
            tcp_write_shut: false,
            events: Vec::new(),
            given_back: Vec::new(),
            js_received: Vec::new(),
            max_backlog_seen: 0,
            times_stopped_reading: 0,
        }));
        let mut harness = Box::new(Harness {
            uv_loop,
            state,
            splice: None,
            tcp_poll: std::ptr::null_mut(),
            tick: std::ptr::null_mut(),
            tcp_events: 0,
            tcp_eof: false,
            observer: None,
        });
        assert!(std::mem::size_of::<uv::uv_poll_t>() <= 256);
        assert!(std::mem::size_of::<uv::uv_timer_t>() <= 256);
        let data = &mut *harness as *mut Harness as *mut libc::c_void;
        // SAFETY: storage of 256 zeroed bytes is large enough (asserted).
        unsafe {
            let poll = Box::into_raw(Box::new([0u8; 256])) as *mut uv::uv_poll_t;
            assert_eq!(uv::uv_poll_init(&mut *harness.uv_loop, poll, tcp), 0);
            (*poll).data = data;
            harness.tcp_poll = poll;
            let tick = Box::into_raw(Box::new([0u8; 256])) as *mut uv::uv_timer_t;
            assert_eq!(uv::uv_timer_init(&mut *harness.uv_loop, tick), 0);
            uv::uv_timer_start(tick, Some(on_tick), 20, 20);
            harness.tick = tick;
        }
        harness.update_tcp_poll();
        harness
    }

    pub fn ssl(&self) -> *mut ossl::SSL {
        self.state.borrow().endpoint.ptr()
    }

    /// Starts a splice on `fd` with the given options.
    pub fn start(
        &mut self,
        fd: RawFd,
        direction: Direction,
        framing: Framing,
        high_water_mark: usize,
        end: bool,
    ) -> Result<(), SpliceError> {
        self.start_with(Config {
            fd,
            direction,
            framing,
            high_water_mark,
            end,
            auto_close: false,
        })
    }

    /// Starts a splice with every option given.
    pub fn start_with(&mut self, config: Config) -> Result<(), SpliceError> {
        let host = Box::new(TestHost(self.state.clone()));
        // SAFETY: the session and the loop outlive the splice: the harness
        // runs the loop until the splice reports `closed`.
        let splice = unsafe { Splice::start(config, self.ssl(), &mut *self.uv_loop, host)? };
        self.splice = Some(splice);
        // Cleartext OpenSSL may already hold.
        self.splice.as_mut().unwrap().on_tls_input();
        self.flush_and_notify();
        self.update_tcp_poll();
        Ok(())
    }

    fn update_tcp_poll(&mut self) {
        let state = self.state.borrow();
        let mut events = 0;
        if state.reading && !self.tcp_eof {
            events |= uv::uv_poll_event_UV_READABLE as i32;
        }
        if state.queue_pos < state.queue.len() {
            events |= uv::uv_poll_event_UV_WRITABLE as i32;
        }
        drop(state);
        if events != self.tcp_events {
            // SAFETY: the poll handle is open.
            unsafe {
                if events == 0 {
                    uv::uv_poll_stop(self.tcp_poll);
                } else {
                    uv::uv_poll_start(self.tcp_poll, events, Some(on_tcp));
                }
            }
            self.tcp_events = events;
        }
    }

    fn spliced_in(&self) -> bool {
        self.splice
            .as_ref()
            .is_some_and(|s| s.config().direction.has_in() && !s.is_closed())
    }

    fn handle_tcp(&mut self, status: i32, events: i32) {
        if status < 0 {
            // libuv reports a socket error (a reset) this way and stops the
            // handle; a stream read would have returned ECONNRESET.
            self.tcp_events = 0;
            self.tcp_eof = true;
            if self.spliced_in() {
                self.splice.as_mut().unwrap().on_transport_eof();
            }
            return;
        }
        if events & uv::uv_poll_event_UV_WRITABLE as i32 != 0 {
            self.flush_and_notify();
        }
        if events & uv::uv_poll_event_UV_READABLE as i32 != 0 && self.state.borrow().reading {
            let mut buf = [0u8; 64 * 1024];
            let tcp = self.state.borrow().tcp;
            // SAFETY: `buf` is writable.
            let n = unsafe { libc::read(tcp, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                self.state.borrow().endpoint.put_in(&buf[..n as usize]);
                self.deliver_tls_input();
            } else if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
            {
                // Like TLSWrap, the read BIO is not marked as ended: the
                // pump learns of the EOF from on_transport_eof.
                self.tcp_eof = true;
                if self.spliced_in() {
                    self.splice.as_mut().unwrap().on_transport_eof();
                }
            }
        }
        self.flush_and_notify();
        self.update_tcp_poll();
    }

    /// Flushes the write BIO to TCP and, like TLSWrap's
    /// `OnStreamAfterWrite`, notifies the pump when TCP accepted bytes.
    fn flush_and_notify(&mut self) {
        let before = self.state.borrow().backlog();
        self.state.borrow_mut().flush();
        let after = self.state.borrow().backlog();
        if after < before {
            if let Some(splice) = &mut self.splice {
                if !splice.is_closed() {
                    splice.on_encrypted_drained();
                }
            }
        }
    }

    /// Hands new ciphertext to the pump, or reads it as JS would when the
    /// decrypt direction is not spliced.
    fn deliver_tls_input(&mut self) {
        if self.spliced_in() {
            self.splice.as_mut().unwrap().on_tls_input();
            return;
        }
        let mut state = self.state.borrow_mut();
        let mut buf = [0u8; 16 * 1024];
        loop {
            // SAFETY: `buf` is writable.
            let n = unsafe {
                ossl::SSL_read(
                    state.endpoint.ptr(),
                    buf.as_mut_ptr().cast(),
                    buf.len() as i32,
                )
            };
            if n <= 0 {
                break;
            }
            state.js_received.extend_from_slice(&buf[..n as usize]);
        }
    }

    /// Runs the loop until `done` returns true; panics after `timeout`.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Harness) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return;
            }
            if Instant::now() >= deadline {
                let splice = self
                    .splice
                    .as_ref()
                    .map(|s| s.describe())
                    .unwrap_or_default();
                let state = self.state.borrow();
                panic!(
                    "loop timed out; events so far: {:?}; {splice}; host: reading={} backlog={} tcp_events={}",
                    state.events,
                    state.reading,
                    state.backlog(),
                    self.tcp_events
                );
            }
            // SAFETY: the loop is initialized; callbacks reach `self` through
            // handle data pointers while `self` is borrowed here only by this
            // call.
            unsafe { uv::uv_run(&mut *self.uv_loop, uv::uv_run_mode_UV_RUN_ONCE) };
            self.update_tcp_poll();
            if let Some(mut observer) = self.observer.take() {
                observer(self);
                self.observer = Some(observer);
            }
        }
    }

    /// Runs until the splice reported `Closed`.
    pub fn run_until_closed(&mut self, timeout: Duration) {
        self.run_until(timeout, |h| {
            h.state.borrow().events.contains(&Event::Closed)
        });
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.borrow().events.clone()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(splice) = &mut self.splice {
            splice.stop();
        }
        // SAFETY: closing our own handles, then draining the loop.
        unsafe {
            uv::uv_close(self.tcp_poll.cast(), Some(on_closed));
            uv::uv_close(self.tick.cast(), Some(on_closed));
            uv::uv_run(&mut *self.uv_loop, uv::uv_run_mode_UV_RUN_DEFAULT);
            uv::uv_loop_close(&mut *self.uv_loop);
            libc::close(self.state.borrow().tcp);
        }
    }
}

/// Creates a pipe and returns its (read, write) ends.
pub fn pipe() -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    (fds[0], fds[1])
}

/// Creates a Unix socketpair of the given type.
pub fn socketpair(kind: i32) -> (RawFd, RawFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(
        unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                kind | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        },
        0
    );
    (fds[0], fds[1])
}

pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor the test owns.
    unsafe { libc::close(fd) };
}

/// Reads `fd` (blocking) until EOF or until `limit` bytes arrived, with
/// pauses of random length to make the sink stall now and then.
pub fn read_all_with_stalls(fd: RawFd, limit: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    while out.len() < limit {
        if rng.below(50) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(20) as u64));
        }
        let want = 1 + rng.below(buf.len());
        // SAFETY: `buf` is writable.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), want) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    out
}

/// Writes all of `data` to `fd` (blocking) in random chunk sizes.
pub fn write_all_chunked(fd: RawFd, data: &[u8], seed: u64) {
    let mut rng = Rng::new(seed);
    let mut pos = 0;
    while pos < data.len() {
        let n = (1 + rng.below(64 * 1024)).min(data.len() - pos);
        // SAFETY: the slice is readable.
        let written = unsafe { libc::write(fd, data[pos..].as_ptr().cast(), n) };
        assert!(written > 0, "write to the source fd failed");
        pos += written as usize;
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    Rng::new(seed).fill(&mut data);
    data
}

pub fn ignore_sigpipe() {
    // SAFETY: setting a signal disposition.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// Prints `line` to the process's standard error even while the test
/// harness captures output, so that a skipped check is never silent.
pub fn report_skip(line: &str) {
    let text = format!("\n{line}\n");
    // SAFETY: writing a live buffer to fd 2.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}
