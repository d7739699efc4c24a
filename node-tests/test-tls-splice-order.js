'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs');

// Ordering at the start of a splice and the split of the two directions
// between the splice and JS:
// - cleartext that TLS decrypted before start() reaches the fd before any
//   byte the splice decrypts, even when start() runs inside a 'data' handler;
// - from start() on, no decrypted byte of a spliced direction reaches JS,
//   also while the start waits for a pending write;
// - bytes passed to tlsSocket.write() before start() reach the peer before
//   any byte read from the fd, and the write callback runs exactly once;
// - writes made while the encrypt direction is spliced wait for its end;
// - the direction that is not spliced stays with JS.

const assert = require('assert');
const { execFileSync } = require('child_process');
const { randomBytes } = require('crypto');
const { once } = require('events');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const fixtures = require('../common/fixtures');
const tmpdir = require('../common/tmpdir');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

const WRITE_SIZE = 10 * 1024;

tmpdir.refresh();
let fifoCount = 0;

function makeFifo() {
  const path = tmpdir.resolve(`fifo-${fifoCount++}`);
  execFileSync('mkfifo', [path]);
  return path;
}

// Opens both ends of a new FIFO as blocking fds that no libuv handle owns.
function openFifo() {
  const path = makeFifo();
  // On Linux, opening a FIFO for reading and writing does not block
  // (fifo(7)). While that fd is open, the opens of the two ends return at once.
  const keeper = fs.openSync(path, 'r+');
  const readFd = fs.openSync(path, 'r');
  const writeFd = fs.openSync(path, 'w');
  fs.closeSync(keeper);
  return { readFd, writeFd };
}

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

function assertSameBytes(actual, expected) {
  assert.strictEqual(actual.length, expected.length);
  assert.strictEqual(firstDifference(actual, expected), -1);
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

// Resolves with { client, server } once both ends finished the handshake.
function connectPair() {
  return new Promise((resolve) => {
    const server = tls.createServer({ key, cert });
    let client;
    let serverSocket;
    let pending = 2;
    function onSecure() {
      if (--pending === 0)
        resolve({ client, server: serverSocket });
    }
    server.on('secureConnection', common.mustCall((socket) => {
      serverSocket = socket;
      server.close();
      onSecure();
    }));
    server.listen(0, '127.0.0.1', common.mustCall(() => {
      client = tls.connect({
        host: '127.0.0.1',
        port: server.address().port,
        rejectUnauthorized: false,
      }, common.mustCall(onSecure));
    }));
  });
}

function watchHandle(handle, direction) {
  handle.on('end', common.mustCall((ended) => {
    assert.strictEqual(ended, direction);
  }));
  handle.on('error', common.mustNotCall());
  handle.on('close', common.mustCall());
  return once(handle, 'close');
}

// The peer sends three records right after the handshake, and the client
// splices the decrypt direction from inside its first 'data' handler. JS has
// consumed that first chunk, so the fd gets exactly the rest, in order.
async function testStartInDataHandler() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  const sent = sequence(0, 3 * WRITE_SIZE);

  let handle;
  let firstChunk;
  let closed;
  // Exactly one 'data' event: the splice owns everything after it.
  client.on('data', common.mustCall((chunk) => {
    firstChunk = chunk;
    handle = client.spliceTo({ fd: writeFd, direction: 'in', autoClose: true });
    closed = watchHandle(handle, 'in');
    handle.start();
  }));
  client.on('end', common.mustCall(() => {
    // The socket's own 'end' comes after the fd received every byte.
    assert.strictEqual(handle.stats.bytesIn, sent.length - firstChunk.length);
  }));

  server.write(sent.subarray(0, WRITE_SIZE));
  server.write(sent.subarray(WRITE_SIZE, 2 * WRITE_SIZE));
  server.write(sent.subarray(2 * WRITE_SIZE));
  server.end();
  server.resume();

  const received = await sinkData;
  await closed;
  assert.ok(firstChunk.length < sent.length,
            `the first 'data' chunk has ${firstChunk.length} bytes`);
  assertSameBytes(firstChunk, sent.subarray(0, firstChunk.length));
  assertSameBytes(received, sent.subarray(firstChunk.length));
}

