/*
 * A minimal TLS forwarder in C, the yardstick of native code for
 * `cargo xtask bench`: an SSL_read/SSL_write loop over blocking fds, with no
 * buffering beyond one chunk per direction. Packets waiting on the fd are
 * coalesced into one SSL_write of up to a TLS record.
 *
 * Usage: forward PORT DIRECTION FRAMING FD
 *   PORT       the TLS peer's port on 127.0.0.1
 *   DIRECTION  in (TLS -> fd), out (fd -> TLS) or duplex
 *   FRAMING    stream, or length16: the fd is a packet socket and each
 *              packet travels on the TLS stream after its length as a 16-bit
 *              big-endian integer, or ip: the fd is a TUN device and the
 *              TLS stream carries bare IPv4 or IPv6 packets, cut by the
 *              length in their headers
 *   FD         the descriptor to forward to and from
 *
 * Exits 0 when every direction has ended (close_notify or EOF), 1 on any
 * error, with a message on stderr. A TUN device has no EOF, so with ip
 * framing the forwarder exits at the peer's close_notify.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

enum {
  kChunkSize = 64 * 1024,
  kMaxPacketSize = 65535,
  /* Maximum plaintext of one TLS record (RFC 8446, section 5.1). */
  kRecordSize = 16 * 1024,
};

static void die(const char *format, ...) {
  va_list args;
  va_start(args, format);
  fputs("forward: ", stderr);
  vfprintf(stderr, format, args);
  va_end(args);
  fputc('\n', stderr);
  ERR_print_errors_fp(stderr);
  exit(1);
}

static void write_all(int fd, const unsigned char *data, size_t length) {
  while (length > 0) {
    ssize_t written = write(fd, data, length);
    if (written < 0) {
      if (errno == EINTR)
        continue;
      die("write to fd %d failed: %s", fd, strerror(errno));
    }
    data += written;
    length -= (size_t)written;
  }
}

static void ssl_write_all(SSL *ssl, const unsigned char *data, size_t length) {
  size_t written = 0;
  if (length > 0 && SSL_write_ex(ssl, data, length, &written) != 1)
    die("SSL_write failed");
}

static ssize_t read_fd(int fd, unsigned char *buffer, size_t size) {
  for (;;) {
    ssize_t length = read(fd, buffer, size);
    if (length >= 0)
      return length;
    if (errno != EINTR)
      die("read from fd %d failed: %s", fd, strerror(errno));
  }
}

/* Reads the packets waiting on `fd`, at least one, each after its 16-bit
   length, until they fill a TLS record. Returns the bytes stored, or 0 at
   EOF. Coalescing them into one SSL_write saves a record and a TCP segment
   per packet, as the native pump does. */
static ssize_t read_packets(int fd, unsigned char *buffer) {
  size_t used = 0;
  while (used < kRecordSize) {
    int flags = used == 0 ? 0 : MSG_DONTWAIT;
    ssize_t length = recv(fd, buffer + used + 2, kMaxPacketSize, flags);
    if (length < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      die("recv from fd %d failed: %s", fd, strerror(errno));
    }
    /* EOF, or an empty packet, which this benchmark never sends. */
    if (length == 0)
      break;
    buffer[used] = (unsigned char)(length >> 8);
    buffer[used + 1] = (unsigned char)length;
    used += 2 + (size_t)length;
  }
  return (ssize_t)used;
}

/* Reads the IP packets waiting on the TUN device `fd`, which must be
   non-blocking, at least one, until they fill a TLS record. Returns the
   bytes stored, or 0 if no packet was waiting. */
static ssize_t read_ip_packets(int fd, unsigned char *buffer) {
  size_t used = 0;
  while (used < kRecordSize) {
    ssize_t length = read(fd, buffer + used, kMaxPacketSize);
    if (length < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      die("read from fd %d failed: %s", fd, strerror(errno));
    }
    used += (size_t)length;
  }
  return (ssize_t)used;
}

/* Returns the length of the IP packet at `data` from its header, given at
   least 6 bytes of it. */
static size_t ip_packet_length(const unsigned char *data) {
  int version = data[0] >> 4;
  if (version == 4)
    return ((size_t)data[2] << 8) | data[3];
  if (version == 6)
    return 40 + (((size_t)data[4] << 8) | data[5]);
  die("IP version %d at the start of a packet", version);
  return 0;
}

/* Returns the number of bytes read, or 0 at close_notify. */
static size_t ssl_read_some(SSL *ssl, unsigned char *buffer, size_t size) {
  size_t length = 0;
  if (SSL_read_ex(ssl, buffer, size, &length) == 1)
    return length;
  if (SSL_get_error(ssl, 0) == SSL_ERROR_ZERO_RETURN)
    return 0;
  die("SSL_read failed");
  return 0;
}

/* Packets of the decrypt direction that arrived split across reads. */
struct Reassembly {
  unsigned char data[2 * kChunkSize + 2 + kMaxPacketSize];
  size_t length;
};

