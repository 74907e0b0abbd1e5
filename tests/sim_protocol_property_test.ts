import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { sliceSchedule } from "../lib/sim/slices.ts";
import { fromF32 } from "../lib/core/dtype.ts";
import type { CombineOp, DType, PlanSpec, ReceiveOrder } from "../dsl/types.ts";
import { mulberry32 } from "../lib/io/routing.ts";
import { makeInputs, makePlan, randomPlacement } from "./fixtures.ts";
import { assertIdentityCombine, identityTolerance, identityYs, wideYs } from "./sim_fixtures.ts";

/** A multi-node dedupe-node batch: world 2–16, nodes ≥ 2, uneven tokens (0 included), a slice size 1…T+3. */
const arbStaged = fc
  .record({
    world: fc.integer({ min: 2, max: 16 }),
    kind: fc.constantFrom("byDevice", "roundRobin", "table"),
    perRank: fc.integer({ min: 1, max: 3 }),
    expertsFree: fc.integer({ min: 1, max: 24 }),
    topK: fc.integer({ min: 1, max: 6 }),
    hidden: fc.integer({ min: 1, max: 8 }),
    dtype: fc.constantFrom<DType>("f32", "bf16", "f16"),
    quantize: fc.boolean(),
    receive: fc.constantFrom<ReceiveOrder>("expert-major", "rank-major"),
    combine: fc.constantFrom<CombineOp>("weighted", "sum"),
    withReplicas: fc.boolean(),
    seed: fc.integer({ min: 1, max: 2 ** 30 }),
    maxTokens: fc.integer({ min: 0, max: 24 }),
    empty: fc.constantFrom(0, 0.15, 0.5),
    slicePick: fc.double({ min: 0, max: 1, noNaN: true, maxExcluded: true }),
  })
  .map((r) => {
    const rng = mulberry32(r.seed);
    const gpns = Array.from({ length: r.world / 2 }, (_, i) => i + 1).filter((g) =>
      r.world % g === 0
    );
    const gpusPerNode = gpns[Math.floor(rng() * gpns.length)];
    // world ≥ 2 here, so replicas are drawn whenever withReplicas is set.
    const { experts, placement, replicas } = randomPlacement(rng, r);
    const plan = makePlan({
      world: r.world,
      gpusPerNode,
      experts,
      topK: r.topK,
      hidden: r.quantize ? 128 : r.hidden,
      dtype: r.dtype,
      dedupe: "node",
      receive: r.receive,
      combine: r.combine,
      placement,
      replicas,
      ...(r.quantize ? { quantize: "e4m3" as const } : {}),
    });
    const tokens = Array.from({ length: r.world }, () => Math.floor(rng() * (r.maxTokens + 1)));
    const sliceRows = 1 + Math.floor(r.slicePick * (Math.max(...tokens) + 3));
    return { plan, tokens, seed: r.seed, empty: r.empty, sliceRows };
  });

const staged = (plan: PlanSpec, sliceRows: number, combineWire: "f32" | "dtype" = "f32") =>
  new Simulator(plan, { protocol: "staged", sliceRows, combineWire });

Deno.test("property: staged dispatch outputs equal the one-hop Simulator's bit for bit, for any slice size", async () => {
  await fc.assert(
    fc.asyncProperty(arbStaged, async ({ plan, tokens, seed, empty, sliceRows }) => {
      const inputs = makeInputs(plan, tokens, seed, empty);
      using one = new Simulator(plan);
      using st = staged(plan, sliceRows);
      const a = await one.dispatch(inputs);
      const b = await st.dispatch(inputs);
      for (let r = 0; r < plan.world; r++) {
        const x = a.results[r], y = b.results[r];
        assert.equal(y.recv.dtype, x.recv.dtype);
        assert.deepStrictEqual(y.recv.data, x.recv.data, `recv of rank ${r}`);
        assert.deepStrictEqual(y.recvScales?.data, x.recvScales?.data, `recvScales of rank ${r}`);
        assert.deepStrictEqual(y.recvWeights, x.recvWeights);
        assert.deepStrictEqual(y.srcRank, x.srcRank);
        assert.deepStrictEqual(y.srcToken, x.srcToken);
        assert.deepStrictEqual(y.srcK, x.srcK);
        assert.deepStrictEqual(y.expertCounts, x.expertCounts);
      }
      // layout then redispatch moves the same bits again.
      using planned = await st.layout(inputs);
      const c = await st.redispatch(planned, inputs.map((i) => i.x));
      c.results.forEach((res, r) => assert.deepStrictEqual(res.recv.data, b.results[r].recv.data));
    }),
    { numRuns: 60 },
  );
});

