/**
 * Routing given as tensors (an `i32` topkIdx, an `f32` topkWeights) instead
 * of host arrays: the Simulator reads them and then behaves exactly as with
 * arrays; the shape checks name the field, the rank and the fix; rows of
 * hidden states refuse int32 data. The GPU engine's side runs against the
 * mock library in tests/engine_mock_test.ts.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import { Simulator } from "../lib/sim/simulator.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import { hostArrayType } from "../lib/core/dtype.ts";
import type { HostArrayOf, RankInput, RoutingInput, Tensor } from "../lib/core/engine_api.ts";
import type { PlanSpec, TensorDType } from "../dsl/types.ts";
import { checkRankInput, checkRankShapes } from "../lib/core/input_check.ts";
import {
  arbBatch,
  type HostInput,
  makeInputs,
  makePlan,
  tokensOf,
  weftError,
  weftErrorAsync,
} from "./fixtures.ts";

/** The routing of `i` as host tensors of its shape (copies: the arrays are not shared). */
function tensors(
  plan: PlanSpec,
  i: HostInput,
): { topkIdx: HostTensor<"i32">; topkWeights: HostTensor<"f32"> } {
  const T = tokensOf(plan, i);
  return {
    topkIdx: new HostTensor("i32", T, plan.topK, i.topkIdx.slice()),
    topkWeights: new HostTensor("f32", T, plan.topK, i.topkWeights.slice()),
  };
}

/**
 * A tensor that is not a HostTensor (as a device tensor is not): advertises
 * a shape, and hands out `data` (a copy each time) from `read()`, counting
 * the calls.
 */
class FakeTensor<D extends TensorDType> implements Tensor<D> {
  readonly device = "cuda:7";
  reads = 0;
  constructor(
    readonly dtype: D,
    readonly rows: number,
    readonly cols: number,
    readonly data: HostArrayOf<D>,
  ) {}
  read(): Promise<HostArrayOf<D>> {
    this.reads++;
    return Promise.resolve(this.data.slice() as HostArrayOf<D>);
  }
}

/** Every field of two dispatches' results, bit for bit. */
async function assertSameDispatch(
  a: Awaited<ReturnType<Simulator["dispatch"]>>,
  b: Awaited<ReturnType<Simulator["dispatch"]>>,
): Promise<void> {
  assert.equal(a.results.length, b.results.length);
  for (let r = 0; r < a.results.length; r++) {
    const [x, y] = [a.results[r], b.results[r]];
    assert.deepStrictEqual(await x.recv.read(), await y.recv.read(), `recv of rank ${r}`);
    for (const f of ["expertCounts", "recvWeights", "srcRank", "srcToken", "srcK"] as const) {
      assert.deepStrictEqual(x[f], y[f], `${f} of rank ${r}`);
    }
  }
  assert.deepStrictEqual(a.layout, b.layout);
}

Deno.test("property: dispatch and combine with tensor routing equal the same with arrays", async () => {
  await fc.assert(
    fc.asyncProperty(
      arbBatch,
      fc.array(fc.constantFrom("arrays", "idx", "weights", "both", "fake"), {
        minLength: 8,
        maxLength: 8,
      }),
      async ({ plan, tokens, seed, empty }, kinds) => {
        const inputs = makeInputs(plan, tokens, seed, empty);
        // Each rank picks how its routing comes: arrays, a host tensor for
        // one part or both, or tensors that must be read through read().
        const mixed: RankInput[] = inputs.map((i, r) => {
          const t = tensors(plan, i);
          switch (kinds[r]) {
            case "idx":
              return { ...i, topkIdx: t.topkIdx };
            case "weights":
              return { ...i, topkWeights: t.topkWeights };
            case "both":
              return { ...i, ...t };
            case "fake":
              return {
                ...i,
                topkIdx: new FakeTensor("i32", t.topkIdx.rows, plan.topK, t.topkIdx.data),
                topkWeights: new FakeTensor("f32", t.topkIdx.rows, plan.topK, t.topkWeights.data),
              };
            default:
              return i;
          }
        });
        using sim = new Simulator(plan);
        const want = await sim.dispatch(inputs);
        const got = await sim.dispatch(mixed);
        await assertSameDispatch(got, want);
        for (const m of mixed) {
          if (m.topkIdx instanceof FakeTensor) assert.equal(m.topkIdx.reads, 1);
          if (m.topkWeights instanceof FakeTensor) assert.equal(m.topkWeights.reads, 1);
        }
        // Combine reads the weights kept from the tensors.
        const ys = want.results.map((r) => r.recv);
        const a = await sim.combine(got.handle, ys);
        const b = await sim.combine(want.handle, ys);
        assert.deepStrictEqual(a.map((t) => t.data), b.map((t) => t.data));
        // The layout step alone from tensors equals the one from arrays.
        using fromTensors = await sim.layout(mixed);
        assert.deepStrictEqual(fromTensors.layout, want.layout);
        await assertSameDispatch(await sim.redispatch(fromTensors, inputs.map((i) => i.x)), want);
        want.handle.close();
        got.handle.close();
      },
    ),
    { numRuns: 30 },
  );
});

