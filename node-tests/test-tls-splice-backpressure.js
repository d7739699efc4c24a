'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs');

// Backpressure in both directions. When no process reads the FIFO that the
// splice writes to, the splice stops reading the TLS socket, the TCP window
// closes and the peer's writes stall, while the memory of this process stays
// flat. When the peer stops reading, the splice stops reading its FIFO, and
// the writer of that FIFO stalls. After the stall, everything arrives, in
// order.
//
// The test detects a stall without timers: a stall is STALL_TURNS event loop
// turns in a row without a 'drain' and without any change of the writer's
// writableLength or the splice's byte counts.

const assert = require('assert');
const { execFileSync } = require('child_process');
const { once } = require('events');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const fixtures = require('../common/fixtures');
const tmpdir = require('../common/tmpdir');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

// Maximum bytes a writer may offer before it must have stalled. A TCP
// connection buffers at most the maximum of tcp_rmem at the receiver plus the
// maximum of tcp_wmem at the sender (tcp(7)). Beyond those, the FIFO and the
// splice's highWaterMark, a writer that is not stalled after 16 MiB more
// means the splice keeps reading without a bound.
const OFFER_LIMIT = tcpBufferLimit() + 16 * 1024 * 1024;
const CHUNK = 64 * 1024;
const STALL_TURNS = 50;
// Loop turns one wait for a 'drain' or a stall may take.
const MAX_TURNS = 100000;
// Maximum growth of this process's RSS from before the transfer until the
// stall. The splice keeps at most highWaterMark plus one TLS record per
// direction, and the rest of the limit covers the allocator and V8.
const RSS_GROWTH_LIMIT = 4 * 1024 * 1024;

// Returns the most that the kernel may buffer for a loopback TCP connection
// in one direction: the maximum receive buffer plus the maximum send buffer.
function tcpBufferLimit() {
  const maximum = (name) => {
    const values = fs.readFileSync(`/proc/sys/net/ipv4/${name}`, 'latin1');
    return Number(values.trim().split(/\s+/)[2]);
  };
  try {
    return maximum('tcp_rmem') + maximum('tcp_wmem');
  } catch {
    // Without /proc, as on systems other than Linux, assume a bound well
    // above common defaults.
    return 48 * 1024 * 1024;
  }
}

tmpdir.refresh();
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

// Returns bytes whose aligned 32-bit big-endian words count up from 0, so
// that every offset has distinct content.
function sequence(length) {
  const data = Buffer.allocUnsafe(Math.ceil(length / 4) * 4);
  for (let i = 0; i < data.length; i += 4)
    data.writeUInt32BE(i / 4, i);
  return data.subarray(0, length);
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

// Writes `data` to `writer` in CHUNK pieces, waiting for 'drain' whenever
// write() returns false. Resolves with the number of bytes written once the
// writer stalled, or with -1 when all of `data` was written without a stall.
// `progress` returns a string that changes whenever any byte moves.
async function offerUntilStalled(writer, data, progress) {
  let offset = 0;
  while (offset < data.length) {
    const chunk = data.subarray(offset, offset + CHUNK);
    offset += chunk.length;
    if (writer.write(chunk))
      continue;

    let drained = false;
    const onDrain = () => {
      drained = true;
    };
    writer.once('drain', onDrain);
    let quietTurns = 0;
    let last = progress();
    for (let turn = 0; turn < MAX_TURNS && !drained; turn++) {
      await new Promise(setImmediate);
      const now = progress();
      if (now !== last) {
        last = now;
        quietTurns = 0;
      } else if (++quietTurns === STALL_TURNS) {
        writer.removeListener('drain', onDrain);
        return offset;
      }
    }
    assert.ok(drained, `no 'drain' and no stall in ${MAX_TURNS} loop turns`);
  }
  return -1;
}

// The client splices the decrypt direction into a FIFO that no process reads,
// while the server writes as much as it can.
async function testDecryptDirection() {
  const data = sequence(OFFER_LIMIT);
  const { client, server } = await connectPair();
  const fifo = openFifo();
  client.on('data', common.mustNotCall('spliced data reached JS'));
  client.on('end', common.mustCall());
  server.resume();

  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in',
                                   autoClose: true });
  handle.on('end', common.mustCall((direction) => {
    assert.strictEqual(direction, 'in');
  }));
  handle.on('error', common.mustNotCall());
  const closed = once(handle, 'close');

  const rssBefore = process.memoryUsage().rss;
  handle.start();
  const offered = await offerUntilStalled(
    server, data,
    () => `${server.writableLength} ${handle.stats.bytesIn}`);
  const rssGrowth = process.memoryUsage().rss - rssBefore;

  assert.notStrictEqual(
    offered, -1, `the server wrote ${OFFER_LIMIT} bytes without a stall`);
  assert.ok(server.writableLength > 0);
  assert.ok(rssGrowth < RSS_GROWTH_LIMIT,
            `RSS grew by ${rssGrowth} bytes until the stall`);

  // Now the FIFO gets a reader, and every byte the server wrote arrives.
  const sink = new net.Socket({ fd: fifo.readFd, readable: true,
                                writable: false });
  const atSink = readAll(sink);
  server.end();
  await closed;
  assert.strictEqual(handle.stats.bytesIn, offered);
  assertSameBytes(await atSink, data.subarray(0, offered),
                  'bytes at the FIFO');
}

// The client splices the encrypt direction from a FIFO while the server
// reads nothing, and a JS writer fills the FIFO as much as it can.
async function testEncryptDirection() {
  const data = sequence(OFFER_LIMIT);
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const source = new net.Socket({ fd: fifo.writeFd, readable: false,
                                  writable: true });
  server.pause();
  client.on('data', common.mustNotCall());
  client.on('end', common.mustCall());

  const handle = client.spliceTo({ fd: fifo.readFd, direction: 'out',
                                   autoClose: true });
  handle.on('end', common.mustCall((direction) => {
    assert.strictEqual(direction, 'out');
  }));
  handle.on('error', common.mustNotCall());
  const closed = once(handle, 'close');

  const rssBefore = process.memoryUsage().rss;
  handle.start();
  const offered = await offerUntilStalled(
    source, data,
    () => `${source.writableLength} ${handle.stats.bytesOut} ` +
          `${server.readableLength}`);
  const rssGrowth = process.memoryUsage().rss - rssBefore;

  assert.notStrictEqual(
    offered, -1, `the writer wrote ${OFFER_LIMIT} bytes without a stall`);
  assert.ok(source.writableLength > 0);
  assert.ok(rssGrowth < RSS_GROWTH_LIMIT,
            `RSS grew by ${rssGrowth} bytes until the stall`);

  // Now the server reads, and every byte the writer wrote arrives. The
  // server was paused explicitly, so a 'data' listener alone does not
  // resume it.
  const atServer = readAll(server);
  server.resume();
  source.end();
  assertSameBytes(await atServer, data.subarray(0, offered),
                  'bytes at the server');
  await closed;
  assert.strictEqual(handle.stats.bytesOut, offered);
}

async function main() {
  await testDecryptDirection();
  await testEncryptDirection();
}

main().then(common.mustCall());
