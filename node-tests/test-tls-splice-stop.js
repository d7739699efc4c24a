'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs');

// stop() hands both directions back to JS without losing or repeating a
// byte: every byte read from the fd reaches the peer, and every decrypted
// byte reaches the fd or the socket's readable side, in order. The test runs
// 100 start/stop cycles during a transfer in both directions, with JS
// reading and writing between cycles, and checks both streams end to end.
// It also checks the handle's states and the abort signal.

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

const CYCLES = 100;
// Bytes per write of the server's endless stream.
const DOWN_CHUNK = 64 * 1024;
// Bytes written into the source FIFO before each cycle.
const UP_CHUNK = 8 * 1024;

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
function connectPair(clientOptions) {
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
        ...clientOptions,
      }, common.mustCall(onSecure));
    }));
  });
}

// Makes the server write sequence() bytes until `stop` is set, following its
// backpressure, and then end. `sent` counts the bytes written.
function startDownstream(server) {
  const state = { sent: 0, stop: false };
  function writeMore() {
    while (!state.stop) {
      const chunk = sequence(state.sent, DOWN_CHUNK);
      state.sent += DOWN_CHUNK;
      if (!server.write(chunk)) {
        server.once('drain', writeMore);
        return;
      }
    }
    server.end();
  }
  writeMore();
  return state;
}

// Starts a handle that must neither end nor fail before stop().
function startInterrupted(handle) {
  handle.on('end', common.mustNotCall('a direction ended'));
  handle.on('error', common.mustNotCall());
  handle.on('close', common.mustCall());
  handle.start();
}

// Collects what the stream emits: `received` counts the bytes so far, and
// `all` resolves with all of them at 'end'.
function collect(stream) {
  const collected = { received: 0 };
  collected.all = new Promise((resolve, reject) => {
    const chunks = [];
    stream.on('data', (chunk) => {
      chunks.push(chunk);
      collected.received += chunk.length;
    });
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
  });
  return collected;
}

// Waits before stop() as the cycle's variant selects: not at all (stop() in
// the same tick as start()), one loop turn, or until the collected stream
// has more than `before` bytes, which only this cycle's splice can cause.
async function runCycle(variant, stream, collected, before) {
  switch (variant) {
    case 'same tick':
      break;
    case 'one turn':
      await new Promise(setImmediate);
      break;
    default:
      while (collected.received <= before)
        await once(stream, 'data');
      break;
  }
}

function totalLength(buffers) {
  return buffers.reduce((total, buffer) => total + buffer.length, 0);
}

// Writes `data` to the client between cycles. In odd cycles the write is
// done before the next start(), so the pump starts at once. In even cycles
// the next start() finds it pending and waits for it.
async function writeBetweenCycles(client, cycle, data) {
  const written = new Promise((resolve) => {
    client.write(data, common.mustSucceed(resolve));
  });
  if (cycle % 2 === 1)
    await written;
}

// Reads what the client's readable side contains after a cycle. Every fifth
// cycle waits for data if none is there, so JS reads in many cycles.
async function readBetweenCycles(client, cycle) {
  let chunk = client.read();
  if (chunk === null && cycle % 5 === 0) {
    await once(client, 'readable');
    chunk = client.read();
  }
  return chunk;
}

