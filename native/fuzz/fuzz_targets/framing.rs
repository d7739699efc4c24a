//! Feeds arbitrary bytes to the packet parser as a decrypted TLS stream
//! and checks `tls_splice::framing::check_stream_cutting` invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tls_splice::framing::{check_stream_cutting, Framing};

fuzz_target!(|data: &[u8]| {
    check_stream_cutting(Framing::Ip, data);
    check_stream_cutting(Framing::Length16, data);
});
