'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs and socket fds');

// Errors that end a splice:
// - the fd fails (EPIPE): a system error naming the syscall and the fd, and
//   the socket stays usable, with the bytes the fd did not take readable
//   from JS;
// - the peer resets the TCP connection: the bytes that arrived before the
//   reset still reach the fd;
// - a TLS error and the alert it sends: the handle emits the socket's own
//   error object;
// - TCP EOF without close_notify: ERR_TLS_SPLICE_TRUNCATED, and the fd's
//   write side is not shut down;
// - destroy() while a direction runs: ERR_STREAM_PREMATURE_CLOSE.
//
// The scenarios that need a socket fd run in a child process, on fd 3,
// which libuv creates with socketpair() for a 'pipe' stdio slot.

const assert = require('assert');
const { execFileSync, spawn } = require('child_process');
const { randomBytes } = require('crypto');
const { once } = require('events');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const fixtures = require('../common/fixtures');
const tmpdir = require('../common/tmpdir');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

const CHILD_FD = 3;
const RESET_DOWN_SIZE = 48 * 1024;
const RESET_UP_SIZE = 32 * 1024;
const TRUNCATED_SIZE = 256 * 1024;
const TRAILER = Buffer.from('written after the splice ended');

// Returns bytes whose aligned 32-bit big-endian words count up from 0, from
// stream offset `offset` on, so that every offset has distinct content.
function sequence(offset, length) {
  const firstWord = Math.floor(offset / 4);
  const wordCount = Math.ceil((offset + length) / 4) - firstWord;
  const words = Buffer.allocUnsafe(wordCount * 4);
  for (let i = 0; i < wordCount; i++)
    words.writeUInt32BE(firstWord + i, i * 4);
  const skip = offset - firstWord * 4;
  return words.subarray(skip, skip + length);
}

// Returns the first offset where the buffers differ, or -1.
function firstDifference(actual, expected) {
  const length = Math.min(actual.length, expected.length);
  for (let i = 0; i < length; i++) {
    if (actual[i] !== expected[i])
      return i;
  }
  return actual.length === expected.length ? -1 : length;
}

function assertSameBytes(actual, expected, description) {
  assert.strictEqual(actual.length, expected.length,
                     `${description}: ${actual.length} bytes, expected ` +
                     `${expected.length}`);
  assert.strictEqual(firstDifference(actual, expected), -1,
                     `${description}: the bytes differ`);
}

// Resolves with everything the stream emits before 'end'.
function readAll(stream) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', (chunk) => chunks.push(chunk));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
}

// Resolves once at least `length` bytes arrived, with all of them. The stream
// stays open.
function readBytes(stream, length) {
  return new Promise((resolve) => {
    const chunks = [];
    let received = 0;
    function onData(chunk) {
      chunks.push(chunk);
      received += chunk.length;
      if (received >= length) {
        stream.removeListener('data', onData);
        resolve(Buffer.concat(chunks));
      }
    }
    stream.on('data', onData);
  });
}

// Resolves with the handle's events as strings ('error EPIPE', 'close', ...)
// once it emitted 'close', and fails the test on any event after 'close'.
function recordEvents(handle) {
  const events = [];
  handle.on('end', (direction) => events.push(`end ${direction}`));
  handle.on('error', (err) => events.push(`error ${err.code}`));
  return new Promise((resolve) => {
    handle.on('close', common.mustCall(() => {
      events.push('close');
      handle.on('end', common.mustNotCall('\'end\' after \'close\''));
      handle.on('error', common.mustNotCall('\'error\' after \'close\''));
      resolve(events);
    }));
  });
}

// Starts a TLS server for one connection. Resolves with its port and a
// promise of the server-side socket.
function startServer(options) {
  return new Promise((resolve) => {
    const server = tls.createServer({ key, cert, ...options });
    const connected = new Promise((resolveSocket) => {
      server.on('secureConnection', common.mustCall((socket) => {
        server.close();
        resolveSocket(socket);
      }));
    });
    server.listen(0, '127.0.0.1', common.mustCall(() => {
      resolve({ port: server.address().port, connected });
    }));
  });
}

