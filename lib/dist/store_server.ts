/**
 * The rendezvous store's server: keeps keys in memory, answers waits when
 * their keys arrive, and enforces authentication and {@link StoreLimits}.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { storeSecretFromEnv } from "./env.ts";
import {
  DEFAULT_STORE_LIMITS,
  formatAddress,
  FrameReader,
  FrameWriter,
  MAX_WIRE_WAIT_MS,
  OP_AUTH,
  OP_DELETE,
  OP_GET,
  OP_SET,
  Reader,
  secretsEqual,
  STATUS_BAD,
  STATUS_OK,
  STATUS_TIMEOUT,
  type StoreLimits,
  Writer,
} from "./store_protocol.ts";
import { ValueTable } from "./store_values.ts";
import { type Wait, WaitTable } from "./store_waits.ts";

type Waiter = Wait<Session>;

/** One client connection's state. */
interface Session {
  readonly conn: Deno.Conn;
  readonly writer: FrameWriter;
  authenticated: boolean;
  pending: number;
  closed: boolean;
}

/** Options of {@link StoreServer.listen}. */
export interface StoreServerOptions extends StoreLimits {
  /**
   * Interface to bind; 127.0.0.1 by default. A multi-node world binds the
   * interface the other nodes reach (the launcher uses `--master`'s host).
   */
  readonly hostname?: string;
  /** Port; 0 (default) picks a free one, see {@link StoreServer.port}. */
  readonly port?: number;
  /**
   * The secret every connection must present first (the launcher generates
   * one per job and hands it to its ranks as `WEFT_STORE_SECRET`). Default:
   * `WEFT_STORE_SECRET` from the environment, as clients default to, else
   * the empty secret (for in-process use and tests only).
   */
  readonly secret?: string;
}

/** What a server holds right now (for monitoring and tests). */
export interface StoreStats {
  /** Open client connections. */
  readonly connections: number;
  /** Stored keys. */
  readonly keys: number;
  /** Key and value bytes stored. */
  readonly storedBytes: number;
  /** Waits not yet answered. */
  readonly waits: number;
  /** Connections refused: bad secret, no auth in time, a limit or garbled frames. */
  readonly rejected: number;
}

const encoder = new TextEncoder();

/**
 * The store server. The launcher of node 0 hosts one for the whole world.
 *
 * @example
 * ```ts
 * import { StoreServer, StoreClient } from "./store.ts";
 * await using server = StoreServer.listen({ secret: "s3cret" });
 * using client = await StoreClient.connect(server.address, { secret: "s3cret" });
 * await client.set("greeting", new TextEncoder().encode("hi"));
 * console.assert((await client.get("greeting", 1000)).length === 2);
 * ```
 */
