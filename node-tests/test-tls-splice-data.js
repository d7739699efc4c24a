'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (common.isWindows)
  common.skip('the test needs FIFOs');

// tlsSocket.spliceTo() and tlsSocket.pipeToNative() move every byte of the
// session between the TLS peer and a FIFO, in each direction and in both at
// once, with TLS 1.2, TLS 1.3 and TLS-PSK, on the client and on the server.

const assert = require('assert');
const { execFileSync } = require('child_process');
const { createHash, randomBytes } = require('crypto');
const { once } = require('events');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const fixtures = require('../common/fixtures');
const tmpdir = require('../common/tmpdir');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

const SIZE = 4 * 1024 * 1024;
const PSK_SIZE = 1024 * 1024;
const PSK_KEY = Buffer.from('d731ef57be09e5204f0b205b60627028', 'hex');

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

function sha256(data) {
  return createHash('sha256').update(data).digest('hex');
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
  return new Promise((resolve, reject) => {
    const chunks = [];
    let received = 0;
    function onData(chunk) {
      chunks.push(chunk);
      received += chunk.length;
      if (received >= length) {
        stream.removeListener('data', onData);
        stream.removeListener('error', reject);
        resolve(Buffer.concat(chunks));
      }
    }
    stream.on('data', onData);
    stream.on('error', reject);
  });
}

// Resolves with { client, server } once both ends finished the handshake.
function connectPair(serverOptions, clientOptions) {
  return new Promise((resolve) => {
    const server = tls.createServer(serverOptions);
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
        ...clientOptions,
      }, common.mustCall(onSecure));
    }));
  });
}

function certificatePair({ version, ciphers, allowHalfOpen }) {
  const shared = { minVersion: version, maxVersion: version, allowHalfOpen };
  if (ciphers !== undefined)
    shared.ciphers = ciphers;
  return connectPair({ key, cert, ...shared },
                     { rejectUnauthorized: false, ...shared });
}

function pskPair({ version, ciphers, allowHalfOpen }) {
  const shared = { minVersion: version, maxVersion: version, ciphers,
                   allowHalfOpen };
  return connectPair({
    ...shared,
    pskCallback: common.mustCall((socket, identity) => {
      assert.strictEqual(identity, 'splice-user');
      return PSK_KEY;
    }),
  }, {
    ...shared,
    checkServerIdentity: () => {},
    pskCallback: common.mustCall(() => {
      return { psk: PSK_KEY, identity: 'splice-user' };
    }),
  });
}

function pickSides(pair, splicer) {
  return splicer === 'client' ?
    { splicing: pair.client, peer: pair.server } :
    { splicing: pair.server, peer: pair.client };
}

// TLS -> fd through pipeToNative(): the peer sends SIZE bytes and ends, and
// the FIFO reader receives exactly those bytes, then EOF from autoClose.
async function testInPipeToNative({ splicer, ...tlsOptions }) {
  const { splicing, peer } = pickSides(await certificatePair(tlsOptions),
                                       splicer);
  assert.strictEqual(splicing.getProtocol(), tlsOptions.version);

  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  const data = randomBytes(SIZE);

  // The decrypt direction belongs to the splice, so JS reads nothing, but
  // the socket's own 'end' still fires after the FIFO got every byte.
  splicing.on('data', common.mustNotCall('spliced data reached JS'));
  splicing.on('end', common.mustCall());
  peer.resume();

  const done = splicing.pipeToNative(writeFd, {
    direction: 'in',
    autoClose: true,
  });
  peer.end(data);
  const stats = await done;

  assert.strictEqual(stats.bytesIn, SIZE);
  assert.strictEqual(stats.bytesOut, 0);
  assert.strictEqual(stats.packetsIn, 0);
  assert.strictEqual(stats.packetsOut, 0);

  const received = await sinkData;
  assert.strictEqual(received.length, SIZE);
  assert.strictEqual(sha256(received), sha256(data));
}

// TLS -> fd through spliceTo(), with the events of the handle.
async function testInSpliceTo({ splicer, ...tlsOptions }) {
  const { splicing, peer } = pickSides(await certificatePair(tlsOptions),
                                       splicer);
  assert.strictEqual(splicing.getProtocol(), tlsOptions.version);

  const { readFd, writeFd } = openFifo();
  const sink = new net.Socket({ fd: readFd, readable: true, writable: false });
  const sinkData = readAll(sink);
  const data = randomBytes(SIZE);

  splicing.on('data', common.mustNotCall('spliced data reached JS'));
  splicing.on('end', common.mustCall());
  peer.resume();

  const handle = splicing.spliceTo({
    fd: writeFd,
    direction: 'in',
    autoClose: true,
  });
  assert.strictEqual(handle.fd, writeFd);
  assert.strictEqual(handle.direction, 'in');
  handle.on('end', common.mustCall((direction) => {
    assert.strictEqual(direction, 'in');
  }));
  handle.on('error', common.mustNotCall());
  handle.on('close', common.mustCall());
  const closed = once(handle, 'close');

  assert.strictEqual(handle.start(), handle);
  peer.end(data);
  await closed;

  assert.strictEqual(handle.stats.bytesIn, SIZE);
  assert.strictEqual(handle.stats.bytesOut, 0);

  const received = await sinkData;
  assert.strictEqual(received.length, SIZE);
  assert.strictEqual(sha256(received), sha256(data));
}

