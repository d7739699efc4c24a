#ifndef TLS_SPLICE_HOST_H_
#define TLS_SPLICE_HOST_H_

// The interface between the Rust pump and the C++ object that owns the TLS
// session (Node's TLSWrap). The pump calls these methods from libuv
// callbacks on the event-loop thread.

namespace tls_splice {}  // namespace tls_splice

#endif  // TLS_SPLICE_HOST_H_
