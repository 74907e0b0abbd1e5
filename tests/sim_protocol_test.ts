import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { resolveSimulatorOptions } from "../lib/sim/options.ts";
import { sliceSchedule } from "../lib/sim/slices.ts";
import { bases, exchange, route } from "../lib/sim/protocol_route.ts";
import { metaWords } from "../lib/sim/protocol_dispatch.ts";
import { stagedLayout } from "../lib/sim/protocol.ts";
import { computeLayout } from "../dsl/layout.ts";
import { WeftError } from "../dsl/errors.ts";
import { quantizeRows } from "../lib/core/fp8.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import { fromF32 } from "../lib/core/dtype.ts";
import { arbBatch, makeInputs, makePlan, weftError, weftErrorAsync } from "./fixtures.ts";

const twoNodes = (o: Parameters<typeof makePlan>[0] = {}) =>
  makePlan({ world: 4, gpusPerNode: 2, experts: 8, topK: 2, hidden: 8, dedupe: "node", ...o });

Deno.test("options: staged needs dedupe node, an integer slice size ≥ 1 and a known wire; one-hop takes neither", () => {
  const plan = twoNodes({ dtype: "bf16" });
  assert.deepEqual(resolveSimulatorOptions(plan), {
    protocol: "one-hop",
    sliceRows: 64,
    combineWire: "f32",
  });
  assert.equal(
    new Simulator(plan, { protocol: "staged", combineWire: "dtype" }).options.combineWire,
    "bf16",
  );
  weftError(
    () => new Simulator(twoNodes({ dedupe: "device" }), { protocol: "staged" }),
    "protocol",
  );
  weftError(() => new Simulator(plan, { protocol: "staged", sliceRows: 0 }), "sliceRows");
  weftError(() => new Simulator(plan, { protocol: "staged", sliceRows: 1.5 }), "sliceRows");
  weftError(() => new Simulator(plan, { sliceRows: 4 }), "sliceRows");
  weftError(() => new Simulator(plan, { combineWire: "f32" }), "combineWire");
  weftError(
    () => new Simulator(plan, { protocol: "staged", combineWire: "f16" as "f32" }),
    "combineWire",
  );
  weftError(() => new Simulator(plan, { protocol: "two-hop" as "staged" }), "protocol");
});

Deno.test("slice schedule: empty streams send nothing; a bad slice size or row count is a WeftError", () => {
  assert.deepEqual(sliceSchedule([{ src: 0, dst: 1, rows: 0 }], 3), []);
  assert.deepEqual(sliceSchedule([], 1), []);
  const steps = sliceSchedule([{ src: 0, dst: 2, rows: 3 }, { src: 1, dst: 3, rows: 0 }], 2);
  assert.deepEqual(steps, [
    [{ src: 0, dst: 2, firstRow: 0, rows: 2 }],
    [{ src: 0, dst: 2, firstRow: 2, rows: 1 }],
  ]);
  weftError(() => sliceSchedule([], 0), "sliceRows");
  weftError(() => sliceSchedule([{ src: 0, dst: 1, rows: -1 }], 1), "streams");
});

Deno.test("route and exchange: a flagged source stops every rank at the exchange, before the bases", () => {
  const plan = twoNodes();
  const idx = [Int32Array.of(0, 5), Int32Array.of(2, 99), Int32Array.of(), Int32Array.of(1, 1)];
  const w = idx.map((i) => new Float32Array(i.length).fill(0.5));
  const routes = idx.map((i, r) => route(plan, r, i, w[r], i.length / 2));
  assert.deepEqual(routes.map((r) => r.error?.rank), [undefined, 1, undefined, 3]);
  assert.equal(routes[1].error!.field, "topkIdx");
  assert.deepEqual(Array.from(routes[1].slot), [-1, -1], "a flagged source routes nothing");
  const e = weftError(() => exchange(plan, routes), "topkIdx", 1);
  assert.match(e.message, /99/);
  // A NaN weight flags its source too, on topkWeights.
  const good = [Int32Array.of(0, 5), Int32Array.of(2, 3), Int32Array.of(), Int32Array.of(1, 2)];
  const nanW = w.map((x, r) => (r === 3 ? Float32Array.of(0.5, NaN) : x));
  const nan = good.map((i, r) => route(plan, r, i, nanW[r], i.length / 2));
  weftError(() => exchange(plan, nan), "topkWeights", 3);
});

