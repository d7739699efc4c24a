//! Errors that end a splice direction.

use std::fmt;
use std::os::fd::RawFd;

use crate::framing::FramingError;

/// Error that ended a splice direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceError {
    /// OpenSSL reported a fatal error, and `ssl_error` is the
    /// `SSL_get_error()` code. The pump leaves the error queue untouched, so
    /// the host can build the same error object it builds for JS reads.
    Tls { ssl_error: i32 },
    /// The transport ended without a TLS `close_notify` alert, so the peer
    /// may not have sent everything (RFC 8446, section 6.1).
    Truncated,
    /// A system call on the spliced fd failed.
    Fd {
        syscall: &'static str,
        errno: i32,
        fd: RawFd,
    },
    /// A packet write to the fd accepted fewer bytes than the packet has.
    ShortPacketWrite {
        fd: RawFd,
        written: usize,
        len: usize,
    },
    /// A packet read from the fd does not fit the framing, for example a
    /// datagram longer than the 16-bit length prefix can describe.
    PacketTooLarge { fd: RawFd, len: usize, max: usize },
    /// A packet read from the fd with `ip` framing is not one whole IPv4 or
    /// IPv6 packet.
    InvalidPacket { fd: RawFd, len: usize },
    /// The decrypted stream does not contain valid packet headers.
    Framing(FramingError),
    /// `close_notify` arrived in the middle of a packet.
    PartialPacket { offset: u64, len: usize },
}

impl SpliceError {
    /// Builds an fd error from `errno` of the failed `syscall`.
    pub fn last_os_error(syscall: &'static str, fd: RawFd) -> SpliceError {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        SpliceError::Fd { syscall, errno, fd }
    }

    /// Returns the symbolic name (`EPIPE`) of an errno value.
    pub fn errno_name(errno: i32) -> &'static str {
        match errno {
            libc::EPIPE => "EPIPE",
            libc::EBADF => "EBADF",
            libc::EIO => "EIO",
            libc::EINVAL => "EINVAL",
            libc::ECONNRESET => "ECONNRESET",
            libc::ENOTCONN => "ENOTCONN",
            libc::EMSGSIZE => "EMSGSIZE",
            libc::ENOBUFS => "ENOBUFS",
            libc::ENOSPC => "ENOSPC",
            libc::EPERM => "EPERM",
            libc::EEXIST => "EEXIST",
            libc::EFAULT => "EFAULT",
            libc::EAGAIN => "EAGAIN",
            libc::ENOTSOCK => "ENOTSOCK",
            libc::EDESTADDRREQ => "EDESTADDRREQ",
            libc::EFBIG => "EFBIG",
            libc::EISDIR => "EISDIR",
            _ => "EUNKNOWN",
        }
    }
}

impl fmt::Display for SpliceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            SpliceError::Tls { ssl_error } => write!(f, "TLS error (SSL_get_error {ssl_error})"),
            SpliceError::Truncated => {
                write!(f, "the TLS stream ended without close_notify; data may be truncated")
            }
            SpliceError::Fd { syscall, errno, fd } => write!(
                f,
                "{syscall} on fd {fd} failed: {} ({})",
                SpliceError::errno_name(errno),
                std::io::Error::from_raw_os_error(errno)
            ),
            SpliceError::ShortPacketWrite { fd, written, len } => write!(
                f,
                "write of a {len}-byte packet to fd {fd} accepted only {written} bytes"
            ),
            SpliceError::PacketTooLarge { fd, len, max } => write!(
                f,
                "packet of {len} bytes read from fd {fd} exceeds the framing's maximum of {max} bytes"
            ),
            SpliceError::InvalidPacket { fd, len } => write!(
                f,
                "a read of {len} byte(s) from fd {fd} is not one whole IPv4 or IPv6 packet"
            ),
            SpliceError::Framing(error) => error.fmt(f),
            SpliceError::PartialPacket { offset, len } => write!(
                f,
                "the TLS stream ended inside a packet: {len} bytes at stream offset {offset} do not form a whole packet"
            ),
        }
    }
}

impl std::error::Error for SpliceError {}