Deno.test("tensor routing: the Simulator's weights are its own copy, not a view of the tensor", async () => {
  const plan = makePlan({ world: 1, experts: 4, topK: 2, hidden: 1 });
  using sim = new Simulator(plan);
  const topkWeights = new HostTensor("f32", 1, 2, Float32Array.of(0.25, 0.75));
  const d = await sim.dispatch([{
    x: Float32Array.of(2),
    topkIdx: new HostTensor("i32", 1, 2, Int32Array.of(1, 2)),
    topkWeights,
  }]);
  topkWeights.data.fill(100); // the router reuses its buffer for the next step
  const [out] = await sim.combine(d.handle, [Float32Array.of(2, 2)]);
  assert.deepStrictEqual(Array.from(out.data), [2]); // 0.25·2 + 0.75·2
  d.handle.close();
});

type TensorMutation = {
  name: string;
  field: string;
  message: RegExp;
  /** A bad copy of a good input (routing as host tensors); null when it does not apply. */
  apply: (plan: PlanSpec, input: HostInput) => RankInput | null;
};

/** `field` replaced by a tensor of `dtype` with `rows` / `cols` more than the input's shape. */
function reshaped(
  name: string,
  field: "topkIdx" | "topkWeights",
  message: RegExp,
  dtype: "i32" | "f32",
  rows: number,
  cols: number,
): TensorMutation {
  return {
    name,
    field,
    message,
    apply: (plan, i) => ({
      ...i,
      [field]: new HostTensor(dtype, tokensOf(plan, i) + rows, plan.topK + cols),
    }),
  };
}

const TENSOR_MUTATIONS: TensorMutation[] = [
  reshaped("an f32 tensor as topkIdx", "topkIdx", /f32 tensor.*i32/, "f32", 0, 0),
  reshaped("an i32 tensor as topkWeights", "topkWeights", /i32 tensor.*f32/, "i32", 0, 0),
  reshaped("a topkIdx tensor with topK + 1 columns", "topkIdx", /columns.*topK/, "i32", 0, 1),
  reshaped(
    "a topkWeights tensor with topK + 1 columns",
    "topkWeights",
    /columns.*topK/,
    "f32",
    0,
    1,
  ),
  reshaped("a topkIdx tensor with one row more than x", "topkIdx", /rows but x has/, "i32", 1, 0),
  {
    name: "a topkWeights tensor with one row fewer than topkIdx",
    field: "topkWeights",
    message: /rows but topkIdx has/,
    apply: (plan, i) =>
      tokensOf(plan, i) === 0 ? null : {
        ...i,
        ...tensors(plan, i),
        topkWeights: new HostTensor("f32", tokensOf(plan, i) - 1, plan.topK),
      },
  },
  {
    name: "an out-of-range expert id inside an i32 tensor",
    field: "topkIdx",
    message: /outside \[0, \d+\)/,
    apply: (plan, i) => {
      if (i.topkIdx.length === 0) return null;
      const t = tensors(plan, i);
      t.topkIdx.data[t.topkIdx.data.length - 1] = plan.experts;
      return { ...i, ...t };
    },
  },
  {
    name: "a NaN weight inside an f32 tensor",
    field: "topkWeights",
    message: /NaN/,
    apply: (plan, i) => {
      const j = i.topkIdx.findIndex((e) => e >= 0);
      if (j < 0) return null;
      const t = tensors(plan, i);
      t.topkWeights.data[j] = NaN;
      return { ...i, ...t };
    },
  },
  {
    name: "a tensor whose host copy is shorter than it advertised",
    field: "topkIdx",
    message: /entries/,
    apply: (plan, i) => {
      const T = tokensOf(plan, i);
      if (T === 0) return null;
      return {
        ...i,
        topkIdx: new FakeTensor("i32", T, plan.topK, i.topkIdx.subarray(plan.topK)),
      };
    },
  },
  {
    name: "an Int32Array as x",
    field: "x",
    message: /is an Int32Array/,
    apply: (plan, i) => ({ ...i, x: new Int32Array(tokensOf(plan, i) * plan.hidden) as never }),
  },
  {
    name: "an i32 tensor as x",
    field: "x",
    message: /i32 tensor/,
    apply: (plan, i) => ({ ...i, x: new HostTensor("i32", tokensOf(plan, i), plan.hidden) }),
  },
];

