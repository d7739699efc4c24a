// TypeScript declarations for the native TLS splice of the patched Node.js
// v22.22.2: tlsSocket.spliceTo(), tlsSocket.pipeToNative() and TLSSplice.
// The API reference is the TLSSplice section of doc/api/tls.md in the
// patched Node.js tree.
//
// The declarations augment the 'tls' module of @types/node. They are not
// repeated in 'node:tls', because @types/node declares the module as 'tls'
// and 'node:tls' re-exports it with `export * from "tls"`, so both
// specifiers see them. An augmentation of 'node:tls' that names TLSSocket
// would hide the TLSSocket class that 'node:tls' re-exports.

import { EventEmitter } from 'node:events';

declare module 'tls' {
    /**
     * `'in'` writes the cleartext received from the peer to the file
     * descriptor, `'out'` sends what is read from the file descriptor to the
     * peer, and `'duplex'` does both.
     */
    type SpliceDirection = 'in' | 'out' | 'duplex';

    /**
     * Packet boundaries: `'stream'` has none, `'ip'` takes them from the IPv4
     * or IPv6 header, and `'length16'` prefixes each packet on the TLS stream
     * with its length as a 16-bit big-endian integer. With `'ip'` and
     * `'length16'`, each read from and each write to the file descriptor is
     * one packet.
     */
    type SpliceFraming = 'stream' | 'ip' | 'length16';

    /** Options of `tlsSocket.pipeToNative()`: those of `spliceTo()` except `fd`. */
    interface PipeToNativeOptions {
        /** @default 'duplex' */
        direction?: SpliceDirection | undefined;
        /** @default 'stream' */
        framing?: SpliceFraming | undefined;
        /**
         * Close the file descriptor when the splice ends for any reason,
         * `stop()` and errors included.
         * @default false
         */
        autoClose?: boolean | undefined;
        /**
         * End the other side when one side ends. After the peer's
         * `close_notify`, the splice shuts down the write side of a socket
         * file descriptor. At the end of the file on the file descriptor, it
         * sends `close_notify` and ends the socket's writable side.
         * @default true
         */
        end?: boolean | undefined;
        /**
         * Bytes each direction buffers before it applies backpressure, from 1
         * to 67108864 (64 MiB).
         * @default 65536
         */
        highWaterMark?: number | undefined;
        /** Aborting this signal stops the splice as `splice.stop()` does. */
        signal?: AbortSignal | undefined;
    }

    /** Options of `tlsSocket.spliceTo()`. */
    interface SpliceOptions extends PipeToNativeOptions {
        /**
         * Open file descriptor to move the cleartext to and from, from 0 to
         * 2147483647, other than the socket's own.
         */
        fd: number;
    }

    /** Counters of the data a splice has moved, measured at the file descriptor. */
    interface SpliceStats {
        /** Cleartext bytes written to the file descriptor. */
        bytesIn: number;
        /** Bytes read from the file descriptor and sent through the TLS session. */
        bytesOut: number;
        /** Packets written to the file descriptor, always 0 with `'stream'` framing. */
        packetsIn: number;
        /** Packets read from the file descriptor, always 0 with `'stream'` framing. */
        packetsOut: number;
    }

    /**
     * A native splice between the cleartext of a TLS socket and a file
     * descriptor, returned by `tlsSocket.spliceTo()` before it has started.
     * It is an interface, not a class, because `node:tls` does not export
     * the `TLSSplice` class, so `instanceof TLSSplice` cannot work.
     *
     * Events: `'end'` once for each direction that ended cleanly, `'error'`
     * at most once, and `'close'` as the last event, once the file
     * descriptor is no longer polled. A splice whose `start()` throws emits
     * no `'close'`.
     */
    interface TLSSplice extends EventEmitter {
        /** The `direction` of the splice. */
        readonly direction: SpliceDirection;
        /** The file descriptor passed to `spliceTo()`, also after `'close'`. */
        readonly fd: number;
        /** Counters of the data moved so far, with the final values after `'close'`. */
        readonly stats: SpliceStats;