/* Appends decrypted bytes and writes every whole packet to `fd`, one
   write per packet. With `ip` the packets are bare IP packets, else each
   follows its 16-bit length. */
static void deliver_packets(struct Reassembly *pending, int fd, int ip,
                            const unsigned char *data, size_t length) {
  memcpy(pending->data + pending->length, data, length);
  pending->length += length;
  size_t offset = 0;
  size_t prefix = ip ? 0 : 2;
  while (pending->length - offset >= (ip ? 6 : 2)) {
    const unsigned char *start = pending->data + offset;
    size_t packet = ip ? ip_packet_length(start)
                       : ((size_t)start[0] << 8) | start[1];
    if (pending->length - offset < prefix + packet)
      break;
    write_all(fd, start + prefix, packet);
    offset += prefix + packet;
  }
  memmove(pending->data, pending->data + offset, pending->length - offset);
  pending->length -= offset;
}

static SSL *connect_tls(int port) {
  int sock = socket(AF_INET, SOCK_STREAM, 0);
  if (sock < 0)
    die("socket failed: %s", strerror(errno));
  int one = 1;
  setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  struct sockaddr_in address = {0};
  address.sin_family = AF_INET;
  address.sin_port = htons((unsigned short)port);
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(sock, (struct sockaddr *)&address, sizeof(address)) != 0)
    die("connect to 127.0.0.1:%d failed: %s", port, strerror(errno));

  SSL_CTX *context = SSL_CTX_new(TLS_client_method());
  if (context == NULL ||
      !SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION))
    die("cannot create the TLS context");
  /* The peer's certificate is a throwaway one made for the run. */
  SSL_CTX_set_verify(context, SSL_VERIFY_NONE, NULL);
  SSL *ssl = SSL_new(context);
  if (ssl == NULL || !SSL_set_fd(ssl, sock))
    die("cannot create the TLS session");
  if (SSL_connect(ssl) != 1)
    die("TLS handshake with 127.0.0.1:%d failed", port);
  return ssl;
}

/* Sends close_notify and FIN, ending the encrypt direction. */
static void end_tls(SSL *ssl) {
  if (SSL_shutdown(ssl) < 0)
    die("SSL_shutdown failed");
  shutdown(SSL_get_fd(ssl), SHUT_WR);
}

int main(int argc, char **argv) {
  if (argc != 5)
    die("usage: forward PORT in|out|duplex stream|length16|ip FD");
  int port = atoi(argv[1]);
  int decrypt = strcmp(argv[2], "out") != 0;
  int encrypt = strcmp(argv[2], "in") != 0;
  int ip = strcmp(argv[3], "ip") == 0;
  int packets = ip || strcmp(argv[3], "length16") == 0;
  int fd = atoi(argv[4]);
  if (ip && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0)
    die("cannot make fd %d non-blocking: %s", fd, strerror(errno));
  /* Set once the fd -> TLS direction of an 'out' forwarder has ended. */
  int discard = 0;

  SSL *ssl = connect_tls(port);
  int sock = SSL_get_fd(ssl);
  static unsigned char buffer[kRecordSize + 2 + kMaxPacketSize];
  static struct Reassembly pending;

  while (decrypt || encrypt) {
    struct pollfd fds[2] = {
        {.fd = decrypt ? sock : -1, .events = POLLIN},
        {.fd = encrypt ? fd : -1, .events = POLLIN},
    };
    /* Bytes OpenSSL already decrypted do not make the socket readable. */
    if (!(decrypt && SSL_pending(ssl) > 0) && poll(fds, 2, -1) < 0) {
      if (errno == EINTR)
        continue;
      die("poll failed: %s", strerror(errno));
    }
    if (decrypt && (SSL_pending(ssl) > 0 || fds[0].revents != 0)) {
      size_t length = ssl_read_some(ssl, buffer, kChunkSize);
      if (length == 0) {
        decrypt = 0;
        /* The peer has received every packet, and a TUN device never
           reaches EOF, so the fd -> TLS direction ends too. */
        if (ip)
          encrypt = 0;
        else if (!discard)
          shutdown(fd, SHUT_WR);
      } else if (discard) {
        continue;
      } else if (packets) {
        deliver_packets(&pending, fd, ip, buffer, length);
      } else {
        write_all(fd, buffer, length);
      }
    }
    if (encrypt && fds[1].revents != 0) {
      ssize_t length;
      if (ip) {
        length = read_ip_packets(fd, buffer);
        if (length == 0)
          continue;
      } else if (packets) {
        length = read_packets(fd, buffer);
      } else {
        length = read_fd(fd, buffer, kChunkSize);
      }
      if (length == 0) {
        encrypt = 0;
        end_tls(ssl);
        /* Closing with unread input (such as the session tickets a TLS 1.3
           server sends) would reset the connection and could discard data
           the peer has not read yet, so wait for the peer's close_notify. */
        if (!decrypt) {
          decrypt = 1;
          discard = 1;
        }
      } else {
        ssl_write_all(ssl, buffer, (size_t)length);
      }
    }
  }
  return 0;
}