// Cleartext that waits in the socket's readable buffer, because nothing read
// it yet, goes to the fd first.
async function testStartWithBufferedData() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  const sent = sequence(0, 3 * WRITE_SIZE);

  let handle;
  let closed;
  client.once('readable', common.mustCall(() => {
    assert.ok(client.readableLength > 0);
    handle = client.spliceTo({ fd: writeFd, direction: 'in', autoClose: true });
    closed = watchHandle(handle, 'in');
    handle.start();
    client.on('data', common.mustNotCall('spliced data reached JS'));
  }));

  server.write(sent.subarray(0, WRITE_SIZE));
  server.write(sent.subarray(WRITE_SIZE, 2 * WRITE_SIZE));
  server.write(sent.subarray(2 * WRITE_SIZE));
  server.end();
  server.resume();

  const received = await sinkData;
  await closed;
  assertSameBytes(received, sent);
  assert.strictEqual(handle.stats.bytesIn, sent.length);
}

// With setEncoding(), the socket's decoder holds the first bytes of a
// character that the next chunk completes. A splice started after the first
// 'data' event writes those bytes to the fd before the rest, and JS gets no
// replacement character for them later.
async function testStartWithPartialCharacter() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  // U+1F600 is F0 9F 98 80 in UTF-8; the first write ends inside it.
  const text = Buffer.from('a\u{1F600}b');
  client.setEncoding('utf8');

  let handle;
  let closed;
  client.once('data', common.mustCall((chunk) => {
    assert.strictEqual(chunk, 'a');
    handle = client.spliceTo({ fd: writeFd, direction: 'in', autoClose: true });
    closed = watchHandle(handle, 'in');
    handle.start();
    client.on('data', common.mustNotCall('spliced data reached JS'));
  }));

  server.write(text.subarray(0, 3));
  server.end(text.subarray(3));
  server.resume();

  assertSameBytes(await sinkData, text.subarray(1));
  await closed;
  assert.strictEqual(handle.stats.bytesIn, text.length - 1);
}

// A large tlsSocket.write() is still in progress when start() runs in the
// same tick. The peer receives all of it before the bytes the fd already
// holds, and the write callback runs exactly once.
async function testPendingWriteFirst() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const jsData = randomBytes(4 * 1024 * 1024);
  const fdData = randomBytes(32 * 1024);
  // A FIFO's default capacity is 64 KiB (pipe(7)), so this write returns at
  // once, and the close makes EOF follow the data.
  fs.writeSync(writeFd, fdData);
  fs.closeSync(writeFd);

  const serverData = readAll(server);
  client.on('data', common.mustNotCall());
  client.on('end', common.mustCall());

  client.write(jsData, common.mustCall((err) => {
    assert.ifError(err);
  }));
  assert.ok(client.writableLength > 0);
  const handle = client.spliceTo({ fd: readFd, direction: 'out',
                                   autoClose: true });
  const closed = watchHandle(handle, 'out');
  handle.start();

  const received = await serverData;
  await closed;
  assertSameBytes(received, Buffer.concat([jsData, fdData]));
  assert.strictEqual(handle.stats.bytesOut, fdData.length);
}

