'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (!common.isLinux)
  common.skip('the test needs SOCK_SEQPACKET socket pairs');

// framing: 'length16' between a TLS session and packet sockets. On the TLS
// stream each packet is preceded by its length as a 16-bit big-endian
// integer, and on the fd each packet is one write(2) or read(2).
//
// JavaScript cannot create packet sockets, so a small Python helper creates
// a SOCK_SEQPACKET and a SOCK_DGRAM socket pair and executes this file as a
// child: fds 3 and 5 are the ends the splice uses, and fds 4 and 6 are the
// other ends, non-blocking, which the test reads and writes with fs.

const assert = require('assert');
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const tls = require('tls');
const fixtures = require('../common/fixtures');

const SEQPACKET_FD = 3;
const SEQPACKET_PEER_FD = 4;
const DATAGRAM_FD = 5;
const DATAGRAM_PEER_FD = 6;
// Loop turns a wait for packets may take before the test fails.
const MAX_TURNS = 100000;

const HELPER = `
import os, socket, sys

pairs = [socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET),
         socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)]
# Move the four ends above the target numbers first, so that no dup2()
# closes an end that is still needed.
ends = [os.dup(end.fileno()) for pair in pairs for end in pair]
ends = [os.dup2(fd, 100 + i) for i, fd in enumerate(ends)]
for i, fd in enumerate(ends):
    os.dup2(fd, ${SEQPACKET_FD} + i)
    os.close(fd)
for fd in (${SEQPACKET_PEER_FD}, ${DATAGRAM_PEER_FD}):
    os.set_blocking(fd, False)
if sys.argv[1] == 'probe':
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
`;

if (process.argv[2] !== 'child') {
  const probe = spawnSync('python3', ['-c', HELPER, 'probe'],
                          { encoding: 'utf8' });
  if (probe.error)
    common.skip(`cannot run python3: ${probe.error.message}`);
  if (probe.status !== 0) {
    const reason = probe.stderr.trim().split('\n').at(-1);
    common.skip(`cannot create packet socket pairs: ${reason}`);
  }

  const child = spawn('python3', [
    '-c', HELPER, 'exec', process.execPath, __filename, 'child',
  ], { stdio: 'inherit' });
  child.on('exit', common.mustCall((code, signal) => {
    assert.strictEqual(signal, null);
    assert.strictEqual(code, 0);
  }));
  return;
}

// The child.

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

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

// Returns a packet of `length` bytes whose content depends on `index`.
function makePacket(index, length) {
  const packet = Buffer.alloc(length);
  for (let i = 0; i < length; i++)
    packet[i] = (index * 31 + i) & 0xff;
  return packet;
}

function frame(packets) {
  return Buffer.concat(packets.flatMap((packet) => {
    const length = Buffer.alloc(2);
    length.writeUInt16BE(packet.length);
    return [length, packet];
  }));
}

// Splits a length16 stream into packets as it arrives.
class Length16Parser {
  #pending = Buffer.alloc(0);
  packets = [];

  push(chunk) {
    this.#pending = Buffer.concat([this.#pending, chunk]);
    while (this.#pending.length >= 2) {
      const end = 2 + this.#pending.readUInt16BE(0);
      if (this.#pending.length < end)
        break;
      this.packets.push(this.#pending.subarray(2, end));
      this.#pending = this.#pending.subarray(end);
    }
  }
}

// Reads `count` packets from the non-blocking fd, one per read(2), checking
// once per event loop turn.
async function readPackets(fd, count) {
  const packets = [];
  const buffer = Buffer.alloc(128 * 1024);
  for (let turn = 0; turn < MAX_TURNS && packets.length < count; turn++) {
    try {
      const length = fs.readSync(fd, buffer);
      packets.push(Buffer.from(buffer.subarray(0, length)));
    } catch (err) {
      assert.strictEqual(err.code, 'EAGAIN');
      await new Promise(setImmediate);
    }
  }
  assert.strictEqual(packets.length, count,
                     `${packets.length} of ${count} packets arrived`);
  return packets;
}

// Waits until the parser has `count` packets, checking once per event loop
// turn.
async function waitForPackets(parser, count) {
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    if (parser.packets.length >= count)
      return;
    await new Promise(setImmediate);
  }
  assert.fail(`${parser.packets.length} of ${count} packets arrived`);
}

function sum(lengths) {
  return lengths.reduce((total, length) => total + length, 0);
}

async function testDuplex({ fd, peerFd, downLengths, upLengths }) {
  const { client, server } = await connectPair();
  const handle = client.spliceTo({ fd, framing: 'length16' });
  assert.strictEqual(handle.direction, 'duplex');
  handle.on('error', common.mustNotCall());
  handle.start();

  // Down: the framed stream goes out in 1000-byte writes, so packets span
  // TLS records and records hold several packets.
  const down = downLengths.map((length, i) => makePacket(i, length));
  const stream = frame(down);
  for (let offset = 0; offset < stream.length; offset += 1000)
    server.write(stream.subarray(offset, offset + 1000));
  const received = await readPackets(peerFd, down.length);
  assert.deepStrictEqual(received.map((packet) => packet.length),
                         downLengths);
  assert.deepStrictEqual(received, down);
  assert.strictEqual(handle.stats.packetsIn, down.length);
  assert.strictEqual(handle.stats.bytesIn, sum(downLengths));

  // Up: each write to the peer end is one packet on the TLS stream.
  const parser = new Length16Parser();
  server.on('data', (chunk) => parser.push(chunk));
  const up = upLengths.map((length, i) => makePacket(1000 + i, length));
  for (const packet of up)
    assert.strictEqual(fs.writeSync(peerFd, packet), packet.length);
  await waitForPackets(parser, up.length);
  assert.deepStrictEqual(parser.packets.map((packet) => packet.length),
                         upLengths);
  assert.deepStrictEqual(parser.packets, up);
  assert.strictEqual(handle.stats.packetsOut, up.length);
  assert.strictEqual(handle.stats.bytesOut, sum(upLengths));

  await handle.stop();
  client.destroy();
  server.destroy();
}

async function main() {
  assert.ok(fs.fstatSync(SEQPACKET_FD).isSocket());
  assert.ok(fs.fstatSync(DATAGRAM_FD).isSocket());

  // A packet of 65535 bytes, the largest length16 allows, spans four TLS
  // records.
  await testDuplex({
    fd: SEQPACKET_FD,
    peerFd: SEQPACKET_PEER_FD,
    downLengths: [1, 2, 100, 1400, 16384, 16385, 40000, 65535, 3, 1400],
    upLengths: [1, 500, 1400, 16385, 65535, 7],
  });
  // A datagram socket carries empty packets too.
  await testDuplex({
    fd: DATAGRAM_FD,
    peerFd: DATAGRAM_PEER_FD,
    downLengths: [0, 1400, 0, 0, 1, 9000],
    upLengths: [1400, 1, 9000],
  });
}

main().then(common.mustCall());
