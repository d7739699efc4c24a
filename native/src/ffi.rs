//! The `cxx` bridge between the pump and its C++ host, node's TLSWrap.
//!
//! C++ implements `tls_splice::SpliceHost` (include/tls-splice/tls_splice_host.h) and
//! creates a splice with `start_splice`. The returned `NativeSplice` stays
//! owned by C++ until `SpliceHost::OnClosed` was called.

use std::pin::Pin;

use crate::error::SpliceError;
use crate::framing::Framing;
use crate::pump::{Config, Direction, Host, Side, Splice};
use bridge::{SpliceDirection, SpliceErrorKind, SpliceFraming};

#[cxx::bridge(namespace = "tls_splice")]
pub mod bridge {
    /// Directions a splice moves.
    enum SpliceDirection {
        /// TLS -> fd.
        In,
        /// fd -> TLS.
        Out,
        Duplex,
    }

    /// Packet framing on the TLS stream.
    enum SpliceFraming {
        Stream,
        Ip,
        Length16,
    }

    /// Classes of errors that end a direction.
    enum SpliceErrorKind {
        None,
        /// OpenSSL failed; `ssl_error` is the `SSL_get_error()` code and the
        /// OpenSSL error queue is left for the host to read.
        Tls,
        /// The transport ended without `close_notify`.
        Truncated,
        /// A system call on the fd failed; see `syscall` and `errno_code`.
        Fd,
        /// The decrypted stream or a packet from the fd breaks the framing.
        Framing,
        /// Writing to the transport failed. Only the host reports this,
        /// because the pump is not told when transport writes complete.
        Transport,
    }

    /// Options of `start_splice`, validated by the JS layer.
    struct SpliceOptions {
        fd: i32,
        direction: SpliceDirection,
        framing: SpliceFraming,
        high_water_mark: usize,
        end: bool,
        auto_close: bool,
    }

    /// Byte and packet counters, as `handle.stats` reports them.
    struct SpliceStats {
        bytes_in: u64,
        bytes_out: u64,
        packets_in: u64,
        packets_out: u64,
    }

    /// Outcome of a direction, or the reason a splice could not start.
    struct SpliceEnd {
        /// `In` or `Out`.
        side: SpliceDirection,
        ok: bool,
        kind: SpliceErrorKind,
        /// `SSL_get_error()` code for TLS errors.
        ssl_error: i32,
        /// Positive errno for fd errors.
        errno_code: i32,
        /// Failed system call for fd errors.
        syscall: &'static str,
        /// Human-readable description.
        message: String,
    }

    unsafe extern "C++" {
        include!("tls-splice/tls_splice_host.h");

        type SpliceHost;
        #[namespace = ""]
        type SSL;
        #[namespace = ""]
        type uv_loop_t;

        #[cxx_name = "FlushEncrypted"]
        fn flush_encrypted(self: Pin<&mut SpliceHost>);
        #[cxx_name = "EncryptedBacklog"]
        fn encrypted_backlog(self: &SpliceHost) -> usize;
        #[cxx_name = "SetTransportReading"]
        fn set_transport_reading(self: Pin<&mut SpliceHost>, reading: bool);
        #[cxx_name = "ShutdownTls"]
        fn shutdown_tls(self: Pin<&mut SpliceHost>);
        #[cxx_name = "OnDirectionEnded"]
        fn on_direction_ended(self: Pin<&mut SpliceHost>, end: &SpliceEnd);
        #[cxx_name = "GiveBack"]
        fn give_back(self: Pin<&mut SpliceHost>, first: &[u8], second: &[u8]);
        #[cxx_name = "OnClosed"]
        fn on_closed(self: Pin<&mut SpliceHost>);
    }

    extern "Rust" {
        /// Returns the version of this library.
        fn version() -> &'static str;

        type NativeSplice;

        /// Starts a splice of `ssl` on `options.fd`. When that fails, the
        /// returned splice is closed and `start_error` describes why;
        /// `host` is then never called.
        ///
        /// # Safety
        ///
        /// `host`, `ssl` and `uv_loop` must stay valid until
        /// `SpliceHost::OnClosed` was called.
        unsafe fn start_splice(
            host: *mut SpliceHost,
            ssl: *mut SSL,
            uv_loop: *mut uv_loop_t,
            options: &SpliceOptions,
        ) -> Box<NativeSplice>;

        /// Why `start_splice` failed, with `ok` set when it did not.
        fn start_error(self: &NativeSplice) -> SpliceEnd;
        /// Queues cleartext decrypted before the splice started; see
        /// `Splice::push_decrypted`.
        fn push_decrypted(self: &mut NativeSplice, data: &[u8]);
        /// Holds the encrypt direction back; see `Splice::hold_encrypt`.
        fn hold_encrypt(self: &mut NativeSplice, held: bool);
        fn on_tls_input(self: &mut NativeSplice);
        fn on_transport_eof(self: &mut NativeSplice);
        fn on_encrypted_drained(self: &mut NativeSplice);
        fn stop(self: &mut NativeSplice);
        fn stats(self: &NativeSplice) -> SpliceStats;
        fn is_closed(self: &NativeSplice) -> bool;
        fn wants_transport_reading(self: &NativeSplice) -> bool;
        fn describe(self: &NativeSplice) -> String;
    }
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// A splice as C++ owns it: the pump, or the reason it did not start.
pub struct NativeSplice {
    splice: Option<Box<Splice>>,
    start_error: Option<SpliceError>,
}

/// Adapts the C++ `SpliceHost` to the pump's `Host` trait.
struct CxxHost(*mut bridge::SpliceHost);

impl CxxHost {
    fn host(&mut self) -> Pin<&mut bridge::SpliceHost> {
        // SAFETY: C++ keeps the host alive and in place until OnClosed
        // (the contract of `start_splice`).
        unsafe { Pin::new_unchecked(&mut *self.0) }
    }
}

impl Host for CxxHost {
    fn flush_encrypted(&mut self) {
        self.host().flush_encrypted();
    }

