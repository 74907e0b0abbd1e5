/**
 * Test helpers: PlanSpec objects built directly from the placement compiler
 * (no DSL builder), seeded routing with `-1` slots, never-zero rows, and
 * fast-check arbitraries over plans and batches.
 */
import assert from "node:assert/strict";
import fc from "fast-check";
import type {
  BasePlacement,
  CombineOp,
  Dedupe,
  DType,
  PatternSpec,
  PlanSpec,
  Quantize,
  ReceiveOrder,
  Replication,
} from "../dsl/types.ts";
import { compilePlacement } from "../dsl/placement.ts";
import { mulberry32 } from "../lib/io/routing.ts";
import { fromF32 } from "../lib/core/dtype.ts";
import type { HostRows, RankInput } from "../lib/core/engine_api.ts";
import { WeftError } from "../dsl/errors.ts";

export interface PlanOptions {
  world?: number;
  gpusPerNode?: number;
  experts?: number;
  topK?: number;
  hidden?: number;
  dtype?: DType;
  dedupe?: Dedupe;
  receive?: ReceiveOrder;
  combine?: CombineOp;
  placement?: BasePlacement;
  replicas?: Replication;
  quantize?: Quantize;
}

/** A PlanSpec as `compile` would produce it; defaults: 2 ranks, 8 experts byDevice, top-2, hidden 4, f32. */
export function makePlan(o: PlanOptions = {}): PlanSpec {
  const world = o.world ?? 2;
  const gpusPerNode = o.gpusPerNode ?? world;
  const experts = o.experts ?? 8;
  const topK = o.topK ?? 2;
  const hidden = o.hidden ?? 4;
  const dtype = o.dtype ?? "f32";
  const dedupe = o.dedupe ?? "device";
  const receive = o.receive ?? "expert-major";
  const combine = o.combine ?? "weighted";
  const placement = o.placement ?? { kind: "byDevice" };
  const pattern: PatternSpec = {
    experts,
    placement,
    ...(o.replicas ? { replicas: o.replicas } : {}),
    topK,
    dedupe,
    receive,
    combine,
    dtype,
    ...(o.quantize ? { quantize: o.quantize } : {}),
    hidden,
  };
  return {
    pattern,
    world,
    gpusPerNode,
    nodes: world / gpusPerNode,
    experts,
    topK,
    hidden,
    dtype,
    ...(o.quantize ? { quantize: o.quantize } : {}),
    dedupe,
    receive,
    combine,
    ...compilePlacement({ placement, replicas: o.replicas, experts, world, gpusPerNode }),
  };
}

/**
 * Seeded routing: per rank `tokens[r]` tokens, each slot -1 with probability
 * `empty`, otherwise a distinct expert.
 */
export function makeRouting(
  plan: PlanSpec,
  tokens: readonly number[],
  seed: number,
  empty = 0.2,
): Int32Array[] {
  const rng = mulberry32(seed);
  const K = plan.topK;
  const E = plan.experts;
  const pool = Int32Array.from({ length: E }, (_, e) => e);
  return tokens.map((T) => {
    const idx = new Int32Array(T * K);
    for (let t = 0; t < T; t++) {
      for (let k = 0; k < K; k++) {
        if (k >= E || rng() < empty) {
          idx[t * K + k] = -1;
          continue;
        }
        const j = k + Math.floor(rng() * (E - k));
        const v = pool[j];
        pool[j] = pool[k];
        pool[k] = v;
        idx[t * K + k] = v;
      }
    }
    return idx;
  });
}

