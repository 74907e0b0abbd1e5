import assert from "node:assert/strict";
import fc from "fast-check";
import {
  computeLayout,
  dispatchRowBytes,
  layoutFromJSON,
  layoutFromYAML,
  layoutToJSON,
  layoutToYAML,
} from "../dsl/layout.ts";
import { experts as expertsOf, type Plan } from "../dsl/mod.ts";
import { PLAN_FIELDS } from "../dsl/plan_fields.ts";
import type { CombineOp, Dedupe, DType, ReceiveOrder } from "../dsl/types.ts";
import { slotRank } from "../dsl/placement.ts";
import type { BatchLayout, PlanSpec } from "../dsl/types.ts";
import { DTYPE_BYTES } from "../dsl/types.ts";
import { arbBatch, makeRouting, withDedupe } from "./fixtures.ts";

const RUNS = { numRuns: 40 };

/** Lexicographic compare of two equal-length tuples. */
const less = (a: number[], b: number[]): boolean => {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i];
  return false;
};

const nodeOf = (plan: PlanSpec, r: number): number => Math.floor(r / plan.gpusPerNode);

const interNodeRows = (l: BatchLayout): number =>
  l.links.filter((x) => nodeOf(l.plan, x.src) !== nodeOf(l.plan, x.dst)).reduce(
    (a, x) => a + x.rows,
    0,
  );

Deno.test("property: every routed (token, expert) pair lands exactly once, on the right local expert and row", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan, tokens, seed, empty }) => {
      const routing = makeRouting(plan, tokens, seed, empty);
      const l = computeLayout(plan, routing);
      const K = plan.topK;
      const seen = l.ranks.map((r) => new Uint8Array(r.recvRows));
      let pairs = 0;
      for (let s = 0; s < plan.world; s++) {
        const rl = l.ranks[s];
        assert.equal(rl.tokens, tokens[s]);
        for (let i = 0; i < routing[s].length; i++) {
          const e = routing[s][i];
          if (e < 0) {
            assert.deepStrictEqual([rl.slotOf[i], rl.destRank[i], rl.destRow[i]], [-1, -1, -1]);
            continue;
          }
          pairs++;
          const slot = rl.slotOf[i];
          assert.equal(plan.slotExpert[slot], e);
          const d = rl.destRank[i];
          assert.equal(d, slotRank(plan, slot));
          const row = rl.destRow[i];
          const dl = l.ranks[d];
          assert.ok(row >= 0 && row < dl.recvRows);
          assert.equal(seen[d][row], 0, "row filled twice");
          seen[d][row] = 1;
          assert.deepStrictEqual(
            [dl.srcRank[row], dl.srcToken[row], dl.srcK[row], dl.localExpert[row]],
            [s, Math.floor(i / K), i % K, slot - plan.slotBase[d]],
          );
        }
      }
      assert.equal(l.ranks.reduce((a, r) => a + r.recvRows, 0), pairs);
      assert.ok(seen.every((a) => a.every((v) => v === 1)), "a receive row was never filled");
    }),
    RUNS,
  );
});

Deno.test("property: receive order and per-expert counts follow the plan's receive order", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan, tokens, seed, empty }) => {
      const l = computeLayout(plan, makeRouting(plan, tokens, seed, empty));
      for (const r of l.ranks) {
        const L = plan.localExperts[r.rank];
        assert.equal(r.expertCounts.length, L);
        assert.equal(r.expertOffsets[L], r.recvRows);
        const counts = new Int32Array(L);
        for (let i = 0; i < r.recvRows; i++) counts[r.localExpert[i]]++;
        assert.deepStrictEqual(r.expertCounts, counts);
        for (let i = 1; i < r.recvRows; i++) {
          const key = (j: number) =>
            plan.receive === "expert-major"
              ? [r.localExpert[j], r.srcRank[j], r.srcToken[j], r.srcK[j]]
              : [r.srcRank[j], r.localExpert[j], r.srcToken[j], r.srcK[j]];
          assert.ok(less(key(i - 1), key(i)), `rows ${i - 1}, ${i} out of ${plan.receive} order`);
        }
        if (plan.receive === "expert-major") {
          for (let le = 0; le < L; le++) {
            for (let i = r.expertOffsets[le]; i < r.expertOffsets[le + 1]; i++) {
              assert.equal(r.localExpert[i], le);
            }
          }
        }
      }
    }),
    RUNS,
  );
});

