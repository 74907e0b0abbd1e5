/**
 * Fuzzes the store server on loopback with garbled, truncated and oversized
 * frames, authenticated or not: it must stay up, keep answering a valid
 * client, and hold no more connections, waits or keys than the cases made.
 * Deterministic (seeded) and bounded: 300 cases, well under 10 s.
 */
import assert from "node:assert/strict";
import { StoreClient, StoreServer } from "../lib/dist/store.ts";
import { OP_DELETE, OP_GET, OP_SET, Writer } from "../lib/dist/store_protocol.ts";
import {
  authFrame,
  eventually,
  rawConnect,
  readUntilClosed,
  writeAll,
} from "./fixtures/store_raw.ts";

const SECRET = "fuzz-secret-0123456789abcdef";
const CASES = 300;
const BATCH = 30;
const SEED = 0x5eed1234;

/** mulberry32: a small seeded generator, so a failure replays exactly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Case {
  readonly kind: string;
  readonly bytes: Uint8Array;
  /** Close right after writing (else wait for the server to close it). */
  readonly hangUp: boolean;
}

function makeCase(next: () => number, index: number): Case {
  const int = (n: number): number => Math.floor(next() * n);
  const junk = (n: number): Uint8Array => Uint8Array.from({ length: n }, () => int(256));
  const cat = (...parts: Uint8Array[]): Uint8Array => new Uint8Array(parts.flatMap((p) => [...p]));
  const u32 = (v: number): Uint8Array => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, v >>> 0, true);
    return b;
  };
  const auth = authFrame(SECRET);
  const validSet = new Writer().u32(2).u8(OP_SET).str(`fuzz/${index}`).bytes(junk(int(64))).frame();
  const randomOp = (): Uint8Array => {
    const w = new Writer().u32(int(2 ** 32)).u8(int(7));
    for (let i = int(6); i > 0; i--) {
      if (next() < 0.5) w.u32(next() < 0.5 ? int(2 ** 32) : int(8));
      else w.str(String.fromCharCode(...junk(int(12))));
    }
    return w.frame();
  };
  const hangUp = next() < 0.7;
  switch (int(9)) {
    case 0:
      return { kind: "garbage", bytes: junk(1 + int(200)), hangUp };
    case 1:
      return {
        kind: "huge prefix",
        bytes: cat(
          next() < 0.5 ? auth : new Uint8Array(),
          u32(0xffffffff - int(1000)),
          junk(int(32)),
        ),
        hangUp,
      };
    case 2: {
      const frame = cat(auth, validSet);
      return { kind: "truncated", bytes: frame.subarray(0, int(frame.length)), hangUp };
    }
    case 3:
      return {
        kind: "prefix near the limit, body missing",
        bytes: cat(auth, u32((1 << 20) - int(16)), junk(int(64))),
        hangUp,
      };
    case 4:
      return { kind: "auth + garbled body", bytes: cat(auth, u32(8 + int(32)), junk(40)), hangUp };
    case 5:
      return {
        kind: "auth + random ops",
        bytes: cat(auth, ...Array.from({ length: 1 + int(5) }, randomOp)),
        hangUp,
      };
    case 6:
      return {
        kind: "wrong secret + set",
        bytes: cat(authFrame(SECRET.slice(0, int(SECRET.length))), validSet),
        hangUp,
      };
    case 7: {
      const get = new Writer().u32(3).u8(OP_GET).u32(int(2 ** 32)).u8(1).u32(1 + int(3));
      for (let i = 0; i < 3; i++) get.str(`fuzz/${int(CASES)}`);
      const del = new Writer().u32(4).u8(OP_DELETE).u8(int(2)).u32(1).str("fuzz/1").frame();
      return { kind: "valid set/get/delete", bytes: cat(auth, validSet, get.frame(), del), hangUp };
    }
    default: {
      const frame = cat(auth, validSet);
      const flipped = frame.slice();
      for (let i = 1 + int(4); i > 0; i--) flipped[int(flipped.length)] ^= 1 << int(8);
      return { kind: "bit flips", bytes: flipped, hangUp };
    }
  }
}

Deno.test("store fuzz: garbled, truncated and huge frames never take the server down", async () => {
  const start = Date.now();
  await using server = StoreServer.listen({
    secret: SECRET,
    maxFrameBytes: 1 << 20,
    readTimeoutMs: 300,
    authTimeoutMs: 300,
    maxWaitMs: 300,
  });
  const next = rng(SEED);
  const cases = Array.from({ length: CASES }, (_, i) => makeCase(next, i));
  let peakConnections = 0;
  for (let b = 0; b < CASES; b += BATCH) {
    await Promise.all(
      cases.slice(b, b + BATCH).map(async (c) => {
        const conn = await rawConnect(server.port);
        await writeAll(conn, c.bytes);
        peakConnections = Math.max(peakConnections, server.stats.connections);
        if (c.hangUp) {
          try {
            conn.close();
          } catch { /* the server was first */ }
        } else {
          // Left open a while: garbled input is closed by the server's read or
          // auth bounds; a well-formed idle client may stay, so we hang up then.
          await readUntilClosed(conn, 500);
        }
      }),
    );
  }
  assert(peakConnections <= BATCH + 1, `peak ${peakConnections} connections`);
  assert(
    await eventually(() => server.stats.connections === 0 && server.stats.waits === 0, 3000),
    `left ${JSON.stringify(server.stats)} (seed ${SEED})`,
  );
  assert(server.stats.keys <= CASES, `${server.stats.keys} keys`);
  // Each case stores at most one small value (≤ 64 bytes, key ≤ 20 characters).
  assert(server.stats.storedBytes <= CASES * 128, `${server.stats.storedBytes} bytes stored`);
  assert(server.stats.rejected > 0, "no case was refused: the fuzzer is not reaching the checks");
  using client = await StoreClient.connect(server.address, {
    secret: SECRET,
    connectTimeoutMs: 2000,
  });
  await client.set("after-fuzz", new Uint8Array([42]));
  assert.equal((await client.get("after-fuzz", 1000))[0], 42);
  const elapsed = Date.now() - start;
  assert(elapsed < 10_000, `took ${elapsed} ms`);
});