function connectClient(port, options) {
  return new Promise((resolve) => {
    const client = tls.connect({
      host: '127.0.0.1',
      port,
      rejectUnauthorized: false,
      ...options,
    }, common.mustCall(() => resolve(client)));
  });
}

// Resolves with { client, server } once both ends finished the handshake.
// `connectTo` can redirect the client to a proxy in front of the server.
async function connectPair(tlsOptions = {}, connectTo = (port) => port) {
  const { port, connected } = await startServer(tlsOptions);
  const client = await connectClient(await connectTo(port), tlsOptions);
  return { client, server: await connected };
}

// Forwards TCP connections to `targetPort` in whole TLS records. Once
// `state.truncate` is set, it holds back the last complete record from the
// server, and on the server's FIN it drops that record, which is the
// close_notify alert, and sends FIN to the client: a truncation attack.
function startTruncatingProxy(targetPort) {
  const state = { truncate: false };
  const proxy = net.createServer(common.mustCall((downstream) => {
    proxy.close();
    const upstream = net.connect(targetPort, '127.0.0.1');
    downstream.pipe(upstream);
    let pending = Buffer.alloc(0);
    upstream.on('data', (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      // Offsets where the complete records in `pending` start.
      const starts = [];
      let offset = 0;
      while (pending.length - offset >= 5) {
        const end = offset + 5 + pending.readUInt16BE(offset + 3);
        if (end > pending.length)
          break;
        starts.push(offset);
        offset = end;
      }
      const forwardUpTo = state.truncate ? starts.at(-1) ?? 0 : offset;
      if (forwardUpTo > 0) {
        downstream.write(pending.subarray(0, forwardUpTo));
        pending = pending.subarray(forwardUpTo);
      }
    });
    upstream.on('end', common.mustCall(() => {
      // Exactly one record is left: the server's last one.
      assert.ok(pending.length > 5);
      assert.strictEqual(pending.length, 5 + pending.readUInt16BE(3));
      downstream.end();
    }));
  }));
  return new Promise((resolve) => {
    proxy.listen(0, '127.0.0.1', common.mustCall(() => {
      state.port = proxy.address().port;
      resolve(state);
    }));
  });
}

// Forwards TCP connections to `targetPort`. Once `state.corrupt` is set, it
// flips one bit near the end of the next chunk the server sends, so that
// the client fails to authenticate that record and sends an alert.
function startCorruptingProxy(targetPort) {
  const state = { corrupt: false };
  const proxy = net.createServer(common.mustCall((downstream) => {
    proxy.close();
    const upstream = net.connect(targetPort, '127.0.0.1');
    downstream.pipe(upstream);
    // Either side may reset once the TLS session failed.
    downstream.on('error', () => {});
    upstream.on('error', () => {});
    upstream.on('data', (chunk) => {
      if (state.corrupt) {
        state.corrupt = false;
        chunk[chunk.length - 3] ^= 1;
      }
      downstream.write(chunk);
    });
    upstream.on('end', () => downstream.end());
  }));
  return new Promise((resolve) => {
    proxy.listen(0, '127.0.0.1', common.mustCall(() => {
      state.port = proxy.address().port;
      resolve(state);
    }));
  });
}

// The child's side: a TLS client that splices to fd 3.

