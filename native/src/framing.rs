//! Packet boundaries on the TLS byte stream.
//!
//! With `Framing::Ip` the stream is a sequence of raw IPv4 and IPv6 packets,
//! each delimited by the length in its own header. With `Framing::Length16`
//! each packet is preceded by its length as a 16-bit big-endian integer.
//! `Framing::Stream` has no packets: every byte can be written as it comes.

use std::fmt;

/// Mapping of the bytes on the TLS stream to writes on the fd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Stream,
    Ip,
    Length16,
}

/// Size of an IPv4 header without options (RFC 791, IHL = 5).
pub const IPV4_MIN_HEADER: usize = 20;
/// Size of the fixed IPv6 header (RFC 8200, section 3).
pub const IPV6_HEADER: usize = 40;
/// Largest packet any framing can describe: an IPv6 header plus the largest
/// payload length field (65,535 bytes). IPv4's total length and the 16-bit
/// length prefix are both at most 65,535.
pub const MAX_PACKET: usize = IPV6_HEADER + u16::MAX as usize;
/// Size of the `Framing::Length16` length prefix.
pub const LENGTH16_PREFIX: usize = 2;

/// A packet located at the start of a buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Bytes to skip before the packet (the length prefix).
    pub prefix: usize,
    /// Length of the packet itself, as written to the fd.
    pub len: usize,
}

impl Packet {
    /// Bytes the packet occupies on the TLS stream.
    pub fn wire_len(&self) -> usize {
        self.prefix + self.len
    }
}

/// Reason the bytes at a packet boundary cannot start a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingErrorKind {
    /// The IP version nibble is neither 4 nor 6.
    BadVersion(u8),
    /// The IPv4 header length field (IHL, in 32-bit words) is below 5.
    BadHeaderLength(u8),
    /// The length in the header is shorter than the header itself.
    LengthBelowHeader { length: usize, header: usize },
}

/// A framing error at a given offset of the decrypted stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramingError {
    /// Offset of the offending packet's first byte in the decrypted stream.
    pub offset: u64,
    pub kind: FramingErrorKind,
}

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            FramingErrorKind::BadVersion(version) => write!(
                f,
                "invalid IP packet at stream offset {}: version {version}, expected 4 or 6",
                self.offset
            ),
            FramingErrorKind::BadHeaderLength(ihl) => write!(
                f,
                "invalid IPv4 packet at stream offset {}: header length {} bytes, expected at least {IPV4_MIN_HEADER}",
                self.offset,
                usize::from(ihl) * 4
            ),
            FramingErrorKind::LengthBelowHeader { length, header } => write!(
                f,
                "invalid IP packet at stream offset {}: total length {length} is shorter than its {header}-byte header",
                self.offset
            ),
        }
    }
}

impl std::error::Error for FramingError {}

impl Framing {
    /// Returns whether writes to the fd must preserve packet boundaries.
    pub fn is_packet(self) -> bool {
        self != Framing::Stream
    }

    /// Locates the packet at the start of `buf`. Returns `Ok(None)` when more
    /// bytes are needed to read its length, and an error kind when the
    /// header is invalid. Never called for `Framing::Stream`.
    pub fn parse(self, buf: &[u8]) -> Result<Option<Packet>, FramingErrorKind> {
        match self {
            Framing::Stream => unreachable!("stream framing has no packets"),
            Framing::Length16 => {
                if buf.len() < LENGTH16_PREFIX {
                    return Ok(None);
                }
                let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
                Ok(Some(Packet {
                    prefix: LENGTH16_PREFIX,
                    len,
                }))
            }
            Framing::Ip => {
                let Some(&first) = buf.first() else {
                    return Ok(None);
                };
                match first >> 4 {
                    4 => {
                        let ihl = first & 0x0f;
                        if ihl < 5 {
                            return Err(FramingErrorKind::BadHeaderLength(ihl));
                        }
                        if buf.len() < 4 {
                            return Ok(None);
                        }
                        let header = usize::from(ihl) * 4;
                        let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
                        if length < header {
                            return Err(FramingErrorKind::LengthBelowHeader { length, header });
                        }
                        Ok(Some(Packet {
                            prefix: 0,
                            len: length,
                        }))
                    }
                    6 => {
                        if buf.len() < 6 {
                            return Ok(None);
                        }
                        let payload = usize::from(u16::from_be_bytes([buf[4], buf[5]]));
                        Ok(Some(Packet {
                            prefix: 0,
                            len: IPV6_HEADER + payload,
                        }))
                    }
                    version => Err(FramingErrorKind::BadVersion(version)),
                }
            }
        }
    }
}