// One handle for 'in' on one FIFO and one for 'out' on another, started and
// stopped together in every cycle. The client allows half-open connections,
// so the server's end after the cycles does not end the last splice early.
async function testCyclesTwoHandles() {
  const { client, server } = await connectPair({ allowHalfOpen: true });
  const sinkFifo = openFifo();
  const sink = new net.Socket({ fd: sinkFifo.readFd, readable: true,
                                writable: false });
  const sinkData = collect(sink);
  const sourceFifo = openFifo();
  const source = new net.Socket({ fd: sourceFifo.writeFd, readable: false,
                                  writable: true });
  const serverData = collect(server);
  const downstream = startDownstream(server);

  // Offset of the next byte of the server's stream that the client has not
  // yet received, by the fd or by JS.
  let downOffset = 0;
  const expectedAtSink = [];
  // Bytes of the up stream written into the source FIFO, and bytes of it
  // that the splices sent.
  let upFed = 0;
  let upOffset = 0;
  const expectedAtServer = [];
  let bytesReadByJs = 0;

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    source.write(sequence(upFed, UP_CHUNK));
    upFed += UP_CHUNK;

    const spliceIn = client.spliceTo({ fd: sinkFifo.writeFd,
                                       direction: 'in' });
    const spliceOut = client.spliceTo({ fd: sourceFifo.readFd,
                                        direction: 'out' });
    startInterrupted(spliceIn);
    startInterrupted(spliceOut);
    switch (cycle % 4) {
      case 0:
        await runCycle('same tick');
        break;
      case 1:
        await runCycle('one turn');
        break;
      case 2:
        await runCycle('decrypt direction moved', sink, sinkData,
                       totalLength(expectedAtSink));
        break;
      default:
        await runCycle('encrypt direction moved', server, serverData,
                       totalLength(expectedAtServer));
        break;
    }
    await Promise.all([spliceIn.stop(), spliceOut.stop()]);

    const { bytesIn } = spliceIn.stats;
    expectedAtSink.push(sequence(downOffset, bytesIn));
    downOffset += bytesIn;
    const { bytesOut } = spliceOut.stats;
    assert.ok(upOffset + bytesOut <= upFed,
              `cycle ${cycle} sent ${bytesOut} bytes, more than the FIFO held`);
    expectedAtServer.push(sequence(upOffset, bytesOut));
    upOffset += bytesOut;

    const chunk = await readBetweenCycles(client, cycle);
    if (chunk !== null) {
      assertSameBytes(chunk, sequence(downOffset, chunk.length),
                      `JS read after cycle ${cycle}`);
      downOffset += chunk.length;
      bytesReadByJs += chunk.length;
    }
    const written = Buffer.from(`[JS write after cycle ${cycle}]`);
    expectedAtServer.push(written);
    await writeBetweenCycles(client, cycle, written);
  }

  // Each kind of transfer happened in the cycles.
  assert.ok(bytesReadByJs > 0);
  assert.ok(expectedAtSink.some((part) => part.length > 0));
  assert.ok(upOffset > 0);

  // JS reads the rest of the server's stream, and a last splice sends the
  // rest of the source FIFO up to its EOF, then close_notify.
  downstream.stop = true;
  client.on('data', (chunk) => {
    assertSameBytes(chunk, sequence(downOffset, chunk.length),
                    'JS read after the cycles');
    downOffset += chunk.length;
  });
  const clientEnded = once(client, 'end');
  client.resume();

  const last = client.spliceTo({ fd: sourceFifo.readFd, direction: 'out' });
  last.on('end', common.mustCall((direction) => {
    assert.strictEqual(direction, 'out');
  }));
  last.on('error', common.mustNotCall());
  const lastClosed = once(last, 'close');
  last.start();
  source.end();
  await lastClosed;
  assert.strictEqual(last.stats.bytesOut, upFed - upOffset);
  expectedAtServer.push(sequence(upOffset, upFed - upOffset));

  await clientEnded;
  assert.strictEqual(downOffset, downstream.sent);
  assertSameBytes(await serverData.all, Buffer.concat(expectedAtServer),
                  'bytes the server received');

  fs.closeSync(sinkFifo.writeFd);
  assertSameBytes(await sinkData.all, Buffer.concat(expectedAtSink),
                  'bytes the sink FIFO received');
  fs.closeSync(sourceFifo.readFd);
}

