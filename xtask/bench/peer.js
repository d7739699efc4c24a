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
//   framing       'length16' (each packet preceded by its length as a 16-bit
//                 big-endian integer) or 'none' (bare packets, counted by
//                 size), for mode 'packets'
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

// Sends and receives `packets` packets at once. Received packets are
// counted by bytes, because every packet has the same size.
function exchangePackets(socket, onDone) {
  const { packets, packetSize, rate } = config;
  const headerSize = config.framing === 'length16' ? 2 : 0;
  const frameSize = headerSize + packetSize;
  const frame = Buffer.alloc(frameSize, 0xa5);
  if (headerSize === 2)
    frame.writeUInt16BE(packetSize, 0);
  const expectedBytes = packets * frameSize;

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
      receivedPackets: receivedBytes / frameSize,
      firstNs: firstNs ?? now(),
      lastNs: lastNs ?? now(),
    });
  };

  socket.on('data', (data) => {
    lastNs = now();
    firstNs ??= lastNs;
    receivedBytes += data.length;
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