/// Cuts `stream` into packets the way the pump does, and panics if the
/// parser breaks an invariant. A decision made on a prefix of a header never
/// changes when more bytes arrive. A packet is at least as long as its
/// header and at most `MAX_PACKET`. Only IPv4 and IPv6 headers are accepted.
/// The unit tests and the fuzz target share this check.
pub fn check_stream_cutting(framing: Framing, stream: &[u8]) {
    let mut offset = 0;
    while offset < stream.len() {
        let rest = &stream[offset..];
        let full = framing.parse(rest);
        for cut in 0..rest.len().min(8) {
            match framing.parse(&rest[..cut]) {
                Ok(None) => {}
                partial => assert_eq!(partial, full, "decision on {cut} bytes changed with more"),
            }
        }
        let packet = match full {
            Ok(Some(packet)) => packet,
            Ok(None) | Err(_) => return,
        };
        assert!(packet.len <= MAX_PACKET);
        if framing == Framing::Ip {
            let version = rest[0] >> 4;
            assert!(version == 4 || version == 6, "accepted version {version}");
            let header = if version == 4 {
                usize::from(rest[0] & 0x0f) * 4
            } else {
                IPV6_HEADER
            };
            assert!(packet.len >= header, "packet shorter than its header");
        }
        if packet.wire_len() > rest.len() {
            return;
        }
        offset += packet.wire_len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_streams_keep_parser_invariants() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for round in 0..2000 {
            let len = round % 300;
            let stream: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Bias toward valid version nibbles and small lengths.
                    match seed % 4 {
                        0 => 0x45,
                        1 => 0x60,
                        2 => 0,
                        _ => (seed >> 8) as u8,
                    }
                })
                .collect();
            check_stream_cutting(Framing::Ip, &stream);
            check_stream_cutting(Framing::Length16, &stream);
        }
    }

    fn ipv4(total: u16) -> Vec<u8> {
        let mut packet = vec![0u8; usize::from(total)];
        packet[0] = 0x45;
        packet[2..4].copy_from_slice(&total.to_be_bytes());
        packet
    }

    #[test]
    fn ipv4_length_from_header() {
        let packet = ipv4(1400);
        assert_eq!(
            Framing::Ip.parse(&packet),
            Ok(Some(Packet {
                prefix: 0,
                len: 1400
            }))
        );
        assert_eq!(Framing::Ip.parse(&packet[..3]), Ok(None));
        assert_eq!(Framing::Ip.parse(&[]), Ok(None));
    }

    #[test]
    fn ipv4_header_only_packet_is_valid() {
        assert_eq!(
            Framing::Ip.parse(&ipv4(20)),
            Ok(Some(Packet { prefix: 0, len: 20 }))
        );
    }

    #[test]
    fn ipv4_length_below_header_is_rejected() {
        let mut packet = ipv4(24);
        packet[0] = 0x46; // IHL 6: a 24-byte header
        packet[2..4].copy_from_slice(&23u16.to_be_bytes());
        assert_eq!(
            Framing::Ip.parse(&packet),
            Err(FramingErrorKind::LengthBelowHeader {
                length: 23,
                header: 24
            })
        );
    }

    #[test]
    fn ipv4_short_ihl_is_rejected() {
        assert_eq!(
            Framing::Ip.parse(&[0x44]),
            Err(FramingErrorKind::BadHeaderLength(4))
        );
    }

    #[test]
    fn ipv6_length_is_header_plus_payload() {
        let mut packet = vec![0u8; 40];
        packet[0] = 0x6a; // version 6, non-zero traffic class bits
        packet[1] = 0xbc;
        assert_eq!(
            Framing::Ip.parse(&packet),
            Ok(Some(Packet { prefix: 0, len: 40 }))
        );
        packet[4..6].copy_from_slice(&1000u16.to_be_bytes());
        assert_eq!(
            Framing::Ip.parse(&packet),
            Ok(Some(Packet {
                prefix: 0,
                len: 1040
            }))
        );
        assert_eq!(Framing::Ip.parse(&packet[..5]), Ok(None));
    }

    #[test]
    fn other_versions_are_rejected() {
        for version in [0u8, 1, 5, 7, 15] {
            assert_eq!(
                Framing::Ip.parse(&[version << 4]),
                Err(FramingErrorKind::BadVersion(version))
            );
        }
    }

    #[test]
    fn length16_prefix() {
        assert_eq!(Framing::Length16.parse(&[0]), Ok(None));
        assert_eq!(
            Framing::Length16.parse(&[0, 0]),
            Ok(Some(Packet { prefix: 2, len: 0 }))
        );
        assert_eq!(
            Framing::Length16.parse(&[0xff, 0xff, 1]),
            Ok(Some(Packet {
                prefix: 2,
                len: 65535
            }))
        );
    }

    #[test]
    fn error_message_names_offset_and_value() {
        let error = FramingError {
            offset: 4096,
            kind: FramingErrorKind::BadVersion(5),
        };
        assert_eq!(
            error.to_string(),
            "invalid IP packet at stream offset 4096: version 5, expected 4 or 6"
        );
    }
}
