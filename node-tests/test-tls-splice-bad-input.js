'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs');

// Invalid arguments and invalid states of tlsSocket.spliceTo(), the handle
// it returns and tlsSocket.pipeToNative(). spliceTo() and start() throw, but
// pipeToNative() returns a rejected promise for every error.

const assert = require('assert');
const { execFileSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const { duplexPair } = require('stream');
const tls = require('tls');
const fixtures = require('../common/fixtures');
const tmpdir = require('../common/tmpdir');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

const MAX_HIGH_WATER_MARK = 64 * 1024 * 1024;

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

// Returns an fd number that is not open now.
function closedFd() {
  const fd = fs.openSync(__filename, 'r');
  fs.closeSync(fd);
  return fd;
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

function abortedSignal() {
  const controller = new AbortController();
  controller.abort();
  return controller.signal;
}

// Options that spliceTo() rejects, each with the error it throws. `fd` is
// an open FIFO fd, so only the named option is wrong.
function invalidOptions(fd) {
  const tooLargeFd = 2 ** 31;
  return [
    [undefined, 'ERR_INVALID_ARG_TYPE', /"options"/],
    [null, 'ERR_INVALID_ARG_TYPE', /"options"/],
    [fd, 'ERR_INVALID_ARG_TYPE', /"options"/],
    ['fd', 'ERR_INVALID_ARG_TYPE', /"options"/],

    [{}, 'ERR_INVALID_ARG_TYPE', /options\.fd/],
    [{ direction: 'in' }, 'ERR_INVALID_ARG_TYPE', /options\.fd/],
    [{ fd: String(fd) }, 'ERR_INVALID_ARG_TYPE', /options\.fd/],
    [{ fd: -1 }, 'ERR_OUT_OF_RANGE', /options\.fd/],
    [{ fd: 1.5 }, 'ERR_OUT_OF_RANGE', /options\.fd/],
    [{ fd: NaN }, 'ERR_OUT_OF_RANGE', /options\.fd/],
    [{ fd: tooLargeFd }, 'ERR_OUT_OF_RANGE', /options\.fd/],

    [{ fd, direction: 'both' }, 'ERR_INVALID_ARG_VALUE', /options\.direction/],
    [{ fd, direction: 'IN' }, 'ERR_INVALID_ARG_VALUE', /options\.direction/],
    [{ fd, direction: '' }, 'ERR_INVALID_ARG_VALUE', /options\.direction/],
    [{ fd, direction: 0 }, 'ERR_INVALID_ARG_VALUE', /options\.direction/],

    [{ fd, framing: 'udp' }, 'ERR_INVALID_ARG_VALUE', /options\.framing/],
    [{ fd, framing: 'IP' }, 'ERR_INVALID_ARG_VALUE', /options\.framing/],
    [{ fd, framing: 16 }, 'ERR_INVALID_ARG_VALUE', /options\.framing/],

    [{ fd, autoClose: 'yes' }, 'ERR_INVALID_ARG_TYPE', /options\.autoClose/],
    [{ fd, autoClose: 1 }, 'ERR_INVALID_ARG_TYPE', /options\.autoClose/],
    [{ fd, end: 'no' }, 'ERR_INVALID_ARG_TYPE', /options\.end/],
    [{ fd, end: null }, 'ERR_INVALID_ARG_TYPE', /options\.end/],

    [{ fd, highWaterMark: 0 }, 'ERR_OUT_OF_RANGE', /options\.highWaterMark/],
    [{ fd, highWaterMark: -1 }, 'ERR_OUT_OF_RANGE', /options\.highWaterMark/],
    [{ fd, highWaterMark: 1.5 }, 'ERR_OUT_OF_RANGE', /options\.highWaterMark/],
    [{ fd, highWaterMark: MAX_HIGH_WATER_MARK + 1 },
     'ERR_OUT_OF_RANGE', /options\.highWaterMark/],
    [{ fd, highWaterMark: '65536' },
     'ERR_INVALID_ARG_TYPE', /options\.highWaterMark/],

    [{ fd, signal: {} }, 'ERR_INVALID_ARG_TYPE', /options\.signal/],
    [{ fd, signal: 'abort' }, 'ERR_INVALID_ARG_TYPE', /options\.signal/],
  ];
}

async function testInvalidOptions() {
  const { client, server } = await connectPair();
  const fifo = openFifo();

  for (const [options, code, message] of invalidOptions(fifo.writeFd)) {
    assert.throws(() => client.spliceTo(options), { code, message },
                  `spliceTo(${JSON.stringify(options)})`);
  }

  // An fd that is not open fails like fstat() on it.
  const notOpen = closedFd();
  assert.throws(() => client.spliceTo({ fd: notOpen }),
                { code: 'EBADF', syscall: 'fstat' });

  // The socket's own fd.
  const ownFd = client._handle.fd;
  assert.ok(ownFd >= 0);
  assert.throws(() => client.spliceTo({ fd: ownFd }),
                { code: 'ERR_INVALID_ARG_VALUE', message: /options\.fd/ });

  // A signal that already aborted.
  assert.throws(
    () => client.spliceTo({ fd: fifo.writeFd, signal: abortedSignal() }),
    { name: 'AbortError', code: 'ABORT_ERR' });

  // The limits of highWaterMark are valid, and so is every value of the
  // enumerated options. None of these handles starts.
  const valid = [
    { highWaterMark: 1 },
    { highWaterMark: MAX_HIGH_WATER_MARK },
    { direction: 'in' },
    { direction: 'out' },
    { direction: 'duplex' },
    { framing: 'stream' },
    { framing: 'ip' },
    { framing: 'length16' },
    { autoClose: true, end: false },
  ];
  for (const options of valid) {
    const handle = client.spliceTo({ fd: fifo.writeFd, ...options });
    assert.strictEqual(handle.fd, fifo.writeFd);
    assert.strictEqual(handle.direction, options.direction ?? 'duplex');
    handle.on('close', common.mustCall());
    await handle.stop();
  }

  // fd and direction are read-only.
  {
    const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    assert.throws(() => {
      handle.fd = fifo.readFd;
    }, TypeError);
    assert.throws(() => {
      handle.direction = 'out';
    }, TypeError);
    assert.strictEqual(handle.fd, fifo.writeFd);
    assert.strictEqual(handle.direction, 'in');
    await handle.stop();
  }

  // Without autoClose the fds are still open after all this.
  assert.ok(fs.fstatSync(fifo.writeFd).isFIFO());
  fs.closeSync(fifo.readFd);
  fs.closeSync(fifo.writeFd);
  client.destroy();
  server.destroy();
}

async function testInvalidStates() {
  const fifo = openFifo();
  const other = openFifo();

  // Before the handshake is done.
  {
    const server = tls.createServer({ key, cert });
    server.once('connection', common.mustCall(() => server.close()));
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = tls.connect({
      host: '127.0.0.1',
      port: server.address().port,
      rejectUnauthorized: false,
    });
    assert.throws(() => client.spliceTo({ fd: fifo.writeFd }),
                  { code: 'ERR_INVALID_STATE' });
    await assert.rejects(client.pipeToNative(fifo.writeFd),
                         { code: 'ERR_INVALID_STATE' });
    await new Promise((resolve) => client.once('secureConnect', resolve));
    client.destroy();
  }

  const { client, server } = await connectPair();

  // A direction that an active splice owns cannot be spliced again, but
  // the other direction on another fd can.
  {
    const spliceIn = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    spliceIn.start();
    assert.throws(() => spliceIn.start(), { code: 'ERR_INVALID_STATE' });
    assert.throws(
      () => client.spliceTo({ fd: other.writeFd, direction: 'in' }),
      { code: 'ERR_INVALID_STATE' });
    assert.throws(
      () => client.spliceTo({ fd: other.writeFd, direction: 'duplex' }),
      { code: 'ERR_INVALID_STATE' });
    await assert.rejects(
      client.pipeToNative(other.writeFd, { direction: 'in' }),
      { code: 'ERR_INVALID_STATE' });

    // One fd cannot serve two splices: libuv would watch it twice.
    assert.throws(
      () => client.spliceTo({ fd: fifo.writeFd, direction: 'out' }),
      { code: 'ERR_INVALID_ARG_VALUE', message: /options\.fd.*'duplex'/ });
    await assert.rejects(
      client.pipeToNative(fifo.writeFd, { direction: 'out' }),
      { code: 'ERR_INVALID_ARG_VALUE', message: /'fd' is used/ });

    const spliceOut = client.spliceTo({ fd: other.readFd, direction: 'out' });
    spliceOut.start();
    await Promise.all([spliceIn.stop(), spliceOut.stop()]);
  }

  // Two handles for one direction may exist, but only one may run.
  {
    const first = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    const second = client.spliceTo({ fd: other.writeFd, direction: 'in' });
    first.start();
    assert.throws(() => second.start(), { code: 'ERR_INVALID_STATE' });
    await first.stop();
    await second.stop();
  }

  // stop() always returns the same promise, and a stopped handle cannot
  // start.
  {
    const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    handle.start();
    const stopped = handle.stop();
    assert.strictEqual(handle.stop(), stopped);
    await stopped;
    assert.strictEqual(handle.stop(), stopped);
    assert.throws(() => handle.start(), { code: 'ERR_INVALID_STATE' });
  }

  // start() fails for an fd the pump cannot poll: a regular file makes
  // epoll fail with EPERM, and an fd that libuv already watches makes
  // uv_poll_init() fail with EEXIST. The direction is free afterwards.
  {
    const fileFd = fs.openSync(__filename, 'r');
    const fileSplice = client.spliceTo({ fd: fileFd, direction: 'out' });
    assert.throws(() => fileSplice.start(), { code: 'EPERM' });
    await assert.rejects(client.pipeToNative(fileFd, { direction: 'out' }),
                         { code: 'EPERM' });
    fs.closeSync(fileFd);

    const watched = new net.Socket({ fd: other.readFd, readable: true,
                                     writable: false });
    const watchedFd = watched._handle.fd;
    const watchedSplice = client.spliceTo({ fd: watchedFd, direction: 'out' });
    assert.throws(() => watchedSplice.start(), { code: 'EEXIST' });
    watched.destroy();

    const handle = client.spliceTo({ fd: fifo.readFd, direction: 'out' });
    handle.start();
    await handle.stop();
  }

  // After destroy(), neither spliceTo() nor start() of an earlier handle
  // works.
  {
    const earlier = client.spliceTo({ fd: fifo.writeFd, direction: 'in' });
    client.destroy();
    assert.throws(() => client.spliceTo({ fd: fifo.writeFd }),
                  { code: 'ERR_INVALID_STATE' });
    assert.throws(() => earlier.start(), { code: 'ERR_INVALID_STATE' });
    await assert.rejects(client.pipeToNative(fifo.writeFd),
                         { code: 'ERR_INVALID_STATE' });
  }

  server.destroy();
  fs.closeSync(fifo.readFd);
  fs.closeSync(fifo.writeFd);
  fs.closeSync(other.writeFd);
}

// A TLS socket over a JS Duplex has no fd for the pump to use.
async function testGenericStream() {
  const [clientSide, serverSide] = duplexPair();
  const client = tls.connect({ socket: clientSide, ca: cert,
                               rejectUnauthorized: false });
  const server = new tls.TLSSocket(serverSide, { isServer: true, key, cert });
  await Promise.all([
    new Promise((resolve) => client.once('secureConnect', resolve)),
    new Promise((resolve) => server.once('secure', resolve)),
  ]);

  const fifo = openFifo();
  assert.throws(() => client.spliceTo({ fd: fifo.writeFd }),
                { code: 'ERR_TLS_SPLICE_UNSUPPORTED_STREAM' });
  await assert.rejects(client.pipeToNative(fifo.writeFd),
                       { code: 'ERR_TLS_SPLICE_UNSUPPORTED_STREAM' });
  fs.closeSync(fifo.readFd);
  fs.closeSync(fifo.writeFd);
  client.destroy();
  server.destroy();
}

// pipeToNative() reports every invalid argument as a rejection.
async function testPipeToNativeRejects() {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const fd = fifo.writeFd;

  const cases = [
    [[-1], 'ERR_OUT_OF_RANGE', /"fd"/],
    [[1.5], 'ERR_OUT_OF_RANGE', /"fd"/],
    [[String(fd)], 'ERR_INVALID_ARG_TYPE', /"fd"/],
    [[undefined], 'ERR_INVALID_ARG_TYPE', /"fd"/],
    [[fd, null], 'ERR_INVALID_ARG_TYPE', /"options"/],
    [[fd, 'in'], 'ERR_INVALID_ARG_TYPE', /"options"/],
    [[fd, { direction: 'both' }], 'ERR_INVALID_ARG_VALUE',
     /options\.direction/],
    [[fd, { framing: 'udp' }], 'ERR_INVALID_ARG_VALUE', /options\.framing/],
    [[fd, { autoClose: 'yes' }], 'ERR_INVALID_ARG_TYPE', /options\.autoClose/],
    [[fd, { highWaterMark: 0 }], 'ERR_OUT_OF_RANGE',
     /options\.highWaterMark/],
    [[fd, { signal: {} }], 'ERR_INVALID_ARG_TYPE', /options\.signal/],
    [[client._handle.fd], 'ERR_INVALID_ARG_VALUE', /'fd'/],
  ];
  for (const [args, code, message] of cases) {
    let promise;
    assert.doesNotThrow(() => {
      promise = client.pipeToNative(...args);
    });
    assert.ok(promise instanceof Promise);
    await assert.rejects(promise, { code, message });
  }

  await assert.rejects(client.pipeToNative(closedFd()), { code: 'EBADF' });
  await assert.rejects(client.pipeToNative(fd, { signal: abortedSignal() }),
                       { name: 'AbortError' });

  fs.closeSync(fifo.readFd);
  fs.closeSync(fifo.writeFd);
  client.destroy();
  server.destroy();
}

async function main() {
  await testInvalidOptions();
  await testInvalidStates();
  await testGenericStream();
  await testPipeToNativeRejects();
}

main().then(common.mustCall());
