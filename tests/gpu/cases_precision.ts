/**
 * GPU cases for combine's precision rule (native/src/combine.cu): with a
 * weighted combine of 16-bit rows and the wire in the row dtype, a partial
 * that holds one term crosses as the raw y row and is weighted at its home in
 * f32. So whenever no two terms of a token are summed before its home (dedupe
 * `none`; dedupe `device` where each device holds at most one of the token's
 * pairs; world 1, where the home's one partial is the whole sum), every output
 * element is the ordered f32 sum of fround(w·y) rounded once to the dtype.
 *
 * Checks, per element of this rank's combine output against the exact sum
 * Σ w·y computed in f64 from the same inputs:
 *   |out − exact| ≤ ½ ulp_dtype(max(|exact|, |out|)) + (K+1)·2⁻²⁴·Σ|w·y|
 * (one rounding to the dtype, plus the f32 arithmetic's own error); the
 * worst ratio of the two sides is the outcome's maxErr (≤ 1 passes). Before
 * the rule, w·y was rounded to the dtype on the wire first, which puts
 * dedupe `none` several times over this bound. Cases whose home order equals
 * the Simulator's (`bitwise`) must also equal lib/sim/simulator.ts bit for
 * bit. Single-node plans only: the hierarchical engine (several nodes) has
 * its own combine.
 *
 * Run by tests/gpu/worker.ts: every rank runs every case of
 * `precisionCases(world, gpusPerNode)` through `runPrecisionCase`, and the
 * Communicator's heap must be at least `precisionHeapBytes(...)`.
 *
 * @module
 */
import type { DType, PatternSpec, PlanSpec } from "../../dsl/types.ts";
import { Plan } from "../../dsl/mod.ts";
import type { DispatchResult, HostRows, RankInput } from "../../lib/core/engine_api.ts";
import { fromF32, toF32 } from "../../lib/core/dtype.ts";
import { mulberry32 } from "../../lib/io/routing.ts";
import { Simulator } from "../../lib/sim/simulator.ts";
import type { Communicator } from "../../lib/dist/communicator.ts";
import { DeviceTensor } from "../../lib/gpu/device_tensor.ts";
import { Engine } from "../../lib/gpu/engine.ts";
import { bits, firstDiff } from "./checks.ts";

/** How a precision case routes tokens. */
export type PrecisionRouting =
  /** K distinct experts per token, uniformly; ~20% of slots -1. */
  | "uniform"
  /**
   * One expert on each of K distinct ranks per token, k ascending with the
   * rank: every partial holds one term and the home's order (ascending k,
   * or ascending rank) is the Simulator's.
   */
  | "distinct-ranks";

/** One precision case. */
export interface PrecisionCase {
  readonly name: string;
  readonly pattern: PatternSpec & { readonly experts: number; readonly hidden: number };
  readonly tokens: number;
  readonly routing: PrecisionRouting;
  readonly seed: number;
  readonly combineWire?: "dtype" | "f32";
  /** The output must equal the Simulator's bit for bit. */
  readonly bitwise: boolean;
}

/** What one rank saw for one case (the shape of cases.ts's CaseOutcome). */
export interface PrecisionOutcome {
  readonly name: string;
  readonly pass: boolean;
  /** Worst |out − exact| / bound over this rank's elements (≤ 1 passes). */
  readonly maxErr: number;
  readonly detail: string;
}

const weighted = { receive: "expert-major", combine: "weighted" } as const;

/**
 * The precision cases for a world of `world` ranks in nodes of
 * `gpusPerNode`: none on several nodes (the hierarchical combine is not
 * under this rule).
 *
 * @example
 * ```ts
 * import { precisionCases } from "./cases_precision.ts";
 * console.assert(precisionCases(1, 1).length > 0);
 * console.assert(precisionCases(8, 4).length === 0);
 * ```
 */
