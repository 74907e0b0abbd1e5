/**
 * What a GPU test case is and the data it runs on: the case type, the
 * pattern builder every case list uses, and each rank's inputs and expert
 * outputs regenerated from the case's seed (so every rank can run the CPU
 * Simulator over the whole world by itself).
 *
 * @module
 */
import type { DType, PatternSpec, PlanSpec } from "../../dsl/types.ts";
import { Plan } from "../../dsl/mod.ts";
import type { HostRows, RankInput, RankRouting } from "../../lib/core/engine_api.ts";
import { fromF32 } from "../../lib/core/dtype.ts";
import { quantizeRows } from "../../lib/core/fp8.ts";
import { mulberry32 } from "../../lib/io/routing.ts";

/** How a case routes tokens to experts. */
export type Routing =
  /** K distinct experts per token, uniformly. */
  | "uniform"
  /** Uniform, then ~30% of slots -1 and every 5th token with no expert at all. */
  | "empty-slots"
  /** Every token to the same expert in slot 0, the other slots -1. */
  | "one-expert";

/** One test case. */
export interface GpuCase {
  readonly name: string;
  /** A complete pattern: expert count and hidden size included. */
  readonly pattern: PatternSpec & { readonly experts: number; readonly hidden: number };
  /** Tokens of rank r: tokens[r mod length]. */
  readonly tokens: readonly number[];
  readonly routing: Routing;
  readonly seed: number;
  readonly maxTokens?: number;
  readonly combineWire?: "dtype" | "f32";
  /** Pass x and y as DeviceTensors instead of host arrays. */
  readonly onDevice?: boolean;
  /** Write x in place into the engine's heap (Engine.inputRows): no staging copy. */
  readonly inPlace?: boolean;
  /**
   * Pass each rank's routing as tensors on its GPU (topkIdx an i32
   * DeviceTensor, topkWeights an f32 one), as a router on the GPU leaves
   * it: dispatch and layout must read them where they are. With `failure:
   * "bad-expert"`, the bad id is in the device tensor too.
   */
  readonly routingOnDevice?: boolean;
  /**
   * Pass x pre-quantized ({ q, scales }, quantizing patterns only), with
   * scales that are not powers of two: dispatch must move them bit for bit.
   */
  readonly preQuantized?: boolean;
  /**
   * A batch that must fail on every rank, leaving earlier outputs untouched
   * and the engine usable: an out-of-range expert id on the last rank, or
   * more tokens than maxTokens on rank 0.
   */
  readonly failure?: "bad-expert" | "over-capacity" | "bad-combine";
  /**
   * Combine must equal the Simulator's bit for bit, not only within
   * rounding (the hierarchical protocol with `combineWire: "f32"`).
   */
  readonly combineBitwise?: boolean;
  /** A failure case whose WeftError must name the bad rank on every rank. */
  readonly nameBadRank?: boolean;
  /**
   * The engine may refuse the plan in Engine.create with a WeftError naming
   * this field (e.g. dedupe `device` across nodes); the case then checks
   * that error instead. If it accepts the plan, every check runs.
   */
  readonly mayReject?: "dedupe";
}

/** One rank's input with its routing in host arrays, as the cases generate it. */
export type HostInput = RankInput & RankRouting;

/** What one rank saw for one case. */
export interface CaseOutcome {
  readonly name: string;
  readonly pass: boolean;
  /** Largest combine error relative to Σ|w·y| of the element (0 when exact). */
  readonly maxErr: number;
  readonly detail: string;
}

/** A case's complete pattern. */
export type CasePattern = GpuCase["pattern"];

/**
 * A complete pattern from the fields that differ: by default dedupe
 * `device`, expert-major receive, weighted combine, byDevice placement,
 * top-8, bf16.
 *
 * @example
 * ```ts
 * import { pattern } from "./case_data.ts";
 * const p = pattern({ experts: 64, hidden: 1024, dtype: "f32" });
 * console.assert(p.topK === 8 && p.dedupe === "device" && p.dtype === "f32");
 * ```
 */
export function pattern(
  fields: Partial<PatternSpec> & { readonly experts: number; readonly hidden: number },
): CasePattern {
  return {
    dedupe: "device",
    receive: "expert-major",
    combine: "weighted",
    placement: { kind: "byDevice" },
    topK: 8,
    dtype: "bf16",
    ...fields,
  } as CasePattern;
}

/**
 * The plan of a case: the one adapter between these tests and the DSL, so a
 * change in the builder touches only this function.
 */
export function planFor(c: GpuCase, world: number, gpusPerNode: number): PlanSpec {
  return Plan.compile(c.pattern, { world, gpusPerNode });
}

