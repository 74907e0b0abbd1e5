import assert from "node:assert/strict";
import { StoreClient, StoreServer } from "../lib/dist/store.ts";
import { WeftError } from "../dsl/errors.ts";

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

async function closeAll(clients: StoreClient[]): Promise<void> {
  for (const c of clients) c.close();
  await Promise.all(clients.map((c) => c.closed));
}

Deno.test("store: get returns a value set before or after the request", async () => {
  await using server = StoreServer.listen();
  const a = await StoreClient.connect(server.address);
  const b = await StoreClient.connect(server.address);
  await a.set("early", bytes("one"));
  assert.equal(text(await b.get("early", 1000)), "one");
  const later = b.get("late", 5000);
  await new Promise((r) => setTimeout(r, 50));
  await a.set("late", bytes("two"));
  assert.equal(text(await later), "two");
  await closeAll([a, b]);
});

Deno.test("store: binary values of any size round-trip unchanged", async () => {
  await using server = StoreServer.listen();
  const c = await StoreClient.connect(server.address);
  const big = new Uint8Array(3 * 1024 * 1024 + 17).map((_, i) => (i * 131) & 255);
  await c.set("big", big);
  await c.set("empty", new Uint8Array(0));
  assert.deepEqual(await c.get("big", 1000), big);
  assert.equal((await c.get("empty", 1000)).length, 0);
  await closeAll([c]);
});

Deno.test("store: get times out with a WeftError naming the key", async () => {
  await using server = StoreServer.listen();
  const c = await StoreClient.connect(server.address);
  const start = Date.now();
  await assert.rejects(c.get("nccl-id", 200), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.match(e.message, /"nccl-id"/);
    assert.match(e.message, /200 ms/);
    return true;
  });
  assert(Date.now() - start < 2000);
  await closeAll([c]);
});

Deno.test("store: allGather and barrier over several clients return rank order", async () => {
  await using server = StoreServer.listen();
  const world = 5;
  const clients = await Promise.all(
    Array.from({ length: world }, (_, rank) => StoreClient.connect(server.address, { rank })),
  );
  // Reverse arrival order: rank order of the result must not depend on it.
  const gathered = await Promise.all(
    clients.map(async (c, r) => {
      await new Promise((res) => setTimeout(res, (world - r) * 10));
      return c.allGather("g", r, world, bytes(`v${r}`), 2000);
    }),
  );
  for (const g of gathered) assert.deepEqual(g.map(text), ["v0", "v1", "v2", "v3", "v4"]);
  await Promise.all(clients.map((c) => c.barrier("b", world, 2000)));
  await closeAll(clients);
});

Deno.test("store: a barrier that times out names the ranks that did not arrive", async () => {
  await using server = StoreServer.listen();
  const clients = await Promise.all(
    [0, 1, 2, 3].map((rank) => StoreClient.connect(server.address, { rank })),
  );
  const [r0, r2] = [clients[0], clients[2]];
  const results = await Promise.allSettled([r0.barrier("b", 4, 300), r2.barrier("b", 4, 300)]);
  for (const r of results) {
    assert.equal(r.status, "rejected");
    const e = (r as PromiseRejectedResult).reason;
    assert(e instanceof WeftError);
    assert.equal(e.field, "peer");
    assert.match(e.message, /ranks 1, 3 of 4 did not reach "b" within 300 ms/);
  }
  await closeAll(clients);
});

Deno.test("store: concurrent waits on one connection are answered independently", async () => {
  await using server = StoreServer.listen();
  const c = await StoreClient.connect(server.address);
  const d = await StoreClient.connect(server.address);
  const waits = ["k3", "k1", "k2"].map((k) => c.get(k, 2000));
  for (const k of ["k1", "k2", "k3"]) await d.set(k, bytes(k));
  assert.deepEqual((await Promise.all(waits)).map(text), ["k3", "k1", "k2"]);
  await c.wait(["k1", "k2"], 100);
  await closeAll([c, d]);
});

Deno.test("store: the client retries while the server starts", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  const connecting = StoreClient.connect(`127.0.0.1:${port}`, { connectTimeoutMs: 10_000 });
  await new Promise((r) => setTimeout(r, 300));
  await using _server = StoreServer.listen({ port });
  const c = await connecting;
  await c.set("x", bytes("y"));
  assert.equal(text(await c.get("x", 100)), "y");
  await closeAll([c]);
});

Deno.test("store: connecting gives up with a WeftError when nothing listens", async () => {
  const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (probe.addr as Deno.NetAddr).port;
  probe.close();
  await assert.rejects(
    StoreClient.connect(`127.0.0.1:${port}`, { connectTimeoutMs: 200 }),
    (e: unknown) => e instanceof WeftError && /could not reach the store/.test(e.message),
  );
  await assert.rejects(StoreClient.connect("no-port"), WeftError);
});

Deno.test("store: pending waits fail fast when the server goes away", async () => {
  const server = StoreServer.listen();
  const c = await StoreClient.connect(server.address);
  const waiting = c.get("never", 30_000);
  await new Promise((r) => setTimeout(r, 50));
  const start = Date.now();
  await server.close();
  await assert.rejects(
    waiting,
    (e: unknown) => e instanceof WeftError && /lost the connection/.test(e.message),
  );
  assert(Date.now() - start < 2000);
  await assert.rejects(c.set("after", bytes("x")), WeftError);
  await closeAll([c]);
});

Deno.test("store: ranks in separate processes gather through one server", async () => {
  await using server = StoreServer.listen();
  const script = new URL("./fixtures/store_peer.ts", import.meta.url).pathname;
  const world = 3;
  const outputs = await Promise.all(
    Array.from({ length: world }, (_, r) =>
      new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--allow-net",
          "--allow-read",
          script,
          server.address,
          String(r),
          String(world),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output()),
  );
  for (const out of outputs) {
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.deepEqual(JSON.parse(new TextDecoder().decode(out.stdout)), ["r0", "r1", "r2"]);
  }
});

Deno.test("store: a process that never joins is named in the others' timeout", async () => {
  await using server = StoreServer.listen();
  const clients = await Promise.all(
    [0, 1].map((rank) => StoreClient.connect(server.address, { rank })),
  );
  const script = new URL("./fixtures/store_peer.ts", import.meta.url).pathname;
  const quitter = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-read", script, server.address, "2", "3", "exitEarly"],
  }).output();
  assert.equal(quitter.code, 0);
  const results = await Promise.allSettled(
    clients.map((c, r) => c.allGather("peers", r, 3, bytes("x"), 300)),
  );
  for (const r of results) {
    assert.equal(r.status, "rejected");
    assert.match(
      String((r as PromiseRejectedResult).reason.message),
      /rank 2 of 3 did not reach "peers"/,
    );
  }
  await closeAll(clients);
});
