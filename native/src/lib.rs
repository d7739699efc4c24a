//! Native pump for `tlsSocket.spliceTo()`: moves the cleartext of a TLS
//! session between OpenSSL and a file descriptor from libuv callbacks.

pub mod error;
pub mod ffi;
pub mod framing;
pub mod pump;
pub mod ring;
pub mod uv;

pub use error::SpliceError;
pub use framing::Framing;
pub use pump::{Config, Direction, Host, Side, Splice, Stats};
