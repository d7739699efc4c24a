//! The `cxx` bridge between the pump and its host, Node's TLSWrap.

#[cxx::bridge(namespace = "tls_splice")]
pub mod bridge {
    extern "Rust" {
        /// Returns the version of this library, `CARGO_PKG_VERSION`.
        fn version() -> &'static str;
    }
}

fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}