        /**
         * Starts the splice and returns it.
         * @throws ERR_INVALID_STATE if the splice was already started or
         * stopped, the socket was destroyed, a direction is owned by another
         * splice, or the side of the socket that a direction needs has ended.
         * @throws a system error if the file descriptor cannot be polled,
         * for example `EEXIST` when libuv already watches it or `EPERM` for
         * a regular file. When the start waits for pending socket writes,
         * this failure is emitted as `'error'` instead.
         */
        start(): this;

        /**
         * Stops the splice without losing data. The promise fulfills with the
         * final stats once the file descriptor is released, every byte read
         * from it was handed to the underlying socket, and decrypted bytes
         * not written to it are back in the socket's readable side. Every
         * call returns the same promise.
         */
        stop(): Promise<SpliceStats>;

        addListener(event: 'close', listener: () => void): this;
        addListener(event: 'end', listener: (direction: 'in' | 'out') => void): this;
        addListener(event: 'error', listener: (error: Error) => void): this;
        addListener(event: string | symbol, listener: (...args: any[]) => void): this;

        on(event: 'close', listener: () => void): this;
        on(event: 'end', listener: (direction: 'in' | 'out') => void): this;
        on(event: 'error', listener: (error: Error) => void): this;
        on(event: string | symbol, listener: (...args: any[]) => void): this;

        once(event: 'close', listener: () => void): this;
        once(event: 'end', listener: (direction: 'in' | 'out') => void): this;
        once(event: 'error', listener: (error: Error) => void): this;
        once(event: string | symbol, listener: (...args: any[]) => void): this;

        prependListener(event: 'close', listener: () => void): this;
        prependListener(event: 'end', listener: (direction: 'in' | 'out') => void): this;
        prependListener(event: 'error', listener: (error: Error) => void): this;
        prependListener(event: string | symbol, listener: (...args: any[]) => void): this;

        prependOnceListener(event: 'close', listener: () => void): this;
        prependOnceListener(event: 'end', listener: (direction: 'in' | 'out') => void): this;
        prependOnceListener(event: 'error', listener: (error: Error) => void): this;
        prependOnceListener(event: string | symbol, listener: (...args: any[]) => void): this;

        emit(event: 'close'): boolean;
        emit(event: 'end', direction: 'in' | 'out'): boolean;
        emit(event: 'error', error: Error): boolean;
        emit(event: string | symbol, ...args: any[]): boolean;
    }

    interface TLSSocket {
        /**
         * Prepares a native splice between the cleartext of this TLS session
         * and `options.fd`. Call `start()` on the result to start it.
         * @throws ERR_INVALID_ARG_TYPE, ERR_OUT_OF_RANGE or
         * ERR_INVALID_ARG_VALUE for invalid options.
         * @throws a system error with code `EBADF` if `options.fd` is not open.
         * @throws ERR_INVALID_STATE before the handshake has completed, after
         * the socket was destroyed, if a requested direction is owned by
         * another active splice, or if the side of the socket that a
         * direction needs has ended.
         * @throws ERR_TLS_SPLICE_UNSUPPORTED_STREAM if the socket does not run
         * over a TCP socket or a pipe.
         * @throws an AbortError if `options.signal` is already aborted.
         */
        spliceTo(options: SpliceOptions): TLSSplice;

        /**
         * Starts a splice between this TLS session and `fd` and waits until
         * it has closed. Never throws: every error rejects the promise.
         * @returns a promise that fulfills with the final stats once every
         * spliced direction has ended. It rejects with the splice's
         * `'error'`, with an AbortError when `options.signal` is aborted, or
         * with ERR_STREAM_PREMATURE_CLOSE when the socket is destroyed first.
         */
        pipeToNative(fd: number, options?: PipeToNativeOptions): Promise<SpliceStats>;
    }
}
