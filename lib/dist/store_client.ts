/**
 * The rendezvous store's client: one authenticated TCP connection on which
 * requests run concurrently, each bounded in time.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { ENV, parseAddress, storeSecretFromEnv } from "./env.ts";
import {
  FrameReader,
  FrameWriter,
  MAX_WIRE_WAIT_MS,
  OP_AUTH,
  OP_DELETE,
  OP_GET,
  OP_SET,
  Reader,
  STATUS_BAD,
  STATUS_OK,
  STATUS_TIMEOUT,
  Writer,
} from "./store_protocol.ts";
import { MissingKeys, missingKeysError, missingPeersError } from "./store_client_errors.ts";

/** Default bound for waits on other ranks. */
export const DEFAULT_STORE_TIMEOUT_MS = 60_000;
/** Extra time the client grants the server to answer a timed-out wait. */
const CLIENT_GRACE_MS = 5000;
const MAX_WAIT_MS = MAX_WIRE_WAIT_MS;

/** Options of {@link StoreClient.connect}. */
export interface StoreClientOptions {
  /** How long to keep retrying while the server starts (default 60 s). */
  readonly connectTimeoutMs?: number;
  /** This client's rank; the default for {@link StoreClient.barrier}. */
  readonly rank?: number;
  /**
   * The job's store secret. Default: `WEFT_STORE_SECRET` from the
   * environment (the launcher sets it for every rank), else empty.
   */
  readonly secret?: string;
}

interface Pending {
  readonly resolve: (reply: Reader) => void;
  readonly reject: (error: unknown) => void;
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
   * while the server is not up yet, for at most `connectTimeoutMs`, and
   * authenticates with the job's secret. A wrong secret fails at once with a
   * {@link WeftError} naming `WEFT_STORE_SECRET`.
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
    const secret = options.secret ?? storeSecretFromEnv();
    const deadline = Date.now() + limit;
    let delay = 20;
    let lastError: unknown;
    for (;;) {
      try {
        const conn = await Deno.connect({ ...parsed, transport: "tcp" });
        try {
          conn.setNoDelay(true);
        } catch { /* not essential */ }
        const client = new StoreClient(conn, address, options.rank);
        await client.#authenticate(secret, Math.max(deadline - Date.now(), CLIENT_GRACE_MS));
        return client;
      } catch (error) {
        if (error instanceof WeftError) throw error;
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

  async #authenticate(secret: string, withinMs: number): Promise<void> {
    let reply: Reader;
    try {
      reply = await this.#request((w) => w.u8(OP_AUTH).str(secret), withinMs);
    } catch (error) {
      this.close();
      throw error;
    }
    const status = reply.u8();
    if (status === STATUS_OK) return;
    const message = status === STATUS_BAD ? reply.str() : `status ${status}`;
    this.close();
    throw new WeftError({
      field: ENV.secret,
      problem: `the store at ${this.address} refused this connection: ${message}`,
      fix:
        "give every node's launcher the same --secret (or WEFT_STORE_SECRET), and start ranks through the launcher, which passes it on",
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
      throw missingKeysError([key], error, timeoutMs, this.address);
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
      throw missingKeysError(list, error, timeoutMs, this.address);
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

  /** Removes `keys` (absent ones are ignored); resolves with how many were removed. */
  delete(keys: string | readonly string[]): Promise<number> {
    return this.#delete(typeof keys === "string" ? [keys] : keys, false);
  }

  /**
   * Removes every key that starts with `prefix` (e.g. a communicator's
   * name and "/"), so that long jobs can free rendezvous keys they no longer
   * need; resolves with how many were removed.
   */
  deletePrefix(prefix: string): Promise<number> {
    return this.#delete([prefix], true);
  }

  async #delete(names: readonly string[], byPrefix: boolean): Promise<number> {
    const reply = await this.#request((w) => {
      w.u8(OP_DELETE).u8(byPrefix ? 1 : 0).u32(names.length);
      for (const name of names) w.str(name);
    }, CLIENT_GRACE_MS * 2);
    this.#expectOk(reply.u8(), reply);
    return reply.u32();
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
      throw missingPeersError(name, rank, world, error, timeoutMs);
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
      const waited = reply.u32();
      const m = reply.u32();
      const missing: number[] = [];
      for (let i = 0; i < m; i++) missing.push(reply.u32());
      throw new MissingKeys(missing, waited);
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
      fix:
        "free keys no longer needed (delete/deletePrefix) when a store limit is named; otherwise use the same weft version for the launcher and the workers",
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