/** Largest token count any rank passes in a case (the engine's maxTokens by default). */
export function caseMaxTokens(c: GpuCase, world: number): number {
  if (c.maxTokens !== undefined) return c.maxTokens;
  return Math.max(1, ...Array.from({ length: world }, (_, r) => tokensOf(c, r)));
}

/** Tokens of rank `rank` in a case. */
export function tokensOf(c: GpuCase, rank: number): number {
  return c.tokens[rank % c.tokens.length];
}

/**
 * Random nonzero values in ±[0.5, 2), rounded to `dtype`; with `spread`, each
 * run of 128 values scaled by its own 2^[-20, 20] (so block scales differ).
 */
export function randomRows(rng: () => number, n: number, dtype: DType, spread = false): HostRows {
  const f = new Float32Array(n);
  let scale = 1;
  for (let i = 0; i < n; i++) {
    if (spread && i % 128 === 0) scale = 2 ** (Math.floor(rng() * 41) - 20);
    f[i] = (rng() < 0.5 ? -1 : 1) * (0.5 + 1.5 * rng()) * scale;
  }
  return fromF32(f, dtype);
}

/** One rank's input for `tokens` tokens, from the case's seed. */
export function rankInput(plan: PlanSpec, c: GpuCase, rank: number, tokens: number): HostInput {
  const rng = mulberry32(c.seed * 7919 + rank * 104_729 + tokens);
  const { topK: K, experts: E, hidden: H } = plan;
  const topkIdx = new Int32Array(tokens * K).fill(-1);
  const topkWeights = new Float32Array(tokens * K);
  const pool = Array.from({ length: E }, (_, e) => e);
  for (let t = 0; t < tokens; t++) {
    if (c.routing === "one-expert") {
      topkIdx[t * K] = Math.floor(E * 0.78);
    } else {
      // Partial Fisher-Yates: K distinct experts.
      for (let k = 0; k < Math.min(K, E); k++) {
        const j = k + Math.floor(rng() * (E - k));
        [pool[k], pool[j]] = [pool[j], pool[k]];
        topkIdx[t * K + k] = pool[k];
      }
      if (c.routing === "empty-slots") {
        for (let k = 0; k < K; k++) if (t % 5 === 4 || rng() < 0.3) topkIdx[t * K + k] = -1;
      }
    }
    for (let k = 0; k < K; k++) topkWeights[t * K + k] = 0.05 + 0.95 * rng();
  }
  return {
    x: randomRows(rng, tokens * H, plan.dtype, plan.quantize !== undefined),
    topkIdx,
    topkWeights,
  };
}

/**
 * Every rank's input of a case's (good) batch; `tokensFor` gives rank r's
 * token count (the case's by default).
 */
export function caseInputs(
  plan: PlanSpec,
  c: GpuCase,
  tokensFor: (rank: number) => number = (r) => tokensOf(c, r),
): HostInput[] {
  const inputs = Array.from(
    { length: plan.world },
    (_, r) => rankInput(plan, c, r, tokensFor(r)),
  );
  if (!c.preQuantized) return inputs;
  // The caller's own quantization: weft's bytes, scales times 1.37 (no longer
  // powers of two), so only a bitwise move reproduces them.
  return inputs.map((input) => {
    const { q, scales } = quantizeRows(input.x as HostRows, plan.dtype, plan.hidden);
    return { ...input, x: { q, scales: scales.map((s) => s * 1.37) } };
  });
}

/** The bad batch of a failure case: the good one with one rank's input spoiled. */
export function failingInputs(
  plan: PlanSpec,
  c: GpuCase,
  good: readonly HostInput[],
): HostInput[] {
  const bad = [...good];
  if (c.failure === "bad-expert") {
    const r = plan.world - 1;
    const topkIdx = good[r].topkIdx.slice();
    const tokens = topkIdx.length / plan.topK;
    if (tokens === 0) return failingInputs(plan, { ...c, failure: "over-capacity" }, good);
    topkIdx[0] = plan.experts + 7;
    bad[r] = { ...good[r], topkIdx };
  } else {
    bad[0] = rankInput(plan, c, 0, caseMaxTokens(c, plan.world) + 1);
  }
  return bad;
}

/** Every rank's expert outputs y for a dispatch with these receive counts. */
export function caseYs(plan: PlanSpec, c: GpuCase, recvRows: readonly number[]): HostRows[] {
  return recvRows.map((rows, r) =>
    randomRows(mulberry32(c.seed * 31 + r * 7 + 5), rows * plan.hidden, plan.dtype)
  );
}