Deno.test("route, exchange and bases reproduce computeLayout's receive rows and the node token lists", () => {
  fc.assert(
    fc.property(arbBatch, ({ plan: p, tokens, seed, empty }) => {
      const plan = { ...p, dedupe: "node" as const };
      const inputs = makeInputs(plan, tokens, seed, empty);
      const layout = computeLayout(plan, inputs.map((i) => i.topkIdx));
      const routes = inputs.map((i, s) => route(plan, s, i.topkIdx, i.topkWeights, tokens[s]));
      const b = bases(plan, exchange(plan, routes));
      const S = plan.slotBase[plan.world];
      for (const r of routes) {
        const rl = layout.ranks[r.rank];
        for (let i = 0; i < r.slot.length; i++) {
          assert.equal(r.slot[i], rl.slotOf[i]);
          if (r.slot[i] >= 0) {
            assert.equal(b.base[r.rank * S + r.slot[i]] + r.ord[i], rl.destRow[i]);
          }
        }
        // nodeTokens: the tokens the layout sends to each remote forwarder, in its order.
        r.nodeTokens.forEach((list, m) => {
          const f = m * plan.gpusPerNode + (r.rank % plan.gpusPerNode);
          const want = Math.floor(r.rank / plan.gpusPerNode) === m
            ? []
            : Array.from(rl.sendToken.subarray(rl.sendOffsets[f], rl.sendOffsets[f + 1]));
          assert.deepEqual(Array.from(list), want);
        });
      }
      layout.ranks.forEach((rl, d) => {
        assert.equal(b.recvRows[d], rl.recvRows);
        assert.deepEqual(b.expertCounts[d], rl.expertCounts);
      });
    }),
    { numRuns: 40 },
  );
});

Deno.test("forwarder staging holds the layout's forwarded tokens, source ascending, in send order", () => {
  fc.assert(
    fc.property(arbBatch, fc.integer({ min: 1, max: 9 }), ({ plan: p, tokens, seed, empty }, C) => {
      const plan = { ...p, dedupe: "node" as const };
      const inputs = makeInputs(plan, tokens, seed, empty);
      const layout = computeLayout(plan, inputs.map((i) => i.topkIdx));
      const batch = stagedLayout(plan, inputs, tokens, C);
      const MW = metaWords(plan.topK);
      batch.staging.forEach((st, f) => {
        const rl = layout.ranks[f];
        assert.deepEqual(Array.from(st.srcStart), Array.from(rl.forwardOffsets));
        const staged = Array.from({ length: st.filled.length }, (_, i) => st.meta[i * MW]);
        assert.deepEqual(staged, Array.from(rl.forwardToken));
        assert.ok(st.filled.every((n) => n === 1));
      });
    }),
    { numRuns: 40 },
  );
});

Deno.test("staged: no tokens anywhere, or every expert on the own node, moves nothing between nodes", async () => {
  const plan = twoNodes({ receive: "rank-major" });
  using sim = new Simulator(plan, { protocol: "staged", sliceRows: 2 });
  const none = await sim.dispatch(makeInputs(plan, [0, 0, 0, 0], 1));
  assert.deepEqual(none.traffic!.links, []);
  assert.ok(none.results.every((r) => r.recv.rows === 0));
  const outs = await sim.combine(none.handle, none.results.map((r) => r.recv));
  assert.ok(outs.every((o) => o.rows === 0));
  // byDevice over 4 ranks: experts 0–3 on node 0; rank 0 and 1 route only there.
  const local = [0, 1].map(() => ({
    x: new Float32Array(16).fill(1.5),
    topkIdx: Int32Array.of(0, 3, 2, -1),
    topkWeights: Float32Array.of(0.25, 0.5, 0.75, 1),
  }));
  const empty = {
    x: new Float32Array(0),
    topkIdx: new Int32Array(0),
    topkWeights: new Float32Array(0),
  };
  const d = await sim.dispatch([...local, empty, empty]);
  assert.ok(d.traffic!.links.every((l) => l.stage === "own-node"));
  assert.ok(d.traffic!.ranks.every((r) => r.nicSend === 0 && r.nicRecv === 0));
  const [out0] = await sim.combine(d.handle, d.results.map((r) => r.recv));
  assert.equal(out0.toF32()[0], 1.5 * 0.75);
  assert.equal(out0.toF32()[8], 1.5 * 0.75);
});

Deno.test("staged: a NaN weight fails dispatch and layout naming topkWeights and the rank", async () => {
  const plan = twoNodes();
  const inputs = makeInputs(plan, [2, 3, 1, 2], 7, 0);
  const w = inputs[2].topkWeights.slice();
  w[0] = NaN;
  const bad = inputs.map((i, r) => (r === 2 ? { ...i, topkWeights: w } : i));
  using sim = new Simulator(plan, { protocol: "staged", sliceRows: 1 });
  const e = await weftErrorAsync(() => sim.dispatch(bad), "topkWeights", 2);
  assert.ok(e instanceof WeftError);
  await weftErrorAsync(() => sim.layout(bad), "topkWeights", 2);
  assert.equal(sim.lastLayout, undefined);
  // Shapes are still checked up front, for every rank.
  await weftErrorAsync(() => sim.dispatch(inputs.slice(1)), "inputs");
});