const childScenarios = {
  // The server receives RESET_UP_SIZE bytes from fd 3 and sends
  // RESET_DOWN_SIZE bytes, which reach fd 3. Then the parent sends more
  // into fd 3 and the server resets the connection at once, so the reset
  // meets an encrypt direction that is still sending.
  async 'peer reset'(port) {
    const client = await connectClient(port);
    client.on('error', common.mustCall((err) => {
      assert.strictEqual(err.code, 'ECONNRESET');
    }));

    const handle = client.spliceTo({ fd: CHILD_FD });
    const events = recordEvents(handle);
    handle.start();

    assert.deepStrictEqual(await events, ['error ECONNRESET', 'close']);
    assert.strictEqual(handle.stats.bytesIn, RESET_DOWN_SIZE);
    assert.ok(handle.stats.bytesOut >= RESET_UP_SIZE);
  },

  // A duplex splice on fd 3 whose other end the parent closes while the
  // server sends: the write fails and the read returns EOF in the same poll
  // round. The error ends the splice; the 'out' direction neither reports
  // an end nor sends close_notify, so JS still writes to the socket.
  async 'fd closed in duplex'(port) {
    const client = await connectClient(port);
    client.on('error', common.mustNotCall());
    const handle = client.spliceTo({ fd: CHILD_FD });
    let error;
    handle.on('error', common.mustCall((err) => {
      error = err;
    }));
    const events = recordEvents(handle);
    handle.start();

    assert.deepStrictEqual(await events, [`error ${error.code}`, 'close']);
    assert.ok(['EPIPE', 'ECONNRESET'].includes(error.code), error.code);
    assert.strictEqual(error.fd, CHILD_FD);
    assert.strictEqual(client.writableEnded, false);
    client.end(TRAILER);
    client.resume();
    await once(client, 'end');
  },

  // The whole TLS connection runs in the child, through a proxy that drops
  // the server's close_notify. fd 3 gets every byte, but its write side is
  // not shut down, so the parent sees the bytes written afterwards.
  async 'truncation'(port, version) {
    const { port: serverPort, connected } =
      await startServer({ minVersion: version, maxVersion: version });
    const proxy = await startTruncatingProxy(serverPort);
    const client = await connectClient(proxy.port);
    assert.strictEqual(client.getProtocol(), version);
    client.on('data', common.mustNotCall('spliced data reached JS'));
    client.on('error', common.mustNotCall());

    const handle = client.spliceTo({ fd: CHILD_FD, direction: 'in' });
    assert.strictEqual(handle.direction, 'in');
    let error;
    handle.on('error', common.mustCall((err) => {
      error = err;
    }));
    const events = recordEvents(handle);
    handle.start();

    const server = await connected;
    proxy.truncate = true;
    server.end(sequence(0, TRUNCATED_SIZE));

    assert.deepStrictEqual(await events,
                           ['error ERR_TLS_SPLICE_TRUNCATED', 'close']);
    assert.strictEqual(error.name, 'Error');
    assert.match(error.message, /close_notify/);
    assert.strictEqual(handle.stats.bytesIn, TRUNCATED_SIZE);
    assert.strictEqual(fs.writeSync(CHILD_FD, TRAILER), TRAILER.length);
    fs.closeSync(CHILD_FD);
    client.destroy();
  },
};

// The parent's side.

// Runs a child scenario. Resolves with the child's end of the socket pair
// and a promise that resolves when the child exited with code 0.
function spawnChild(args) {
  const child = spawn(process.execPath, [__filename, 'child', ...args], {
    stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
  });
  const exited = once(child, 'exit').then(([code, signal]) => {
    assert.strictEqual(signal, null, `child ${args} got ${signal}`);
    assert.strictEqual(code, 0, `child ${args} exited with ${code}`);
  });
  return { peer: child.stdio[CHILD_FD], exited };
}

async function testPeerReset() {
  const up = randomBytes(RESET_UP_SIZE);
  const down = randomBytes(RESET_DOWN_SIZE);
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild(['peer reset', port]);
  // The child may exit with bytes of the last write still unread in fd 3,
  // and then the kernel resets this end of the socket pair.
  peer.on('error', (err) => {
    assert.strictEqual(err.code, 'ECONNRESET');
  });
  const atFd = readBytes(peer, down.length);
  peer.write(up);

  const socket = await connected;
  assertSameBytes(await readBytes(socket, up.length), up, 'bytes from fd 3');
  socket.write(down);
  assertSameBytes(await atFd, down, 'bytes at fd 3');

  // The client's receive queue is empty now, so its next read or write
  // fails with ECONNRESET. When the reset meets unread bytes instead, Linux
  // reports EOF, which the splice would rightly call a truncation.
  peer.write(randomBytes(256 * 1024));
  socket._parent.resetAndDestroy();
  await exited;
}

