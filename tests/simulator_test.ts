import assert from "node:assert/strict";
import { Simulator } from "../lib/sim/simulator.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import { bf16ToF32, f32ToBf16 } from "../lib/core/dtype.ts";
import type { RankInput } from "../lib/core/engine_api.ts";
import { makeInputs, makePlan, weftErrorAsync } from "./fixtures.ts";

const arr = (a: ArrayLike<number>): number[] => Array.from(a);

Deno.test("dispatch copies rows bit for bit into expert-major order with weights and sources", async () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, hidden: 2, dtype: "bf16" });
  // NaN and -0 bit patterns must survive: dispatch is a pure copy.
  const x0 = Uint16Array.of(0x3f80, 0x7fc1, 0x8000, 0x4000, 0x1234, 0xc2aa);
  using sim = new Simulator(plan);
  const d = await sim.dispatch([
    {
      x: x0,
      topkIdx: Int32Array.of(2, 3, 0, 2, -1, 1),
      topkWeights: Float32Array.of(0.1, 0.2, 0.3, 0.4, 9, 0.6),
    },
    {
      x: new HostTensor("bf16", 1, 2, Uint16Array.of(7, 8)),
      topkIdx: Int32Array.of(3, 0),
      topkWeights: Float32Array.of(0.7, 0.8),
    },
  ]);
  const [r0, r1] = d.results;
  assert.equal(sim.kind, "simulator");
  assert.deepStrictEqual(sim.ranks, [0, 1]);
  assert.deepStrictEqual(arr(r0.recv.data), [0x8000, 0x4000, 7, 8, 0x1234, 0xc2aa]);
  assert.deepStrictEqual(arr(r0.expertCounts), [2, 1]);
  assert.deepStrictEqual(arr(r0.recvWeights), arr(Float32Array.of(0.3, 0.8, 0.6)));
  assert.deepStrictEqual([arr(r0.srcRank), arr(r0.srcToken), arr(r0.srcK)], [[0, 1, 0], [1, 0, 2], [
    0,
    1,
    1,
  ]]);
  assert.deepStrictEqual(arr(r1.recv.data), [0x3f80, 0x7fc1, 0x8000, 0x4000, 0x3f80, 0x7fc1, 7, 8]);
  assert.equal(r1.recv.rows, 4);
  assert.equal(r1.recv.dtype, "bf16");
  assert.equal(d.layout, sim.lastLayout);
  assert.equal(d.handle.layout, d.layout);
  d.handle.close();
});

Deno.test("combine reduces per device in ascending k, then devices in ascending rank, in f32", async () => {
  // Rank 0 holds experts 0,1; rank 1 holds 2,3. Token: k0 → expert 2 (rank 1), k1 → 0 (rank 0), k2 → 3 (rank 1).
  const plan = makePlan({ world: 2, experts: 4, topK: 3, hidden: 1, dtype: "f32", combine: "sum" });
  using sim = new Simulator(plan);
  const d = await sim.dispatch([
    {
      x: Float32Array.of(1),
      topkIdx: Int32Array.of(2, 0, 3),
      topkWeights: Float32Array.of(1, 1, 1),
    },
    { x: new Float32Array(0), topkIdx: new Int32Array(0), topkWeights: new Float32Array(0) },
  ]);
  // Expert outputs: y(k0) = 1, y(k1) = 2^24, y(k2) = -2^24.
  // Normative: rank 0 partial 2^24; rank 1 partial 1 + -2^24 = 1 - 2^24 (exact); sum = 1.
  // Summing in k order instead would give (1 + 2^24) - 2^24 = 0 in f32.
  const y0 = Float32Array.of(2 ** 24);
  const y1 = new Float32Array(2);
  y1[d.layout.ranks[0].destRow[0]] = 1;
  y1[d.layout.ranks[0].destRow[2]] = -(2 ** 24);
  const [out] = await sim.combine(d.handle, [y0, y1]);
  assert.deepStrictEqual(arr(out.data), [1]);
});

Deno.test("node dedupe: a remote node's devices are summed at the forwarder before the home adds it", async () => {
  // 2 nodes × 2; rank r holds experts 2r, 2r+1. Token on rank 0: k0 → 0 (rank 0), k1 → 4 (rank 2), k2 → 6 (rank 3).
  const mk = (dedupe: "node" | "device") =>
    makePlan({ world: 4, gpusPerNode: 2, experts: 8, topK: 3, hidden: 1, combine: "sum", dedupe });
  const empty = {
    x: new Float32Array(0),
    topkIdx: new Int32Array(0),
    topkWeights: new Float32Array(0),
  };
  const input: RankInput = {
    x: Float32Array.of(1),
    topkIdx: Int32Array.of(0, 4, 6),
    topkWeights: Float32Array.of(1, 1, 1),
  };
  const results: number[] = [];
  for (const dedupe of ["node", "device"] as const) {
    using sim = new Simulator(mk(dedupe));
    const d = await sim.dispatch([input, empty, empty, empty]);
    // Partials: rank 0 → -2^24, rank 2 → 2^24, rank 3 → 1.
    const ys = [
      Float32Array.of(-(2 ** 24)),
      new Float32Array(0),
      Float32Array.of(2 ** 24),
      Float32Array.of(1),
    ];
    const [out] = await sim.combine(d.handle, ys);
    results.push(out.data[0]);
  }
  // node: -2^24 + (2^24 + 1 → 2^24) = 0; device: (-2^24 + 2^24) + 1 = 1.
  assert.deepStrictEqual(results, [0, 1]);
});

