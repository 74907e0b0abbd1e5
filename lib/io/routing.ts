/**
 * Routing for tests, examples and benchmarks: seeded generators of per-rank
 * `topkIdx`/`topkWeights` with the shapes real MoE routers produce, and
 * loaders for routing traces saved as JSON or NumPy `.npy`.
 *
 * Every generator is deterministic in (plan, tokens, seed, options): rank r
 * draws from its own stream seeded by (seed, r), so one rank's tokens do not
 * depend on another rank's count. Each token gets min(K, candidates) distinct
 * experts (the rest `-1`) with positive weights that sum to 1 in f64 before
 * the f32 store, sorted descending like a softmax top-k.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import { show } from "../../dsl/show.ts";

// The trace loaders live in routing_load.ts; importers keep finding them here.
export { loadRoutingJSON, loadRoutingNpy } from "./routing_load.ts";

/** One rank's routing: [T × K] expert ids (`-1` = empty slot) and weights. */
export interface RankRouting {
  /** [T × K] global expert ids, `-1` for an empty slot. */
  topkIdx: Int32Array;
  /** [T × K] routing weights (0 in empty slots). */
  topkWeights: Float32Array;
}

/** Options every generator takes. */
export interface RoutingOptions {
  /** Tokens per rank: one count for all, or one per rank. */
  readonly tokens: number | readonly number[];
  /** Seed of the generator (default 1). */
  readonly seed?: number;
}

/** The parts of a {@link PlanSpec} the generators read. */
export type RoutingPlan = Pick<
  PlanSpec,
  "world" | "gpusPerNode" | "experts" | "topK" | "slotBase" | "slotExpert"
>;

/**
 * mulberry32: a tiny, fast 32-bit PRNG, plenty for routing and test data.
 * Returns a function giving floats in [0, 1).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { mulberry32 } from "./routing.ts";
 * const a = mulberry32(7), b = mulberry32(7);
 * assert.ok(a() === b());
 * ```
 */
export function mulberry32(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 15), z | 1);
    z ^= z + Math.imul(z ^ (z >>> 7), z | 61);
    return ((z ^ (z >>> 14)) >>> 0) / 4294967296;
  };
}

/** Mix a seed with a stream number so per-rank streams are unrelated. */
function streamSeed(seed: number, stream: number): number {
  let h = (seed ^ Math.imul(stream + 1, 0x9e3779b9)) >>> 0;
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function tokenCounts(plan: RoutingPlan, tokens: number | readonly number[]): number[] {
  const counts = typeof tokens === "number"
    ? Array.from({ length: plan.world }, () => tokens)
    : [...tokens];
  if (counts.length !== plan.world || counts.some((t) => !Number.isInteger(t) || t < 0)) {
    throw new WeftError({
      field: "tokens",
      problem: `must be an integer ≥ 0 or one per rank (${plan.world}), got ${show(tokens)}`,
      fix: "pass a token count per rank",
    });
  }
  return counts;
}

/** Seeded permutation of 0…n-1 (Fisher–Yates). */
function permutation(n: number, rng: () => number): Int32Array {
  const p = new Int32Array(n);
  for (let i = 0; i < n; i++) p[i] = i;
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    const v = p[i];
    p[i] = p[j];
    p[j] = v;
  }
  return p;
}

/** Softmax-like weights for n slots from `offset`: positive, descending, Σ = 1. */
function writeWeights(w: Float32Array, offset: number, n: number, rng: () => number): void {
  const logits = new Float64Array(n);
  for (let k = 0; k < n; k++) logits[k] = 3 * rng();
  logits.sort().reverse();
  let sum = 0;
  for (let k = 0; k < n; k++) sum += logits[k] = Math.exp(logits[k]);
  for (let k = 0; k < n; k++) w[offset + k] = logits[k] / sum;
}

/**
 * Shared driver: `pick(rng, r, t, out, offset)` writes a token's distinct
 * experts and returns how many; the rest of its K slots stay -1.
 */
function generate(
  plan: RoutingPlan,
  opts: RoutingOptions,
  salt: number,
  pick: (rng: () => number, rank: number, out: Int32Array, offset: number) => number,
): RankRouting[] {
  const K = plan.topK;
  return tokenCounts(plan, opts.tokens).map((T, r) => {
    const rng = mulberry32(streamSeed(streamSeed(opts.seed ?? 1, salt), r));
    const topkIdx = new Int32Array(T * K).fill(-1);
    const topkWeights = new Float32Array(T * K);
    for (let t = 0; t < T; t++) {
      const n = pick(rng, r, topkIdx, t * K);
      writeWeights(topkWeights, t * K, n, rng);
    }
    return { topkIdx, topkWeights };
  });
}

