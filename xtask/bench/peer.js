'use strict';
// The TLS peer of `cargo xtask bench`: a TLS 1.3 server on 127.0.0.1 that
// accepts one connection from the forwarder under test and sends, receives
// or exchanges a fixed amount of data.
//
// Argument: one JSON object with the fields
//   key, cert     paths of the PEM key and certificate
//   ciphersuite   the only cipher suite offered (TLS 1.3), so every client
//                 negotiates the same one
//   mode          'send': write `bytes` bytes, then end the session
//                 'receive': count bytes until the client ends the session
//                 'packets': send `packets` packets of `packetSize` bytes and
//                 receive as many, then end the session
//   bytes, packets, packetSize
//   framing       for mode 'packets': 'length16' (each packet preceded by
//                 its length as a 16-bit big-endian integer), 'none' (bare
//                 packets, counted by size) or 'ip' (IPv4 packets, cut by
//                 the total length in their header). With 'ip' the peer
//                 sends IPv4/UDP packets from 10.77.0.2:7001 to
//                 10.77.0.1:7002, for a TUN device whose address is
//                 10.77.0.1, and checks that every packet it receives is an
//                 IPv4 packet of `packetSize` bytes.
//   rate          packets per second to send, or 0 for as fast as possible
//   startDelayMs  for mode 'send': idle time between the handshake and the
//                 first byte sent
//   progressMs    for mode 'send': interval of 'progress' lines, or 0
//
// Every line on stdout is a JSON event: 'listening' (with the port),
// 'connected', 'progress' and 'done'. Times are CLOCK_MONOTONIC nanoseconds
// (process.hrtime.bigint()), the clock the xtask reads too. Failures go to
// stderr with exit code 1.

const fs = require('fs');
const tls = require('tls');

const config = JSON.parse(process.argv[2]);

const kChunkSize = 64 * 1024;
// Timer interval of paced sending, in milliseconds.
const kPacedTickMs = 1;

function now() {
  return process.hrtime.bigint().toString();
}

