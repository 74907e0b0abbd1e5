import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { checkRankInput, checkRankInputs } from "../lib/core/input_check.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import type { HostRows } from "../lib/core/engine_api.ts";
import type { PlanSpec } from "../dsl/types.ts";
import {
  arbBatch,
  type HostInput,
  makeInputs,
  makePlan,
  tokensOf,
  weftError,
  weftErrorAsync,
} from "./fixtures.ts";

type Mutation = {
  name: string;
  field: string;
  /** Returns a bad copy of a good input; null when the case does not apply to this plan/input. */
  apply: (plan: PlanSpec, input: HostInput) => HostInput | null;
  message?: RegExp;
};

/** Index of the first routed slot, or -1. */
const firstRouted = (i: HostInput) => i.topkIdx.findIndex((e) => e >= 0);

const MUTATIONS: Mutation[] = [
  {
    name: "expert id ≥ experts",
    field: "topkIdx",
    message: /outside \[0, \d+\)/,
    apply: (plan, i) => {
      if (i.topkIdx.length === 0) return null;
      const idx = i.topkIdx.slice();
      idx[idx.length - 1] = plan.experts;
      return { ...i, topkIdx: idx };
    },
  },
  {
    name: "expert id below -1",
    field: "topkIdx",
    apply: (_plan, i) => {
      if (i.topkIdx.length === 0) return null;
      const idx = i.topkIdx.slice();
      idx[0] = -2;
      return { ...i, topkIdx: idx };
    },
  },
  {
    name: "duplicated expert in a token",
    field: "topkIdx",
    message: /twice/,
    apply: (plan, i) => {
      const K = plan.topK;
      if (K < 2 || i.topkIdx.length === 0) return null;
      const idx = i.topkIdx.slice();
      idx[0] = idx[1] = 0;
      return { ...i, topkIdx: idx };
    },
  },
  {
    name: "topkIdx with another K",
    field: "topkIdx",
    message: /K mismatch/,
    apply: (plan, i) => {
      const T = tokensOf(plan, i);
      if (T === 0) return null;
      return { ...i, topkIdx: new Int32Array(T * (plan.topK + 1)).fill(-1) };
    },
  },
  {
    name: "topkIdx not a whole number of tokens",
    field: "topkIdx",
    apply: (plan, i) => {
      const T = tokensOf(plan, i);
      if (T < 2) return null;
      return { ...i, topkIdx: new Int32Array(T * plan.topK + 1).fill(-1) };
    },
  },
  {
    name: "topkIdx as a plain array",
    field: "topkIdx",
    apply: (_plan, i) => ({ ...i, topkIdx: Array.from(i.topkIdx) as unknown as Int32Array }),
  },
  {
    name: "x length not a multiple of hidden",
    field: "x",
    apply: (plan, i) => {
      const x = i.x as HostRows;
      const bad = plan.dtype === "f32"
        ? new Float32Array(x.length + 1)
        : new Uint16Array(x.length + 1);
      return plan.hidden === 1 ? null : { ...i, x: bad.fill(1) };
    },
  },
  {
    name: "Float32Array rows for a 16-bit plan, Uint16Array for f32",
    field: "x",
    message: /dtype/,
    apply: (plan, i) => {
      const x = i.x as HostRows;
      return {
        ...i,
        x: plan.dtype === "f32"
          ? new Uint16Array(x.length).fill(1)
          : new Float32Array(x.length).fill(1),
      };
    },
  },
  {
    name: "tensor of another dtype",
    field: "x",
    apply: (plan, i) => {
      const T = tokensOf(plan, i);
      const other = plan.dtype === "bf16" ? "f16" : "bf16";
      return { ...i, x: new HostTensor(other, T, plan.hidden) };
    },
  },
  {
    name: "tensor of another width",
    field: "x",
    apply: (plan, i) => ({
      ...i,
      x: new HostTensor(plan.dtype, tokensOf(plan, i), plan.hidden + 1),
    }),
  },
  {
    name: "weights of the wrong length",
    field: "topkWeights",
    apply: (_plan, i) => ({
      ...i,
      topkWeights: new Float32Array(i.topkWeights.length + 1).fill(0.5),
    }),
  },
  {
    name: "weights as Float64Array",
    field: "topkWeights",
    apply: (_plan, i) => ({
      ...i,
      topkWeights: Float64Array.from(i.topkWeights) as unknown as Float32Array,
    }),
  },
  {
    name: "NaN weight",
    field: "topkWeights",
    message: /NaN/,
    apply: (_plan, i) => {
      const j = firstRouted(i);
      if (j < 0) return null;
      const w = i.topkWeights.slice();
      w[j] = NaN;
      return { ...i, topkWeights: w };
    },
  },
  {
    name: "infinite weight",
    field: "topkWeights",
    message: /Infinity/,
    apply: (_plan, i) => {
      const j = firstRouted(i);
      if (j < 0) return null;
      const w = i.topkWeights.slice();
      w[j] = -Infinity;
      return { ...i, topkWeights: w };
    },
  },
];