/**
 * Draw min(K, |pool|) distinct entries of `pool` uniformly: a partial
 * Fisher–Yates on a scratch copy (any permutation of the pool is a fine start,
 * so the scratch is never reset).
 */
function uniformPicker(pool: Int32Array, K: number) {
  const scratch = pool.slice();
  return (rng: () => number, out: Int32Array, offset: number): number => {
    const n = Math.min(K, scratch.length);
    for (let k = 0; k < n; k++) {
      const j = k + Math.floor(rng() * (scratch.length - k));
      const v = scratch[j];
      scratch[j] = scratch[k];
      scratch[k] = v;
      out[offset + k] = v;
    }
    return n;
  };
}

/**
 * Weighted draws without replacement: rejection on a CDF (fast when K ≪ E),
 * falling back to an exact draw over the remaining experts if a token keeps
 * hitting experts it already has (steep skew, K close to E).
 */
function weightedPicker(prob: Float64Array, K: number) {
  const E = prob.length;
  const cdf = new Float64Array(E);
  let acc = 0;
  for (let e = 0; e < E; e++) cdf[e] = acc += prob[e];
  const total = acc;
  const stamp = new Int32Array(E);
  let token = 0;
  return (rng: () => number, out: Int32Array, offset: number): number => {
    token++;
    const n = Math.min(K, E);
    let got = 0;
    for (let tries = 0; got < n && tries < 16 * K; tries++) {
      const u = rng() * total;
      let lo = 0;
      let hi = E - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (cdf[mid] > u) hi = mid;
        else lo = mid + 1;
      }
      if (stamp[lo] === token) continue;
      stamp[lo] = token;
      out[offset + got++] = lo;
    }
    while (got < n) {
      let rest = 0;
      for (let e = 0; e < E; e++) if (stamp[e] !== token) rest += prob[e];
      let u = rng() * rest;
      let e = 0;
      for (; e < E - 1; e++) {
        if (stamp[e] === token) continue;
        u -= prob[e];
        if (u < 0) break;
      }
      while (stamp[e] === token) e--; // u landed past the last free expert by rounding
      stamp[e] = token;
      out[offset + got++] = e;
    }
    return n;
  };
}

function allExperts(E: number): Int32Array {
  return Int32Array.from({ length: E }, (_, e) => e);
}

/** Distinct experts with a slot on one of the ranks [first, first+count). */
function expertsOn(plan: RoutingPlan, first: number, count: number): Int32Array {
  const has = new Uint8Array(plan.experts);
  for (let s = plan.slotBase[first]; s < plan.slotBase[first + count]; s++) {
    has[plan.slotExpert[s]] = 1;
  }
  const out: number[] = [];
  has.forEach((v, e) => v && out.push(e));
  return Int32Array.from(out);
}

/**
 * Every token picks K distinct experts uniformly at random.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { uniform } from "./routing.ts";
 * const plan = { world: 2, gpusPerNode: 2, experts: 8, topK: 2, slotBase: Int32Array.of(0, 4, 8), slotExpert: Int32Array.of(0, 1, 2, 3, 4, 5, 6, 7) };
 * const [r0] = uniform(plan, { tokens: 3, seed: 5 });
 * assert.ok(r0.topkIdx.length === 6 && r0.topkIdx[0] !== r0.topkIdx[1]);
 * ```
 */
export function uniform(plan: RoutingPlan, opts: RoutingOptions): RankRouting[] {
  const pickers = new Map<number, ReturnType<typeof uniformPicker>>();
  return generate(plan, opts, 1, (rng, r, out, off) => {
    if (!pickers.has(r)) pickers.set(r, uniformPicker(allExperts(plan.experts), plan.topK));
    return pickers.get(r)!(rng, out, off);
  });
}

/**
 * Skewed popularity: over a seeded permutation π of the experts (the same on
 * every rank), expert π[i] is chosen with probability ∝ 1/(i+1)^s.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { zipf } from "./routing.ts";
 * const plan = { world: 1, gpusPerNode: 1, experts: 16, topK: 4, slotBase: Int32Array.of(0, 16), slotExpert: Int32Array.from({ length: 16 }, (_, e) => e) };
 * const [r] = zipf(plan, { tokens: 100, seed: 1, s: 1.2 });
 * assert.ok(r.topkIdx.every((e) => e >= 0 && e < 16));
 * ```
 */