function emit(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

function fail(message) {
  process.stderr.write(`bench peer: ${message}\n`);
  process.exit(1);
}

// Writes `total` bytes with backpressure. `accepted` counts the bytes whose
// write callback ran, that is, the bytes the TLS socket has passed on.
function sendBytes(socket, total, onDone) {
  const chunk = Buffer.alloc(kChunkSize, 0x5a);
  let queued = 0;
  let accepted = 0;
  let firstNs;
  let progressTimer;
  if (config.progressMs > 0) {
    progressTimer = setInterval(() => {
      emit({ event: 'progress', accepted, queued, at: now() });
    }, config.progressMs);
  }
  const onWritten = (length) => () => {
    accepted += length;
  };
  const writeMore = () => {
    while (queued < total) {
      const length = Math.min(kChunkSize, total - queued);
      const data = length === kChunkSize ? chunk : chunk.subarray(0, length);
      firstNs ??= now();
      queued += length;
      if (!socket.write(data, onWritten(length))) {
        socket.once('drain', writeMore);
        return;
      }
    }
    socket.end(() => {
      clearInterval(progressTimer);
      onDone({ sent: accepted, firstNs: firstNs ?? now(), lastNs: now() });
    });
  };
  writeMore();
}

function receiveBytes(socket, onDone) {
  let received = 0;
  let firstNs;
  let lastNs;
  socket.on('data', (data) => {
    lastNs = now();
    firstNs ??= lastNs;
    received += data.length;
  });
  socket.on('end', () => {
    onDone({ received, firstNs: firstNs ?? now(), lastNs: lastNs ?? now() });
  });
}

// Addresses and UDP ports of the packets of framing 'ip'.
const kTunSource = [10, 77, 0, 2];
const kTunDestination = [10, 77, 0, 1];
const kTunSourcePort = 7001;
const kTunDestinationPort = 7002;
const kIpv4HeaderSize = 20;

// Returns the Internet checksum (RFC 1071) of `data`.
function internetChecksum(data) {
  let sum = 0;
  for (let i = 0; i < data.length; i += 2)
    sum += (data[i] << 8) + (i + 1 < data.length ? data[i + 1] : 0);
  while (sum > 0xffff)
    sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

// Returns an IPv4 packet of `size` bytes that carries a UDP datagram from
// kTunSource to kTunDestination. Its UDP checksum is 0, which IPv4 allows
// and which means that there is none.
function ipv4UdpPacket(size) {
  const packet = Buffer.alloc(size, 0xa5);
  packet[0] = 0x45;
  packet[1] = 0;
  packet.writeUInt16BE(size, 2);
  packet.writeUInt32BE(0, 4);
  packet[8] = 64;
  packet[9] = 17;
  packet.writeUInt16BE(0, 10);
  packet.set(kTunSource, 12);
  packet.set(kTunDestination, 16);
  packet.writeUInt16BE(internetChecksum(packet.subarray(0, kIpv4HeaderSize)),
                       10);
  const udp = kIpv4HeaderSize;
  packet.writeUInt16BE(kTunSourcePort, udp);
  packet.writeUInt16BE(kTunDestinationPort, udp + 2);
  packet.writeUInt16BE(size - kIpv4HeaderSize, udp + 4);
  packet.writeUInt16BE(0, udp + 6);
  return packet;
}

// Counts the IPv4 packets in a byte stream, cut by the total length in
// their header, and fails on any packet that is not IPv4 or not
// `packetSize` bytes long.
class Ipv4PacketCounter {
  #pending = Buffer.alloc(0);
  #offset = 0;
  count = 0;

  push(chunk) {
    const data = this.#pending.length === 0 ? chunk :
      Buffer.concat([this.#pending, chunk]);
    let offset = 0;
    while (data.length - offset >= 4) {
      const version = data[offset] >> 4;
      const length = data.readUInt16BE(offset + 2);
      if (version !== 4 || length !== config.packetSize) {
        fail(`received a packet of IP version ${version} and ${length} ` +
             `bytes at stream offset ${this.#offset + offset}, expected ` +
             `IPv4 packets of ${config.packetSize} bytes`);
      }
      if (data.length - offset < length)
        break;
      offset += length;
      this.count++;
    }
    this.#offset += offset;
    this.#pending = data.subarray(offset);
  }
}

// Returns the frame that the peer sends for each packet.
function packetFrame() {
  const { packetSize } = config;
  switch (config.framing) {
    case 'length16': {
      const frame = Buffer.alloc(2 + packetSize, 0xa5);
      frame.writeUInt16BE(packetSize, 0);
      return frame;
    }
    case 'none':
      return Buffer.alloc(packetSize, 0xa5);
    case 'ip':
      return ipv4UdpPacket(packetSize);
    default:
      fail(`invalid framing ${JSON.stringify(config.framing)}`);
  }
}

// Sends and receives `packets` packets at once. Received packets are
// counted by bytes, because every packet has the same size, except with
// framing 'ip', where they are cut by their IPv4 headers.
function exchangePackets(socket, onDone) {
  const { packets, rate } = config;
  const frame = packetFrame();
  const frameSize = frame.length;
  const expectedBytes = packets * frameSize;
  const ipCounter = config.framing === 'ip' ? new Ipv4PacketCounter() : null;

  let sent = 0;
  let receivedBytes = 0;
  let firstNs;
  let lastNs;
  let sendDone = packets === 0;
  let receiveDone = packets === 0;
  const finishIfDone = () => {
    if (!sendDone || !receiveDone)
      return;
    socket.end();
    onDone({
      sentPackets: sent,
      receivedPackets: ipCounter === null ? receivedBytes / frameSize :
        ipCounter.count,
      firstNs: firstNs ?? now(),
      lastNs: lastNs ?? now(),
    });
  };

  socket.on('data', (data) => {
    lastNs = now();
    firstNs ??= lastNs;
    receivedBytes += data.length;
    ipCounter?.push(data);
    if (receivedBytes > expectedBytes)
      fail(`received ${receivedBytes} bytes, expected ${expectedBytes}`);
    if (receivedBytes === expectedBytes) {
      receiveDone = true;
      finishIfDone();
    }
  });

  const onAllSent = () => {
    sendDone = true;
    finishIfDone();
  };
  if (rate > 0) {
    // Paced: send the packets due by now every tick, so the offered rate
    // stays the same whatever the timer's jitter.
    const startNs = process.hrtime.bigint();
    const timer = setInterval(() => {
      const elapsedNs = Number(process.hrtime.bigint() - startNs);
      const due = Math.min(packets, Math.floor(elapsedNs * rate / 1e9) + 1);
      while (sent < due) {
        firstNs ??= now();
        socket.write(frame);
        sent++;
      }
      if (sent === packets) {
        clearInterval(timer);
        onAllSent();
      }
    }, kPacedTickMs);
    return;
  }
  const writeMore = () => {
    while (sent < packets) {
      firstNs ??= now();
      sent++;
      if (!socket.write(frame)) {
        socket.once('drain', writeMore);
        return;
      }
    }
    onAllSent();
  };
  writeMore();
}

const server = tls.createServer({
  key: fs.readFileSync(config.key),
  cert: fs.readFileSync(config.cert),
  minVersion: 'TLSv1.3',
  ciphers: config.ciphersuite,
});

server.once('secureConnection', (socket) => {
  // One connection per run.
  server.close();
  socket.setNoDelay(true);
  socket.on('error', (err) => fail(`TLS socket error: ${err.stack}`));
  emit({
    event: 'connected',
    at: now(),
    cipher: socket.getCipher().standardName,
    protocol: socket.getProtocol(),
  });
  const onDone = (result) => emit({ event: 'done', ...result });
  switch (config.mode) {
    case 'send':
      // The delay lets the xtask sample the forwarder's memory while idle.
      setTimeout(sendBytes, config.startDelayMs ?? 0, socket, config.bytes,
                 onDone);
      break;
    case 'receive':
      receiveBytes(socket, onDone);
      break;
    case 'packets':
      exchangePackets(socket, onDone);
      break;
    default:
      fail(`invalid mode ${JSON.stringify(config.mode)}`);
  }
});

server.on('tlsClientError', (err) => fail(`handshake failed: ${err.stack}`));

server.listen(0, '127.0.0.1', () => {
  emit({ event: 'listening', port: server.address().port });
});