// fd -> TLS: a JS writer fills the FIFO and closes it, and the peer receives
// exactly those bytes, then 'end' from the close_notify that EOF sends.
async function testOut({ splicer, ...tlsOptions }) {
  const { splicing, peer } = pickSides(await certificatePair(tlsOptions),
                                       splicer);
  assert.strictEqual(splicing.getProtocol(), tlsOptions.version);

  const { readFd, writeFd } = openFifo();
  const source = new net.Socket({ fd: writeFd, readable: false,
                                  writable: true });
  const peerData = readAll(peer);
  const data = randomBytes(SIZE);

  // The peer sends nothing, and its end (after ours) reaches JS as 'end'.
  splicing.on('data', common.mustNotCall());
  splicing.on('end', common.mustCall());

  const handle = splicing.spliceTo({
    fd: readFd,
    direction: 'out',
    autoClose: true,
  });
  handle.on('end', common.mustCall((direction) => {
    assert.strictEqual(direction, 'out');
  }));
  handle.on('error', common.mustNotCall());
  handle.on('close', common.mustCall());
  const closed = once(handle, 'close');

  handle.start();
  source.end(data);

  const received = await peerData;
  assert.strictEqual(received.length, SIZE);
  assert.strictEqual(sha256(received), sha256(data));

  await closed;
  assert.strictEqual(handle.stats.bytesIn, 0);
  assert.strictEqual(handle.stats.bytesOut, SIZE);
  assert.strictEqual(handle.stats.packetsOut, 0);
}

// Both directions on one fd: a FIFO opened for reading and writing returns
// what is written to it, so every byte the peer sends comes back to it.
async function testDuplexEcho(pair, { splicer, size }) {
  const { splicing, peer } = pickSides(pair, splicer);

  const echoFd = fs.openSync(makeFifo(), 'r+');
  const data = randomBytes(size);

  splicing.on('data', common.mustNotCall());
  splicing.on('end', common.mustCall());

  const handle = splicing.spliceTo({ fd: echoFd });
  assert.strictEqual(handle.direction, 'duplex');
  handle.on('error', common.mustNotCall());
  handle.on('close', common.mustCall());
  const inEnded = once(handle, 'end');

  handle.start();
  const echoed = readBytes(peer, size);
  peer.write(data);

  const received = await echoed;
  assert.strictEqual(received.length, size);
  assert.strictEqual(sha256(received), sha256(data));

  // Both sides allow half-open connections, so the peer's close_notify ends
  // the decrypt direction and nothing else.
  peer.end();
  const [direction] = await inEnded;
  assert.strictEqual(direction, 'in');

  await handle.stop();
  assert.strictEqual(handle.stats.bytesIn, size);
  assert.strictEqual(handle.stats.bytesOut, size);

  // Without autoClose the fd stays open after the splice.
  assert.ok(fs.fstatSync(echoFd).isFIFO());
  fs.closeSync(echoFd);

  peer.resume();
  const peerEnded = once(peer, 'end');
  splicing.end();
  await peerEnded;
}

async function main() {
  await testInPipeToNative({ splicer: 'client', version: 'TLSv1.3' });
  await testInPipeToNative({ splicer: 'server', version: 'TLSv1.2' });
  await testInSpliceTo({ splicer: 'client', version: 'TLSv1.2',
                         ciphers: 'ECDHE-RSA-CHACHA20-POLY1305' });
  await testInSpliceTo({ splicer: 'server', version: 'TLSv1.3' });

  await testOut({ splicer: 'client', version: 'TLSv1.2' });
  await testOut({ splicer: 'server', version: 'TLSv1.3' });

  for (const version of ['TLSv1.3', 'TLSv1.2']) {
    for (const splicer of ['client', 'server']) {
      const pair = await certificatePair({ version, allowHalfOpen: true });
      assert.strictEqual(pair.client.getProtocol(), version);
      await testDuplexEcho(pair, { splicer, size: SIZE });
    }
  }

  // TLS-PSK without certificates: a TLS 1.2 PSK cipher suite, and TLS 1.3
  // with an external PSK.
  {
    const pair = await pskPair({ version: 'TLSv1.2', ciphers: 'PSK+AES',
                                 allowHalfOpen: true });
    assert.match(pair.client.getCipher().name, /PSK/);
    await testDuplexEcho(pair, { splicer: 'client', size: PSK_SIZE });
  }
  {
    const pair = await pskPair({
      version: 'TLSv1.3',
      ciphers: 'PSK+HIGH:TLS_AES_128_GCM_SHA256',
      allowHalfOpen: true,
    });
    assert.strictEqual(pair.client.getProtocol(), 'TLSv1.3');
    await testDuplexEcho(pair, { splicer: 'server', size: PSK_SIZE });
  }
}

main().then(common.mustCall());