export function zipf(
  plan: RoutingPlan,
  opts: RoutingOptions & { readonly s?: number },
): RankRouting[] {
  const s = opts.s ?? 1;
  if (!(s >= 0) || !Number.isFinite(s)) {
    throw new WeftError({
      field: "s",
      problem: `must be a finite number ≥ 0, got ${show(s)}`,
      fix: "use e.g. s = 1",
    });
  }
  const perm = permutation(plan.experts, mulberry32(streamSeed(opts.seed ?? 1, 0x2f)));
  const prob = new Float64Array(plan.experts);
  for (let i = 0; i < plan.experts; i++) prob[perm[i]] = 1 / (i + 1) ** s;
  const pick = weightedPicker(prob, plan.topK);
  return generate(plan, opts, 2, (rng, _r, out, off) => pick(rng, out, off));
}

/**
 * Every expert of a token is on the token's own GPU: drawn uniformly from the
 * experts (base or replica) the rank holds. A rank holding fewer than K
 * experts fills the remaining slots with -1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { deviceLocal } from "./routing.ts";
 * const plan = { world: 2, gpusPerNode: 2, experts: 8, topK: 2, slotBase: Int32Array.of(0, 4, 8), slotExpert: Int32Array.of(0, 1, 2, 3, 4, 5, 6, 7) };
 * const [, r1] = deviceLocal(plan, { tokens: 4 });
 * assert.ok(r1.topkIdx.every((e) => e >= 4));
 * ```
 */
export function deviceLocal(plan: RoutingPlan, opts: RoutingOptions): RankRouting[] {
  const pickers = new Map<number, ReturnType<typeof uniformPicker>>();
  return generate(plan, opts, 3, (rng, r, out, off) => {
    if (!pickers.has(r)) pickers.set(r, uniformPicker(expertsOn(plan, r, 1), plan.topK));
    return pickers.get(r)!(rng, out, off);
  });
}

/**
 * Every expert of a token is on the token's own node (drawn uniformly from
 * the experts held by any rank of the node); the replica rule then keeps it
 * there. Slots beyond the node's expert count are -1.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { nodeLocal } from "./routing.ts";
 * const plan = { world: 4, gpusPerNode: 2, experts: 8, topK: 2, slotBase: Int32Array.of(0, 2, 4, 6, 8), slotExpert: Int32Array.of(0, 1, 2, 3, 4, 5, 6, 7) };
 * const routing = nodeLocal(plan, { tokens: 4 });
 * assert.ok(routing[3].topkIdx.every((e) => e >= 4));
 * ```
 */
export function nodeLocal(plan: RoutingPlan, opts: RoutingOptions): RankRouting[] {
  const gpn = plan.gpusPerNode;
  const pickers = new Map<number, ReturnType<typeof uniformPicker>>();
  return generate(plan, opts, 4, (rng, r, out, off) => {
    if (!pickers.has(r)) {
      pickers.set(r, uniformPicker(expertsOn(plan, r - (r % gpn), gpn), plan.topK));
    }
    return pickers.get(r)!(rng, out, off);
  });
}

/**
 * Trace-like load: a few hot experts (a seeded choice, the same on every rank)
 * take `hotShare` of all draws, the rest is uniform over all experts.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hotMix } from "./routing.ts";
 * const plan = { world: 1, gpusPerNode: 1, experts: 32, topK: 4, slotBase: Int32Array.of(0, 32), slotExpert: Int32Array.from({ length: 32 }, (_, e) => e) };
 * const [r] = hotMix(plan, { tokens: 50, hot: 2, hotShare: 0.5 });
 * assert.ok(r.topkWeights.every((w) => w > 0));
 * ```
 */
export function hotMix(
  plan: RoutingPlan,
  opts: RoutingOptions & { readonly hot?: number; readonly hotShare?: number },
): RankRouting[] {
  const E = plan.experts;
  const hot = opts.hot ?? Math.max(1, Math.min(E, Math.ceil(E / 32)));
  const share = opts.hotShare ?? 0.5;
  if (!Number.isInteger(hot) || hot < 1 || hot > E) {
    throw new WeftError({
      field: "hot",
      problem: `must be an integer in [1, ${E}], got ${show(hot)}`,
      fix: "pick a few hot experts",
    });
  }
  if (!(share >= 0 && share < 1)) {
    throw new WeftError({
      field: "hotShare",
      problem: `must be in [0, 1), got ${show(share)}`,
      fix: "use e.g. 0.5",
    });
  }
  // Per-expert probability: the hot ones share `share`, every expert shares the rest.
  const perm = permutation(E, mulberry32(streamSeed(opts.seed ?? 1, 0x40)));
  const prob = new Float64Array(E).fill((1 - share) / E);
  for (let i = 0; i < hot; i++) prob[perm[i]] += share / hot;
  const pick = weightedPicker(prob, plan.topK);
  return generate(plan, opts, 5, (rng, _r, out, off) => pick(rng, out, off));
}