async function testFdClosedInDuplex() {
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild(['fd closed in duplex', port]);
  peer.on('error', () => {});
  const socket = await connected;
  // The first bytes reach fd 3; then its other end goes away while the
  // server still sends.
  const down = randomBytes(4 * 1024 * 1024);
  const first = readBytes(peer, 1);
  socket.write(down);
  await first;
  peer.destroy();
  socket.on('error', () => {});
  const trailer = readAll(socket);
  socket.end();
  assertSameBytes(await trailer, TRAILER, 'bytes the server received');
  await exited;
}

async function testTruncation(version) {
  const { peer, exited } = spawnChild(['truncation', 0, version]);
  const atFd = await readAll(peer);
  assertSameBytes(atFd, Buffer.concat([sequence(0, TRUNCATED_SIZE), TRAILER]),
                  'bytes at fd 3');
  await exited;
}

let fifoCount = 0;

// Opens both ends of a new FIFO as blocking fds that no libuv handle owns.
function openFifo() {
  const path = tmpdir.resolve(`fifo-${fifoCount++}`);
  execFileSync('mkfifo', [path]);
  // On Linux, opening a FIFO for reading and writing does not block
  // (fifo(7)). While that fd is open, the opens of the two ends return at once.
  const keeper = fs.openSync(path, 'r+');
  const readFd = fs.openSync(path, 'r');
  const writeFd = fs.openSync(path, 'w');
  fs.closeSync(keeper);
  return { readFd, writeFd };
}

// The FIFO has no reader when the splice starts, so its first write fails
// with EPIPE. The socket stays open, and JS reads and writes on.
async function testSinkClosedBeforeStart() {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  fs.closeSync(fifo.readFd);
  const sent = sequence(0, 256 * 1024);
  client.on('error', common.mustNotCall());

  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
  let error;
  handle.on('error', common.mustCall((err) => {
    error = err;
  }));
  const events = recordEvents(handle);
  handle.start();
  server.write(sent);

  assert.deepStrictEqual(await events, ['error EPIPE', 'close']);
  assert.strictEqual(error.syscall, 'write');
  assert.strictEqual(error.fd, fifo.writeFd);
  assert.strictEqual(handle.stats.bytesIn, 0);
  assert.strictEqual(client.destroyed, false);

  const readByJs = readAll(client);
  const atServer = readAll(server);
  server.end();
  client.end(TRAILER);
  assertSameBytes(await readByJs, sent, 'bytes JS read');
  assertSameBytes(await atServer, TRAILER, 'bytes the server received');
  fs.closeSync(fifo.writeFd);
}

// The FIFO's reader goes away after its first chunk. JS then reads exactly
// the bytes after those the splice wrote to the FIFO.
async function testSinkClosedDuringTransfer() {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const sink = new net.Socket({ fd: fifo.readFd, readable: true,
                                writable: false });
  const firstChunk = new Promise((resolve) => {
    sink.once('data', common.mustCall((chunk) => {
      sink.destroy();
      resolve(chunk);
    }));
  });
  const sent = sequence(0, 4 * 1024 * 1024);
  client.on('error', common.mustNotCall());

  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
  let error;
  handle.on('error', common.mustCall((err) => {
    error = err;
  }));
  const events = recordEvents(handle);
  handle.start();
  server.end(sent);
  server.resume();

  assert.deepStrictEqual(await events, ['error EPIPE', 'close']);
  assert.strictEqual(error.syscall, 'write');
  assert.strictEqual(error.fd, fifo.writeFd);
  const { bytesIn } = handle.stats;
  assert.ok(bytesIn > 0, `bytesIn is ${bytesIn}`);
  assert.ok(bytesIn < sent.length, `bytesIn is ${bytesIn}`);

  const chunk = await firstChunk;
  assertSameBytes(chunk, sent.subarray(0, chunk.length), 'bytes at the FIFO');
  assertSameBytes(await readAll(client), sent.subarray(bytesIn),
                  'bytes JS read after the error');
  fs.closeSync(fifo.writeFd);
}

