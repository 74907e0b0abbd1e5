/**
 * Routing for the explorer, by name: lib/io/routing.ts's generators
 * (uniform, zipf, hotmix, local, nodelocal), `onenode` (FUSCO's "single-node
 * routed": each token's K experts all on one node, drawn uniformly over the
 * nodes; defined here), or a trace file (.json / .npy) through the loaders.
 * Token counts may differ per rank (`tokenSkew`), which is what moves the
 * cross-node send volumes the balancer evens out.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import {
  deviceLocal,
  hotMix,
  loadRoutingJSON,
  loadRoutingNpy,
  mulberry32,
  nodeLocal,
  type RankRouting,
  uniform,
  zipf,
} from "../io/routing.ts";

/** The generator names. */
export const ROUTINGS = ["uniform", "zipf", "hotmix", "local", "nodelocal", "onenode"] as const;

/** What to route. */
export interface RoutingSpec {
  /** A generator name or a .json / .npy path. */
  readonly name: string;
  /** Tokens per rank (one for all, or one per rank). */
  readonly tokens: number | readonly number[];
  /** Seed (default 1). */
  readonly seed?: number;
  /** Zipf exponent (default 1). */
  readonly s?: number;
  /** hotmix: hot experts (default E/32). */
  readonly hot?: number;
  /** hotmix: share of draws the hot experts take (default 0.5). */
  readonly hotShare?: number;
  /**
   * Spread of token counts: rank r gets round(T·(1 + skew·u_r)), u_r uniform
   * in [-1, 1] from the seed (default 0: equal counts).
   */
  readonly tokenSkew?: number;
}

/** Token counts per rank after the skew. */
export function tokenCounts(world: number, spec: RoutingSpec): number[] {
  if (typeof spec.tokens !== "number") return [...spec.tokens];
  const skew = spec.tokenSkew ?? 0;
  if (!(skew >= 0 && skew <= 1)) {
    throw new WeftError({
      field: "--token-skew",
      problem: `must be in [0, 1], got ${skew}`,
      fix: "use e.g. 0.5",
    });
  }
  const rng = mulberry32(((spec.seed ?? 1) * 2654435761) >>> 0);
  const T = spec.tokens;
  return Array.from({ length: world }, () => Math.round(T * (1 + skew * (2 * rng() - 1))));
}

/** Each token's K experts uniformly from one node, the node uniform over all nodes. */
function oneNode(plan: PlanSpec, tokens: number[], seed: number): RankRouting[] {
  const gpn = plan.gpusPerNode;
  const N = plan.world / gpn;
  const K = plan.topK;
  // Base experts per node (the slot tables: replicas count where they sit).
  const pools = Array.from({ length: N }, (_, m) => {
    const has = new Set<number>();
    for (let s = plan.slotBase[m * gpn]; s < plan.slotBase[(m + 1) * gpn]; s++) {
      has.add(plan.slotExpert[s]);
    }
    return Int32Array.from([...has].sort((a, b) => a - b));
  });
  return tokens.map((T, r) => {
    const rng = mulberry32((seed * 0x9e3779b1 + r * 0x85ebca6b + 0x7f4a7c15) >>> 0);
    const topkIdx = new Int32Array(T * K).fill(-1);
    const topkWeights = new Float32Array(T * K);
    for (let t = 0; t < T; t++) {
      const pool = pools[Math.floor(rng() * N)].slice();
      const n = Math.min(K, pool.length);
      for (let k = 0; k < n; k++) {
        const j = k + Math.floor(rng() * (pool.length - k));
        const v = pool[j];
        pool[j] = pool[k];
        pool[k] = v;
        topkIdx[t * K + k] = v;
        topkWeights[t * K + k] = 1 / n;
      }
    }
    return { topkIdx, topkWeights };
  });
}

/**
 * Every rank's routing for a spec.
 *
 * @throws {WeftError} `--routing` for an unknown name or a trace whose rank count is not the world.
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { routeBySpec } from "./routing_spec.ts";
 * const plan = experts(16).byDevice().topK(2).hidden(8).compile({ world: 4, gpusPerNode: 2 });
 * const r = routeBySpec(plan, { name: "onenode", tokens: 8 });
 * // both experts of a token are on one node: ids in [0, 8) or [8, 16)
 * console.assert(r[0].topkIdx[0] >> 3 === r[0].topkIdx[1] >> 3);
 * ```
 */
export function routeBySpec(plan: PlanSpec, spec: RoutingSpec): RankRouting[] {
  const seed = spec.seed ?? 1;
  const name = spec.name;
  if (name.endsWith(".json") || name.endsWith(".npy")) {
    const r = name.endsWith(".json")
      ? loadRoutingJSON(Deno.readTextFileSync(name))
      : loadRoutingNpy(Deno.readFileSync(name), { world: plan.world });
    if (r.length !== plan.world) {
      throw new WeftError({
        field: "--routing",
        problem: `${name} holds ${r.length} ranks, the topology has ${plan.world}`,
        fix: "pick a topology with as many GPUs as the trace has ranks (--nodes, --gpus-per-node)",
      });
    }
    return r;
  }
  const tokens = tokenCounts(plan.world, spec);
  const o = { tokens, seed };
  switch (name) {
    case "uniform":
      return uniform(plan, o);
    case "zipf":
      return zipf(plan, { ...o, s: spec.s ?? 1 });
    case "hotmix":
      return hotMix(plan, { ...o, hot: spec.hot, hotShare: spec.hotShare });
    case "local":
      return deviceLocal(plan, o);
    case "nodelocal":
      return nodeLocal(plan, o);
    case "onenode":
      return oneNode(plan, tokens, seed);
  }
  throw new WeftError({
    field: "--routing",
    problem: `"${name}" is neither a generator nor a .json/.npy trace`,
    fix: `choose from ${ROUTINGS.join(", ")}, or pass a trace file`,
  });
}