export function precisionCases(world: number, gpusPerNode: number): PrecisionCase[] {
  if (gpusPerNode !== world) return [];
  const k = Math.min(8, world);
  const pattern = (
    dedupe: "none" | "device",
    dtype: DType,
    topK: number,
    hidden: number,
  ): PrecisionCase["pattern"] => ({
    ...weighted,
    dedupe,
    dtype,
    topK,
    hidden,
    experts: 64,
    placement: { kind: "byDevice" },
  });
  const list: PrecisionCase[] = [
    {
      name: "precision-none-bf16-uniform",
      pattern: pattern("none", "bf16", 8, 4096),
      tokens: 200,
      routing: "uniform",
      seed: 101,
      // Bitwise only where the home's ascending-k order is the Simulator's.
      bitwise: world === 1,
    },
    {
      name: "precision-none-f16-uniform",
      pattern: pattern("none", "f16", 6, 2048),
      tokens: 150,
      routing: "uniform",
      seed: 102,
      bitwise: world === 1,
    },
    {
      name: "precision-device-bf16-f32-wire",
      pattern: pattern("device", "bf16", 8, 2048),
      tokens: 150,
      routing: "uniform",
      seed: 105,
      combineWire: "f32",
      // f32 partials, home sum in ascending rank: the Simulator's sum.
      bitwise: true,
    },
  ];
  if (world === 1) {
    // One partial per token, the whole f32 sum rounded once (on the wire).
    list.push({
      name: "precision-world1-device-bf16",
      pattern: pattern("device", "bf16", 8, 4096),
      tokens: 300,
      routing: "uniform",
      seed: 103,
      bitwise: true,
    });
  } else {
    list.push(
      {
        name: "precision-none-bf16-distinct-ranks",
        pattern: pattern("none", "bf16", k, 4096),
        tokens: 200,
        routing: "distinct-ranks",
        seed: 104,
        bitwise: true,
      },
      {
        // K = world (up to 8): partials land by source on the home.
        name: "precision-device-bf16-distinct-ranks",
        pattern: pattern("device", "bf16", k, 4096),
        tokens: 200,
        routing: "distinct-ranks",
        seed: 106,
        bitwise: true,
      },
    );
    if (world > 2) {
      list.push({
        // K < world: partials land at [token][part].
        name: "precision-device-f16-distinct-ranks-k2",
        pattern: pattern("device", "f16", 2, 2048),
        tokens: 200,
        routing: "distinct-ranks",
        seed: 107,
        bitwise: true,
      });
    }
  }
  return list;
}

/** The plan of a case. */
export function precisionPlan(c: PrecisionCase, world: number, gpusPerNode: number): PlanSpec {
  return Plan.compile(c.pattern, { world, gpusPerNode });
}

/** The heap every precision case fits in, for Communicator.fromEnv's heapBytes. */
export function precisionHeapBytes(world: number, gpusPerNode: number, rank: number): number {
  return Math.max(
    0,
    ...precisionCases(world, gpusPerNode).map((c) =>
      Engine.heapBytes(precisionPlan(c, world, gpusPerNode), {
        maxTokens: c.tokens,
        rank,
        ...(c.combineWire !== undefined ? { combineWire: c.combineWire } : {}),
      })
    ),
  );
}

/** The rank holding each expert (its first replica). */
function owners(plan: PlanSpec): Int32Array {
  const out = new Int32Array(plan.experts);
  for (let e = 0; e < plan.experts; e++) {
    const slot = plan.replicaSlots[plan.replicaStart[e]];
    let r = 0;
    while (plan.slotBase[r + 1] <= slot) r++;
    out[e] = r;
  }
  return out;
}

/** Random nonzero values ±[0.5, 2), rounded to the dtype. */
function randomRows(rng: () => number, n: number, dtype: DType): HostRows {
  const f = new Float32Array(n);
  for (let i = 0; i < n; i++) f[i] = (rng() < 0.5 ? -1 : 1) * (0.5 + 1.5 * rng());
  return fromF32(f, dtype);
}

/** Every rank's batch of a case, from its seed (each rank builds them all). */
export function precisionInputs(plan: PlanSpec, c: PrecisionCase): RankInput[] {
  const { topK: K, experts: E, hidden: H, world } = plan;
  const own = owners(plan);
  const byRank = Array.from(
    { length: world },
    (_, r) => [...own.keys()].filter((e) => own[e] === r),
  );
  const ranks = byRank.flatMap((es, r) => (es.length > 0 ? [r] : []));
  return Array.from({ length: world }, (_, r) => {
    const rng = mulberry32(c.seed * 7919 + r * 104_729);
    const topkIdx = new Int32Array(c.tokens * K).fill(-1);
    const topkWeights = new Float32Array(c.tokens * K);
    const pool = Array.from({ length: E }, (_, e) => e);
    for (let t = 0; t < c.tokens; t++) {
      if (c.routing === "uniform") {
        for (let k = 0; k < K; k++) {
          const j = k + Math.floor(rng() * (E - k));
          [pool[k], pool[j]] = [pool[j], pool[k]];
          topkIdx[t * K + k] = rng() < 0.2 ? -1 : pool[k];
        }
      } else {
        const picked = ranks.slice();
        for (let i = picked.length - 1; i > 0; i--) {
          const j = Math.floor(rng() * (i + 1));
          [picked[i], picked[j]] = [picked[j], picked[i]];
        }
        const chosen = picked.slice(0, Math.min(K, picked.length)).sort((a, b) => a - b);
        chosen.forEach((d, k) => {
          topkIdx[t * K + k] = byRank[d][Math.floor(rng() * byRank[d].length)];
        });
      }
      for (let k = 0; k < K; k++) topkWeights[t * K + k] = 0.05 + 0.95 * rng();
    }
    return { x: randomRows(rng, c.tokens * H, plan.dtype), topkIdx, topkWeights };
  });
}

