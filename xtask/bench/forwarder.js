'use strict';
// A Node.js forwarder measured by `cargo xtask bench`. It connects to the
// TLS peer on 127.0.0.1 and moves the session's cleartext to or from fd 3,
// which the xtask passes in, with one of these variants:
//
//   splice    tlsSocket.spliceTo(), the native pump
//   pipe      stream.pipe() between the TLS socket and a stream on fd 3
//   pipeline  stream.pipeline() between the same streams
//   data      a hand-written pump: 'data', write() and 'drain'
//
// Argument: one JSON object with the fields port, variant, direction ('in':
// TLS -> fd, 'out': fd -> TLS, 'duplex') and framing ('stream', 'length16'
// or 'ip').
//
// For 'stream', fd 3 is a pipe and the JavaScript variants wrap it in a
// net.Socket. For 'length16', fd 3 is a SOCK_SEQPACKET socket, and for 'ip'
// a TUN device, neither of which net.Socket can wrap. There the JavaScript
// variants read and write fd 3 with fs.read() and fs.write() on the thread
// pool, one packet per call. With 'length16' they add and strip the 16-bit
// big-endian length of each packet themselves. With 'ip' they cut the TLS
// stream into packets by the length in each IPv4 or IPv6 header.
//
// A TUN device has no EOF, so with 'ip' the fd -> TLS direction ends when
// the peer ends the session: spliceTo is stopped with stop(), and the
// JavaScript variants stop reading fd 3. A thread-pool read blocked on the
// device would keep the process from exiting, so the script then sends one
// UDP datagram into the device (to 10.77.0.2:9, the discard port), which
// completes the read, and drops that packet.
//
// When the pump has finished, the script prints one JSON line on stdout:
// { elu, startNs, endNs }, where elu is performance.eventLoopUtilization()
// from the handshake to the end. A failure is reported on stderr, and the
// process then ends with SIGKILL.

const dgram = require('dgram');
const fs = require('fs');
const net = require('net');
const tls = require('tls');
const { Readable, Writable, pipeline } = require('stream');
const { performance } = require('perf_hooks');

const config = JSON.parse(process.argv[2]);
const kFd = 3;
// Large enough for any packet with a 16-bit length.
const kMaxPacketSize = 65535;
const kSlabSize = 1024 * 1024;
// Bytes added in front of each packet that PacketSlab reads from fd 3.
const kPrefixSize = config.framing === 'length16' ? 2 : 0;
// With 'ip': the address that the TUN device routes, where the wake-up
// datagram goes.
const kTunRemoteAddress = '10.77.0.2';
const kDiscardPort = 9;

// Whether fd 3 is a packet fd, read and written one packet per call.
const isPacketFd = config.framing === 'length16' || config.framing === 'ip';
// Set when the peer has ended the session under framing 'ip': reads from
// the TUN device end as if at EOF.
let tunReadsStopped = false;

function fail(message) {
  process.stderr.write(`bench forwarder (${config.variant}): ${message}\n`);
  // process.exit() would wait for thread-pool reads still blocked on fd 3,
  // so the forwarder ends itself with SIGKILL. stderr is a pipe, which
  // Node writes synchronously, so the message is out by now.
  process.kill(process.pid, 'SIGKILL');
}

// Reads packets into slices of a large buffer, with 'length16' each after
// room for its 16-bit length, so that a packet costs no allocation of its
// own.
class PacketSlab {
  #slab = Buffer.alloc(0);
  #offset = 0;

