/** Every bound of the store server holds, with a clear error, and the server keeps serving. */
import assert from "node:assert/strict";
import { DEFAULT_STORE_LIMITS, StoreClient, StoreServer } from "../lib/dist/store.ts";
import { OP_GET, Writer } from "../lib/dist/store_protocol.ts";
import { WeftError } from "../dsl/errors.ts";
import {
  authFrame,
  eventually,
  rawConnect,
  readUntilClosed,
  writeAll,
} from "./fixtures/store_raw.ts";

const SECRET = "limits-test-secret-0123456789";
const connect = (server: StoreServer): Promise<StoreClient> =>
  StoreClient.connect(server.address, { secret: SECRET, connectTimeoutMs: 3000 });

async function stillServes(server: StoreServer): Promise<void> {
  using c = await connect(server);
  await c.set("alive", new Uint8Array([1]));
  assert.equal((await c.get("alive", 1000))[0], 1);
}

Deno.test("store limits: documented defaults", () => {
  assert.equal(DEFAULT_STORE_LIMITS.maxFrameBytes, 64 * 1024 * 1024);
  assert.equal(DEFAULT_STORE_LIMITS.maxConnections, 4096);
  assert.equal(DEFAULT_STORE_LIMITS.maxWaitMs, 15 * 60 * 1000);
  assert.throws(() => StoreServer.listen({ maxConnections: 0 }), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.equal(e.field, "maxConnections");
    return true;
  });
});

Deno.test("store limits: a frame over maxFrameBytes closes that connection only", async () => {
  await using server = StoreServer.listen({ secret: SECRET, maxFrameBytes: 1024 });
  using c = await connect(server);
  await assert.rejects(c.set("big", new Uint8Array(2000)), /lost the connection/);
  // A raw length prefix of 4 GiB - 1: refused before any allocation.
  const conn = await rawConnect(server.port);
  await writeAll(conn, new Uint8Array([...authFrame(SECRET), 0xff, 0xff, 0xff, 0xff, 1, 2, 3]));
  assert.equal(await readUntilClosed(conn, 3000), "closed");
  assert.equal(server.stats.keys, 0);
  await stillServes(server);
});

Deno.test("store limits: connections past maxConnections are closed at once", async () => {
  await using server = StoreServer.listen({ secret: SECRET, maxConnections: 2 });
  const a = await connect(server);
  const b = await connect(server);
  await assert.rejects(
    StoreClient.connect(server.address, { secret: SECRET, connectTimeoutMs: 500 }),
    WeftError,
  );
  a.close();
  assert(await eventually(() => server.stats.connections < 2, 2000));
  await stillServes(server);
  b.close();
});

Deno.test("store limits: a frame begun but not finished within readTimeoutMs is dropped", async () => {
  await using server = StoreServer.listen({ secret: SECRET, readTimeoutMs: 200 });
  const conn = await rawConnect(server.port);
  // Authenticated, then 10 of the promised 100 bytes, then silence.
  await writeAll(conn, new Uint8Array([...authFrame(SECRET), 100, 0, 0, 0, ...new Uint8Array(10)]));
  const start = Date.now();
  assert.equal(await readUntilClosed(conn, 3000), "closed");
  assert(Date.now() - start < 2000, `took ${Date.now() - start} ms`);
  // An idle authenticated connection between frames is not dropped.
  using idle = await connect(server);
  await new Promise((r) => setTimeout(r, 400));
  await idle.set("after-idle", new Uint8Array(0));
});

Deno.test("store limits: a client that does not read its replies is cut off at maxQueuedReplyBytes", async () => {
  await using server = StoreServer.listen({ secret: SECRET, maxQueuedReplyBytes: 256 * 1024 });
  using c = await connect(server);
  await c.set("v", new Uint8Array(64 * 1024));
  const conn = await rawConnect(server.port);
  // 400 GETs of 64 KiB each (25 MiB of replies), never read.
  const get = (id: number) => new Writer().u32(id).u8(OP_GET).u32(0).u8(1).u32(1).str("v").frame();
  const frames = [authFrame(SECRET), ...Array.from({ length: 400 }, (_, i) => get(i + 2))];
  await writeAll(conn, new Uint8Array(frames.flatMap((f) => [...f])));
  assert(
    await eventually(() => server.stats.connections === 1, 5000),
    "the reader was not cut off",
  );
  assert(server.stats.rejected >= 1);
  try {
    conn.close();
  } catch { /* closed */ }
  await stillServes(server);
});

Deno.test("store limits: pending waits per connection, keys and stored bytes", async () => {
  await using server = StoreServer.listen({
    secret: SECRET,
    maxPendingPerConnection: 2,
    maxKeys: 2,
    maxStoredBytes: 1000,
  });
  using c = await connect(server);
  const w1 = c.get("a", 2000);
  const w2 = c.get("b", 2000);
  await assert.rejects(c.get("c", 2000), /maxPendingPerConnection/);
  await c.set("a", new Uint8Array(10));
  await c.set("b", new Uint8Array(10));
  await Promise.all([w1, w2]);
  await assert.rejects(c.set("c", new Uint8Array(1)), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.match(e.message, /maxKeys/);
    assert.match(e.message, /deletePrefix/);
    return true;
  });
  assert.equal(await c.delete("b"), 1);
  await assert.rejects(c.set("c", new Uint8Array(2000)), /maxStoredBytes/);
  await c.set("c", new Uint8Array(100));
  assert.equal(server.stats.keys, 2);
});

Deno.test("store limits: maxWaitMs cuts a long wait short and says so", async () => {
  await using server = StoreServer.listen({ secret: SECRET, maxWaitMs: 200 });
  using c = await connect(server);
  const start = Date.now();
  await assert.rejects(c.get("never", 30_000), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.match(e.message, /within 200 ms \(the store's maxWaitMs/);
    return true;
  });
  assert(Date.now() - start < 2000);
});

Deno.test("store: delete, deletePrefix and close free keys", async () => {
  const server = StoreServer.listen({ secret: SECRET });
  using c = await connect(server);
  for (const k of ["job/a", "job/b", "job/c/d", "other"]) await c.set(k, new Uint8Array(8));
  assert.equal(server.stats.keys, 4);
  assert.equal(await c.delete(["job/a", "missing"]), 1);
  assert.equal(await c.deletePrefix("job/"), 2);
  assert.equal(server.stats.keys, 1);
  await assert.rejects(c.get("job/b", 50), /not set/);
  // A wait that saw a key arrive and then lose it waits for it again.
  let done = false;
  const both = c.wait(["p", "q"], 2000).then(() => done = true);
  await c.set("p", new Uint8Array(1));
  await c.delete("p");
  await c.set("q", new Uint8Array(1));
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(done, false, "answered although p was deleted");
  await c.set("p", new Uint8Array(1));
  await both;
  await server.close();
  assert.equal(server.stats.keys, 0);
  assert.equal(server.stats.storedBytes, 0);
});