/** Half an ulp of `dtype` at magnitude v (≥ 0): the largest error of one rounding there. */
export function halfUlp(v: number, dtype: DType): number {
  const [precision, minExp] = dtype === "bf16"
    ? [8, -126]
    : dtype === "f16"
    ? [11, -14]
    : [24, -126];
  let e = v > 0 ? Math.floor(Math.log2(v)) : minExp;
  if (2 ** e > v && e > minExp) e--;
  if (2 ** (e + 1) <= v) e++;
  return 2 ** (Math.max(e, minExp) - precision);
}

/**
 * The exact combine of `rank`'s tokens (Σ w·y in f64; products of an f32
 * weight and a 16-bit value are exact there) and Σ|w·y| per element.
 */
function exactCombine(
  plan: PlanSpec,
  rank: number,
  tokens: number,
  oracle: readonly DispatchResult[],
  ys: readonly HostRows[],
): { exact: Float64Array; abs: Float64Array } {
  const H = plan.hidden;
  const exact = new Float64Array(tokens * H);
  const abs = new Float64Array(tokens * H);
  oracle.forEach((res, d) => {
    const y = toF32(ys[d], plan.dtype);
    for (let i = 0; i < res.srcRank.length; i++) {
      if (res.srcRank[i] !== rank) continue;
      const w = res.recvWeights[i];
      const o = res.srcToken[i] * H;
      for (let h = 0; h < H; h++) {
        const p = w * y[i * H + h];
        exact[o + h] += p;
        abs[o + h] += Math.abs(p);
      }
    }
  });
  return { exact, abs };
}

/** Worst ratio of |got − exact| to the one-rounding bound, and the first element over it. */
export function roundingRatio(
  got: Float32Array,
  exact: Float64Array,
  abs: Float64Array,
  dtype: DType,
  topK: number,
): { worst: number; problem: string } {
  let worst = 0;
  let problem = "";
  for (let i = 0; i < got.length; i++) {
    const err = Math.abs(got[i] - exact[i]);
    const bound = halfUlp(Math.max(Math.abs(exact[i]), Math.abs(got[i])), dtype) +
      (topK + 1) * 2 ** -24 * abs[i];
    const ratio = err === 0 ? 0 : Number.isNaN(err) ? Infinity : err / bound;
    if (ratio > 1 && problem === "") {
      problem = `element ${i}: got ${got[i]}, exact ${exact[i]}, ${ratio.toFixed(3)}× the bound`;
    }
    if (ratio > worst) worst = ratio;
  }
  return { worst, problem };
}

/** Runs one precision case on this rank (collective: every rank runs it). */
export async function runPrecisionCase(
  comm: Communicator,
  c: PrecisionCase,
  gpusPerNode: number,
): Promise<PrecisionOutcome> {
  const rank = comm.rank;
  const plan = precisionPlan(c, comm.world, gpusPerNode);
  const inputs = precisionInputs(plan, c);
  using sim = new Simulator(plan);
  const oracle = await sim.dispatch(inputs);
  using engine = await Engine.create(plan, comm, {
    maxTokens: c.tokens,
    ...(c.combineWire !== undefined ? { combineWire: c.combineWire } : {}),
  });
  const temporaries: DeviceTensor[] = [];
  const problems: string[] = [];
  try {
    const { handle } = await engine.dispatch([inputs[rank]]);
    const recvRows = oracle.results.map((r) => r.recv.rows);
    const ys = recvRows.map((rows, d) =>
      randomRows(mulberry32(c.seed * 31 + d * 7 + 5), rows * plan.hidden, plan.dtype)
    );
    const outs = [0, 1].map(() => {
      const out = DeviceTensor.alloc(engine.device, plan.dtype, c.tokens, plan.hidden);
      temporaries.push(out);
      out.poison();
      return out;
    });
    for (const out of outs) await engine.combine(handle, [ys[rank]], { out: [out] });
    const gotRows = (await outs[0].read()) as HostRows;
    const again = firstDiff(bits(gotRows), bits((await outs[1].read()) as HostRows));
    if (again >= 0) problems.push(`combine is not deterministic: runs differ at element ${again}`);
    handle.close();

    const { exact, abs } = exactCombine(plan, rank, c.tokens, oracle.results, ys);
    const got = toF32(gotRows, plan.dtype);
    const { worst, problem } = roundingRatio(got, exact, abs, plan.dtype, plan.topK);
    if (problem) problems.push(`beyond one rounding of the exact sum: ${problem}`);

    const simOut = (await (await sim.combine(oracle.handle, ys))[rank].read()) as HostRows;
    if (c.bitwise) {
      const diff = firstDiff(bits(gotRows), bits(simOut));
      if (diff >= 0) {
        const want = toF32(simOut, plan.dtype);
        problems.push(
          `differs from the Simulator at element ${diff}: ${got[diff]} vs ${want[diff]}`,
        );
      }
    }
    oracle.handle.close();
    return {
      name: c.name,
      pass: problems.length === 0,
      maxErr: worst,
      detail: problems.join("; "),
    };
  } finally {
    for (const t of temporaries) t.close();
  }
}
