'use strict';
const common = require('../common');
if (!common.hasCrypto)
  common.skip('missing crypto');
if (!common.isLinux)
  common.skip('the test needs Linux TUN devices and network namespaces');

// framing: 'ip' between a TLS session and a real TUN device. The test runs
// in a network namespace of its own, where `unshare -n` starts a small
// Python helper. The helper creates the TUN device, because the TUNSETIFF
// ioctl has no JavaScript API, configures it with `ip` and executes this
// file as a child with the device as fd 3. The child checks that:
// - IPv4 and IPv6 packets from the TLS stream reach UDP sockets through the
//   kernel, one write(2) per packet, also when a packet spans many records;
// - packets the kernel routes into the device reach the TLS peer whole;
// - a header that is not IPv4 or IPv6, or a length shorter than the header,
//   ends the splice with ERR_TLS_SPLICE_FRAMING naming the stream offset.

const assert = require('assert');
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const tls = require('tls');
const fixtures = require('../common/fixtures');

const TUN_FD = 3;
const TUN_NAME = 'tun0';
const LOCAL_V4 = '10.77.0.1';
const REMOTE_V4 = '10.77.0.2';
const LOCAL_V6 = 'fd00:77::1';
const REMOTE_V6 = 'fd00:77::2';
const LOCAL_V6_BYTES = Buffer.from('fd000077000000000000000000000001', 'hex');
const REMOTE_V6_BYTES = Buffer.from('fd000077000000000000000000000002', 'hex');
const DOWN_PORT = 7001;
const UP_PORT = 7002;
const PACKET_COUNT = 40;
// Loop turns a wait for packets may take before the test fails.
const MAX_TURNS = 100000;

// Creates the TUN device in the current network namespace, configures it
// and the loopback device, then either exits ('probe') or executes the
// given command with the device as fd 3 ('exec').
const HELPER = `
import fcntl, os, struct, subprocess, sys

TUNSETIFF = 0x400454ca  # _IOW('T', 202, int), linux/if_tun.h
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000

def ip(*args):
    subprocess.run(['ip', *args], check=True)

fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', b'${TUN_NAME}',
                                       IFF_TUN | IFF_NO_PI))
ip('link', 'set', 'lo', 'up')
ip('addr', 'add', '${LOCAL_V4}/24', 'dev', '${TUN_NAME}')
ip('-6', 'addr', 'add', '${LOCAL_V6}/64', 'dev', '${TUN_NAME}', 'nodad')
ip('link', 'set', '${TUN_NAME}', 'up')
if sys.argv[1] == 'probe':
    sys.exit(0)
if fd != ${TUN_FD}:
    os.dup2(fd, ${TUN_FD})
    os.close(fd)
os.set_inheritable(${TUN_FD}, True)
os.execv(sys.argv[2], sys.argv[2:])
`;

if (process.argv[2] !== 'child') {
  // As root, `unshare -n` is enough. Otherwise a user namespace can grant
  // the capabilities, where the kernel allows it.
  const unshareArgs = process.getuid() === 0 ? ['-n'] : ['-r', '-n'];
  const probe = spawnSync('unshare',
                          [...unshareArgs, 'python3', '-c', HELPER, 'probe'],
                          { encoding: 'utf8' });
  if (probe.error)
    common.skip(`cannot run unshare: ${probe.error.message}`);
  if (probe.status !== 0) {
    const reason = probe.stderr.trim().split('\n').at(-1);
    common.skip('cannot create a TUN device in a new network namespace: ' +
                reason);
  }

  const child = spawn('unshare', [
    ...unshareArgs, 'python3', '-c', HELPER, 'exec',
    process.execPath, __filename, 'child',
  ], { stdio: 'inherit' });
  child.on('exit', common.mustCall((code, signal) => {
    assert.strictEqual(signal, null);
    assert.strictEqual(code, 0);
  }));
  return;
}

// The child, inside the namespace.

const dgram = require('dgram');
const { once } = require('events');

const key = fixtures.readKey('agent1-key.pem');
const cert = fixtures.readKey('agent1-cert.pem');