Deno.test("property: staged combine with an f32 wire equals the one-hop combine bit for bit", async () => {
  await fc.assert(
    fc.asyncProperty(arbStaged, async ({ plan, tokens, seed, empty, sliceRows }) => {
      const inputs = makeInputs(plan, tokens, seed, empty);
      using one = new Simulator(plan);
      using st = staged(plan, sliceRows);
      const a = await one.dispatch(inputs);
      const b = await st.dispatch(inputs);
      const ys = wideYs(plan, a.results.map((r) => r.recv.rows), seed);
      const want = await one.combine(a.handle, ys);
      const got = await st.combine(b.handle, ys);
      got.forEach((o, r) => assert.deepStrictEqual(o.data, want[r].data, `rank ${r}`));
    }),
    { numRuns: 60 },
  );
});

Deno.test("property: staged combine with a dtype wire is x·Σw within the roundings it adds", async () => {
  await fc.assert(
    fc.asyncProperty(arbStaged, async ({ plan, tokens, seed, empty, sliceRows }) => {
      const inputs = makeInputs(plan, tokens, seed, empty);
      using st = staged(plan, sliceRows, "dtype");
      const d = await st.dispatch(inputs);
      const outs = await st.combine(d.handle, identityYs(plan, inputs, d.results));
      // Three roundings to the dtype: device partial, forwarder sum, output.
      await assertIdentityCombine(plan, inputs, outs, identityTolerance(plan, 3));
    }),
    { numRuns: 40 },
  );
});

Deno.test("property: stage byte counts equal the layout's traffic (one NIC row per (token, node), the fan-out)", async () => {
  await fc.assert(
    fc.asyncProperty(arbStaged, async ({ plan, tokens, seed, empty, sliceRows }) => {
      using st = staged(plan, sliceRows);
      const d = await st.dispatch(makeInputs(plan, tokens, seed, empty));
      const t = d.traffic!;
      const nodeOf = (r: number) => Math.floor(r / plan.gpusPerNode);
      const rowsOf = (stage: string, src: number, dst: number) =>
        t.links.find((l) => l.stage === stage && l.src === src && l.dst === dst)?.rows ?? 0;
      let links = 0;
      for (const l of d.layout.links) {
        const remote = nodeOf(l.src) !== nodeOf(l.dst);
        assert.equal(
          rowsOf(remote ? "nic" : "own-node", l.src, l.dst),
          l.rows,
          `${l.src}→${l.dst}`,
        );
        assert.equal(rowsOf("fan-out", l.src, l.dst), l.forwardedRows, `${l.src}→${l.dst} fan-out`);
        links += (l.rows > 0 ? 1 : 0) + (l.forwardedRows > 0 ? 1 : 0);
      }
      assert.equal(t.links.length, links, "a stage link the layout does not have");
      const rowBytes = d.layout.links[0]?.bytes / d.layout.links[0]?.rows;
      for (const l of t.links) {
        assert.equal(l.metaBytes, l.rows * 4 * (1 + 3 * plan.topK));
        if (l.stage === "nic") assert.notEqual(nodeOf(l.src), nodeOf(l.dst));
        else assert.equal(nodeOf(l.src), nodeOf(l.dst));
        if (Number.isFinite(rowBytes)) assert.equal(l.bytes, l.rows * rowBytes);
      }
      const nic = t.ranks.reduce((a, r) => a + r.nicSend, 0);
      assert.equal(nic, t.ranks.reduce((a, r) => a + r.nicRecv, 0));
      // Combine's return path mirrors the NIC rows; partials mirror the NVLink rows.
      await st.combine(
        d.handle,
        d.results.map((r) =>
          fromF32(new Float32Array(r.recv.rows * plan.hidden).fill(1), plan.dtype)
        ),
      );
      const c = st.lastTraffic!;
      assert.equal(c.direction, "combine");
      for (const l of t.links.filter((x) => x.stage === "nic")) {
        const back = c.links.find((x) =>
          x.stage === "return" && x.src === l.dst && x.dst === l.src
        );
        assert.equal(back?.rows, l.rows);
        assert.equal(back?.bytes, l.rows * plan.hidden * 4);
      }
      // Rows per (from, to) pair over NVLink: dispatch's fan-out and own-node rows, reversed.
      const sum = (links: typeof t.links, stages: string[], reverse: boolean) => {
        const m = new Map<string, number>();
        for (const l of links.filter((x) => stages.includes(x.stage))) {
          const key = reverse ? `${l.dst}→${l.src}` : `${l.src}→${l.dst}`;
          m.set(key, (m.get(key) ?? 0) + l.rows);
        }
        return [...m.entries()].sort();
      };
      assert.deepEqual(
        sum(c.links, ["partial"], false),
        sum(t.links, ["fan-out", "own-node"], true),
      );
    }),
    { numRuns: 40 },
  );
});