  // Calls back with (err, frame), where frame contains the length (with
  // 'length16') and the packet, or is null at EOF.
  read(fd, callback) {
    if (tunReadsStopped) {
      process.nextTick(callback, null, null);
      return;
    }
    if (this.#slab.length - this.#offset < kPrefixSize + kMaxPacketSize) {
      this.#slab = Buffer.allocUnsafe(kSlabSize);
      this.#offset = 0;
    }
    const slab = this.#slab;
    const start = this.#offset;
    fs.read(fd, slab, start + kPrefixSize, kMaxPacketSize, null,
            (err, length) => {
              if (err || length === 0 || tunReadsStopped) {
                callback(err, null);
                return;
              }
              if (kPrefixSize === 2)
                slab.writeUInt16BE(length, start);
              this.#offset = start + kPrefixSize + length;
              callback(null, slab.subarray(start, this.#offset));
            });
  }
}

// Under framing 'ip': ends the reads from the TUN device once the peer has
// ended the session, and completes a read that may be blocked on it.
function stopTunReads() {
  tunReadsStopped = true;
  const socket = dgram.createSocket('udp4');
  socket.send(Buffer.alloc(1), kDiscardPort, kTunRemoteAddress, (err) => {
    socket.close();
    if (err)
      fail(`cannot send the wake-up datagram: ${err.stack}`);
  });
}

// Reads one packet per fs.read() call and pushes it with its length prefix.
class PacketReadable extends Readable {
  #slab = new PacketSlab();

  constructor(fd) {
    super({ highWaterMark: 64 * 1024 });
    this.fd = fd;
  }

  _read() {
    this.#slab.read(this.fd, (err, frame) => {
      if (err)
        this.destroy(err);
      else
        this.push(frame);
    });
  }
}

// Cuts a byte stream framed with 16-bit lengths into packets.
class Length16Parser {
  #pending = Buffer.alloc(0);

