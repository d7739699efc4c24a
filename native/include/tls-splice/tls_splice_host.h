#ifndef TLS_SPLICE_HOST_H_
#define TLS_SPLICE_HOST_H_

#include <openssl/ssl.h>
#include <uv.h>

#include <cstddef>
#include <cstdint>

#include "rust/cxx.h"

namespace tls_splice {

struct SpliceEnd;

// The object that owns the TLS session and its transport (TLSWrap in node)
// implements this interface for the pump. The pump calls it on the event
// loop thread, from its own entry points and libuv callbacks. An
// implementation must not call back into the pump from these methods; it
// defers anything that can reach JavaScript.
class SpliceHost {
 public:
  virtual ~SpliceHost() = default;

  // Writes what OpenSSL put into the write BIO to the transport.
  virtual void FlushEncrypted() = 0;
  // Encrypted bytes not yet accepted by the transport: pending in the write
  // BIO plus queued on the transport.
  virtual size_t EncryptedBacklog() const = 0;
  // Starts or stops reading ciphertext from the transport.
  virtual void SetTransportReading(bool reading) = 0;
  // Sends close_notify, flushes it, and half-closes the transport.
  virtual void ShutdownTls() = 0;
  // A spliced direction ended, cleanly or with an error.
  virtual void OnDirectionEnded(const SpliceEnd& end) = 0;
  // Decrypted bytes that did not reach the fd, in order, for the host's own
  // reader.
  virtual void GiveBack(rust::Slice<const uint8_t> first,
                        rust::Slice<const uint8_t> second) = 0;
  // The fd is no longer polled (and closed with auto_close). Last call; the
  // host may free the splice from here on.
  virtual void OnClosed() = 0;
};

}  // namespace tls_splice

#endif  // TLS_SPLICE_HOST_H_
