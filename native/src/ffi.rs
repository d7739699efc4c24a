//! The `cxx` bridge between the pump and its C++ host, node's TLSWrap.
//!
//! C++ implements `tls_splice::SpliceHost` (include/tls-splice/tls_splice_host.h) and
//! creates a splice with `start_splice`. The returned `NativeSplice` stays
//! owned by C++ until `SpliceHost::OnClosed` was called.

use std::pin::Pin;

use crate::error::SpliceError;
use crate::framing::Framing;
use crate::pump::{Config, Direction, Host, Side, Splice};

#[cxx::bridge(namespace = "tls_splice")]
pub mod bridge {
    /// Options of `start_splice`; JS validated them already.
    struct SpliceOptions {
        fd: i32,
        /// 0: in (TLS -> fd), 1: out (fd -> TLS), 2: duplex.
        direction: u8,
        /// 0: stream, 1: ip, 2: length16.
        framing: u8,
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

    /// Why a direction ended, or why a splice could not start.
    struct SpliceEnd {
        /// 0: in, 1: out.
        side: u8,
        ok: bool,
        /// One of the `kSpliceError*` kinds below; 0 when `ok`.
        kind: u8,
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

/// Error kinds in `SpliceEnd::kind`.
pub const KIND_TLS: u8 = 1;
pub const KIND_TRUNCATED: u8 = 2;
pub const KIND_FD: u8 = 3;
pub const KIND_FRAMING: u8 = 4;

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
        Side::In => 0,
        Side::Out => 1,
    };
    let Some(error) = error else {
        return bridge::SpliceEnd {
            side,
            ok: true,
            kind: 0,
            ssl_error: 0,
            errno_code: 0,
            syscall: "",
            message: String::new(),
        };
    };
    let (kind, ssl_error, errno_code, syscall) = match error {
        SpliceError::Tls { ssl_error } => (KIND_TLS, ssl_error, 0, ""),
        SpliceError::Truncated => (KIND_TRUNCATED, 0, 0, ""),
        SpliceError::Fd { syscall, errno, .. } => (KIND_FD, 0, errno, syscall),
        SpliceError::ShortPacketWrite { .. } => (KIND_FD, 0, libc::EMSGSIZE, "write"),
        SpliceError::PacketTooLarge { .. } => (KIND_FD, 0, libc::EMSGSIZE, "recv"),
        SpliceError::InvalidPacket { .. } | SpliceError::Framing(_) | SpliceError::PartialPacket { .. } => {
            (KIND_FRAMING, 0, 0, "")
        }
    };
    bridge::SpliceEnd { side, ok: false, kind, ssl_error, errno_code, syscall, message: error.to_string() }
}

unsafe fn start_splice(
    host: *mut bridge::SpliceHost,
    ssl: *mut bridge::SSL,
    uv_loop: *mut bridge::uv_loop_t,
    options: &bridge::SpliceOptions,
) -> Box<NativeSplice> {
    let direction = match options.direction {
        0 => Direction::In,
        1 => Direction::Out,
        _ => Direction::Duplex,
    };
    let framing = match options.framing {
        0 => Framing::Stream,
        1 => Framing::Ip,
        _ => Framing::Length16,
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
        Ok(splice) => Box::new(NativeSplice { splice: Some(splice), start_error: None }),
        Err(error) => Box::new(NativeSplice { splice: None, start_error: Some(error) }),
    }
}

impl NativeSplice {
    fn start_error(&self) -> bridge::SpliceEnd {
        splice_end(Side::In, self.start_error)
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
        self.splice.as_ref().is_none_or(|s| s.wants_transport_reading())
    }

    fn describe(&self) -> String {
        match (&self.splice, &self.start_error) {
            (Some(splice), _) => splice.describe(),
            (None, Some(error)) => format!("splice failed to start: {error}"),
            (None, None) => "splice without state".to_string(),
        }
    }
}