Deno.test("property: transfers are one per (token, target) for device/node, one per pair for none, grouped by target", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan, tokens, seed, empty }) => {
      const l = computeLayout(plan, makeRouting(plan, tokens, seed, empty));
      const { world: W, topK: K, gpusPerNode: gpn } = plan;
      const rowBytes = plan.hidden * DTYPE_BYTES[plan.dtype];
      for (const r of l.ranks) {
        const s = r.rank;
        const target = (d: number) =>
          plan.dedupe === "node" && nodeOf(plan, d) !== nodeOf(plan, s)
            ? nodeOf(plan, d) * gpn + (s % gpn)
            : d;
        for (let d = 0; d < W; d++) assert.equal(r.forwardRank[d], target(d));
        const expected: number[][] = Array.from({ length: W }, () => []);
        const noDedupe = new Int32Array(W);
        const combine: number[] = [];
        for (let t = 0; t < r.tokens; t++) {
          const targets = new Set<number>();
          for (let k = 0; k < K; k++) {
            const d = r.destRank[t * K + k];
            if (d < 0) continue;
            noDedupe[d]++;
            if (plan.dedupe === "none") expected[d].push(t);
            targets.add(target(d));
          }
          const sorted = [...targets].sort((a, b) => a - b);
          if (plan.dedupe !== "none") { for (const f of sorted) expected[f].push(t); }
          assert.deepStrictEqual(
            Array.from(r.combineFrom.subarray(r.combineStart[t], r.combineStart[t + 1])),
            sorted,
          );
          combine.push(...sorted);
        }
        assert.equal(r.combineFrom.length, combine.length);
        for (let d = 0; d < W; d++) {
          assert.deepStrictEqual(
            Array.from(r.sendToken.subarray(r.sendOffsets[d], r.sendOffsets[d + 1])),
            expected[d],
          );
          assert.equal(r.sendRowsTo[d], expected[d].length);
        }
        assert.deepStrictEqual(r.sendRowsToNoDedupe, noDedupe);
      }
      for (const x of l.links) {
        assert.notEqual(x.src, x.dst);
        assert.equal(x.rows, l.ranks[x.src].sendRowsTo[x.dst]);
        assert.equal(x.forwardedRows, l.ranks[x.src].forwardRowsTo[x.dst]);
        assert.equal(x.bytes, x.rows * rowBytes);
        assert.equal(x.bytesNoDedupe, x.rowsNoDedupe * rowBytes);
        assert.equal(x.forwardedBytes, x.forwardedRows * rowBytes);
        if (plan.dedupe === "device") assert.ok(x.bytes <= x.bytesNoDedupe);
        if (plan.dedupe !== "node") assert.equal(x.forwardedRows, 0);
      }
    }),
    RUNS,
  );
});

Deno.test("property: node forwarders fan out exactly the pairs bound for their node, by (rank, k)", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan: p, tokens, seed, empty }) => {
      const plan = withDedupe(p, "node");
      const l = computeLayout(plan, makeRouting(plan, tokens, seed, empty));
      const { world: W, topK: K, gpusPerNode: gpn } = plan;
      const covered = l.ranks.map((r) => new Uint8Array(r.slotOf.length));
      for (const f of l.ranks) {
        const fan = new Int32Array(W);
        for (let s = 0; s < W; s++) {
          const src = l.ranks[s];
          const mine = nodeOf(plan, s) !== nodeOf(plan, f.rank) && s % gpn === f.rank % gpn;
          const sent = Array.from(
            src.sendToken.subarray(src.sendOffsets[f.rank], src.sendOffsets[f.rank + 1]),
          );
          const staged = Array.from(
            f.forwardToken.subarray(f.forwardOffsets[s], f.forwardOffsets[s + 1]),
          );
          assert.deepStrictEqual(staged, mine ? sent : []);
          for (let j = f.forwardOffsets[s]; j < f.forwardOffsets[s + 1]; j++) {
            const t = f.forwardToken[j];
            const want: number[][] = [];
            for (let k = 0; k < K; k++) {
              const d = src.destRank[t * K + k];
              if (d >= 0 && nodeOf(plan, d) === nodeOf(plan, f.rank)) {
                want.push([d, k, src.destRow[t * K + k]]);
              }
            }
            want.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
            const got: number[][] = [];
            for (let i = f.forwardStart[j]; i < f.forwardStart[j + 1]; i++) {
              got.push([f.forwardDestRank[i], f.forwardK[i], f.forwardDestRow[i]]);
              covered[s][t * K + f.forwardK[i]]++;
            }
            assert.deepStrictEqual(got, want);
            assert.ok(got.length > 0, "a staged row with nothing to deliver");
            for (const d of new Set(got.map((g) => g[0]))) if (d !== f.rank) fan[d]++;
          }
        }
        assert.deepStrictEqual(f.forwardRowsTo, fan);
      }
      // Every pair bound for another node is fanned out by exactly one forwarder.
      for (const r of l.ranks) {
        for (let i = 0; i < r.destRank.length; i++) {
          const remote = r.destRank[i] >= 0 && nodeOf(plan, r.destRank[i]) !== nodeOf(plan, r.rank);
          assert.equal(covered[r.rank][i], remote ? 1 : 0);
        }
      }
    }),
    RUNS,
  );
});

