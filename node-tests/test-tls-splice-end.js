'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (!common.isLinux)
  common.skip('the test reads file status flags from /proc/self/fdinfo');

// How a splice ends. The peer's close_notify ends the decrypt direction,
// and with `end: true` the splice then shuts down the write side of a
// socket fd. EOF on the fd ends the encrypt direction, and with `end: true`
// the splice then sends close_notify and FIN, while the socket stays
// readable. The handle emits 'end' once per direction and 'close' once,
// last. autoClose decides whether the fd is closed, and the fd's file status
// flags are restored either way.
//
// A socket fd that no libuv handle owns is fd 3 of a child process whose
// stdio slot 3 is a pipe: libuv creates it with socketpair(). The child runs
// the TLS client and the splice, and the parent runs the TLS server and
// owns the other end of the socket pair.

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

const { O_NONBLOCK } = fs.constants;
const CHILD_FD = 3;
const DOWN_SIZE = 1024 * 1024;
const UP_SIZE = 768 * 1024;
const TRAILER = Buffer.from('written after the splice ended');
const REPLY = Buffer.from('sent by the server after the client ended');

// Returns the file status flags of `fd`, such as O_NONBLOCK.
function fileStatusFlags(fd) {
  const info = fs.readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1');
  return parseInt(/^flags:\s+([0-7]+)$/m.exec(info)[1], 8);
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

// Resolves with the handle's events as strings ('end in', 'close', ...) once
// it emitted 'close', and fails the test on any event after 'close'.
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

// The child's side: a TLS client connected to the parent's server, which
// splices to fd 3.

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

// Checks the state of fd 3 once a splice of it has closed without autoClose.
function assertChildFdReleased(flagsBefore) {
  assert.ok(fs.fstatSync(CHILD_FD).isSocket());
  assert.strictEqual(fileStatusFlags(CHILD_FD), flagsBefore);
}

// Both 'end' events, in either order, then 'close'.
function assertDuplexEvents(events) {
  assert.strictEqual(events.length, 3);
  assert.deepStrictEqual(events.slice(0, 2).sort(), ['end in', 'end out']);
  assert.strictEqual(events[2], 'close');
}

const childScenarios = {
  // The server sends DOWN_SIZE bytes and ends. With `end: true` the splice
  // shuts down the write side of fd 3 after the last byte.
  async 'peer end shuts down fd'(port) {
    const client = await connectClient(port);
    const flagsBefore = fileStatusFlags(CHILD_FD);
    assert.strictEqual(flagsBefore & O_NONBLOCK, 0);
    client.on('data', common.mustNotCall('spliced data reached JS'));
    client.on('end', common.mustCall());

    const handle = client.spliceTo({ fd: CHILD_FD, direction: 'in' });
    const events = recordEvents(handle);
    handle.start();
    // The pump makes the fd non-blocking for the splice's life.
    assert.strictEqual(fileStatusFlags(CHILD_FD) & O_NONBLOCK, O_NONBLOCK);

    assert.deepStrictEqual(await events, ['end in', 'close']);
    assert.strictEqual(handle.stats.bytesIn, DOWN_SIZE);
    assertChildFdReleased(flagsBefore);
    assert.throws(() => fs.writeSync(CHILD_FD, TRAILER), { code: 'EPIPE' });
  },

  // The same with `end: false`: fd 3 stays writable after the splice, and
  // the parent gets what the child writes to it then.
  async 'peer end keeps fd open'(port) {
    const client = await connectClient(port);
    const flagsBefore = fileStatusFlags(CHILD_FD);
    client.on('data', common.mustNotCall('spliced data reached JS'));
    client.on('end', common.mustCall());

    const handle = client.spliceTo({ fd: CHILD_FD, direction: 'in',
                                     end: false });
    const events = recordEvents(handle);
    handle.start();

    assert.deepStrictEqual(await events, ['end in', 'close']);
    assert.strictEqual(handle.stats.bytesIn, DOWN_SIZE);
    assertChildFdReleased(flagsBefore);
    assert.strictEqual(fs.writeSync(CHILD_FD, TRAILER), TRAILER.length);
    fs.closeSync(CHILD_FD);
  },

  // The parent writes UP_SIZE bytes into the socket pair and shuts it down.
  // EOF on fd 3 makes the splice send close_notify and FIN, and the client
  // then still reads the server's reply from JS.
  async 'fd EOF sends close_notify'(port) {
    const client = await connectClient(port);
    const flagsBefore = fileStatusFlags(CHILD_FD);
    const readByJs = readAll(client);

    const handle = client.spliceTo({ fd: CHILD_FD, direction: 'out' });
    const events = recordEvents(handle);
    handle.start();

    assert.deepStrictEqual(await events, ['end out', 'close']);
    assert.strictEqual(handle.stats.bytesOut, UP_SIZE);
    assertChildFdReleased(flagsBefore);
    assert.deepStrictEqual(await readByJs, REPLY);
  },

  // The same with `end: false`: EOF on fd 3 sends no close_notify, so JS can
  // write more before it ends the socket.
  async 'fd EOF keeps TLS open'(port) {
    const client = await connectClient(port);
    const flagsBefore = fileStatusFlags(CHILD_FD);
    client.on('data', common.mustNotCall());
    client.on('end', common.mustCall());

    const handle = client.spliceTo({ fd: CHILD_FD, direction: 'out',
                                     end: false });
    const events = recordEvents(handle);
    handle.start();

    assert.deepStrictEqual(await events, ['end out', 'close']);
    assert.strictEqual(handle.stats.bytesOut, UP_SIZE);
    assertChildFdReleased(flagsBefore);
    assert.strictEqual(client.writableEnded, false);
    client.end(TRAILER);
  },

  // Both directions end on their own: the server's close_notify ends 'in',
  // and EOF on fd 3 ends 'out'. The client allows half-open connections, so
  // the first end does not end the other direction.
  async 'duplex both ends'(port) {
    const client = await connectClient(port, { allowHalfOpen: true });
    const flagsBefore = fileStatusFlags(CHILD_FD);
    client.on('data', common.mustNotCall('spliced data reached JS'));
    client.on('end', common.mustCall());

    const handle = client.spliceTo({ fd: CHILD_FD });
    const events = recordEvents(handle);
    handle.start();

    assertDuplexEvents(await events);
    assert.strictEqual(handle.stats.bytesIn, DOWN_SIZE);
    assert.strictEqual(handle.stats.bytesOut, UP_SIZE);
    assertChildFdReleased(flagsBefore);
    assert.throws(() => fs.writeSync(CHILD_FD, TRAILER), { code: 'EPIPE' });
  },

  // Without allowHalfOpen, the server's end makes the client end its side
  // as well, which ends the encrypt direction although fd 3 never reached
  // EOF. pipeToNative() resolves because both directions ended cleanly.
  async 'duplex peer end ends both'(port) {
    const client = await connectClient(port);
    assert.strictEqual(client.allowHalfOpen, false);
    const flagsBefore = fileStatusFlags(CHILD_FD);
    client.on('data', common.mustNotCall('spliced data reached JS'));
    client.on('end', common.mustCall());

    const stats = await client.pipeToNative(CHILD_FD);
    assert.strictEqual(stats.bytesIn, DOWN_SIZE);
    assert.strictEqual(stats.bytesOut, 0);
    assert.strictEqual(stats.packetsIn, 0);
    assert.strictEqual(stats.packetsOut, 0);
    assertChildFdReleased(flagsBefore);
  },
};

// The parent's side.

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

// Runs a child scenario. Resolves with the child's end of the socket pair
// and a promise that resolves when the child exited with code 0.
function spawnChild(name, port) {
  const child = spawn(process.execPath, [__filename, 'child', name, port], {
    stdio: ['inherit', 'inherit', 'inherit', 'pipe'],
  });
  const exited = once(child, 'exit').then(([code, signal]) => {
    assert.strictEqual(signal, null, `child '${name}' got ${signal}`);
    assert.strictEqual(code, 0, `child '${name}' exited with ${code}`);
  });
  const peer = child.stdio[CHILD_FD];
  // The parent shuts down its end only by calling end(), never in response to
  // the child's shutdown, so each EOF the child reads is one the test chose.
  peer.allowHalfOpen = true;
  return { peer, exited };
}

async function testPeerEnd(name, expectedAtFd) {
  const down = randomBytes(DOWN_SIZE);
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild(name, port);
  const atFd = readAll(peer);

  const socket = await connected;
  socket.end(down);
  socket.resume();

  assert.deepStrictEqual(await atFd, expectedAtFd(down));
  await exited;
}

// The server checks with its own splice that the client's end is a
// close_notify: a TCP FIN alone would end that splice with
// ERR_TLS_SPLICE_TRUNCATED instead of 'end'.
async function testFdEofSendsCloseNotify() {
  const up = randomBytes(UP_SIZE);
  const { port, connected } = await startServer({ allowHalfOpen: true });
  const { peer, exited } = spawnChild('fd EOF sends close_notify', port);
  peer.end(up);

  const socket = await connected;
  const fifoPath = tmpdir.resolve('close-notify-fifo');
  execFileSync('mkfifo', [fifoPath]);
  const keeper = fs.openSync(fifoPath, 'r+');
  const sink = new net.Socket({ fd: fs.openSync(fifoPath, 'r'),
                                readable: true, writable: false });
  const writeFd = fs.openSync(fifoPath, 'w');
  fs.closeSync(keeper);
  const atSink = readAll(sink);

  const handle = socket.spliceTo({ fd: writeFd, direction: 'in',
                                   autoClose: true });
  const events = recordEvents(handle);
  handle.start();
  assert.deepStrictEqual(await events, ['end in', 'close']);

  // The server's socket stays writable, and the client reads the reply.
  socket.end(REPLY);
  assert.deepStrictEqual(await atSink, up);
  await exited;
}

async function testFdEofKeepsTlsOpen() {
  const up = randomBytes(UP_SIZE);
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild('fd EOF keeps TLS open', port);
  peer.end(up);

  const socket = await connected;
  const received = await readAll(socket);
  assert.deepStrictEqual(received, Buffer.concat([up, TRAILER]));
  await exited;
}

async function testDuplexBothEnds() {
  const down = randomBytes(DOWN_SIZE);
  const up = randomBytes(UP_SIZE);
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild('duplex both ends', port);
  const atFd = readAll(peer);
  peer.write(up);

  const socket = await connected;
  const atServer = readAll(socket);
  socket.end(down);

  assert.deepStrictEqual(await atFd, down);
  peer.end();
  assert.deepStrictEqual(await atServer, up);
  await exited;
}

async function testDuplexPeerEndEndsBoth() {
  const down = randomBytes(DOWN_SIZE);
  const { port, connected } = await startServer();
  const { peer, exited } = spawnChild('duplex peer end ends both', port);
  const atFd = readAll(peer);

  const socket = await connected;
  const atServer = readAll(socket);
  socket.end(down);

  assert.deepStrictEqual(await atFd, down);
  assert.strictEqual((await atServer).length, 0);
  await exited;
}

// FIFO scenarios, in this process: autoClose and the file status flags.

let fifoCount = 0;

// Opens both ends of a new FIFO as blocking fds that no libuv handle owns.
function openFifo(writeFlags = 'w') {
  const path = tmpdir.resolve(`fifo-${fifoCount++}`);
  execFileSync('mkfifo', [path]);
  // On Linux, opening a FIFO for reading and writing does not block
  // (fifo(7)). While that fd is open, the opens of the two ends return at once.
  const keeper = fs.openSync(path, 'r+');
  const readFd = fs.openSync(path, 'r');
  const writeFd = fs.openSync(path, writeFlags);
  fs.closeSync(keeper);
  return { readFd, writeFd };
}

function connectPair() {
  return new Promise((resolve) => {
    startServer().then(({ port, connected }) => {
      const client = tls.connect({
        host: '127.0.0.1',
        port,
        rejectUnauthorized: false,
      }, common.mustCall(async () => {
        resolve({ client, server: await connected });
      }));
    });
  });
}

// The peer sends `down` and ends, the client splices it into the FIFO.
// Resolves with the handle's events, once it closed, and the sink's data.
async function spliceIntoFifo(fifo, options) {
  const { client, server } = await connectPair();
  const sink = new net.Socket({ fd: fifo.readFd, readable: true,
                                writable: false });
  const atSink = readAll(sink);
  const down = randomBytes(DOWN_SIZE);
  client.on('data', common.mustNotCall('spliced data reached JS'));
  client.on('end', common.mustCall());

  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in',
                                   ...options });
  const events = recordEvents(handle);
  handle.start();
  server.end(down);
  server.resume();
  return { down, handle, events: await events, atSink };
}

