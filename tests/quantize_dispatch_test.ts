import assert from "node:assert/strict";
import { experts, fromYAML } from "../dsl/mod.ts";
import { Simulator } from "../lib/sim/simulator.ts";
import { HostTensor } from "../lib/core/host_tensor.ts";
import { computeLayout } from "../dsl/layout.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { dequantizeRows, quantizeRows } from "../lib/core/fp8.ts";
import { toF32 } from "../lib/core/dtype.ts";
import type { HostRows } from "../lib/core/engine_api.ts";
import {
  arbBatch,
  makeInputs,
  makePlan,
  type PlanOptions,
  weftError,
  weftErrorAsync,
} from "./fixtures.ts";
import fc from "fast-check";

Deno.test("quantize: the step sets the field, 'none' removes it, YAML keeps it", () => {
  const p = experts(64).byDevice().topK(8).quantize("e4m3").hidden(7168);
  assert.equal(p.spec.quantize, "e4m3");
  assert.equal(p.quantize("none").spec.quantize, undefined);
  assert.ok(!("quantize" in p.quantize("none").spec));
  const text = p.toYAML();
  assert.match(text, /^quantize: e4m3$/m);
  assert.deepEqual(fromYAML(text).spec, p.spec);
  assert.deepEqual(fromYAML(text.replace("e4m3", "none")).spec, p.quantize("none").spec);
  const plan = p.compile({ world: 4 });
  assert.equal(plan.quantize, "e4m3");
  assert.equal(JSON.parse(JSON.stringify(plan)).quantize, "e4m3");
  assert.ok(!("quantize" in experts(64).byDevice().topK(8).hidden(128).compile({ world: 4 })));
});

Deno.test("quantize: bad values and hidden sizes off the 128 grid name their field", () => {
  const base = experts(8).byDevice().topK(2);
  // @ts-expect-error: not a format
  weftError(() => base.quantize("e5m2"), "quantize");
  weftError(() => base.hidden(136).quantize("e4m3"), "hidden");
  weftError(() => base.quantize("e4m3").hidden(136), "hidden");
  weftError(() => base.quantize("e4m3").compile({ world: 2, hidden: 200 }), "hidden");
  weftError(() => fromYAML("placement: {kind: byDevice}\ntopK: 2\nquantize: fp8\n"), "quantize");
  base.quantize("e4m3").compile({ world: 2, hidden: 256 });
});

/** A bf16 plan that quantizes dispatch. */
const bf16E4m3 = (o: PlanOptions): PlanSpec => makePlan({ ...o, dtype: "bf16", quantize: "e4m3" });

/** Row t of rank r's x quantized on its own, as the source does. */
function sourceRow(x: HostRows, dtype: "bf16" | "f16" | "f32", H: number, t: number) {
  const one = (x as Uint16Array).subarray(t * H, (t + 1) * H) as HostRows;
  return quantizeRows(one, dtype, H);
}

for (const dtype of ["bf16", "f16", "f32"] as const) {
  Deno.test(`quantize: a ${dtype} dispatch lands each source row's E4M3 bytes and scales`, async () => {
    const H = 256;
    const plan = makePlan({ world: 3, experts: 6, topK: 3, hidden: H, dtype, quantize: "e4m3" });
    const inputs = makeInputs(plan, [5, 0, 7], 11);
    using sim = new Simulator(plan);
    const d = await sim.dispatch(inputs);
    for (const r of d.results) {
      assert.equal(r.recv.dtype, "e4m3");
      assert.ok(r.recv.data instanceof Uint8Array);
      assert.ok(r.recvScales !== undefined);
      assert.equal(r.recvScales.cols, H / 128);
      for (let i = 0; i < r.recv.rows; i++) {
        const want = sourceRow(inputs[r.srcRank[i]].x as HostRows, dtype, H, r.srcToken[i]);
        assert.deepEqual(r.recv.row(i), want.q, `rank ${r.rank} row ${i}`);
        assert.deepEqual(Array.from(r.recvScales.row(i)), Array.from(want.scales));
        // And close to the source: within E4M3's half step (2^-4 relative) of each value.
        const back = dequantizeRows({
          q: r.recv.row(i) as Uint8Array,
          scales: r.recvScales.row(i) as Float32Array,
        }, H);
        const src = toF32(
          (inputs[r.srcRank[i]].x as Uint16Array).subarray(
            r.srcToken[i] * H,
            (r.srcToken[i] + 1) * H,
          ),
          dtype,
        );
        const scaleMax = Math.max(...r.recvScales.row(i));
        src.forEach((v, j) =>
          assert.ok(
            Math.abs(back[j] - v) <= Math.abs(v) / 16 + scaleMax * 2 ** -10,
            `${v} vs ${back[j]}`,
          )
        );
      }
    }
    // Layout then redispatch gives the same bytes.
    const h = await sim.layout(inputs);
    const again = await sim.redispatch(h, inputs.map((i) => i.x as HostRows));
    again.results.forEach((r, k) => {
      assert.deepEqual(r.recv.data, d.results[k].recv.data);
      assert.deepEqual(r.recvScales?.data, d.results[k].recvScales?.data);
    });
    h.close();
    d.handle.close();
  });
}