// One duplex handle per cycle on a FIFO opened for reading and writing, which
// returns every byte written to it, so the server gets its own bytes back,
// mixed with what JS writes between cycles.
async function testCyclesDuplexEcho() {
  const { client, server } = await connectPair({ allowHalfOpen: true });
  const echoPath = makeFifo();
  const echoFd = fs.openSync(echoPath, 'r+');
  // A reader that takes nothing until the end, when it collects the bytes
  // that the last cycle left in the FIFO.
  const { O_RDONLY, O_NONBLOCK } = fs.constants;
  const leftoverFd = fs.openSync(echoPath, O_RDONLY | O_NONBLOCK);
  const serverData = collect(server);
  const downstream = startDownstream(server);

  let downOffset = 0;
  const writtenToFd = [];
  // Bytes of the echo stream (everything written to the FIFO) that the
  // splices read back and sent.
  let echoOffset = 0;
  // What the server must receive: [offset, length] ranges of the echo stream
  // and the buffers JS wrote.
  const expectedAtServer = [];
  let bytesReadByJs = 0;

  for (let cycle = 0; cycle < CYCLES; cycle++) {
    const splice = client.spliceTo({ fd: echoFd });
    startInterrupted(splice);
    // The server receives more than the bytes expected so far only when the
    // splice moved bytes both ways: into the FIFO and back out of it.
    const variants = ['same tick', 'one turn', 'echoed'];
    const expectedSoFar = expectedAtServer.reduce((total, part) => {
      return total + (Buffer.isBuffer(part) ? part.length : part[1]);
    }, 0);
    await runCycle(variants[cycle % variants.length], server, serverData,
                   expectedSoFar);
    await splice.stop();

    const { bytesIn, bytesOut } = splice.stats;
    writtenToFd.push(sequence(downOffset, bytesIn));
    downOffset += bytesIn;
    expectedAtServer.push([echoOffset, bytesOut]);
    echoOffset += bytesOut;

    const chunk = await readBetweenCycles(client, cycle);
    if (chunk !== null) {
      assertSameBytes(chunk, sequence(downOffset, chunk.length),
                      `JS read after cycle ${cycle}`);
      downOffset += chunk.length;
      bytesReadByJs += chunk.length;
    }
    const written = Buffer.from(`[JS write after cycle ${cycle}]`);
    expectedAtServer.push(written);
    await writeBetweenCycles(client, cycle, written);
  }

  // Each kind of transfer happened in the cycles.
  assert.ok(bytesReadByJs > 0);
  assert.ok(writtenToFd.some((part) => part.length > 0));
  assert.ok(echoOffset > 0);

  const echoStream = Buffer.concat(writtenToFd);
  assert.ok(echoOffset <= echoStream.length,
            `the splices sent ${echoOffset} bytes of ${echoStream.length}`);

  // Without autoClose the fd is still open. Once it is closed, the FIFO has
  // no writer, so the leftover reader gets the rest and then EOF.
  fs.closeSync(echoFd);
  const leftover = [];
  const buffer = Buffer.alloc(64 * 1024);
  // A FIFO's capacity is 64 KiB unless F_SETPIPE_SZ raised it (pipe(7)), so
  // 64 reads of up to 64 KiB each empty it.
  for (let i = 0; i < 64; i++) {
    const length = fs.readSync(leftoverFd, buffer);
    if (length === 0)
      break;
    leftover.push(Buffer.from(buffer.subarray(0, length)));
  }
  fs.closeSync(leftoverFd);
  assertSameBytes(Buffer.concat(leftover), echoStream.subarray(echoOffset),
                  'bytes left in the FIFO');

  downstream.stop = true;
  client.on('data', (chunk) => {
    assertSameBytes(chunk, sequence(downOffset, chunk.length),
                    'JS read after the cycles');
    downOffset += chunk.length;
  });
  client.resume();
  client.end();
  await once(client, 'end');
  assert.strictEqual(downOffset, downstream.sent);

  const expected = expectedAtServer.map((part) => {
    if (Buffer.isBuffer(part))
      return part;
    const [offset, length] = part;
    return echoStream.subarray(offset, offset + length);
  });
  assertSameBytes(await serverData.all, Buffer.concat(expected),
                  'bytes the server received');
}