// With autoClose, the fd is closed by the time 'close' is emitted, so the
// FIFO reader sees EOF.
async function testAutoClose() {
  const fifo = openFifo();
  const { down, handle, events, atSink } =
    await spliceIntoFifo(fifo, { autoClose: true });
  assert.deepStrictEqual(events, ['end in', 'close']);
  assert.throws(() => fs.fstatSync(fifo.writeFd), { code: 'EBADF' });
  assert.strictEqual(handle.stats.bytesIn, DOWN_SIZE);
  assert.deepStrictEqual(await atSink, down);
}

// Without autoClose, the fd stays open with its flags restored, and
// writing to it still works.
async function testNoAutoClose() {
  const fifo = openFifo();
  const flagsBefore = fileStatusFlags(fifo.writeFd);
  assert.strictEqual(flagsBefore & O_NONBLOCK, 0);
  const { down, events, atSink } = await spliceIntoFifo(fifo, {});
  assert.deepStrictEqual(events, ['end in', 'close']);
  assert.ok(fs.fstatSync(fifo.writeFd).isFIFO());
  assert.strictEqual(fileStatusFlags(fifo.writeFd), flagsBefore);

  assert.strictEqual(fs.writeSync(fifo.writeFd, TRAILER), TRAILER.length);
  fs.closeSync(fifo.writeFd);
  assert.deepStrictEqual(await atSink, Buffer.concat([down, TRAILER]));
}

