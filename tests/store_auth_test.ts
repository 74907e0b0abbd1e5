/** The store refuses connections without the job's secret, before storing anything. */
import assert from "node:assert/strict";
import { StoreClient, StoreServer } from "../lib/dist/store.ts";
import { OP_AUTH, OP_SET, Writer } from "../lib/dist/store_protocol.ts";
import { WeftError } from "../dsl/errors.ts";
import { eventually, readUntilClosed } from "./fixtures/store_raw.ts";

const SECRET = "0123456789abcdef0123456789abcdef";
const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

async function expectNothingStored(server: StoreServer, key: string): Promise<void> {
  assert.equal(server.stats.keys, 0);
  using good = await StoreClient.connect(server.address, { secret: SECRET });
  await assert.rejects(good.get(key, 100), /was not set within 100 ms/);
}

Deno.test("store auth: the right secret works", async () => {
  await using server = StoreServer.listen({ secret: SECRET });
  using c = await StoreClient.connect(server.address, { secret: SECRET });
  await c.set("k", bytes("v"));
  assert.equal(new TextDecoder().decode(await c.get("k", 1000)), "v");
  assert.equal(server.stats.rejected, 0);
});

Deno.test("store auth: a wrong secret is refused with a WeftError and nothing is stored", async () => {
  await using server = StoreServer.listen({ secret: SECRET });
  const start = Date.now();
  await assert.rejects(
    StoreClient.connect(server.address, {
      secret: "wrong-secret-0000000000000000000",
      connectTimeoutMs: 5000,
    }),
    (e: unknown) => {
      assert(e instanceof WeftError, String(e));
      assert.equal(e.field, "WEFT_STORE_SECRET");
      assert.match(e.message, /wrong secret/);
      return true;
    },
  );
  assert(Date.now() - start < 2000, "a refusal is not retried");
  // Raw: a wrong AUTH followed at once by a SET; the SET must not land.
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const auth = new Writer().u32(1).u8(OP_AUTH).str("nope").frame();
  const set = new Writer().u32(2).u8(OP_SET).str("stolen").bytes(bytes("x")).frame();
  await conn.write(new Uint8Array([...auth, ...set]));
  assert.equal(await readUntilClosed(conn, 3000), "closed");
  await expectNothingStored(server, "stolen");
  assert(server.stats.rejected >= 2);
});

Deno.test("store auth: a missing secret (no AUTH frame, or an empty one) is refused", async () => {
  await using server = StoreServer.listen({ secret: SECRET });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  await conn.write(new Writer().u32(1).u8(OP_SET).str("k").bytes(bytes("x")).frame());
  assert.equal(await readUntilClosed(conn, 3000), "closed");
  await assert.rejects(
    StoreClient.connect(server.address, { secret: "", connectTimeoutMs: 2000 }),
    /WEFT_STORE_SECRET/,
  );
  await expectNothingStored(server, "k");
});

Deno.test("store auth: a connection that never authenticates is closed after authTimeoutMs", async () => {
  await using server = StoreServer.listen({ secret: SECRET, authTimeoutMs: 200 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: server.port });
  const start = Date.now();
  assert.equal(await readUntilClosed(conn, 3000), "closed");
  assert(Date.now() - start < 2000);
  assert(await eventually(() => server.stats.connections === 0, 2000));
});

Deno.test("store auth: clients take the secret from WEFT_STORE_SECRET by default", async () => {
  await using server = StoreServer.listen({ secret: SECRET });
  // In a child process: setting the variable here would leak into tests running in parallel.
  const peer = new URL("./fixtures/store_peer.ts", import.meta.url).pathname;
  const run = (env: Record<string, string>) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-net", "--allow-read", "--allow-env", peer, server.address, "0", "1"],
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
  const good = await run({ WEFT_STORE_SECRET: SECRET });
  assert.equal(good.code, 0, new TextDecoder().decode(good.stderr));
  assert.deepEqual(JSON.parse(new TextDecoder().decode(good.stdout)), ["r0"]);
  const bad = await run({ WEFT_STORE_SECRET: "another-secret-000000000000000" });
  assert.notEqual(bad.code, 0);
  assert.match(new TextDecoder().decode(bad.stderr), /WEFT_STORE_SECRET/);
});