Deno.test("quantize: combine takes the experts' outputs in dtype, and rejects the e4m3 recv by name", async () => {
  const plan = makePlan({
    world: 2,
    experts: 4,
    topK: 2,
    hidden: 128,
    dtype: "bf16",
    quantize: "e4m3",
  });
  const inputs = makeInputs(plan, [3, 2], 5);
  using sim = new Simulator(plan);
  const d = await sim.dispatch(inputs);
  const e = await weftErrorAsync(() => sim.combine(d.handle, d.results.map((r) => r.recv)), "ys");
  assert.match(e.message, /e4m3/);
  // Identity experts in bf16: combine is the unquantized pattern's combine.
  const plain = makePlan({ world: 2, experts: 4, topK: 2, hidden: 128, dtype: "bf16" });
  using ref = new Simulator(plain);
  const dr = await ref.dispatch(inputs);
  const want = await ref.combine(dr.handle, dr.results.map((r) => r.recv));
  const got = await sim.combine(d.handle, dr.results.map((r) => r.recv));
  got.forEach((t, r) => assert.deepEqual(t.data, want[r].data));
  d.handle.close();
  dr.handle.close();
});

Deno.test("quantize: the layout counts 7392 B a row at hidden 7168 (bytes + scales), not 14 336", () => {
  const routing = [Int32Array.of(0, 5), Int32Array.of(1, 6)];
  const quantized = makePlan({
    world: 2,
    experts: 8,
    topK: 2,
    hidden: 7168,
    dtype: "bf16",
    quantize: "e4m3",
  });
  const plain = makePlan({ world: 2, experts: 8, topK: 2, hidden: 7168, dtype: "bf16" });
  const links = (p: PlanSpec) => computeLayout(p, routing).links.map((l) => [l.rows, l.bytes]);
  assert.deepEqual(links(quantized), links(plain).map(([rows]) => [rows, rows * 7392]));
  assert.deepEqual(links(plain).map(([rows, bytes]) => bytes / rows), [14336, 14336]);
});

Deno.test("property: a quantized dispatch is the plain dispatch with each received row quantized", async () => {
  await fc.assert(
    fc.asyncProperty(arbBatch, async ({ plan, tokens, seed, empty }) => {
      // Hidden sizes of one or two scale blocks; the rest of the plan as drawn.
      const H = 128 * (1 + (seed % 2));
      const plain: PlanSpec = { ...plan, hidden: H, pattern: { ...plan.pattern, hidden: H } };
      const quantized: PlanSpec = {
        ...plain,
        quantize: "e4m3",
        pattern: { ...plain.pattern, quantize: "e4m3" },
      };
      const inputs = makeInputs(plain, tokens, seed, empty);
      using a = new Simulator(plain);
      using b = new Simulator(quantized);
      const want = await a.dispatch(inputs);
      const got = await b.dispatch(inputs);
      got.results.forEach((r, d) => {
        const w = want.results[d];
        const q = quantizeRows(w.recv.data, plain.dtype, H);
        assert.deepEqual(r.recv.data, q.q);
        assert.deepEqual(r.recvScales?.data, q.scales);
        assert.deepEqual(r.srcToken, w.srcToken);
        assert.deepEqual(r.recvWeights, w.recvWeights);
      });
      want.handle.close();
      got.handle.close();
    }),
    { numRuns: 25 },
  );
});

Deno.test("quantize: pre-quantized rows ({ q, scales }) are sent as given, any scales", async () => {
  const H = 256;
  const plan = bf16E4m3({ world: 2, experts: 4, topK: 2, hidden: H });
  const inputs = makeInputs(plan, [6, 3], 9);
  // The caller's own bytes and scales (not weft's quantization: arbitrary bytes, scales 0.3…).
  const own = inputs.map((input, r) => {
    const T = input.topkIdx.length / plan.topK;
    const q = Uint8Array.from({ length: T * H }, (_, i) => (i * 37 + r * 11) & 0xff);
    const scales = Float32Array.from({ length: T * 2 }, (_, i) => 0.3 + i);
    return { ...input, x: { q, scales: new HostTensor("f32", T, 2, scales) } };
  });
  using sim = new Simulator(plan);
  const d = await sim.dispatch(own);
  for (const r of d.results) {
    for (let i = 0; i < r.recv.rows; i++) {
      const src = own[r.srcRank[i]].x;
      const t = r.srcToken[i];
      assert.deepEqual(r.recv.row(i), src.q.subarray(t * H, (t + 1) * H));
      assert.deepEqual(r.recvScales!.row(i), src.scales.data.subarray(t * 2, (t + 1) * 2));
    }
  }
  const again = await sim.redispatch(d.handle, own.map((o) => o.x));
  again.results.forEach((r, k) => assert.deepEqual(r.recv.data, d.results[k].recv.data));
  d.handle.close();
});

Deno.test("quantize: pre-quantized rows with a wrong shape, or for a plan that does not quantize, name their field", async () => {
  const H = 128;
  const plan = bf16E4m3({ world: 1, experts: 2, topK: 1, hidden: H });
  const routing = { topkIdx: Int32Array.of(0, 1), topkWeights: Float32Array.of(1, 1) };
  using sim = new Simulator(plan);
  const q = new Uint8Array(2 * H);
  await weftErrorAsync(
    () => sim.dispatch([{ ...routing, x: { q, scales: new Float32Array(3) } }]),
    "x.scales",
  );
  await weftErrorAsync(
    () =>
      sim.dispatch([{
        ...routing,
        x: { q: new Uint16Array(2 * H) as unknown as Uint8Array, scales: new Float32Array(2) },
      }]),
    "x.q",
  );
  const plain = makePlan({ world: 1, experts: 2, topK: 1, hidden: H, dtype: "bf16" });
  using sim2 = new Simulator(plain);
  const e = await weftErrorAsync(
    () => sim2.dispatch([{ ...routing, x: { q, scales: new Float32Array(2) } }]),
    "x",
  );
  assert.match(e.message, /does not quantize/);
});