Deno.test("property: device dedupe never sends more than none; node never more inter-node rows than device", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan, tokens, seed, empty }) => {
      const routing = makeRouting(plan, tokens, seed, empty);
      const [none, device, node] = (["none", "device", "node"] as const).map((d) =>
        computeLayout(withDedupe(plan, d), routing)
      );
      // The receive side does not depend on dedupe.
      for (let r = 0; r < plan.world; r++) {
        assert.deepStrictEqual(device.ranks[r].destRow, none.ranks[r].destRow);
        assert.deepStrictEqual(node.ranks[r].srcToken, none.ranks[r].srcToken);
      }
      const total = (l: BatchLayout) => l.links.reduce((a, x) => a + x.bytes, 0);
      assert.ok(total(device) <= total(none));
      assert.ok(interNodeRows(device) <= interNodeRows(none));
      assert.ok(interNodeRows(node) <= interNodeRows(device));
      // Device: exactly one row per distinct (token, destination device).
      for (const r of device.ranks) {
        const distinct = new Set<string>();
        for (let i = 0; i < r.destRank.length; i++) {
          if (r.destRank[i] >= 0) distinct.add(`${Math.floor(i / plan.topK)}:${r.destRank[i]}`);
        }
        assert.equal(r.sendToken.length, distinct.size);
      }
    }),
    RUNS,
  );
});

Deno.test("property: layout JSON and YAML round trips are lossless", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan, tokens, seed, empty }) => {
      const l = computeLayout(plan, makeRouting(plan, tokens.map((t) => t % 8), seed, empty));
      assert.deepStrictEqual(layoutFromJSON(JSON.parse(JSON.stringify(layoutToJSON(l)))), l);
      assert.deepStrictEqual(layoutFromYAML(layoutToYAML(l)), l);
    }),
    { numRuns: 15 },
  );
});

/**
 * Plans compiled through the DSL over every pattern field: each placement kind
 * (table included), replicas or none, topK, each dedupe, receive order,
 * combine op and dtype, quantize e4m3 or absent, hidden, experts and
 * gpusPerNode.
 */