// A handle is single-use, and stop() always returns the same promise.
async function testHandleStates() {
  const { client, server } = await connectPair();
  const fifo = openFifo();

  // Stopping a handle that never started closes it without an 'end'.
  {
    const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    handle.on('end', common.mustNotCall());
    handle.on('error', common.mustNotCall());
    handle.on('close', common.mustCall());
    const stopped = handle.stop();
    assert.strictEqual(handle.stop(), stopped);
    await stopped;
    assert.strictEqual(handle.stop(), stopped);
    assert.throws(() => handle.start(), { code: 'ERR_INVALID_STATE' });
    assert.strictEqual(handle.stats.bytesIn, 0);
    assert.strictEqual(handle.stats.bytesOut, 0);
  }

  // A started handle: start() again throws, stop() twice in a row and after
  // it settled gives the same promise, and start() after stop() throws.
  {
    const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    handle.on('end', common.mustNotCall());
    handle.on('error', common.mustNotCall());
    handle.on('close', common.mustCall());
    handle.start();
    assert.throws(() => handle.start(), { code: 'ERR_INVALID_STATE' });

    const sink = new net.Socket({ fd: fifo.readFd, readable: true,
                                  writable: false });
    const sinkRead = once(sink, 'data');
    const sent = Buffer.from('bytes the splice writes to the FIFO');
    server.write(sent);
    const [received] = await sinkRead;
    assertSameBytes(received, sent, 'bytes the sink FIFO received');
    sink.destroy();

    const stopped = handle.stop();
    assert.strictEqual(handle.stop(), stopped);
    await stopped;
    assert.strictEqual(handle.stop(), stopped);
    assert.throws(() => handle.start(), { code: 'ERR_INVALID_STATE' });

    // The final stats stay readable after 'close'.
    assert.strictEqual(handle.stats.bytesIn, sent.length);
    assert.strictEqual(handle.stats.bytesIn, sent.length);
  }

  // Once stop() resolved, the direction is free for a new handle at once.
  {
    const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    handle.start();
    await handle.stop();
    const next = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    next.start();
    await next.stop();
  }

  fs.closeSync(fifo.writeFd);
  client.destroy();
  server.destroy();
}

// Aborting the signal stops the splice with the same no-loss guarantee as
// stop(): JS reads on from the first byte the fd did not get.
async function testAbortSignal(usePipeToNative) {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const sink = new net.Socket({ fd: fifo.readFd, readable: true,
                                writable: false });
  const sinkData = readAll(sink);
  const sent = sequence(0, 4 * 1024 * 1024);
  const controller = new AbortController();

  let handle;
  let settled;
  if (usePipeToNative) {
    settled = assert.rejects(
      client.pipeToNative(fifo.writeFd, { direction: 'in',
                                          signal: controller.signal }),
      { name: 'AbortError' });
  } else {
    handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in',
                               signal: controller.signal });
    handle.on('end', common.mustNotCall());
    handle.on('error', common.mustNotCall());
    handle.on('close', common.mustCall());
    settled = once(handle, 'close');
    handle.start();
  }
  server.end(sent);
  server.resume();

  await once(sink, 'data');
  controller.abort();
  await settled;
  if (handle !== undefined)
    await handle.stop();

  const readByJs = readAll(client);
  fs.closeSync(fifo.writeFd);
  const atSink = await sinkData;
  if (handle !== undefined)
    assert.strictEqual(handle.stats.bytesIn, atSink.length);
  assert.ok(atSink.length > 0);
  assertSameBytes(atSink, sent.subarray(0, atSink.length),
                  'bytes the sink FIFO received');
  assertSameBytes(await readByJs, sent.subarray(atSink.length),
                  'bytes JS read after the abort');
}

async function main() {
  await testCyclesTwoHandles();
  await testCyclesDuplexEcho();
  await testHandleStates();
  await testAbortSignal(false);
  await testAbortSignal(true);
}

main().then(common.mustCall());
