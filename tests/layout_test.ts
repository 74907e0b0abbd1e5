import assert from "node:assert/strict";
import { stringify } from "@std/yaml";
import {
  computeLayout,
  layoutFromJSON,
  layoutFromYAML,
  layoutToJSON,
  layoutToYAML,
} from "../dsl/layout.ts";
import type { RankLayout } from "../dsl/types.ts";
import { makePlan, weftError } from "./fixtures.ts";

const arr = (a: Int32Array): number[] => Array.from(a);
/** (srcRank, srcToken, srcK) of every received row, in receive order. */
const rows = (r: RankLayout): number[][] =>
  arr(r.srcRank).map((s, i) => [s, r.srcToken[i], r.srcK[i]]);

// 2 ranks; rank 0 holds experts 0, 1 and rank 1 holds 2, 3.
const twoRankRouting = [Int32Array.of(2, 3, 0, 2, -1, 1), Int32Array.of(3, 0)];

Deno.test("device dedupe: one transfer per (token, destination), rows expert-major", () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, hidden: 3, dtype: "bf16" });
  const l = computeLayout(plan, twoRankRouting);
  const [r0, r1] = l.ranks;
  assert.deepStrictEqual(arr(r0.slotOf), [2, 3, 0, 2, -1, 1]);
  assert.deepStrictEqual(arr(r0.destRank), [1, 1, 0, 1, -1, 0]);
  assert.deepStrictEqual(arr(r0.destRow), [0, 2, 0, 1, -1, 2]);
  assert.deepStrictEqual(arr(r1.destRow), [3, 1]);
  assert.deepStrictEqual(rows(r0), [[0, 1, 0], [1, 0, 1], [0, 2, 1]]);
  assert.deepStrictEqual(rows(r1), [[0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 0]]);
  assert.deepStrictEqual(arr(r0.localExpert), [0, 0, 1]);
  assert.deepStrictEqual(arr(r0.expertCounts), [2, 1]);
  assert.deepStrictEqual(arr(r1.expertOffsets), [0, 2, 4]);
  assert.deepStrictEqual(arr(r0.sendOffsets), [0, 2, 4]);
  assert.deepStrictEqual(arr(r0.sendToken), [1, 2, 0, 1]);
  assert.deepStrictEqual(arr(r0.combineStart), [0, 1, 3, 4]);
  assert.deepStrictEqual(arr(r0.combineFrom), [1, 0, 1, 0]);
  assert.deepStrictEqual(arr(r0.sendRowsTo), [2, 2]);
  assert.deepStrictEqual(arr(r0.sendRowsToNoDedupe), [2, 3]);
  const bytes = 3 * 2;
  assert.deepStrictEqual(l.links, [
    {
      src: 0,
      dst: 1,
      rows: 2,
      rowsNoDedupe: 3,
      bytes: 2 * bytes,
      bytesNoDedupe: 3 * bytes,
      forwardedRows: 0,
      forwardedBytes: 0,
    },
    {
      src: 1,
      dst: 0,
      rows: 1,
      rowsNoDedupe: 1,
      bytes,
      bytesNoDedupe: bytes,
      forwardedRows: 0,
      forwardedBytes: 0,
    },
  ]);
  // Not node mode: forwarding arrays are empty.
  assert.deepStrictEqual(arr(r0.forwardRank), [0, 1]);
  assert.equal(r0.forwardToken.length, 0);
  assert.deepStrictEqual(arr(r0.forwardStart), [0]);
});

Deno.test("rank-major groups rows by source rank, then local expert, then (token, k)", () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, receive: "rank-major" });
  const [r0] = computeLayout(plan, twoRankRouting).ranks;
  assert.deepStrictEqual(rows(r0), [[0, 1, 0], [0, 2, 1], [1, 0, 1]]);
  assert.deepStrictEqual(arr(r0.localExpert), [0, 1, 0]);
  assert.deepStrictEqual(arr(r0.expertCounts), [2, 1]);
  assert.deepStrictEqual(arr(r0.destRow), [0, 2, 0, 1, -1, 1]);
});

Deno.test("dedupe none: one transfer per (token, expert), k ascending", () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, dedupe: "none" });
  const [r0] = computeLayout(plan, twoRankRouting).ranks;
  assert.deepStrictEqual(arr(r0.sendOffsets), [0, 2, 5]);
  assert.deepStrictEqual(arr(r0.sendToken), [1, 2, 0, 0, 1]);
  assert.deepStrictEqual(arr(r0.sendRowsTo), arr(r0.sendRowsToNoDedupe));
  assert.deepStrictEqual(arr(r0.combineFrom), [1, 0, 1, 0]); // partials still per device
});

