import assert from "node:assert/strict";
import {
  parseLaunchArgs,
  placeRanks,
  resolveSecret,
  storeBindHost,
  USAGE,
  validateLaunch,
} from "../lib/dist/launch.ts";
import { readLaunchEnv } from "../lib/dist/env.ts";
import { WeftError } from "../dsl/errors.ts";

const STORE = "127.0.0.1:29500";
const COLUMNS = [
  "RANK",
  "WORLD_SIZE",
  "LOCAL_RANK",
  "LOCAL_WORLD_SIZE",
  "NODE_RANK",
  "WEFT_DEVICE",
  "WEFT_STORE",
  "NCCL_HOSTID",
] as const;

/** Every rank's variables as rows of COLUMNS; also checks no other variable is set. */
function table(options: Parameters<typeof placeRanks>[0]): (string | null)[][] {
  return placeRanks(options, STORE).map((p, i) => {
    for (const name of Object.keys(p.env)) {
      assert((COLUMNS as readonly string[]).includes(name), `unexpected variable ${name}`);
    }
    assert.equal(p.rank, Number(p.env.RANK), `process ${i}`);
    return COLUMNS.map((c) => p.env[c] ?? null);
  });
}

Deno.test("placeRanks: 1 GPU × 4 ranks as 2 nodes: all on GPU 0, a host id per rank", () => {
  assert.deepEqual(table({ gpus: 1, ranksPerGpu: 4, emulateNodes: 2, jobId: "j" }), [
    ["0", "4", "0", "2", "0", "0", STORE, "weft-j-rank-0"],
    ["1", "4", "1", "2", "0", "0", STORE, "weft-j-rank-1"],
    ["2", "4", "0", "2", "1", "0", STORE, "weft-j-rank-2"],
    ["3", "4", "1", "2", "1", "0", STORE, "weft-j-rank-3"],
  ]);
});

Deno.test("placeRanks: 1 GPU × 4 ranks as 4 nodes of one rank", () => {
  assert.deepEqual(table({ gpus: 1, ranksPerGpu: 4, emulateNodes: 4, jobId: "j" }), [
    ["0", "4", "0", "1", "0", "0", STORE, "weft-j-rank-0"],
    ["1", "4", "0", "1", "1", "0", STORE, "weft-j-rank-1"],
    ["2", "4", "0", "1", "2", "0", STORE, "weft-j-rank-2"],
    ["3", "4", "0", "1", "3", "0", STORE, "weft-j-rank-3"],
  ]);
});

Deno.test("placeRanks: 2 GPUs × 2 ranks as 2 nodes: process i drives GPU ⌊i/2⌋", () => {
  assert.deepEqual(table({ gpus: 2, ranksPerGpu: 2, emulateNodes: 2, jobId: "j" }), [
    ["0", "4", "0", "2", "0", "0", STORE, "weft-j-rank-0"],
    ["1", "4", "1", "2", "0", "0", STORE, "weft-j-rank-1"],
    ["2", "4", "0", "2", "1", "1", STORE, "weft-j-rank-2"],
    ["3", "4", "1", "2", "1", "1", STORE, "weft-j-rank-3"],
  ]);
});

Deno.test("placeRanks: one rank per GPU: a host id per emulated node, none without", () => {
  assert.deepEqual(table({ gpus: 4, emulateNodes: 2, jobId: "j" }).map((r) => r[7]), [
    "weft-j-node-0",
    "weft-j-node-0",
    "weft-j-node-1",
    "weft-j-node-1",
  ]);
  assert.deepEqual(table({ gpus: 2, jobId: "j" }).map((r) => r[7]), [null, null]);
  // k ranks per GPU without emulation: still one host id per process.
  assert.deepEqual(table({ gpus: 1, ranksPerGpu: 2, jobId: "j" }), [
    ["0", "2", "0", "2", "0", "0", STORE, "weft-j-rank-0"],
    ["1", "2", "1", "2", "0", "0", STORE, "weft-j-rank-1"],
  ]);
  // A real second node with 2 ranks per GPU: global ranks continue after node 0's.
  assert.deepEqual(table({ gpus: 1, ranksPerGpu: 2, nnodes: 2, nodeRank: 1, jobId: "j" }), [
    ["2", "4", "0", "2", "1", "0", STORE, "weft-j-rank-2"],
    ["3", "4", "1", "2", "1", "0", STORE, "weft-j-rank-3"],
  ]);
});