Deno.test("weighted combine rounds each product to f32 and the result to the dtype once", async () => {
  const plan = makePlan({ world: 1, experts: 2, topK: 2, hidden: 1, dtype: "bf16" });
  using sim = new Simulator(plan);
  const w = Float32Array.of(1 / 3, 2 / 3);
  const d = await sim.dispatch([{
    x: f32ToBf16(Float32Array.of(1.5)),
    topkIdx: Int32Array.of(1, 0),
    topkWeights: w,
  }]);
  const y = f32ToBf16(Float32Array.of(3, 1.25)); // rows: expert 0 (k1), expert 1 (k0)
  const [out] = await sim.combine(d.handle, [y]);
  const f = Math.fround;
  const want = f32ToBf16(Float32Array.of(f(f(w[0] * 1.25) + f(w[1] * 3))));
  assert.deepStrictEqual(arr(out.data as Uint16Array), arr(want));
  // A token without experts combines to zeros.
  const d2 = await sim.dispatch([{
    x: f32ToBf16(Float32Array.of(1.5)),
    topkIdx: Int32Array.of(-1, -1),
    topkWeights: w,
  }]);
  const [zero] = await sim.combine(d2.handle, [new Uint16Array(0)]);
  assert.deepStrictEqual(arr(bf16ToF32(zero.data as Uint16Array)), [0]);
});

Deno.test("redispatch reuses the layout; combine is deterministic run to run", async () => {
  const plan = makePlan({ world: 3, experts: 6, topK: 3, hidden: 5, dtype: "f16", dedupe: "none" });
  using sim = new Simulator(plan);
  const inputs = makeInputs(plan, [7, 0, 4], 11);
  const d = await sim.dispatch(inputs);
  const other = makeInputs(plan, [7, 0, 4], 12).map((i) => i.x as Uint16Array);
  const again = await sim.redispatch(d.handle, other);
  assert.equal(again.handle, d.handle);
  for (const res of again.results) {
    for (let i = 0; i < res.recv.rows; i++) {
      const t = res.srcToken[i];
      const H = plan.hidden;
      assert.deepStrictEqual(
        arr(res.recv.row(i)),
        arr(other[res.srcRank[i]].subarray(t * H, (t + 1) * H)),
      );
    }
    assert.deepStrictEqual(res.recvWeights, d.results[res.rank].recvWeights);
  }
  const ys = d.results.map((r) => r.recv);
  const a = await sim.combine(d.handle, ys);
  const b = await sim.combine(d.handle, ys);
  assert.deepStrictEqual(a.map((t) => t.data), b.map((t) => t.data));
});

Deno.test("handles: closed or foreign handles are rejected with WeftError", async () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2 });
  const sim = new Simulator(plan);
  const inputs = makeInputs(plan, [3, 2], 5);
  const d = await sim.dispatch(inputs);
  const ys = d.results.map((r) => r.recv);
  {
    using other = new Simulator(plan);
    await weftErrorAsync(() => other.combine(d.handle, ys), "handle");
  }
  d.handle[Symbol.dispose]();
  await weftErrorAsync(() => sim.combine(d.handle, ys), "handle");
  await weftErrorAsync(() => sim.redispatch(d.handle, inputs.map((i) => i.x)), "handle");
  assert.throws(() => d.handle.layout, /handle/);
  d.handle.close(); // idempotent
  sim.close();
  await weftErrorAsync(() => sim.dispatch(inputs), "simulator");
});

Deno.test("combine and redispatch check row counts and dtype of every rank before computing", async () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, dtype: "bf16" });
  using sim = new Simulator(plan);
  const d = await sim.dispatch(makeInputs(plan, [3, 2], 8));
  const ys = d.results.map((r) => r.recv.data);
  await weftErrorAsync(() => sim.combine(d.handle, [ys[0]]), "ys");
  await weftErrorAsync(() => sim.combine(d.handle, [ys[0], ys[1].subarray(plan.hidden)]), "ys", 1);
  await weftErrorAsync(
    () => sim.combine(d.handle, [new Float32Array(ys[0].length), ys[1]]),
    "ys",
    0,
  );
  await weftErrorAsync(
    () =>
      sim.redispatch(d.handle, [new Uint16Array(3 * plan.hidden), new Uint16Array(plan.hidden)]),
    "xs",
    1,
  );
});