// An fd that was non-blocking before the splice stays non-blocking.
async function testNonBlockingFdStaysNonBlocking() {
  const fifo = openFifo(fs.constants.O_WRONLY | O_NONBLOCK);
  const flagsBefore = fileStatusFlags(fifo.writeFd);
  assert.strictEqual(flagsBefore & O_NONBLOCK, O_NONBLOCK);
  const { down, events, atSink } = await spliceIntoFifo(fifo, {});
  assert.deepStrictEqual(events, ['end in', 'close']);
  assert.strictEqual(fileStatusFlags(fifo.writeFd), flagsBefore);
  fs.closeSync(fifo.writeFd);
  assert.deepStrictEqual(await atSink, down);
}

// stop() ends the splice too, so autoClose closes the fd after it, and no
// 'end' is emitted for a direction that did not end.
async function testAutoCloseAfterStop() {
  const { client, server } = await connectPair();
  const fifo = openFifo();
  const handle = client.spliceTo({ fd: fifo.writeFd, direction: 'in',
                                   autoClose: true });
  const events = recordEvents(handle);
  handle.start();
  await handle.stop();
  assert.deepStrictEqual(await events, ['close']);
  assert.throws(() => fs.fstatSync(fifo.writeFd), { code: 'EBADF' });
  fs.closeSync(fifo.readFd);
  client.destroy();
  server.destroy();
}

async function main() {
  tmpdir.refresh();

  await testPeerEnd('peer end shuts down fd', (down) => down);
  await testPeerEnd('peer end keeps fd open',
                    (down) => Buffer.concat([down, TRAILER]));
  await testFdEofSendsCloseNotify();
  await testFdEofKeepsTlsOpen();
  await testDuplexBothEnds();
  await testDuplexPeerEndEndsBoth();

  await testAutoClose();
  await testNoAutoClose();
  await testNonBlockingFdStaysNonBlocking();
  await testAutoCloseAfterStop();
}

if (process.argv[2] === 'child') {
  const scenario = childScenarios[process.argv[3]];
  scenario(Number(process.argv[4])).then(common.mustCall());
} else {
  main().then(common.mustCall());
}
