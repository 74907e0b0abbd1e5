/**
 * The rendezvous store: a small TCP key-value server that the launcher hosts
 * and every rank reaches through `WEFT_STORE`, so that ranks can exchange the
 * NCCL unique id and CUDA IPC handles before any GPU transport exists.
 *
 * Protocol (little-endian, one TCP connection per client, requests may be in
 * flight concurrently and are answered by id, possibly out of order):
 *
 *   frame   = u32 byteLength, body
 *   request = u32 id, u8 op, …   SET: str key, bytes value
 *                                GET: u32 timeoutMs, u8 withValues, u32 n, n × str key
 *   reply   = u32 id, u8 status, …  OK (GET: u32 n, n × bytes when withValues)
 *                                   TIMEOUT: u32 m, m × u32 index of a missing key
 *                                   BAD: str message
 *   str / bytes = u32 byteLength, data
 *
 * A GET waits on the server until every key is present, so a waiting rank
 * costs no polling; the server bounds every wait, and the client bounds it
 * again in case the server itself is gone.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { parseAddress } from "./env.ts";

const OP_SET = 1;
const OP_GET = 2;
const STATUS_OK = 0;
const STATUS_TIMEOUT = 1;
const STATUS_BAD = 2;
/** Refuse frames past this size: a garbage length must not allocate gigabytes. */
const MAX_FRAME_BYTES = 1 << 28;
/** The longest wait the server accepts (a u32 of ms is 49 days; nobody means that). */
const MAX_WAIT_MS = 24 * 3600 * 1000;
/** Extra time the client grants the server to answer a timed-out wait. */
const CLIENT_GRACE_MS = 5000;

/** Default bound for waits on other ranks. */
export const DEFAULT_STORE_TIMEOUT_MS = 60_000;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// ---------------------------------------------------------------- encoding

class Writer {
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

  u8(v: number): this {
    this.#reserve(1);
    this.#view.setUint8(this.#len, v);
    this.#len += 1;
    return this;
  }

  u32(v: number): this {
    this.#reserve(4);
    this.#view.setUint32(this.#len, v, true);
    this.#len += 4;
    return this;
  }

  bytes(b: Uint8Array): this {
    this.u32(b.length);
    this.#reserve(b.length);
    this.#buf.set(b, this.#len);
    this.#len += b.length;
    return this;
  }

  str(s: string): this {
    return this.bytes(encoder.encode(s));
  }

  /** The finished frame, length prefix included. */
  frame(): Uint8Array {
    this.#view.setUint32(0, this.#len - 4, true);
    return this.#buf.subarray(0, this.#len);
  }
}

class Reader {
  #view: DataView;
  #pos = 0;
  constructor(readonly body: Uint8Array) {
    this.#view = new DataView(body.buffer, body.byteOffset, body.byteLength);
  }

  #need(n: number): void {
    if (this.#pos + n > this.body.length) throw new Error("truncated store message");
  }

  u8(): number {
    this.#need(1);
    return this.#view.getUint8(this.#pos++);
  }

  u32(): number {
    this.#need(4);
    const v = this.#view.getUint32(this.#pos, true);
    this.#pos += 4;
    return v;
  }

  bytes(): Uint8Array {
    const n = this.u32();
    this.#need(n);
    // A copy: the body's buffer is reused by the frame reader.
    const out = this.body.slice(this.#pos, this.#pos + n);
    this.#pos += n;
    return out;
  }

  str(): string {
    return decoder.decode(this.bytes());
  }
}

/** Reads length-prefixed frames from a connection. */
class FrameReader {
  #buf = new Uint8Array(64 * 1024);
  #start = 0;
  #end = 0;
  constructor(readonly conn: Deno.Conn) {}

