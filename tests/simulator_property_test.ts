import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { fromF32, toF32 } from "../lib/core/dtype.ts";
import type { HostRows } from "../lib/core/engine_api.ts";
import type { BatchLayout, PlanSpec } from "../dsl/types.ts";
import { arbBatch, makeInputs, randomF32 } from "./fixtures.ts";
import { assertIdentityCombine, identityTolerance } from "./sim_fixtures.ts";
import { mulberry32 } from "../lib/io/routing.ts";

const RUNS = { numRuns: 30 };

/**
 * DESIGN.md's combine written the plain way: every partial starts at 0 and
 * every step is one f32 rounding; per device in ascending k, devices sharing
 * a forwarder (dedupe node) summed first, then in ascending rank.
 */
function referenceCombine(
  plan: PlanSpec,
  layout: BatchLayout,
  ys: Float32Array[],
  w: Float32Array[],
): HostRows[] {
  const { hidden: H, topK: K } = plan;
  const f = Math.fround;
  return layout.ranks.map((rl) => {
    const out = new Float32Array(rl.tokens * H);
    for (let t = 0; t < rl.tokens; t++) {
      const devices = [
        ...new Set(Array.from(rl.destRank.subarray(t * K, (t + 1) * K)).filter((d) => d >= 0)),
      ]
        .sort((a, b) => a - b);
      for (let j = 0; j < H; j++) {
        let acc = 0;
        let group = 0;
        devices.forEach((d, n) => {
          let partial = 0;
          for (let k = 0; k < K; k++) {
            const i = t * K + k;
            if (rl.destRank[i] !== d) continue;
            const y = ys[d][rl.destRow[i] * H + j];
            partial = f(partial + f(plan.combine === "weighted" ? w[rl.rank][i] * y : y));
          }
          group = f(group + partial);
          if (n + 1 === devices.length || rl.forwardRank[devices[n + 1]] !== rl.forwardRank[d]) {
            acc = f(acc + group);
            group = 0;
          }
        });
        out[t * H + j] = acc;
      }
    }
    return fromF32(out, plan.dtype);
  });
}

Deno.test("property: dispatch delivers each pair's row bits, weight and source to its layout position", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      using sim = new Simulator(plan);
      const inputs = makeInputs(plan, tokens, seed, empty);
      const d = await sim.dispatch(inputs);
      const { hidden: H, topK: K } = plan;
      for (const res of d.results) {
        const rl = d.layout.ranks[res.rank];
        assert.equal(res.recv.rows, rl.recvRows);
        assert.equal(res.recv.cols, H);
        assert.equal(res.recv.dtype, plan.dtype);
        assert.deepStrictEqual(res.expertCounts, rl.expertCounts);
        for (let i = 0; i < rl.recvRows; i++) {
          const [s, t, k] = [res.srcRank[i], res.srcToken[i], res.srcK[i]];
          assert.deepStrictEqual(
            res.recv.row(i),
            (inputs[s].x as HostRows).subarray(t * H, (t + 1) * H),
          );
          assert.equal(res.recvWeights[i], inputs[s].topkWeights[t * K + k]);
        }
      }
      d.handle.close();
    }),
    RUNS,
  );
});

Deno.test("property: identity experts combine to x·Σw (weighted) or x·count (sum) within rounding", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      using sim = new Simulator(plan);
      const inputs = makeInputs(plan, tokens, seed, empty);
      const d = await sim.dispatch(inputs);
      const outs = await sim.combine(d.handle, d.results.map((r) => r.recv));
      await assertIdentityCombine(plan, inputs, outs, identityTolerance(plan));
    }),
    RUNS,
  );
});

Deno.test("property: combine equals the plain normative reduction bit for bit, for any expert output", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      using sim = new Simulator(plan);
      const inputs = makeInputs(plan, tokens, seed, empty);
      const d = await sim.dispatch(inputs);
      // Wide exponent range so that any change of summation order shows in the bits.
      const ys = d.results.map((r, i) => {
        const v = randomF32(r.recv.rows * plan.hidden, seed + 1000 + i);
        const rng = mulberry32(seed + i);
        for (let j = 0; j < v.length; j++) v[j] *= 2 ** (Math.floor(rng() * 25) - 12);
        return fromF32(v, plan.dtype);
      });
      const outs = await sim.combine(d.handle, ys);
      const want = referenceCombine(
        plan,
        d.layout,
        ys.map((y) => toF32(y, plan.dtype)),
        inputs.map((i) => i.topkWeights),
      );
      outs.forEach((o, r) => assert.deepStrictEqual(o.data, want[r]));
    }),
    RUNS,
  );
});