for (const m of TENSOR_MUTATIONS) {
  Deno.test(`tensor routing: ${m.name} is a WeftError naming ${m.field} and the rank`, async () => {
    for (const dtype of ["bf16", "f32"] as const) {
      const plan = makePlan({ world: 3, experts: 6, topK: 3, hidden: 4, dtype });
      const inputs = makeInputs(plan, [4, 5, 3], 9, 0);
      using sim = new Simulator(plan);
      const bad = m.apply(plan, inputs[1]);
      assert.ok(bad !== null);
      const batch: RankInput[] = inputs.map((i, r) => (r === 1 ? bad : i));
      const e = await weftErrorAsync(() => sim.dispatch(batch), m.field, 1);
      assert.match(e.problem, m.message);
      assert.equal(sim.lastLayout, undefined, "a rejected dispatch left a layout");
      // The layout step alone rejects it too, before any layout (row counts
      // against x need an x).
      if (m.field !== "x" && !/x has/.test(m.message.source)) {
        const routing: RoutingInput[] = batch.map((i) => ({
          topkIdx: i.topkIdx,
          topkWeights: i.topkWeights,
        }));
        const l = await weftErrorAsync(() => sim.layout(routing), m.field, 1);
        assert.match(l.problem, m.message);
        assert.equal(sim.lastLayout, undefined, "a rejected layout left a layout");
      }
    }
  });
}

Deno.test("property: a bad routing tensor on any rank of any plan is a WeftError naming field and rank", async () => {
  await fc.assert(
    fc.asyncProperty(
      arbBatch,
      fc.nat(),
      fc.nat(TENSOR_MUTATIONS.length - 1),
      async ({ plan, tokens, seed, empty }, r, mi) => {
        const rank = r % plan.world;
        const inputs = makeInputs(plan, tokens, seed, empty);
        const m = TENSOR_MUTATIONS[mi];
        const bad = m.apply(plan, inputs[rank]);
        fc.pre(bad !== null);
        using sim = new Simulator(plan);
        const batch: RankInput[] = inputs.map((i, q) => (q === rank ? bad! : i));
        const e = await weftErrorAsync(() => sim.dispatch(batch), m.field, rank);
        assert.match(e.problem, m.message);
      },
    ),
    { numRuns: 60 },
  );
});

Deno.test("tensor routing: the shape checks alone read no values and check tensors by their shape", () => {
  const plan = makePlan({ world: 1, experts: 4, topK: 2, hidden: 3 });
  const idx = { rows: 2, cols: 2, dtype: "i32" as const };
  const w = { rows: 2, cols: 2, dtype: "f32" as const };
  assert.equal(
    checkRankShapes(plan, 0, { x: new Float32Array(6), topkIdx: idx, topkWeights: w }),
    2,
  );
  assert.equal(checkRankShapes(plan, 0, { topkIdx: idx, topkWeights: new Float32Array(4) }), 2);
  assert.equal(checkRankInput(plan, 0, { topkIdx: Int32Array.of(0, 1, 2, 3), topkWeights: w }), 2);
  weftError(
    () => checkRankShapes(plan, 0, { x: new Float32Array(9), topkIdx: idx, topkWeights: w }),
    "topkIdx",
    0,
  );
  // Without x, the weights must still match topkIdx's token count.
  weftError(
    () => checkRankShapes(plan, 0, { topkIdx: idx, topkWeights: new Float32Array(6) }),
    "topkWeights",
    0,
  );
  weftError(
    () =>
      checkRankShapes(plan, 0, { topkIdx: new Int32Array(4), topkWeights: new Float32Array(6) }),
    "topkWeights",
    0,
  );
  const e = weftError(
    () => checkRankShapes(plan, 0, { topkIdx: { ...idx, dtype: "f32" }, topkWeights: w }),
    "topkIdx",
    0,
  );
  assert.match(e.fix, /"i32"/);
});

Deno.test("rows refuse int32 data: an i32 tensor or an Int32Array as ys is a WeftError naming ys", async () => {
  const plan = makePlan({ world: 2, experts: 4, topK: 2, hidden: 2 });
  using sim = new Simulator(plan);
  const d = await sim.dispatch(makeInputs(plan, [3, 2], 4, 0));
  const ys = d.results.map((r) => r.recv.data);
  const rows = d.results[1].recv.rows;
  const asI32 = new HostTensor("i32", rows, plan.hidden);
  const e = await weftErrorAsync(() => sim.combine(d.handle, [ys[0], asI32]), "ys", 1);
  assert.match(e.problem, /i32 tensor/);
  assert.match(e.fix, /f32 \[rows × 2\] tensor/);
  const a = await weftErrorAsync(
    () => sim.combine(d.handle, [new Int32Array(ys[0].length) as never, ys[1]]),
    "ys",
    0,
  );
  assert.match(a.problem, /is an Int32Array/);
  d.handle.close();
});

Deno.test("i32 host tensors: Int32Array storage, no f32 view, and a wrong array refused", () => {
  assert.equal(hostArrayType("i32"), Int32Array);
  const t = new HostTensor("i32", 2, 2);
  assert.ok(t.data instanceof Int32Array && t.data.length === 4);
  assert.ok(t.row(1) instanceof Int32Array);
  weftError(() => t.toF32(), "dtype");
  weftError(() => new HostTensor("i32", 1, 2, new Float32Array(2)), "data");
  weftError(() => new HostTensor("f32", 1, 2, new Int32Array(2)), "data");
});
