/**
 * Wire format of the rendezvous store (see `store.ts` for the protocol), the
 * frame reader and writer both ends share, and the store's limits.
 *
 * Little-endian throughout:
 *
 *   frame   = u32 byteLength, body
 *   request = u32 id, u8 op, …
 *             AUTH:   bytes secret                       (must be the first frame)
 *             SET:    str key, bytes value
 *             GET:    u32 timeoutMs, u8 withValues, u32 n, n × str key
 *             DELETE: u8 byPrefix, u32 n, n × str key
 *   reply   = u32 id, u8 status, …
 *             OK      (GET: u32 n, n × bytes when withValues; DELETE: u32 removed)
 *             TIMEOUT u32 waitedMs, u32 m, m × u32 index of a missing key
 *             BAD     str message
 *   str / bytes = u32 byteLength, data
 *
 * @module
 */

/** Request: authenticate the connection (first frame of every connection). */
export const OP_AUTH = 3;
/** Request: store a value. */
export const OP_SET = 1;
/** Request: wait for keys (optionally returning their values). */
export const OP_GET = 2;
/** Request: remove keys, or every key under a prefix. */
export const OP_DELETE = 4;
/** Reply: done. */
export const STATUS_OK = 0;
/** Reply: a wait ran out; lists the missing keys. */
export const STATUS_TIMEOUT = 1;
/** Reply: refused; carries a message. */
export const STATUS_BAD = 2;

/** Default limits of a store server; each is a {@link StoreLimits} field. */
export const DEFAULT_STORE_LIMITS: Readonly<Required<StoreLimits>> = Object.freeze({
  maxFrameBytes: 64 * 1024 * 1024,
  maxConnections: 4096,
  authTimeoutMs: 10_000,
  readTimeoutMs: 30_000,
  maxQueuedReplyBytes: 256 * 1024 * 1024,
  maxPendingPerConnection: 4096,
  maxKeys: 1 << 20,
  maxStoredBytes: 1024 * 1024 * 1024,
  maxWaitMs: 15 * 60 * 1000,
});

/**
 * Bounds a store server enforces so that a buggy or hostile client cannot
 * exhaust it. Every field is optional; see {@link DEFAULT_STORE_LIMITS}.
 */
export interface StoreLimits {
  /** Largest frame accepted or sent (64 MiB); a larger length prefix closes the connection. */
  readonly maxFrameBytes?: number;
  /** Open connections at once (4096); more are closed at accept. */
  readonly maxConnections?: number;
  /** A new connection must authenticate within this many ms (10 s). */
  readonly authTimeoutMs?: number;
  /** A frame once started must arrive whole within this many ms (30 s). Idle connections between frames are fine. */
  readonly readTimeoutMs?: number;
  /** Reply bytes queued for one slow reader before it is dropped (256 MiB). */
  readonly maxQueuedReplyBytes?: number;
  /** Waits (GETs) one connection may have pending (4096). */
  readonly maxPendingPerConnection?: number;
  /** Keys stored at once (2^20). */
  readonly maxKeys?: number;
  /** Key and value bytes stored at once (1 GiB). */
  readonly maxStoredBytes?: number;
  /** Longest wait a GET may ask for (15 min; the launcher passes the job's `--timeout`). */
  readonly maxWaitMs?: number;
}

/** The longest wait the wire can carry (a u32 of ms, 49 days; nobody means that). */
export const MAX_WIRE_WAIT_MS = 24 * 3600 * 1000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Builds one frame; the length prefix is filled in by {@link Writer.frame}. */
export class Writer {
  #buf = new Uint8Array(256);
  #view = new DataView(this.#buf.buffer);
  #len = 4; // room for the frame length