/** Deep copies, to prove a failed call left the caller's arrays untouched. */
const snapshot = (inputs: HostInput[]) =>
  inputs.map((i) => ({
    x: i.x instanceof HostTensor ? i.x.data.slice() : (i.x as HostRows).slice(),
    topkIdx: Array.from(i.topkIdx),
    topkWeights: Array.from(i.topkWeights),
  }));

async function expectRejected(
  plan: PlanSpec,
  inputs: HostInput[],
  rank: number,
  m: Mutation,
): Promise<void> {
  using sim = new Simulator(plan);
  const good = await sim.dispatch(inputs.map((i) => ({ ...i })));
  const before = sim.lastLayout;
  const bad = m.apply(plan, inputs[rank]);
  if (bad === null) return;
  const batch = inputs.map((i, r) => (r === rank ? bad : i));
  const copy = snapshot(batch);
  const e = await weftErrorAsync(() => sim.dispatch(batch), m.field, rank);
  if (m.message) assert.match(e.problem, m.message, m.name);
  assert.match(e.message, new RegExp(`rank ${rank}`));
  assert.equal(sim.lastLayout, before, "a rejected dispatch replaced the layout");
  assert.deepStrictEqual(snapshot(batch), copy, "a rejected dispatch modified its inputs");
  // The checker alone says the same, before any engine work.
  weftError(() => checkRankInput(plan, rank, bad), m.field, rank);
  good.handle.close();
}

for (const m of MUTATIONS) {
  Deno.test(`bad input is rejected naming field and rank, nothing written: ${m.name}`, async () => {
    for (const dtype of ["bf16", "f32"] as const) {
      const plan = makePlan({ world: 3, experts: 6, topK: 3, hidden: 4, dtype });
      await expectRejected(plan, makeInputs(plan, [4, 5, 3], 9, 0), 1, m);
    }
  });
}

Deno.test("every rank is checked before work: a bad last rank fails the whole call", () => {
  const plan = makePlan({ world: 3, experts: 6, topK: 2 });
  const inputs = makeInputs(plan, [2, 2, 2], 4, 0);
  inputs[2] = { ...inputs[2], topkIdx: Int32Array.of(0, 0, 1, 2) };
  weftError(() => checkRankInputs(plan, inputs), "topkIdx", 2);
  weftError(() => checkRankInputs(plan, inputs.slice(0, 2)), "inputs");
});

Deno.test("weights of empty (-1) slots are not checked; T = 0 ranks pass", () => {
  const plan = makePlan({ world: 1, experts: 4, topK: 2, hidden: 2 });
  const T = checkRankInput(plan, 0, {
    x: new Float32Array(2),
    topkIdx: Int32Array.of(1, -1),
    topkWeights: Float32Array.of(1, NaN),
  });
  assert.equal(T, 1);
  assert.equal(
    checkRankInput(plan, 0, {
      x: new Float32Array(0),
      topkIdx: new Int32Array(0),
      topkWeights: new Float32Array(0),
    }),
    0,
  );
  assert.equal(
    checkRankInput(plan, 0, { topkIdx: Int32Array.of(0, 1), topkWeights: Float32Array.of(1, 1) }),
    1,
  );
});

Deno.test("property: any bad input on any rank of any plan is a WeftError naming field and rank", async () => {
  await fc.assert(
    fc.asyncProperty(
      arbBatch,
      fc.nat(),
      fc.nat(MUTATIONS.length - 1),
      async ({ plan, tokens, seed, empty }, r, mi) => {
        const rank = r % plan.world;
        await expectRejected(plan, makeInputs(plan, tokens, seed, empty), rank, MUTATIONS[mi]);
      },
    ),
    { numRuns: 40 },
  );
});

Deno.test("pre-quantized x: NaN, ±Infinity, zero and negative scales are rejected on the host", () => {
  const plan = makePlan({ world: 1, experts: 2, topK: 1, hidden: 256, quantize: "e4m3" });
  const routing = { topkIdx: Int32Array.of(0, 1), topkWeights: Float32Array.of(1, 1) };
  const q = new Uint8Array(2 * 256);
  const ok = Float32Array.of(1, 0.5, 2, 0.25);
  assert.equal(checkRankInput(plan, 0, { ...routing, x: { q, scales: ok } }), 2);
  for (const [i, bad] of [[0, NaN], [3, -1], [2, 0], [1, Infinity], [1, -Infinity]]) {
    const data = ok.slice();
    data[i] = bad;
    for (const scales of [data, new HostTensor("f32", 2, 2, data)]) {
      const e = weftError(
        () => checkRankInput(plan, 0, { ...routing, x: { q, scales } }),
        "x.scales",
        0,
      );
      assert.match(e.message, new RegExp(`row ${i >> 1} block ${i & 1} has scale ${bad}`));
    }
  }
});