// A duplex splice whose native start waits for a pending tlsSocket.write()
// owns the decrypt direction from start() on: what the peer sends meanwhile
// goes to the fd, not to 'data' listeners. The fd is a FIFO opened for
// reading and writing, which returns it to the peer after the JS bytes.
async function testDuplexStartWaitsForWrite() {
  const { client, server } = await connectPair();
  const echoFd = fs.openSync(makeFifo(), 'r+');
  const jsData = randomBytes(4 * 1024 * 1024);
  const down = randomBytes(64 * 1024);
  const serverData = readBytes(server, jsData.length + down.length);

  client.write(jsData, common.mustSucceed());
  assert.ok(client.writableLength > 0);
  const handle = client.spliceTo({ fd: echoFd });
  handle.on('error', common.mustNotCall());
  handle.start();
  client.on('data', common.mustNotCall('decrypted data reached JS after ' +
                                       'start()'));
  server.write(down);

  assertSameBytes(await serverData, Buffer.concat([jsData, down]));
  await handle.stop();
  assert.strictEqual(handle.stats.bytesIn, down.length);
  assert.strictEqual(handle.stats.bytesOut, down.length);
  fs.closeSync(echoFd);
  client.destroy();
  server.destroy();
}

// Data written while the splice owns the encrypt direction is sent after the
// splice ends. With `end: false`, EOF on the fd sends no close_notify, so JS
// can still write and end the socket itself.
async function testWriteWhileSplicedWaits() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const fdData = randomBytes(48 * 1024);
  const jsData = Buffer.from('written while the encrypt direction is spliced');
  fs.writeSync(writeFd, fdData);
  fs.closeSync(writeFd);

  const serverData = readAll(server);
  client.on('data', common.mustNotCall());
  client.on('end', common.mustCall());

  const handle = client.spliceTo({ fd: readFd, direction: 'out', end: false,
                                   autoClose: true });
  const closed = watchHandle(handle, 'out');
  handle.start();
  client.write(jsData, common.mustSucceed());

  await closed;
  client.end();
  const received = await serverData;
  assertSameBytes(received, Buffer.concat([fdData, jsData]));
  assert.strictEqual(handle.stats.bytesOut, fdData.length);
}

// With only the decrypt direction spliced, JS still writes to the socket.
async function testJsWritesWhileInSpliced() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  const toFd = randomBytes(256 * 1024);
  const fromJs = randomBytes(256 * 1024);

  const serverData = readAll(server);
  client.on('data', common.mustNotCall('spliced data reached JS'));
  client.on('end', common.mustCall());

  const handle = client.spliceTo({ fd: writeFd, direction: 'in',
                                   autoClose: true });
  const closed = watchHandle(handle, 'in');
  handle.start();

  server.write(toFd);
  client.write(fromJs, common.mustSucceed());
  // The server ends after it wrote, and the client then ends its side too,
  // because allowHalfOpen is false.
  server.end();

  assertSameBytes(await sinkData, toFd);
  assertSameBytes(await serverData, fromJs);
  await closed;
  assert.strictEqual(handle.stats.bytesIn, toFd.length);
  assert.strictEqual(handle.stats.bytesOut, 0);
}

// With only the encrypt direction spliced, JS still reads from the socket.
async function testJsReadsWhileOutSpliced() {
  const { client, server } = await connectPair();
  const { readFd, writeFd } = openFifo();
  const source = new net.Socket({ fd: writeFd, readable: false,
                                  writable: true });
  const fromFd = randomBytes(256 * 1024);
  const toJs = randomBytes(256 * 1024);

  const serverData = readAll(server);
  const clientData = readAll(client);

  const handle = client.spliceTo({ fd: readFd, direction: 'out',
                                   autoClose: true });
  const closed = watchHandle(handle, 'out');
  handle.start();

  server.write(toJs);
  source.end(fromFd);

  // The server ends in response to the close_notify that the splice sends on
  // fd EOF.
  assertSameBytes(await serverData, fromFd);
  assertSameBytes(await clientData, toJs);
  await closed;
  assert.strictEqual(handle.stats.bytesOut, fromFd.length);
  assert.strictEqual(handle.stats.bytesIn, 0);
}

async function main() {
  await testStartInDataHandler();
  await testStartWithBufferedData();
  await testStartWithPartialCharacter();
  await testPendingWriteFirst();
  await testDuplexStartWaitsForWrite();
  await testWriteWhileSplicedWaits();
  await testJsWritesWhileInSpliced();
  await testJsReadsWhileOutSpliced();
}

main().then(common.mustCall());