Deno.test("property: the slice schedule moves every row exactly once, in order, in ⌈max rows / C⌉ steps", () => {
  fc.assert(
    fc.property(
      fc.array(fc.integer({ min: 0, max: 40 }), { maxLength: 12 }),
      fc.integer({ min: 1, max: 45 }),
      (rows, C) => {
        const streams = rows.map((n, i) => ({ src: i, dst: 100 + i, rows: n }));
        const steps = sliceSchedule(streams, C);
        assert.equal(steps.length, Math.ceil(Math.max(0, ...rows) / C));
        const next = rows.map(() => 0);
        steps.forEach((step, j) => {
          for (const tr of step) {
            const i = tr.src;
            assert.equal(tr.dst, 100 + i);
            assert.equal(tr.firstRow, next[i], "a gap or a repeat");
            assert.equal(tr.firstRow, j * C, "slice j moves in step j");
            assert.ok(tr.rows >= 1 && tr.rows <= C);
            next[i] += tr.rows;
          }
        });
        assert.deepEqual(next, rows, "a row never moved");
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("property: a bad expert id on one rank fails the staged dispatch naming that rank, nothing written", async () => {
  await fc.assert(
    fc.asyncProperty(
      arbStaged,
      fc.nat(),
      async ({ plan, tokens, seed, empty, sliceRows }, pick) => {
        const withTokens = tokens.flatMap((T, r) => (T > 0 ? [r] : []));
        fc.pre(withTokens.length > 0);
        const bad = withTokens[pick % withTokens.length];
        const inputs = makeInputs(plan, tokens, seed, empty);
        const idx = inputs[bad].topkIdx.slice();
        idx[pick % idx.length] = plan.experts + (pick % 3);
        const broken = inputs.map((i, r) => (r === bad ? { ...i, topkIdx: idx } : i));
        using st = staged(plan, sliceRows);
        await assert.rejects(
          st.dispatch(broken),
          (e: Error & { rank?: number; field?: string }) => {
            assert.equal(e.name, "WeftError");
            assert.equal(e.rank, bad);
            assert.equal(e.field, "topkIdx");
            return true;
          },
        );
        assert.equal(st.lastLayout, undefined);
        assert.equal(st.lastTraffic, undefined);
      },
    ),
    { numRuns: 30 },
  );
});