// Returns the Internet checksum (RFC 1071) of the concatenated buffers.
function internetChecksum(buffers) {
  const data = Buffer.concat(buffers);
  let sum = 0;
  for (let i = 0; i < data.length; i += 2)
    sum += (data[i] << 8) + (i + 1 < data.length ? data[i + 1] : 0);
  while (sum > 0xffff)
    sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

function udpHeader(sourcePort, destinationPort, payload) {
  const header = Buffer.alloc(8);
  header.writeUInt16BE(sourcePort, 0);
  header.writeUInt16BE(destinationPort, 2);
  header.writeUInt16BE(8 + payload.length, 4);
  return header;
}

function ipv4Bytes(address) {
  return Buffer.from(address.split('.').map(Number));
}

// Returns an IPv4 packet that carries `payload` in a UDP datagram from
// REMOTE_V4 to LOCAL_V4.
function ipv4UdpPacket(sourcePort, destinationPort, payload) {
  const source = ipv4Bytes(REMOTE_V4);
  const destination = ipv4Bytes(LOCAL_V4);
  const udp = udpHeader(sourcePort, destinationPort, payload);
  const pseudoHeader = Buffer.alloc(4);
  pseudoHeader[1] = 17;
  pseudoHeader.writeUInt16BE(udp.length + payload.length, 2);
  udp.writeUInt16BE(internetChecksum([source, destination, pseudoHeader,
                                      udp, payload]), 6);

  const header = Buffer.alloc(20);
  header[0] = 0x45;
  header.writeUInt16BE(20 + udp.length + payload.length, 2);
  header[8] = 64;
  header[9] = 17;
  source.copy(header, 12);
  destination.copy(header, 16);
  header.writeUInt16BE(internetChecksum([header]), 10);
  return Buffer.concat([header, udp, payload]);
}

// Returns an IPv6 packet that carries `payload` in a UDP datagram from
// REMOTE_V6 to LOCAL_V6.
function ipv6UdpPacket(sourcePort, destinationPort, payload) {
  const udp = udpHeader(sourcePort, destinationPort, payload);
  const pseudoHeader = Buffer.alloc(8);
  pseudoHeader.writeUInt32BE(udp.length + payload.length, 0);
  pseudoHeader[7] = 17;
  udp.writeUInt16BE(internetChecksum([REMOTE_V6_BYTES, LOCAL_V6_BYTES,
                                      pseudoHeader, udp, payload]), 6);

  const header = Buffer.alloc(40);
  header[0] = 0x60;
  header.writeUInt16BE(udp.length + payload.length, 4);
  header[6] = 17;
  header[7] = 64;
  REMOTE_V6_BYTES.copy(header, 8);
  LOCAL_V6_BYTES.copy(header, 24);
  return Buffer.concat([header, udp, payload]);
}

// Splits a byte stream of IPv4 and IPv6 packets into packets, and returns
// the UDP payloads sent to `port`, by IP version. Other packets, such as
// the kernel's own IPv6 multicast reports, are skipped.
class UdpPayloadCollector {
  #pending = Buffer.alloc(0);
  #port;
  payloads = { 4: [], 6: [] };
  packetCount = 0;

  constructor(port) {
    this.#port = port;
  }

  push(chunk) {
    this.#pending = Buffer.concat([this.#pending, chunk]);
    for (;;) {
      const packet = this.#nextPacket();
      if (packet === undefined)
        return;
      this.packetCount++;
      this.#collect(packet);
    }
  }

  #nextPacket() {
    const pending = this.#pending;
    if (pending.length < 6)
      return undefined;
    const version = pending[0] >> 4;
    assert.ok(version === 4 || version === 6,
              `IP version ${version} at the start of a packet`);
    const length = version === 4 ?
      pending.readUInt16BE(2) : 40 + pending.readUInt16BE(4);
    if (pending.length < length)
      return undefined;
    this.#pending = pending.subarray(length);
    return pending.subarray(0, length);
  }

  #collect(packet) {
    const version = packet[0] >> 4;
    const udpOffset = version === 4 ? (packet[0] & 0x0f) * 4 : 40;
    const protocol = version === 4 ? packet[9] : packet[6];
    if (protocol !== 17 || packet.readUInt16BE(udpOffset + 2) !== this.#port)
      return;
    this.payloads[version].push(packet.subarray(udpOffset + 8).toString());
  }
}

// Waits until `condition()` holds, checking once per event loop turn.
async function waitUntil(condition, description) {
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    if (condition())
      return;
    await new Promise(setImmediate);
  }
  assert.fail(`${description}: still missing after ${MAX_TURNS} loop turns`);
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

async function bindSocket(type, address) {
  const socket = dgram.createSocket(type);
  socket.bind(DOWN_PORT, address);
  await once(socket, 'listening');
  return socket;
}

// Returns the payload of down packet `i`: 6 to about 1400 bytes, so that
// packets of many sizes straddle TLS records.
function downPayload(i) {
  return `down ${i} `.padEnd(6 + (i * 347) % 1400, String(i % 10));
}