  /** The next frame's body, or null at a clean end of stream. */
  async next(): Promise<Uint8Array | null> {
    for (;;) {
      const have = this.#end - this.#start;
      if (have >= 4) {
        const len = new DataView(this.#buf.buffer, this.#start, 4).getUint32(0, true);
        if (len > MAX_FRAME_BYTES) throw new Error(`store frame of ${len} bytes is too large`);
        if (have >= 4 + len) {
          const body = this.#buf.slice(this.#start + 4, this.#start + 4 + len);
          this.#start += 4 + len;
          return body;
        }
        this.#makeRoom(4 + len);
      } else {
        this.#makeRoom(4);
      }
      const n = await this.conn.read(this.#buf.subarray(this.#end));
      if (n === null) {
        if (this.#end > this.#start) throw new Error("store connection closed mid-frame");
        return null;
      }
      this.#end += n;
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
class FrameWriter {
  #tail: Promise<void> = Promise.resolve();
  constructor(readonly conn: Deno.Conn) {}

  write(frame: Uint8Array): Promise<void> {
    const next = this.#tail.then(async () => {
      let off = 0;
      while (off < frame.length) off += await this.conn.write(frame.subarray(off));
    });
    // A failed write must not poison every later one; the read side reports the loss.
    this.#tail = next.catch(() => {});
    return next;
  }
}

function formatAddress(hostname: string, port: number): string {
  return hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
}

// ---------------------------------------------------------------- server

interface Waiter {
  readonly keys: readonly string[];
  readonly missing: Set<string>;
  readonly withValues: boolean;
  readonly reply: (frame: Uint8Array) => void;
  readonly id: number;
  readonly owner: Deno.Conn;
  timer: ReturnType<typeof setTimeout> | undefined;
}

/** Options of {@link StoreServer.listen}. */
export interface StoreServerOptions {
  /** Interface to bind; loopback by default. Use "0.0.0.0" for a multi-node world. */
  readonly hostname?: string;
  /** Port; 0 (default) picks a free one, see {@link StoreServer.port}. */
  readonly port?: number;
}

/**
 * The store server. The launcher of node 0 hosts one for the whole world.
 *
 * @example
 * ```ts
 * import { StoreServer, StoreClient } from "./store.ts";
 * await using server = StoreServer.listen();
 * using client = await StoreClient.connect(server.address);
 * await client.set("greeting", new TextEncoder().encode("hi"));
 * console.assert((await client.get("greeting", 1000)).length === 2);
 * ```
 */
export class StoreServer implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #values = new Map<string, Uint8Array>();
  readonly #waiters = new Map<string, Set<Waiter>>();
  readonly #conns = new Set<Deno.Conn>();
  readonly #tasks = new Set<Promise<void>>();
  #closed = false;
  /** The bound interface. */
  readonly hostname: string;
  /** The bound port (the real one when 0 was asked). */
  readonly port: number;

  private constructor(listener: Deno.TcpListener) {
    this.#listener = listener;
    const addr = listener.addr as Deno.NetAddr;
    this.hostname = addr.hostname;
    this.port = addr.port;
    this.#track(this.#acceptLoop());
  }

  /** Binds and starts serving; loopback and a free port unless told otherwise. */
  static listen(options: StoreServerOptions = {}): StoreServer {
    const hostname = options.hostname ?? "127.0.0.1";
    try {
      return new StoreServer(Deno.listen({ hostname, port: options.port ?? 0, transport: "tcp" }));
    } catch (cause) {
      throw new WeftError({
        field: "store address",
        problem: `cannot listen on ${formatAddress(hostname, options.port ?? 0)}: ${String(cause)}`,
        fix: "pick a free port (or 0 for any) and an interface of this host",
        cause,
      });
    }
  }

  /**
   * `host:port` for clients on this host. A wildcard bind is advertised as
   * loopback; remote nodes use the `--master` address they were given.
   */
  get address(): string {
    const host = this.hostname === "0.0.0.0" || this.hostname === "::"
      ? "127.0.0.1"
      : this.hostname;
    return formatAddress(host, this.port);
  }

  /** Stops listening, drops every connection and pending wait. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const conn of this.#conns) {
      try {
        conn.close();
      } catch { /* already closed */ }
    }
    for (const set of this.#waiters.values()) for (const w of set) clearTimeout(w.timer);
    this.#waiters.clear();
    await Promise.all(this.#tasks);
  }

  /** Same as {@link StoreServer.close}, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #track(task: Promise<void>): void {
    this.#tasks.add(task);
    task.finally(() => this.#tasks.delete(task));
  }

  async #acceptLoop(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // listener closed
      }
      if (this.#closed) {
        conn.close();
        return;
      }
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch { /* not essential */ }
      this.#conns.add(conn);
      this.#track(this.#serve(conn));
    }
  }