  // Returns the whole packets completed by `chunk`.
  push(chunk) {
    let data = this.#pending.length === 0 ? chunk :
      Buffer.concat([this.#pending, chunk]);
    const packets = [];
    while (data.length >= 2) {
      const length = data.readUInt16BE(0);
      if (data.length < 2 + length)
        break;
      packets.push(data.subarray(2, 2 + length));
      data = data.subarray(2 + length);
    }
    this.#pending = data;
    return packets;
  }
}

// Cuts a byte stream of IP packets into packets by the length in each IPv4
// or IPv6 header.
class IpParser {
  #pending = Buffer.alloc(0);

  // Returns the whole packets completed by `chunk`.
  push(chunk) {
    let data = this.#pending.length === 0 ? chunk :
      Buffer.concat([this.#pending, chunk]);
    const packets = [];
    while (data.length >= 6) {
      const version = data[0] >> 4;
      let length;
      if (version === 4)
        length = data.readUInt16BE(2);
      else if (version === 6)
        length = 40 + data.readUInt16BE(4);
      else
        fail(`IP version ${version} at the start of a packet`);
      if (data.length < length)
        break;
      packets.push(data.subarray(0, length));
      data = data.subarray(length);
    }
    this.#pending = data;
    return packets;
  }
}

// Returns the parser that cuts the TLS stream into packets for fd 3.
function packetParser() {
  return config.framing === 'ip' ? new IpParser() : new Length16Parser();
}

// Writes each packet with one fs.write() call, in order.
function writePackets(fd, packets, callback) {
  let index = 0;
  const next = (err) => {
    if (err || index === packets.length) {
      callback(err);
      return;
    }
    const packet = packets[index++];
    fs.write(fd, packet, 0, packet.length, null, next);
  };
  next();
}

class PacketWritable extends Writable {
  #parser = packetParser();

  constructor(fd) {
    super({ highWaterMark: 64 * 1024 });
    this.fd = fd;
  }

  _write(chunk, encoding, callback) {
    writePackets(this.fd, this.#parser.push(chunk), callback);
  }
}

// Returns the stream that the JavaScript variants read from fd 3.
function fdReadable() {
  if (isPacketFd)
    return new PacketReadable(kFd);
  return new net.Socket({ fd: kFd, readable: true, writable: false });
}

// Returns the stream that the JavaScript variants write to fd 3.
function fdWritable() {
  if (isPacketFd)
    return new PacketWritable(kFd);
  return new net.Socket({ fd: kFd, readable: false, writable: true });
}

function runSplice(socket, done) {
  const handle = socket.spliceTo({
    fd: kFd,
    direction: config.direction,
    framing: config.framing,
  });
  handle.on('error', (err) => fail(`splice error: ${err.stack}`));
  if (config.framing === 'ip') {
    handle.on('end', (direction) => {
      if (direction === 'in')
        handle.stop();
    });
  }
  handle.on('close', done);
  handle.start();
}

// Calls `done` once `count` calls of the returned function have been made.
function countdown(count, done) {
  let left = count;
  return () => {
    if (--left === 0)
      done();
  };
}

function runPipe(socket, done) {
  const directions = config.direction === 'duplex' ? 2 : 1;
  const finished = countdown(directions, done);
  if (config.direction !== 'out') {
    const sink = fdWritable();
    sink.on('error', (err) => fail(`fd write failed: ${err.stack}`));
    sink.on('finish', finished);
    socket.pipe(sink);
  }
  if (config.direction !== 'in') {
    const source = fdReadable();
    source.on('error', (err) => fail(`fd read failed: ${err.stack}`));
    socket.on('finish', finished);
    source.pipe(socket);
  }
}

function runPipeline(socket, done) {
  const directions = config.direction === 'duplex' ? 2 : 1;
  const finished = countdown(directions, done);
  const onPipelineEnd = (err) => {
    if (err)
      fail(`pipeline failed: ${err.stack}`);
    finished();
  };
  if (config.direction !== 'out')
    pipeline(socket, fdWritable(), onPipelineEnd);
  if (config.direction !== 'in')
    pipeline(fdReadable(), socket, onPipelineEnd);
}

// TLS -> fd by hand: pause the socket while the fd's queue is full.
function pumpIn(socket, finished) {
  if (isPacketFd) {
    const parser = packetParser();
    socket.on('data', (chunk) => {
      socket.pause();
      writePackets(kFd, parser.push(chunk), (err) => {
        if (err)
          fail(`fd write failed: ${err.stack}`);
        socket.resume();
      });
    });
    socket.on('end', finished);
    return;
  }
  const sink = fdWritable();
  sink.on('error', (err) => fail(`fd write failed: ${err.stack}`));
  socket.on('data', (chunk) => {
    if (!sink.write(chunk)) {
      socket.pause();
      sink.once('drain', () => socket.resume());
    }
  });
  socket.on('end', () => sink.end(finished));
}

// fd -> TLS by hand: read the next chunk only while the socket accepts more.
function pumpOut(socket, finished) {
  if (isPacketFd) {
    const slab = new PacketSlab();
    const readPacket = () => {
      slab.read(kFd, (err, frame) => {
        if (err)
          fail(`fd read failed: ${err.stack}`);
        if (frame === null) {
          socket.end(finished);
          return;
        }
        if (socket.write(frame))
          readPacket();
        else
          socket.once('drain', readPacket);
      });
    };
    readPacket();
    return;
  }
  const source = fdReadable();
  source.on('error', (err) => fail(`fd read failed: ${err.stack}`));
  source.on('data', (chunk) => {
    if (!socket.write(chunk)) {
      source.pause();
      socket.once('drain', () => source.resume());
    }
  });
  source.on('end', () => socket.end(finished));
}

function runData(socket, done) {
  const directions = config.direction === 'duplex' ? 2 : 1;
  const finished = countdown(directions, done);
  if (config.direction !== 'out')
    pumpIn(socket, finished);
  if (config.direction !== 'in')
    pumpOut(socket, finished);
}

const variants = {
  splice: runSplice,
  pipe: runPipe,
  pipeline: runPipeline,
  data: runData,
};

const run = variants[config.variant];
if (run === undefined)
  fail(`invalid variant ${JSON.stringify(config.variant)}`);

const socket = tls.connect({
  host: '127.0.0.1',
  port: config.port,
  // The peer's certificate is a throwaway one made for the run.
  rejectUnauthorized: false,
  minVersion: 'TLSv1.3',
  // In both directions at once, the peer may end its side while packets
  // from fd 3 are still on their way to it.
  allowHalfOpen: config.direction === 'duplex',
});
// Every forwarder disables Nagle's algorithm, as the C loop and socat do.
socket.setNoDelay(true);
socket.on('error', (err) => fail(`TLS socket error: ${err.stack}`));
socket.once('secureConnect', () => {
  const startNs = process.hrtime.bigint();
  const eluStart = performance.eventLoopUtilization();
  if (config.framing === 'ip' && config.variant !== 'splice')
    socket.once('end', stopTunReads);
  run(socket, () => {
    const elu = performance.eventLoopUtilization(eluStart).utilization;
    const endNs = process.hrtime.bigint();
    process.stdout.write(`${JSON.stringify({
      elu,
      startNs: startNs.toString(),
      endNs: endNs.toString(),
    })}\n`);
    // spliceTo's stop() leaves the socket open.
    if (config.framing === 'ip')
      socket.destroy();
  });
});