Deno.test("node dedupe: one transfer per remote node to the same-local-index forwarder, fan-out by (rank, k)", () => {
  // 2 nodes × 2 GPUs, rank r holds experts 2r, 2r+1.
  const plan = makePlan({
    world: 4,
    gpusPerNode: 2,
    experts: 8,
    topK: 3,
    dedupe: "node",
    hidden: 2,
  });
  const routing = [
    new Int32Array(0),
    Int32Array.of(4, 7, 2, 6, 0, -1),
    new Int32Array(0),
    new Int32Array(0),
  ];
  const l = computeLayout(plan, routing);
  const r1 = l.ranks[1];
  const r3 = l.ranks[3];
  assert.deepStrictEqual(arr(r1.forwardRank), [0, 1, 3, 3]);
  assert.deepStrictEqual(arr(r1.sendOffsets), [0, 1, 2, 2, 4]);
  assert.deepStrictEqual(arr(r1.sendToken), [1, 0, 0, 1]);
  assert.deepStrictEqual(arr(r1.combineStart), [0, 2, 4]);
  assert.deepStrictEqual(arr(r1.combineFrom), [1, 3, 0, 3]);
  assert.deepStrictEqual(arr(r3.forwardOffsets), [0, 0, 2, 2, 2]);
  assert.deepStrictEqual(arr(r3.forwardToken), [0, 1]);
  assert.deepStrictEqual(arr(r3.forwardStart), [0, 2, 3]);
  assert.deepStrictEqual(arr(r3.forwardDestRank), [2, 3, 3]);
  assert.deepStrictEqual(arr(r3.forwardK), [0, 1, 0]);
  assert.deepStrictEqual(arr(r3.forwardDestRow), [0, 1, 0]);
  assert.deepStrictEqual(arr(r3.forwardRowsTo), [0, 0, 1, 0]);
  assert.deepStrictEqual(arr(r1.sendRowsTo), [1, 1, 0, 2]);
  assert.deepStrictEqual(arr(r1.sendRowsToNoDedupe), [1, 1, 1, 2]);
  const link = (s: number, d: number) => l.links.find((x) => x.src === s && x.dst === d);
  assert.equal(link(1, 2)?.rows, 0);
  assert.equal(link(1, 2)?.rowsNoDedupe, 1);
  assert.equal(link(3, 2)?.forwardedRows, 1);
  assert.equal(link(3, 2)?.forwardedBytes, 1 * 2 * 4);
  assert.equal(link(2, 3), undefined);
  // The same routing under device dedupe sends 3 rows across nodes instead of 2.
  const device = computeLayout(
    makePlan({ world: 4, gpusPerNode: 2, experts: 8, topK: 3, dedupe: "device" }),
    routing,
  );
  const interNode = (ls: typeof l.links) =>
    ls.filter((x) => (x.src >> 1) !== (x.dst >> 1)).reduce((a, x) => a + x.rows, 0);
  assert.equal(interNode(device.links), 3);
  assert.equal(interNode(l.links), 2);
});

Deno.test("ranks with zero tokens and all-empty slots produce empty layouts", () => {
  const plan = makePlan({ world: 3, experts: 6, topK: 2 });
  const l = computeLayout(plan, [new Int32Array(0), Int32Array.of(-1, -1), new Int32Array(0)]);
  for (const r of l.ranks) {
    assert.equal(r.recvRows, 0);
    assert.equal(r.sendToken.length, 0);
    assert.deepStrictEqual(arr(r.expertCounts), [0, 0]);
  }
  assert.deepStrictEqual(arr(l.ranks[1].combineStart), [0, 0]);
  assert.deepStrictEqual(l.links, []);
});

Deno.test("computeLayout rejects bad routing with a WeftError naming topkIdx and the rank", () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2 });
  weftError(() => computeLayout(plan, [Int32Array.of(0, 1), Int32Array.of(4, 0)]), "topkIdx", 1);
  weftError(() => computeLayout(plan, [Int32Array.of(0, 0), Int32Array.of(1, 0)]), "topkIdx", 0);
  weftError(() => computeLayout(plan, [Int32Array.of(0, 1, 2), Int32Array.of(1, 0)]), "topkIdx", 0);
  weftError(() => computeLayout(plan, [Int32Array.of(0, 1)]), "topkIdx");
});

Deno.test("layout JSON and YAML round-trip to equal typed arrays", () => {
  const plan = makePlan({
    world: 4,
    gpusPerNode: 2,
    experts: 8,
    topK: 3,
    dedupe: "node",
    replicas: { experts: [3], copies: 2 },
  });
  const l = computeLayout(plan, [
    Int32Array.of(4, 7, 2),
    Int32Array.of(6, 0, -1),
    new Int32Array(0),
    Int32Array.of(3, 1, 5),
  ]);
  const json = JSON.parse(JSON.stringify(layoutToJSON(l)));
  assert.deepStrictEqual(layoutFromJSON(json), l);
  const yaml = layoutToYAML(l);
  assert.match(yaml, /sendOffsets: \[ 0, 0, 1, 2, 2 \]/); // flow style, one line
  assert.deepStrictEqual(layoutFromYAML(yaml), l);
  // Plain `stringify` of the JSON form is also readable back.
  assert.deepStrictEqual(layoutFromYAML(stringify(layoutToJSON(l))), l);
  weftError(() => layoutFromYAML("plan: [1, 2"), "layout");
  weftError(() => layoutFromJSON({ ranks: [] }), "layout");
});