export class StoreServer implements AsyncDisposable {
  readonly #listener: Deno.TcpListener;
  readonly #secret: Uint8Array;
  readonly #limits: Required<StoreLimits>;
  readonly #values: ValueTable;
  readonly #waits = new WaitTable<Session>({
    ready: (w) => this.#answer(w),
    expired: (w) => this.#expire(w),
    settled: (w) => w.owner.pending--,
  });
  readonly #sessions = new Set<Session>();
  readonly #tasks = new Set<Promise<void>>();
  #rejected = 0;
  #closed = false;
  /** The bound interface. */
  readonly hostname: string;
  /** The bound port (the real one when 0 was asked). */
  readonly port: number;

  private constructor(listener: Deno.TcpListener, options: StoreServerOptions) {
    this.#listener = listener;
    this.#secret = encoder.encode(options.secret ?? storeSecretFromEnv());
    this.#limits = { ...DEFAULT_STORE_LIMITS };
    for (const [name, value] of Object.entries(options)) {
      if (name in this.#limits && value !== undefined) {
        (this.#limits as Record<string, number>)[name] = value as number;
      }
    }
    this.#values = new ValueTable(this.#limits.maxKeys, this.#limits.maxStoredBytes);
    const addr = listener.addr as Deno.NetAddr;
    this.hostname = addr.hostname;
    this.port = addr.port;
    this.#track(this.#acceptLoop());
  }

  /** Binds and starts serving; 127.0.0.1 and a free port unless told otherwise. */
  static listen(options: StoreServerOptions = {}): StoreServer {
    for (const [name, value] of Object.entries(options)) {
      if (!(name in DEFAULT_STORE_LIMITS) || value === undefined) continue;
      if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
        throw new WeftError({
          field: name,
          problem: `is ${value}`,
          fix: `pass a positive integer (default ${
            DEFAULT_STORE_LIMITS[name as keyof StoreLimits]
          })`,
        });
      }
    }
    const hostname = options.hostname ?? "127.0.0.1";
    let listener: Deno.TcpListener;
    try {
      listener = Deno.listen({ hostname, port: options.port ?? 0, transport: "tcp" });
    } catch (cause) {
      throw new WeftError({
        field: "store address",
        problem: `cannot listen on ${formatAddress(hostname, options.port ?? 0)}: ${String(cause)}`,
        fix:
          "pick a free port (or 0 for any) and an address of this host (--master host:port or --bind)",
        cause,
      });
    }
    return new StoreServer(listener, options);
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

  /** Current connections, keys, bytes and waits. */
  get stats(): StoreStats {
    return {
      connections: this.#sessions.size,
      keys: this.#values.size,
      storedBytes: this.#values.bytes,
      waits: this.#waits.size,
      rejected: this.#rejected,
    };
  }

  /** Stops listening, drops every connection and pending wait, and frees every key. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#listener.close();
    } catch { /* already closed */ }
    for (const session of this.#sessions) this.#drop(session);
    this.#waits.clear();
    await Promise.all(this.#tasks);
    this.#values.clear();
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
      if (this.#closed || this.#sessions.size >= this.#limits.maxConnections) {
        if (!this.#closed) this.#rejected++;
        try {
          conn.close();
        } catch { /* already closed */ }
        if (this.#closed) return;
        continue;
      }
      try {
        (conn as Deno.TcpConn).setNoDelay(true);
      } catch { /* not essential */ }
      const session: Session = {
        conn,
        writer: new FrameWriter(conn),
        authenticated: false,
        pending: 0,
        closed: false,
      };
      this.#sessions.add(session);
      this.#track(this.#serve(session));
    }
  }

  async #serve(session: Session): Promise<void> {
    const reader = new FrameReader(
      session.conn,
      this.#limits.maxFrameBytes,
      this.#limits.readTimeoutMs,
    );
    // A connection that never authenticates must not hold a slot forever.
    const authTimer = setTimeout(() => {
      if (!session.authenticated) {
        this.#rejected++;
        this.#drop(session);
      }
    }, this.#limits.authTimeoutMs);
    try {
      for (;;) {
        const body = await reader.next();
        if (body === null || session.closed) break;
        if (!this.#handle(new Reader(body), session)) break;
      }
    } catch {
      // Malformed input, a limit or a reset: drop this client, keep serving the others.
      if (!session.closed) this.#rejected++;
    } finally {
      clearTimeout(authTimer);
      this.#waits.dropOwnedBy(session);
      this.#sessions.delete(session);
      if (!session.closed) {
        // Let a last refusal reach the client before the socket goes, but not for long.
        let timer: ReturnType<typeof setTimeout> | undefined;
        await Promise.race([
          session.writer.write(new Uint8Array(0)).catch(() => {}),
          new Promise((resolve) => timer = setTimeout(resolve, 1000)),
        ]);
        clearTimeout(timer);
      }
      this.#drop(session);
    }
  }

  #drop(session: Session): void {
    session.closed = true;
    try {
      session.conn.close();
    } catch { /* already closed */ }
  }

  #reply(session: Session, frame: Uint8Array): void {
    if (session.closed) return;
    if (frame.length - 4 > this.#limits.maxFrameBytes) {
      const id = new DataView(frame.buffer, frame.byteOffset + 4, 4).getUint32(0, true);
      frame = new Writer().u32(id).u8(STATUS_BAD).str(
        `the reply of ${
          frame.length - 4
        } bytes exceeds the frame limit of ${this.#limits.maxFrameBytes} bytes; ask for fewer keys at once`,
      ).frame();
    }
    if (session.writer.queuedBytes + frame.length > this.#limits.maxQueuedReplyBytes) {
      // The client does not read its replies: cut it off rather than buffer without end.
      this.#rejected++;
      this.#drop(session);
      return;
    }
    session.writer.write(frame).catch(() => {});
  }

  #bad(session: Session, id: number, message: string): void {
    this.#reply(session, new Writer().u32(id).u8(STATUS_BAD).str(message).frame());
  }

  /** Handles one request; false closes the connection. */
  #handle(req: Reader, session: Session): boolean {
    const id = req.u32();
    const op = req.u8();
    if (!session.authenticated) {
      const ok = op === OP_AUTH && secretsEqual(req.bytes(), this.#secret);
      if (!ok) {
        this.#rejected++;
        this.#bad(
          session,
          id,
          op === OP_AUTH
            ? "authentication failed: wrong secret"
            : "authentication required before any request",
        );
        return false;
      }
      session.authenticated = true;
      this.#reply(session, new Writer().u32(id).u8(STATUS_OK).frame());
      return true;
    }
    switch (op) {
      case OP_SET:
        this.#set(session, id, req.str(), req.bytes());
        return true;
      case OP_GET:
        this.#get(session, id, req);
        return true;
      case OP_DELETE:
        this.#delete(session, id, req);
        return true;
      default:
        this.#bad(session, id, `unknown store op ${op}`);
        return true;
    }
  }

  #set(session: Session, id: number, key: string, value: Uint8Array): void {
    const refused = this.#values.set(key, value);
    if (refused !== undefined) return this.#bad(session, id, refused);
    this.#reply(session, new Writer().u32(id).u8(STATUS_OK).frame());
    this.#waits.arrived(key);
  }

  #get(session: Session, id: number, req: Reader): void {
    const waitMs = Math.min(req.u32(), this.#limits.maxWaitMs, MAX_WIRE_WAIT_MS);
    const withValues = req.u8() !== 0;
    const n = req.u32();
    const keys: string[] = [];
    for (let i = 0; i < n; i++) keys.push(req.str());
    const missing = new Set(keys.filter((k) => !this.#values.has(k)));
    const waiter: Waiter = {
      keys,
      missing,
      withValues,
      id,
      owner: session,
      waitMs,
    };
    if (missing.size === 0) {
      this.#answer(waiter);
      return;
    }
    if (session.pending >= this.#limits.maxPendingPerConnection) {
      this.#bad(
        session,
        id,
        `${session.pending} waits already pending on this connection (maxPendingPerConnection)`,
      );
      return;
    }
    session.pending++;
    this.#waits.add(waiter);
  }

  #delete(session: Session, id: number, req: Reader): void {
    const byPrefix = req.u8() !== 0;
    const n = req.u32();
    const names: string[] = [];
    for (let i = 0; i < n; i++) names.push(req.str());
    const removed = this.#values.delete(names, byPrefix);
    this.#reply(session, new Writer().u32(id).u8(STATUS_OK).u32(removed).frame());
  }

  #answer(waiter: Waiter): void {
    const gone = waiter.keys.filter((k) => !this.#values.has(k));
    if (gone.length > 0) {
      // A key it saw arrive was deleted before the rest came: wait for it again.
      waiter.owner.pending++;
      this.#waits.add({ ...waiter, missing: new Set(gone) });
      return;
    }
    const w = new Writer().u32(waiter.id).u8(STATUS_OK);
    if (waiter.withValues) {
      w.u32(waiter.keys.length);
      for (const key of waiter.keys) w.bytes(this.#values.get(key)!);
    }
    this.#reply(waiter.owner, w.frame());
  }

  #expire(waiter: Waiter): void {
    const w = new Writer().u32(waiter.id).u8(STATUS_TIMEOUT).u32(waiter.waitMs);
    const idx = waiter.keys.flatMap((k, i) => (waiter.missing.has(k) ? [i] : []));
    w.u32(idx.length);
    for (const i of idx) w.u32(i);
    this.#reply(waiter.owner, w.frame());
  }
}