  #reserve(n: number): void {
    if (this.#len + n <= this.#buf.length) return;
    let size = this.#buf.length * 2;
    while (size < this.#len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.#buf.subarray(0, this.#len));
    this.#buf = next;
    this.#view = new DataView(next.buffer);
  }

  /** Appends a byte. */
  u8(v: number): this {
    this.#reserve(1);
    this.#view.setUint8(this.#len, v);
    this.#len += 1;
    return this;
  }

  /** Appends a little-endian u32. */
  u32(v: number): this {
    this.#reserve(4);
    this.#view.setUint32(this.#len, v, true);
    this.#len += 4;
    return this;
  }

  /** Appends a length-prefixed byte string. */
  bytes(b: Uint8Array): this {
    this.u32(b.length);
    this.#reserve(b.length);
    this.#buf.set(b, this.#len);
    this.#len += b.length;
    return this;
  }

  /** Appends a length-prefixed UTF-8 string. */
  str(s: string): this {
    return this.bytes(encoder.encode(s));
  }

  /** The finished frame, length prefix included. */
  frame(): Uint8Array {
    this.#view.setUint32(0, this.#len - 4, true);
    return this.#buf.subarray(0, this.#len);
  }
}

/** Reads the fields of one frame body; a short body throws. */
export class Reader {
  #view: DataView;
  #pos = 0;
  /** Wraps `body` (one frame, without its length prefix). */
  constructor(readonly body: Uint8Array) {
    this.#view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  }

  #need(n: number): void {
    if (this.#pos + n > this.body.length) throw new Error("truncated store message");
  }

  /** Reads a byte. */
  u8(): number {
    this.#need(1);
    return this.#view.getUint8(this.#pos++);
  }

  /** Reads a little-endian u32. */
  u32(): number {
    this.#need(4);
    const v = this.#view.getUint32(this.#pos, true);
    this.#pos += 4;
    return v;
  }

  /** Reads a length-prefixed byte string (a copy). */
  bytes(): Uint8Array {
    const n = this.u32();
    this.#need(n);
    const out = this.body.slice(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }

  /** Reads a length-prefixed UTF-8 string. */
  str(): string {
    return decoder.decode(this.bytes());
  }
}

/** Raised by {@link FrameReader} for input that must close the connection. */
export class FrameError extends Error {}

/** Reads length-prefixed frames from a connection. */
export class FrameReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  /**
   * Reads from `conn`; frames over `maxFrameBytes` are refused before any
   * allocation, and a frame once begun must complete within `readTimeoutMs`
   * (when given), so a stalled or garbled peer cannot pin memory.
   */
  constructor(
    readonly conn: Deno.Conn,
    readonly maxFrameBytes: number = DEFAULT_STORE_LIMITS.maxFrameBytes,
    readonly readTimeoutMs?: number,
  ) {}

  /** The next frame's body, or null at a clean end of stream. */
  async next(): Promise<Uint8Array | null> {
    let deadline: number | undefined;
    for (;;) {
      const have = this.#end - this.#start;
      if (have >= 4) {
        const len = new DataView(this.#buf.buffer, this.#start, 4).getUint32(0, true);
        if (len > this.maxFrameBytes) {
          throw new FrameError(
            `store frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes} bytes`,
          );
        }
        if (have >= 4 + len) {
          const body = this.#buf.slice(this.#start + 4, this.#start + 4 + len);
          this.#start += 4 + len;
          return body;
        }
        this.#makeRoom(4 + len);
      } else {
        this.#makeRoom(4);
      }
      if (have > 0 && this.readTimeoutMs !== undefined) {
        deadline ??= Date.now() + this.readTimeoutMs;
      }
      const n = await this.#read(deadline);
      if (n === null) {
        if (this.#end > this.#start) throw new FrameError("store connection closed mid-frame");
        return null;
      }
      this.#end += n;
    }
  }

  async #read(deadline: number | undefined): Promise<number | null> {
    const read = this.conn.read(this.#buf.subarray(this.#end));
    if (deadline === undefined) return await read;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const expired = new Promise<"expired">((resolve) => {
      timer = setTimeout(() => resolve("expired"), Math.max(0, deadline - Date.now()));
    });
    try {
      const n = await Promise.race([read, expired]);
      if (n === "expired") {
        read.catch(() => {}); // the caller closes the connection, which ends this read
        throw new FrameError(`store frame not completed within ${this.readTimeoutMs} ms`);
      }
      return n;
    } finally {
      clearTimeout(timer);
    }
  }

  #makeRoom(frameBytes: number): void {
    if (this.#start > 0) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    if (frameBytes > this.#buf.length || this.#end === this.#buf.length) {
      const next = new Uint8Array(Math.max(frameBytes, this.#buf.length * 2));
      next.set(this.#buf.subarray(0, this.#end));
      this.#buf = next;
    }
  }
}

/** Serializes writes so concurrent requests never interleave their bytes. */
export class FrameWriter {
  #tail: Promise<void> = Promise.resolve();
  #queued = 0;
  /** Writes to `conn`. */
  constructor(readonly conn: Deno.Conn) {}

  /** Bytes handed to {@link write} and not yet written. */
  get queuedBytes(): number {
    return this.#queued;
  }

  /** Queues `frame` behind earlier writes; resolves once it is written. */
  write(frame: Uint8Array): Promise<void> {
    this.#queued += frame.length;
    const next = this.#tail.then(async () => {
      try {
        let off = 0;
        while (off < frame.length) off += await this.conn.write(frame.subarray(off));
      } finally {
        this.#queued -= frame.length;
      }
    });
    // A failed write must not poison every later one; the read side reports the loss.
    this.#tail = next.catch(() => {});
    return next;
  }
}

/** `host:port`, bracketing IPv6 hosts. */
export function formatAddress(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

/** Compares two secrets in time that depends only on their lengths, not their contents. */
export function secretsEqual(a: Uint8Array, b: Uint8Array): boolean {
  let diff = a.length ^ b.length;
  const n = Math.max(a.length, b.length);
  for (let i = 0; i < n; i++) diff |= (a[i] ?? 0) ^ (b[i] ?? 0);
  return diff === 0;
}