Deno.test("validateLaunch: bad counts are WeftErrors naming the flag and the fix", () => {
  const fails = (options: Parameters<typeof validateLaunch>[0], field: string, fix: RegExp) =>
    assert.throws(() => validateLaunch(options), (e: unknown) => {
      assert(e instanceof WeftError, String(e));
      assert.equal(e.field, field);
      assert.match(e.message, fix);
      return true;
    });
  fails({ gpus: 1, ranksPerGpu: 0 }, "--ranks-per-gpu", /integer k ≥ 1/);
  fails({ gpus: 1, ranksPerGpu: 1.5 }, "--ranks-per-gpu", /integer k ≥ 1/);
  fails({ gpus: 1, ranksPerGpu: 3, emulateNodes: 2 }, "--emulate-nodes", /divisor of N·k/);
  fails({ gpus: 2, ranksPerGpu: 2, emulateNodes: 3 }, "--emulate-nodes", /4 processes/);
  fails({ gpus: 2, emulateNodes: 2, nnodes: 2 }, "--emulate-nodes", /one host only/);
  fails({ gpus: 0 }, "--gpus", /N ≥ 1/);
  assert.equal(validateLaunch({ gpus: 2, ranksPerGpu: 3, emulateNodes: 6 }).procs, 6);
});

Deno.test("usage: documents --ranks-per-gpu, --bind, --secret and the one-GPU example", () => {
  for (const flag of ["--ranks-per-gpu k", "--emulate-nodes M", "--bind host", "--secret s"]) {
    assert(USAGE.includes(flag), `usage lacks ${flag}`);
  }
  assert.match(USAGE, /--gpus 1 --ranks-per-gpu 4 --emulate-nodes 2 script\.ts/);
  assert.throws(() => parseLaunchArgs(["--ranks", "2", "s.ts"]), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.equal(e.field, "--ranks");
    assert(e.message.includes("--ranks-per-gpu k"), "the error shows the usage");
    return true;
  });
});

Deno.test("parseLaunchArgs: reads the new flags", () => {
  assert.deepEqual(
    parseLaunchArgs([
      "--gpus=1",
      "--ranks-per-gpu",
      "4",
      "--emulate-nodes=2",
      "--bind",
      "127.0.0.2",
      "--secret",
      "s".repeat(16),
      "w.ts",
    ]),
    {
      script: "w.ts",
      args: [],
      gpus: 1,
      ranksPerGpu: 4,
      emulateNodes: 2,
      bind: "127.0.0.2",
      secret: "s".repeat(16),
    },
  );
  assert.throws(() => parseLaunchArgs(["--gpus", "1", "--ranks-per-gpu", "", "w.ts"]), WeftError);
});

Deno.test("storeBindHost: --bind, else --master's host, else loopback; never a wildcard", () => {
  assert.equal(storeBindHost({}), "127.0.0.1");
  assert.equal(storeBindHost({ master: "10.1.2.3:29500" }), "10.1.2.3");
  assert.equal(storeBindHost({ master: "node0.cluster:29500" }), "node0.cluster");
  assert.equal(storeBindHost({ master: "[fd00::1]:29500" }), "fd00::1");
  assert.equal(storeBindHost({ master: "10.1.2.3:29500", bind: "0.0.0.0" }), "0.0.0.0");
  assert.throws(() => storeBindHost({ master: "nohost" }), WeftError);
});

Deno.test("resolveSecret: generated on one host, required and checked across nodes", () => {
  const a = resolveSecret(undefined, 1);
  const b = resolveSecret("", 1);
  assert.match(a, /^[0-9a-f]{32}$/);
  assert.notEqual(a, b);
  assert.equal(resolveSecret("x".repeat(20), 2), "x".repeat(20));
  assert.throws(() => resolveSecret(undefined, 2), (e: unknown) => {
    assert(e instanceof WeftError);
    assert.equal(e.field, "--secret");
    assert.match(e.message, /same --secret/);
    return true;
  });
  assert.throws(() => resolveSecret("short", 1), /at least 16/);
});

Deno.test("readLaunchEnv: reads what placeRanks writes, and the store secret", () => {
  const placed = placeRanks({ gpus: 1, ranksPerGpu: 4, emulateNodes: 2, jobId: "j" }, STORE);
  const envs = placed.map((p) => readLaunchEnv({ ...p.env, WEFT_STORE_SECRET: "s3" }));
  assert.deepEqual(
    envs.map((e) => [e.rank, e.world, e.localRank, e.localWorld, e.nodeRank, e.nodes, e.device]),
    [
      [0, 4, 0, 2, 0, 2, 0],
      [1, 4, 1, 2, 0, 2, 0],
      [2, 4, 0, 2, 1, 2, 0],
      [3, 4, 1, 2, 1, 2, 0],
    ],
  );
  assert(envs.every((e) => e.secret === "s3" && e.store === STORE));
  assert.equal(readLaunchEnv(placed[0].env).secret, undefined);
});