  async #serve(conn: Deno.Conn): Promise<void> {
    const reader = new FrameReader(conn);
    const writer = new FrameWriter(conn);
    const reply = (frame: Uint8Array): void => {
      writer.write(frame).catch(() => {});
    };
    try {
      for (;;) {
        const body = await reader.next();
        if (body === null) break;
        this.#handle(new Reader(body), conn, reply);
      }
    } catch {
      // Malformed input or a reset: drop this client, keep serving the others.
    } finally {
      this.#dropWaitersOf(conn);
      this.#conns.delete(conn);
      try {
        conn.close();
      } catch { /* already closed */ }
    }
  }

  #handle(req: Reader, conn: Deno.Conn, reply: (frame: Uint8Array) => void): void {
    const id = req.u32();
    const op = req.u8();
    if (op === OP_SET) {
      const key = req.str();
      const value = req.bytes();
      this.#values.set(key, value);
      reply(new Writer().u32(id).u8(STATUS_OK).frame());
      this.#wake(key);
      return;
    }
    if (op === OP_GET) {
      const timeoutMs = Math.min(req.u32(), MAX_WAIT_MS);
      const withValues = req.u8() !== 0;
      const n = req.u32();
      const keys: string[] = [];
      for (let i = 0; i < n; i++) keys.push(req.str());
      const missing = new Set(keys.filter((k) => !this.#values.has(k)));
      const waiter: Waiter = {
        keys,
        missing,
        withValues,
        reply,
        id,
        owner: conn,
        timer: undefined,
      };
      if (missing.size === 0) {
        this.#answer(waiter);
        return;
      }
      waiter.timer = setTimeout(() => this.#expire(waiter), timeoutMs);
      for (const key of missing) {
        let set = this.#waiters.get(key);
        if (set === undefined) this.#waiters.set(key, set = new Set());
        set.add(waiter);
      }
      return;
    }
    reply(new Writer().u32(id).u8(STATUS_BAD).str(`unknown store op ${op}`).frame());
  }

  #wake(key: string): void {
    const set = this.#waiters.get(key);
    if (set === undefined) return;
    this.#waiters.delete(key);
    for (const waiter of set) {
      waiter.missing.delete(key);
      if (waiter.missing.size === 0) {
        clearTimeout(waiter.timer);
        this.#answer(waiter);
      }
    }
  }

  #answer(waiter: Waiter): void {
    const w = new Writer().u32(waiter.id).u8(STATUS_OK);
    if (waiter.withValues) {
      w.u32(waiter.keys.length);
      for (const key of waiter.keys) w.bytes(this.#values.get(key)!);
    }
    waiter.reply(w.frame());
  }

  #expire(waiter: Waiter): void {
    this.#unregister(waiter);
    const w = new Writer().u32(waiter.id).u8(STATUS_TIMEOUT);
    const idx = waiter.keys.flatMap((k, i) => (waiter.missing.has(k) ? [i] : []));
    w.u32(idx.length);
    for (const i of idx) w.u32(i);
    waiter.reply(w.frame());
  }

  #unregister(waiter: Waiter): void {
    for (const key of waiter.missing) {
      const set = this.#waiters.get(key);
      set?.delete(waiter);
      if (set?.size === 0) this.#waiters.delete(key);
    }
  }

  #dropWaitersOf(conn: Deno.Conn): void {
    for (const set of [...this.#waiters.values()]) {
      for (const waiter of set) {
        if (waiter.owner !== conn) continue;
        clearTimeout(waiter.timer);
        this.#unregister(waiter);
      }
    }
  }
}

// ---------------------------------------------------------------- client

/** Options of {@link StoreClient.connect}. */
export interface StoreClientOptions {
  /** How long to keep retrying while the server starts (default 60 s). */
  readonly connectTimeoutMs?: number;
  /** This client's rank; the default for {@link StoreClient.barrier}. */
  readonly rank?: number;
}

interface Pending {
  readonly resolve: (reply: Reader) => void;
  readonly reject: (error: unknown) => void;
}

/** Raised inside the client when the server reports a wait that ran out. */
class MissingKeys extends Error {
  constructor(readonly missing: readonly number[], readonly timeoutMs: number) {
    super("store wait timed out");
  }
}

/**
 * A connection to the store. Requests may run concurrently; every wait is
 * bounded and fails with a {@link WeftError} naming the key (and, for
 * barrier and allGather, the ranks that did not arrive).
 *
 * @example
 * ```ts
 * import { StoreServer, StoreClient } from "./store.ts";
 * await using server = StoreServer.listen();
 * const clients = await Promise.all([0, 1].map((rank) => StoreClient.connect(server.address, { rank })));
 * const gathered = await Promise.all(
 *   clients.map((c, r) => c.allGather("ids", r, 2, new Uint8Array([r]), 1000)),
 * );
 * console.assert(gathered[0][1][0] === 1);
 * clients.forEach((c) => c.close());
 * ```
 */
export class StoreClient implements Disposable {
  readonly #conn: Deno.Conn;
  readonly #writer: FrameWriter;
  readonly #pending = new Map<number, Pending>();
  readonly #loop: Promise<void>;
  #nextId = 1;
  #failure: WeftError | undefined;
  /** The server's `host:port`. */
  readonly address: string;
  /** This client's rank, when given at connect. */
  readonly rank?: number;

