//! Generates the C++ side of the `cxx` bridge and the libuv bindings.
//!
//! libuv's `uv.h` is taken from `TLS_SPLICE_UV_INCLUDE` when it is set
//! (`cargo xtask build-node` points it at the Node.js tree's `deps/uv/include`,
//! the libuv that `node` links), and otherwise from the system's libuv found
//! by pkg-config, which the crate's own tests link against.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=include/tls-splice/tls_splice_host.h");
    println!("cargo:rerun-if-env-changed=TLS_SPLICE_UV_INCLUDE");

    let uv_include = match env::var_os("TLS_SPLICE_UV_INCLUDE") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let uv = pkg_config::Config::new()
                .atleast_version("1.40")
                .probe("libuv")
                .expect("libuv not found by pkg-config; install libuv1-dev or set TLS_SPLICE_UV_INCLUDE");
            uv.include_paths
                .first()
                .cloned()
                .unwrap_or_else(|| PathBuf::from("/usr/include"))
        }
    };
    // The bridge's C++ side includes uv.h and openssl/ssl.h through
    // include/tls-splice/tls_splice_host.h.
    cxx_build::bridge("src/ffi.rs")
        .include("include")
        .include(&uv_include)
        .std("c++17")
        .compile("tls-splice-bridge");

    let header = uv_include.join("uv.h");
    println!("cargo:rerun-if-changed={}", header.display());

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .clang_arg(format!("-I{}", uv_include.display()))
        .allowlist_function("uv_(poll|close|is_closing|loop|run|stop|err_name|strerror|default_loop|backend|now|update_time|timer|unref|ref|handle)_?.*")
        .allowlist_type("uv_(poll|loop|handle|timer)_t")
        .allowlist_type("uv_(poll_event|run_mode|errno_t)")
        .allowlist_var("UV_E.*")
        .derive_default(false)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .expect("bindgen failed on uv.h");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    bindings
        .write_to_file(out.join("uv.rs"))
        .expect("cannot write the libuv bindings");
}