// A bit flipped on the wire: the client's splice fails to decrypt, and the
// server's splice receives the client's alert. Each handle emits the error
// object its socket emits.
async function testTlsErrorAndAlert(version) {
  let proxy;
  const { client, server } = await connectPair(
    { minVersion: version, maxVersion: version },
    async (port) => {
      proxy = await startCorruptingProxy(port);
      return proxy.port;
    });
  assert.strictEqual(client.getProtocol(), version);

  const clientFifo = openFifo();
  const clientSink = readAll(new net.Socket({ fd: clientFifo.readFd,
                                              readable: true,
                                              writable: false }));
  const serverFifo = openFifo();
  const serverSink = readAll(new net.Socket({ fd: serverFifo.readFd,
                                              readable: true,
                                              writable: false }));

  const clientSocketError = once(client, 'error');
  const clientHandle = client.spliceTo({ fd: clientFifo.writeFd,
                                         direction: 'in', autoClose: true });
  const clientHandleError = once(clientHandle, 'error');
  const clientEvents = recordEvents(clientHandle);
  clientHandle.start();

  const serverSocketError = once(server, 'error');
  const serverHandle = server.spliceTo({ fd: serverFifo.writeFd,
                                         direction: 'in', autoClose: true });
  const serverHandleError = once(serverHandle, 'error');
  const serverEvents = recordEvents(serverHandle);
  serverHandle.start();

  const sent = sequence(0, 64 * 1024);
  proxy.corrupt = true;
  server.write(sent);

  const [clientError] = await clientHandleError;
  assert.match(clientError.code, /^ERR_SSL_/);
  assert.strictEqual((await clientSocketError)[0], clientError);
  assert.deepStrictEqual(await clientEvents,
                         [`error ${clientError.code}`, 'close']);
  // The records before the corrupted one reached the fd.
  const atClientSink = await clientSink;
  assert.strictEqual(atClientSink.length, clientHandle.stats.bytesIn);
  assertSameBytes(atClientSink, sent.subarray(0, atClientSink.length),
                  'bytes at the client\'s FIFO');
  // A TLS socket that failed after the handshake stays open until the user
  // destroys it. Destroying it here also makes a missing alert visible: the
  // server's splice would report a truncation instead.
  client.destroy();

  const [serverError] = await serverHandleError;
  assert.match(serverError.code, /ALERT_BAD_RECORD_MAC$/);
  assert.strictEqual((await serverSocketError)[0], serverError);
  assert.deepStrictEqual(await serverEvents,
                         [`error ${serverError.code}`, 'close']);
  assert.strictEqual((await serverSink).length, 0);
  server.destroy();
}

// destroy() ends the splice at once.
async function testDestroyWhileRunning() {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
  const events = recordEvents(handle);
  handle.start();
  // destroy() ends the splice as it ends streams: with 'close' and no
  // 'error'. Only pipeToNative() turns the early end into a rejection.
  client.destroy();
  assert.deepStrictEqual(await events, ['close']);
  assert.ok(fs.fstatSync(fifo.writeFd).isFIFO());

  const next = await connectPair();
  const rejected = assert.rejects(
    next.client.pipeToNative(fifo.writeFd, { direction: 'in' }),
    { code: 'ERR_STREAM_PREMATURE_CLOSE' });
  next.client.destroy();
  await rejected;

  fs.closeSync(fifo.readFd);
  fs.closeSync(fifo.writeFd);
  server.destroy();
  next.server.destroy();
}

async function main() {
  tmpdir.refresh();

  await testSinkClosedBeforeStart();
  await testSinkClosedDuringTransfer();
  await testPeerReset();
  await testFdClosedInDuplex();
  await testTlsErrorAndAlert('TLSv1.2');
  await testTlsErrorAndAlert('TLSv1.3');
  await testTruncation('TLSv1.2');
  await testTruncation('TLSv1.3');
  await testDestroyWhileRunning();
}

if (process.argv[2] === 'child') {
  const [, , , name, port, version] = process.argv;
  childScenarios[name](Number(port), version).then(common.mustCall());
} else {
  main().then(common.mustCall());
}