    fn encrypted_backlog(&self) -> usize {
        // SAFETY: as in `host`.
        unsafe { (*self.0).encrypted_backlog() }
    }

    fn set_transport_reading(&mut self, reading: bool) {
        self.host().set_transport_reading(reading);
    }

    fn shutdown_tls(&mut self) {
        self.host().shutdown_tls();
    }

    fn direction_ended(&mut self, side: Side, result: Result<(), SpliceError>) {
        let end = splice_end(side, result.err());
        self.host().on_direction_ended(&end);
    }

    fn give_back(&mut self, first: &[u8], second: &[u8]) {
        self.host().give_back(first, second);
    }

    fn closed(&mut self) {
        self.host().on_closed();
    }
}

fn splice_end(side: Side, error: Option<SpliceError>) -> bridge::SpliceEnd {
    let side = match side {
        Side::In => SpliceDirection::In,
        Side::Out => SpliceDirection::Out,
    };
    let Some(error) = error else {
        return bridge::SpliceEnd {
            side,
            ok: true,
            kind: SpliceErrorKind::None,
            ssl_error: 0,
            errno_code: 0,
            syscall: "",
            message: String::new(),
        };
    };
    let (kind, ssl_error, errno_code, syscall) = match error {
        SpliceError::Tls { ssl_error } => (SpliceErrorKind::Tls, ssl_error, 0, ""),
        SpliceError::Truncated => (SpliceErrorKind::Truncated, 0, 0, ""),
        SpliceError::Fd { syscall, errno, .. } => (SpliceErrorKind::Fd, 0, errno, syscall),
        SpliceError::ShortPacketWrite { .. } => (SpliceErrorKind::Fd, 0, libc::EMSGSIZE, "write"),
        SpliceError::PacketTooLarge { .. } => (SpliceErrorKind::Fd, 0, libc::EMSGSIZE, "recv"),
        SpliceError::InvalidPacket { .. }
        | SpliceError::Framing(_)
        | SpliceError::PartialPacket { .. } => (SpliceErrorKind::Framing, 0, 0, ""),
    };
    bridge::SpliceEnd {
        side,
        ok: false,
        kind,
        ssl_error,
        errno_code,
        syscall,
        message: error.to_string(),
    }
}

unsafe fn start_splice(
    host: *mut bridge::SpliceHost,
    ssl: *mut bridge::SSL,
    uv_loop: *mut bridge::uv_loop_t,
    options: &bridge::SpliceOptions,
) -> Box<NativeSplice> {
    let direction = match options.direction {
        SpliceDirection::In => Direction::In,
        SpliceDirection::Out => Direction::Out,
        _ => Direction::Duplex,
    };
    let framing = match options.framing {
        SpliceFraming::Ip => Framing::Ip,
        SpliceFraming::Length16 => Framing::Length16,
        _ => Framing::Stream,
    };
    let config = Config {
        fd: options.fd,
        direction,
        framing,
        high_water_mark: options.high_water_mark,
        end: options.end,
        auto_close: options.auto_close,
    };
    let result = Splice::start(config, ssl.cast(), uv_loop.cast(), Box::new(CxxHost(host)));
    match result {
        Ok(splice) => Box::new(NativeSplice {
            splice: Some(splice),
            start_error: None,
        }),
        Err(error) => Box::new(NativeSplice {
            splice: None,
            start_error: Some(error),
        }),
    }
}

impl NativeSplice {
    fn start_error(&self) -> bridge::SpliceEnd {
        splice_end(Side::In, self.start_error)
    }

    fn push_decrypted(&mut self, data: &[u8]) {
        if let Some(splice) = &mut self.splice {
            splice.push_decrypted(data);
        }
    }

    fn hold_encrypt(&mut self, held: bool) {
        if let Some(splice) = &mut self.splice {
            splice.hold_encrypt(held);
        }
    }

    fn on_tls_input(&mut self) {
        if let Some(splice) = &mut self.splice {
            splice.on_tls_input();
        }
    }

    fn on_transport_eof(&mut self) {
        if let Some(splice) = &mut self.splice {
            splice.on_transport_eof();
        }
    }

    fn on_encrypted_drained(&mut self) {
        if let Some(splice) = &mut self.splice {
            splice.on_encrypted_drained();
        }
    }

    fn stop(&mut self) {
        if let Some(splice) = &mut self.splice {
            splice.stop();
        }
    }

    fn stats(&self) -> bridge::SpliceStats {
        let stats = self.splice.as_ref().map(|s| s.stats()).unwrap_or_default();
        bridge::SpliceStats {
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            packets_in: stats.packets_in,
            packets_out: stats.packets_out,
        }
    }

    fn is_closed(&self) -> bool {
        self.splice.as_ref().is_none_or(|s| s.is_closed())
    }

    fn wants_transport_reading(&self) -> bool {
        self.splice
            .as_ref()
            .is_none_or(|s| s.wants_transport_reading())
    }

    fn describe(&self) -> String {
        match (&self.splice, &self.start_error) {
            (Some(splice), _) => splice.describe(),
            (None, Some(error)) => format!("splice failed to start: {error}"),
            (None, None) => "splice without state".to_string(),
        }
    }
}