const arbCompiled: fc.Arbitrary<Plan> = fc
  .record({
    world: fc.integer({ min: 1, max: 8 }),
    gpnIndex: fc.nat(),
    kind: fc.constantFrom("byDevice", "roundRobin", "table"),
    perRank: fc.integer({ min: 1, max: 4 }),
    owners: fc.array(fc.nat(), { minLength: 1, maxLength: 24 }),
    hot: fc.uniqueArray(fc.nat({ max: 23 }), { maxLength: 3 }),
    copies: fc.integer({ min: 2, max: 8 }),
    k: fc.integer({ min: 1, max: 32 }),
    dedupe: fc.constantFrom<Dedupe>("none", "device", "node"),
    receive: fc.constantFrom<ReceiveOrder>("expert-major", "rank-major"),
    combine: fc.constantFrom<CombineOp>("weighted", "sum"),
    dtype: fc.constantFrom<DType>("bf16", "f16", "f32"),
    quantize: fc.boolean(),
    greedy: fc.boolean(),
    blocks: fc.integer({ min: 1, max: 4 }),
  })
  .map((r) => {
    const gpns = Array.from({ length: r.world }, (_, i) => i + 1).filter((d) => r.world % d === 0);
    const gpusPerNode = gpns[r.gpnIndex % gpns.length];
    const placed = r.kind === "table"
      ? expertsOf.table(r.owners.map((o) => o % r.world))
      : expertsOf(r.kind === "byDevice" ? r.world * r.perRank : r.owners.length)[r.kind]();
    const E = r.kind === "table" ? r.owners.length : placed.spec.experts!;
    const hot = r.hot.filter((e) => e < E);
    const replicated = hot.length > 0 && r.world >= 2
      ? placed.replicate(hot, Math.min(r.copies, r.world))
      : placed;
    const pattern = replicated.topK(1 + (r.k - 1) % Math.min(E, 32)).dedupe(r.dedupe)
      .receive(r.receive).combine(r.combine).dtype(r.dtype).hidden(128 * r.blocks)
      .quantize(r.quantize ? "e4m3" : "none").balance(r.greedy ? "greedy" : "rail");
    return pattern.compile({ world: r.world, gpusPerNode });
  });

Deno.test("property: every field of a compiled plan survives the layout's JSON and YAML round trips", () => {
  fc.assert(
    fc.property(arbCompiled, fc.integer({ min: 1, max: 2 ** 30 }), (plan, seed) => {
      const tokens = Array.from({ length: plan.world }, (_, r) => (seed >> r) % 5);
      const l = computeLayout(plan, makeRouting(plan, tokens, seed, 0.2));
      const fromJSON = layoutFromJSON(JSON.parse(JSON.stringify(layoutToJSON(l))));
      const fromYAML = layoutFromYAML(layoutToYAML(l));
      // Every key the compiled plan holds is a declared plan field and comes back equal.
      const keys = Object.keys(plan);
      assert.ok(keys.length >= Object.keys(PLAN_FIELDS).length - 2, keys.join());
      for (const back of [fromJSON, fromYAML]) {
        for (const key of keys) {
          assert.ok(key in PLAN_FIELDS, `${key} is not declared in PLAN_FIELDS`);
          assert.deepStrictEqual(
            (back.plan as unknown as Record<string, unknown>)[key],
            (plan as unknown as Record<string, unknown>)[key],
            key,
          );
        }
        assert.deepStrictEqual(Object.keys(back.plan).sort(), [...keys].sort());
        assert.equal(dispatchRowBytes(back.plan), dispatchRowBytes(plan));
        assert.deepStrictEqual(back.ranks, l.ranks);
        assert.deepStrictEqual(back.links, l.links);
      }
    }),
    { numRuns: 60 },
  );
});

Deno.test("an e4m3 plan read back from layout JSON still crosses 132 bytes a row at hidden 128", () => {
  const plan = expertsOf(4).byDevice().topK(2).hidden(128).quantize("e4m3").compile({ world: 2 });
  const l = computeLayout(plan, [Int32Array.of(2, 3), Int32Array.of(0, 1)]);
  const back = layoutFromJSON(JSON.parse(JSON.stringify(layoutToJSON(l))));
  assert.equal(back.plan.quantize, "e4m3");
  assert.equal(dispatchRowBytes(back.plan), 132);
  assert.equal(back.links[0].bytes, l.links[0].bytes);
  assert.deepStrictEqual(plan.toJSON(), JSON.parse(JSON.stringify(layoutToJSON(l))).plan);
});

Deno.test("layoutFromJSON rejects unknown and malformed plan fields, naming them", () => {
  const base = { ranks: [], links: [] };
  for (
    const [plan, field] of [
      [{ slotBase: [0, 1.5] }, "layout.plan.slotBase"],
      [{ slotBase: "0,1" }, "layout.plan.slotBase"],
      [{ world: [2] }, "layout.plan.world"],
      [{ pattern: 3 }, "layout.plan.pattern"],
      [{ quantise: "e4m3" }, "layout.plan.quantise"],
    ] as const
  ) {
    assert.throws(() => layoutFromJSON({ ...base, plan }), (e: Error & { field?: string }) => {
      assert.equal(e.name, "WeftError");
      assert.equal(e.field, field);
      return true;
    });
  }
});