/** Never-zero values in ±[0.5, 2): no subnormals, no zeros, exact in every dtype after rounding. */
export function randomF32(n: number, seed: number): Float32Array {
  const rng = mulberry32(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = (rng() < 0.5 ? -1 : 1) * (0.5 + 1.5 * rng());
  return a;
}

/** Never-zero rows in the plan's dtype. */
export function randomRows(plan: PlanSpec, rows: number, seed: number): HostRows {
  return fromF32(randomF32(rows * plan.hidden, seed), plan.dtype);
}

/** Positive weights in [0.05, 1) for every slot (also -1 ones, which are ignored). */
export function randomWeights(n: number, seed: number): Float32Array {
  const rng = mulberry32(seed ^ 0x5bd1e995);
  return Float32Array.from({ length: n }, () => 0.05 + 0.95 * rng());
}

/** A rank's input with its routing in host arrays (what {@link makeInputs} makes). */
export interface HostInput extends RankInput {
  readonly topkIdx: Int32Array;
  readonly topkWeights: Float32Array;
}

/** The token count of a host input, from its routing. */
export const tokensOf = (plan: PlanSpec, i: HostInput): number => i.topkIdx.length / plan.topK;

/** A full batch for a plan: rows, routing and weights per rank. */
export function makeInputs(
  plan: PlanSpec,
  tokens: readonly number[],
  seed: number,
  empty = 0.2,
): HostInput[] {
  const routing = makeRouting(plan, tokens, seed, empty);
  return routing.map((topkIdx, r) => ({
    x: randomRows(plan, tokens[r], seed * 31 + r + 1),
    topkIdx,
    topkWeights: randomWeights(topkIdx.length, seed * 17 + r),
  }));
}

const divisors = (n: number): number[] =>
  Array.from({ length: n }, (_, i) => i + 1).filter((d) => n % d === 0);

/**
 * A random expert placement drawn from `rng`: `perRank` experts a rank for
 * byDevice, else `expertsFree` experts, table owners at random, and with
 * `withReplicas` (world ≥ 2) 1–3 hot experts in 2…world copies.
 */
export function randomPlacement(
  rng: () => number,
  r: {
    world: number;
    kind: string;
    perRank: number;
    expertsFree: number;
    withReplicas: boolean;
  },
): { experts: number; placement: BasePlacement; replicas: Replication | undefined } {
  const experts = r.kind === "byDevice" ? r.world * r.perRank : r.expertsFree;
  const placement: BasePlacement = r.kind === "table"
    ? {
      kind: "table",
      owners: Array.from({ length: experts }, () => Math.floor(rng() * r.world)),
    }
    : { kind: r.kind as "byDevice" | "roundRobin" };
  let replicas: Replication | undefined;
  if (r.withReplicas && r.world >= 2) {
    const hot = [
      ...new Set(
        Array.from({ length: 1 + Math.floor(rng() * 3) }, () => Math.floor(rng() * experts)),
      ),
    ];
    replicas = { experts: hot, copies: 2 + Math.floor(rng() * (r.world - 1)) };
  }
  return { experts, placement, replicas };
}

/** Random plans: world 1–8, every placement (with and without replicas), dedupe, order, op, dtype. */
export const arbPlan: fc.Arbitrary<PlanSpec> = fc
  .record({
    world: fc.integer({ min: 1, max: 8 }),
    kind: fc.constantFrom("byDevice", "roundRobin", "table"),
    perRank: fc.integer({ min: 1, max: 4 }),
    expertsFree: fc.integer({ min: 1, max: 20 }),
    topK: fc.integer({ min: 1, max: 6 }),
    hidden: fc.integer({ min: 1, max: 6 }),
    dtype: fc.constantFrom<DType>("f32", "bf16", "f16"),
    dedupe: fc.constantFrom<Dedupe>("none", "device", "node"),
    receive: fc.constantFrom<ReceiveOrder>("expert-major", "rank-major"),
    combine: fc.constantFrom<CombineOp>("weighted", "sum"),
    seed: fc.integer({ min: 0, max: 2 ** 31 - 1 }),
    withReplicas: fc.boolean(),
  })
  .map((r) => {
    const rng = mulberry32(r.seed);
    const gpns = divisors(r.world);
    const gpusPerNode = gpns[Math.floor(rng() * gpns.length)];
    const { experts, placement, replicas } = randomPlacement(rng, r);
    return makePlan({
      world: r.world,
      gpusPerNode,
      experts,
      topK: r.topK,
      hidden: r.hidden,
      dtype: r.dtype,
      dedupe: r.dedupe,
      receive: r.receive,
      combine: r.combine,
      placement,
      replicas,
    });
  });

/** A random plan plus per-rank token counts (0–50) and a routing seed. */
export const arbBatch: fc.Arbitrary<
  { plan: PlanSpec; tokens: number[]; seed: number; empty: number }
> = arbPlan.chain((plan) =>
  fc.record({
    plan: fc.constant(plan),
    tokens: fc.array(fc.integer({ min: 0, max: 50 }), {
      minLength: plan.world,
      maxLength: plan.world,
    }),
    seed: fc.integer({ min: 1, max: 2 ** 30 }),
    empty: fc.constantFrom(0, 0.15, 0.5),
  })
);

/** The same plan with another dedupe (placement tables shared). */
export function withDedupe(plan: PlanSpec, dedupe: Dedupe): PlanSpec {
  return { ...plan, dedupe, pattern: { ...plan.pattern, dedupe } };
}

/** Run `fn`, expect a WeftError (naming `field`, and `rank` when given), return it. */
export function weftError(fn: () => unknown, field?: string, rank?: number): WeftError {
  try {
    fn();
  } catch (e) {
    return checkWeft(e, field, rank);
  }
  throw new assert.AssertionError({
    message: `expected a WeftError${field ? ` on ${field}` : ""}`,
  });
}

/** The async form of {@link weftError}. */
export async function weftErrorAsync(
  fn: () => Promise<unknown>,
  field?: string,
  rank?: number,
): Promise<WeftError> {
  try {
    await fn();
  } catch (e) {
    return checkWeft(e, field, rank);
  }
  throw new assert.AssertionError({
    message: `expected a WeftError${field ? ` on ${field}` : ""}`,
  });
}

function checkWeft(e: unknown, field?: string, rank?: number): WeftError {
  assert.ok(e instanceof WeftError, `expected a WeftError, got ${e}`);
  if (field !== undefined) assert.equal(e.field, field, e.message);
  if (rank !== undefined) assert.equal(e.rank, rank, e.message);
  assert.ok(e.fix.length > 0);
  return e;
}