  private constructor(conn: Deno.Conn, address: string, rank: number | undefined) {
    this.#conn = conn;
    this.#writer = new FrameWriter(conn);
    this.address = address;
    this.rank = rank;
    this.#loop = this.#readLoop();
  }

  /**
   * Connects to `host:port`, retrying with backoff (20 ms doubling to 1 s)
   * while the server is not up yet, for at most `connectTimeoutMs`.
   */
  static async connect(address: string, options: StoreClientOptions = {}): Promise<StoreClient> {
    const parsed = parseAddress(address);
    if (parsed === undefined) {
      throw new WeftError({
        field: "WEFT_STORE",
        problem: `"${address}" is not host:port`,
        fix: "pass the address the launcher printed, e.g. 127.0.0.1:29500",
      });
    }
    const limit = options.connectTimeoutMs ?? DEFAULT_STORE_TIMEOUT_MS;
    const deadline = Date.now() + limit;
    let delay = 20;
    let lastError: unknown;
    for (;;) {
      try {
        const conn = await Deno.connect({ ...parsed, transport: "tcp" });
        try {
          conn.setNoDelay(true);
        } catch { /* not essential */ }
        return new StoreClient(conn, address, options.rank);
      } catch (error) {
        lastError = error;
      }
      const left = deadline - Date.now();
      if (left <= 0) break;
      await new Promise((r) => setTimeout(r, Math.min(delay, left)));
      delay = Math.min(delay * 2, 1000);
    }
    throw new WeftError({
      field: "WEFT_STORE",
      problem: `could not reach the store at ${address} within ${limit} ms (${String(lastError)})`,
      fix: "start the launcher of node 0 first (it hosts the store), or check --master host:port",
      cause: lastError,
    });
  }