// Packets in both directions through one duplex splice.
async function testBothDirections(sockets) {
  const { client, server } = await connectPair({ allowHalfOpen: true });
  const handle = client.spliceTo({ fd: TUN_FD, framing: 'ip' });
  handle.on('error', common.mustNotCall());
  handle.start();

  // Down: the server writes the packets as one byte stream. The first
  // packet goes out in 7-byte writes, so it spans many TLS records, and the
  // rest in 1000-byte writes, across packet boundaries.
  const expected = { 4: [], 6: [] };
  const packets = [];
  for (let i = 0; i < PACKET_COUNT; i++) {
    const payload = downPayload(i);
    const version = i % 2 === 0 ? 4 : 6;
    const build = version === 4 ? ipv4UdpPacket : ipv6UdpPacket;
    packets.push(build(UP_PORT, DOWN_PORT, Buffer.from(payload)));
    expected[version].push(payload);
  }
  const stream = Buffer.concat(packets);
  for (let offset = 0; offset < packets[0].length; offset += 7)
    server.write(stream.subarray(offset, Math.min(offset + 7,
                                                  packets[0].length)));
  for (let offset = packets[0].length; offset < stream.length; offset += 1000)
    server.write(stream.subarray(offset, offset + 1000));

  await waitUntil(() => sockets.received[4].length === expected[4].length &&
                        sockets.received[6].length === expected[6].length,
                  'UDP datagrams from the TUN device');
  assert.deepStrictEqual(sockets.received[4], expected[4]);
  assert.deepStrictEqual(sockets.received[6], expected[6]);
  assert.strictEqual(handle.stats.packetsIn, PACKET_COUNT);
  assert.strictEqual(handle.stats.bytesIn, stream.length);
  sockets.received[4].length = 0;
  sockets.received[6].length = 0;

  // Up: datagrams sent to the remote addresses leave through the device,
  // and the server finds each of them whole in its TLS stream.
  const collector = new UdpPayloadCollector(UP_PORT);
  server.on('data', (chunk) => collector.push(chunk));
  const sent = { 4: [], 6: [] };
  for (let i = 0; i < PACKET_COUNT; i++) {
    const payload = `up ${i} `.padEnd(1 + (i * 211) % 1400, '+');
    const version = i % 2 === 0 ? 4 : 6;
    const socket = sockets[version];
    socket.send(payload, UP_PORT, version === 4 ? REMOTE_V4 : REMOTE_V6);
    sent[version].push(payload);
  }
  await waitUntil(() => collector.payloads[4].length === sent[4].length &&
                        collector.payloads[6].length === sent[6].length,
                  'IP packets at the TLS server');
  assert.deepStrictEqual(collector.payloads[4], sent[4]);
  assert.deepStrictEqual(collector.payloads[6], sent[6]);
  assert.strictEqual(handle.stats.packetsOut, collector.packetCount);

  await handle.stop();
  client.destroy();
  server.destroy();
}

// The server sends good packets and then `bad`. The splice writes the good
// ones, then fails with an error that names the offset of `bad`.
async function testFramingError(sockets, goodPackets, bad) {
  const { client, server } = await connectPair();
  const handle = client.spliceTo({ fd: TUN_FD, direction: 'in',
                                   framing: 'ip' });
  const events = [];
  handle.on('end', (direction) => events.push(`end ${direction}`));
  const failed = new Promise((resolve) => {
    handle.on('error', common.mustCall((err) => {
      events.push(`error ${err.code}`);
      resolve(err);
    }));
  });
  // events.once() would reject on the 'error' that comes first.
  const closed = new Promise((resolve) => {
    handle.on('close', common.mustCall(resolve));
  });
  handle.start();

  const good = Buffer.concat(goodPackets);
  server.write(Buffer.concat([good, bad]));

  const err = await failed;
  await closed;
  assert.deepStrictEqual(events, ['error ERR_TLS_SPLICE_FRAMING']);
  assert.match(err.message, new RegExp(`offset ${good.length}\\b`));
  assert.strictEqual(handle.stats.packetsIn, goodPackets.length);
  assert.strictEqual(handle.stats.bytesIn, good.length);

  const expectedCount = goodPackets.length;
  await waitUntil(() => sockets.received[4].length +
                        sockets.received[6].length === expectedCount,
                  'UDP datagrams before the framing error');
  sockets.received[4].length = 0;
  sockets.received[6].length = 0;
  client.destroy();
  server.destroy();
}

async function main() {
  assert.ok(fs.fstatSync(TUN_FD).isCharacterDevice());

  const sockets = {
    4: await bindSocket('udp4', LOCAL_V4),
    6: await bindSocket('udp6', LOCAL_V6),
    received: { 4: [], 6: [] },
  };
  for (const version of [4, 6]) {
    sockets[version].on('message', (message) => {
      sockets.received[version].push(message.toString());
    });
  }

  await testBothDirections(sockets);

  const v4 = ipv4UdpPacket(UP_PORT, DOWN_PORT, Buffer.from('good v4'));
  const v6 = ipv6UdpPacket(UP_PORT, DOWN_PORT, Buffer.from('good v6'));
  // Version 0 in the first header byte.
  await testFramingError(sockets, [v4, v6], Buffer.alloc(40));
  // An IPv4 total length of 12 bytes, shorter than the 20-byte header.
  const short = Buffer.from(v4);
  short.writeUInt16BE(12, 2);
  await testFramingError(sockets, [], short);
  await testFramingError(sockets, [v6], short);

  sockets[4].close();
  sockets[6].close();
}

main().then(common.mustCall());