Deno.test("staged: pre-quantized rows and routing tensors move exactly as in the one-hop Simulator", async () => {
  const plan = makePlan({
    world: 6,
    gpusPerNode: 2,
    experts: 12,
    topK: 3,
    hidden: 256,
    dtype: "bf16",
    dedupe: "node",
    quantize: "e4m3",
  });
  const inputs = makeInputs(plan, [3, 0, 5, 2, 4, 1], 11, 0.15);
  const given = inputs.map((i) => ({
    x: quantizeRows(i.x as Uint16Array, "bf16", plan.hidden),
    topkIdx: new HostTensor("i32", i.topkIdx.length / 3, 3, i.topkIdx),
    topkWeights: new HostTensor("f32", i.topkWeights.length / 3, 3, i.topkWeights),
  }));
  using one = new Simulator(plan);
  using st = new Simulator(plan, { protocol: "staged", sliceRows: 2 });
  const a = await one.dispatch(inputs);
  const b = await st.dispatch(given);
  b.results.forEach((res, r) => {
    assert.deepEqual(res.recv.data, a.results[r].recv.data);
    assert.deepEqual(res.recvScales!.data, a.results[r].recvScales!.data);
    assert.deepEqual(res.srcToken, a.results[r].srcToken);
  });
  // A tensor's bad value is found by the route stage, for its rank.
  const idx = inputs[4].topkIdx.slice();
  idx[1] = idx[0];
  const dup = given.map((
    g,
    r,
  ) => (r === 4 ? { ...g, topkIdx: new HostTensor("i32", 4, 3, idx) } : g));
  const e = await weftErrorAsync(() => st.dispatch(dup), "topkIdx", 4);
  assert.match(e.message, /twice/);
});

Deno.test("staged combine: a dtype wire rounds a crossing partial, an f32 wire does not", async () => {
  // Home rank 0 adds its own partial 1 and rank 1's 2^-8 + 2^-20: in f32 the sum lies above
  // the bf16 tie 1 + 2^-8 and rounds up; the bf16 wire first makes rank 1's partial 2^-8.
  const plan = twoNodes({ dtype: "bf16", experts: 4 });
  const empty = {
    x: new Uint16Array(0),
    topkIdx: new Int32Array(0),
    topkWeights: new Float32Array(0),
  };
  const inputs = [
    {
      x: new Uint16Array(8).fill(0x3f80),
      topkIdx: Int32Array.of(0, 1),
      topkWeights: Float32Array.of(1, 1 + 2 ** -12),
    },
    empty,
    empty,
    empty,
  ];
  const ys = [1, 2 ** -8, 0, 0].map((v, d) =>
    fromF32(new Float32Array(d < 2 ? 8 : 0).fill(v), "bf16")
  );
  const out = async (combineWire: "f32" | "dtype") => {
    using sim = new Simulator(plan, { protocol: "staged", sliceRows: 1, combineWire });
    const d = await sim.dispatch(inputs);
    const [o] = await sim.combine(d.handle, ys);
    const partial = sim.lastTraffic!.links.find((l) => l.stage === "partial")!;
    assert.deepEqual([partial.src, partial.dst, partial.rows], [1, 0, 1]);
    assert.equal(partial.bytes, 8 * (combineWire === "f32" ? 4 : 2));
    return o.toF32()[0];
  };
  assert.equal(await out("f32"), 1 + 2 ** -7);
  assert.equal(await out("dtype"), 1);
  using one = new Simulator(plan);
  const d = await one.dispatch(inputs);
  assert.equal((await one.combine(d.handle, ys))[0].toF32()[0], 1 + 2 ** -7);
});

Deno.test("staged equals one-hop for any dedupe-node plan, a single node included", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan: p, tokens, seed, empty }) => {
      const plan = { ...p, dedupe: "node" as const };
      const inputs = makeInputs(plan, tokens, seed, empty);
      using one = new Simulator(plan);
      using st = new Simulator(plan, { protocol: "staged", sliceRows: 1 + (seed % 5) });
      const a = await one.dispatch(inputs);
      const b = await st.dispatch(inputs);
      b.results.forEach((res, r) => assert.deepEqual(res.recv.data, a.results[r].recv.data));
      const ys = a.results.map((r) => r.recv);
      const want = await one.combine(a.handle, ys);
      (await st.combine(b.handle, ys)).forEach((o, r) => assert.deepEqual(o.data, want[r].data));
    }),
    { numRuns: 30 },
  );
});