  /** Stores `value` under `key`, waking everyone waiting for it. */
  async set(key: string, value: Uint8Array): Promise<void> {
    const reply = await this.#request(
      (w) => w.u8(OP_SET).str(key).bytes(value),
      CLIENT_GRACE_MS * 2,
    );
    const status = reply.u8();
    this.#expectOk(status, reply);
  }

  /** The value of `key`, waiting up to `timeoutMs` for some rank to set it. */
  async get(key: string, timeoutMs: number = DEFAULT_STORE_TIMEOUT_MS): Promise<Uint8Array> {
    try {
      return (await this.#get([key], timeoutMs, true))[0];
    } catch (error) {
      if (!(error instanceof MissingKeys)) throw error;
      throw new WeftError({
        field: "store",
        problem: `key "${key}" was not set within ${timeoutMs} ms (store ${this.address})`,
        fix:
          "the process that publishes it died, is stuck or never started: check its output; raise the timeout if it is only slow",
      });
    }
  }

  /** Waits until every key in `keys` is present. */
  async wait(
    keys: string | readonly string[],
    timeoutMs: number = DEFAULT_STORE_TIMEOUT_MS,
  ): Promise<void> {
    const list = typeof keys === "string" ? [keys] : keys;
    try {
      await this.#get(list, timeoutMs, false);
    } catch (error) {
      if (!(error instanceof MissingKeys)) throw error;
      throw new WeftError({
        field: "store",
        problem: `keys ${
          error.missing.map((i) => `"${list[i]}"`).join(", ")
        } were not set within ${timeoutMs} ms (store ${this.address})`,
        fix: "the processes that publish them died, are stuck or never started: check their output",
      });
    }
  }

  /**
   * Returns when all `world` ranks have reached barrier `name`. Names must be
   * unique per use (keys are never cleared).
   */
  async barrier(
    name: string,
    world: number,
    timeoutMs: number = DEFAULT_STORE_TIMEOUT_MS,
    rank: number | undefined = this.rank,
  ): Promise<void> {
    if (rank === undefined) {
      throw new WeftError({
        field: "rank",
        problem: "barrier needs this client's rank",
        fix: "connect with { rank } or pass rank to barrier()",
      });
    }
    await this.#collect(name, rank, world, new Uint8Array(0), timeoutMs, false);
  }

  /** Every rank contributes `bytes`; returns all contributions in rank order. */
  allGather(
    name: string,
    rank: number,
    world: number,
    bytes: Uint8Array,
    timeoutMs: number = DEFAULT_STORE_TIMEOUT_MS,
  ): Promise<Uint8Array[]> {
    return this.#collect(name, rank, world, bytes, timeoutMs, true);
  }

  /** Closes the connection; pending requests fail. */
  close(): void {
    this.#fail(
      new WeftError({
        field: "store",
        problem: "the store client was closed",
        fix: "keep the client open until every request has finished",
      }),
    );
    try {
      this.#conn.close();
    } catch { /* already closed */ }
  }

  /** Resolves once the connection is fully shut down (after {@link close}). */
  get closed(): Promise<void> {
    return this.#loop;
  }

  /** Same as {@link StoreClient.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  async #collect(
    name: string,
    rank: number,
    world: number,
    bytes: Uint8Array,
    timeoutMs: number,
    withValues: boolean,
  ): Promise<Uint8Array[]> {
    if (!Number.isInteger(rank) || !Number.isInteger(world) || rank < 0 || rank >= world) {
      throw new WeftError({
        field: "rank",
        problem: `rank ${rank} with world ${world}`,
        fix: "pass 0 ≤ rank < world",
      });
    }
    const keys = Array.from({ length: world }, (_, r) => `${name}/${r}`);
    await this.set(keys[rank], bytes);
    try {
      return await this.#get(keys, timeoutMs, withValues);
    } catch (error) {
      if (!(error instanceof MissingKeys)) throw error;
      throw new WeftError({
        field: "peer",
        rank,
        problem: `rank${error.missing.length > 1 ? "s" : ""} ${
          error.missing.join(", ")
        } of ${world} did not reach "${name}" within ${timeoutMs} ms`,
        fix:
          "those ranks died, are stuck or never started: check their output (the launcher prefixes it with [rank r]); raise the timeout if they are only slow",
      });
    }
  }

  async #get(
    keys: readonly string[],
    timeoutMs: number,
    withValues: boolean,
  ): Promise<Uint8Array[]> {
    const wait = Math.max(0, Math.min(Math.floor(timeoutMs), MAX_WAIT_MS));
    const reply = await this.#request((w) => {
      w.u8(OP_GET).u32(wait).u8(withValues ? 1 : 0).u32(keys.length);
      for (const key of keys) w.str(key);
    }, wait + CLIENT_GRACE_MS);
    const status = reply.u8();
    if (status === STATUS_TIMEOUT) {
      const m = reply.u32();
      const missing: number[] = [];
      for (let i = 0; i < m; i++) missing.push(reply.u32());
      throw new MissingKeys(missing, wait);
    }
    this.#expectOk(status, reply);
    if (!withValues) return [];
    const n = reply.u32();
    const values: Uint8Array[] = [];
    for (let i = 0; i < n; i++) values.push(reply.bytes());
    return values;
  }

  #expectOk(status: number, reply: Reader): void {
    if (status === STATUS_OK) return;
    const message = status === STATUS_BAD ? reply.str() : `status ${status}`;
    throw new WeftError({
      field: "store",
      problem: `the store at ${this.address} refused a request: ${message}`,
      fix: "use the same weft version for the launcher and the workers",
    });
  }

  /**
   * Sends a request (`body` writes everything after the id) and resolves
   * with its reply positioned after the id.
   */
  #request(body: (w: Writer) => void, answerWithinMs: number): Promise<Reader> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    const w = new Writer().u32(id);
    body(w);
    return new Promise<Reader>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(
          new WeftError({
            field: "store",
            problem: `the store at ${this.address} did not answer within ${answerWithinMs} ms`,
            fix:
              "the launcher hosting the store died or the network is down: check the launcher of node 0",
          }),
        );
      }, answerWithinMs);
      this.#pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.#writer.write(w.frame()).catch((error) => this.#lost(error));
    });
  }

  async #readLoop(): Promise<void> {
    const reader = new FrameReader(this.#conn);
    try {
      for (;;) {
        const body = await reader.next();
        if (body === null) break;
        const reply = new Reader(body);
        const id = reply.u32();
        const pending = this.#pending.get(id);
        if (pending === undefined) continue; // its client-side timer already fired
        this.#pending.delete(id);
        pending.resolve(reply);
      }
      this.#lost(new Error("the server closed the connection"));
    } catch (error) {
      this.#lost(error);
    }
  }

  #lost(error: unknown): void {
    this.#fail(
      new WeftError({
        field: "store",
        problem: `lost the connection to the store at ${this.address} (${String(error)})`,
        fix: "the launcher hosting the store died: check the launcher of node 0",
        cause: error,
      }),
    );
  }

  #fail(error: WeftError): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    for (const pending of this.#pending.values()) pending.reject(error);
    this.#pending.clear();
  }
}
