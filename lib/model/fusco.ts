/**
 * The cost model on FUSCO's testbed (8 nodes × 8 H100, 10 × 400 Gb RoCE per
 * node; fusco.md §7) for their three scenarios, next to their published
 * dispatch + combine times. Their traces are not public, so each scenario is
 * a stand-in from our generators (stated in `routing`):
 * - "DeepSeek-V3 traces" → hotmix (a few hot experts take half the draws);
 * - "single-node routed" → onenode (a token's 8 experts all on one node);
 * - "imbalanced" (their "bimodal load") → zipf s = 1 with token counts
 *   spread ±50% across ranks.
 * Their times include planning and permutes in PyTorch; ours are the model's
 * weft engine. `impliedNicGBs` inverts their FUSCO figure: the NIC bytes our
 * layout says FUSCO's plan moves per GPU (dedupe node, both directions) over
 * their time, i.e. the per-GPU network rate their figure corresponds to if
 * the network were all of it.
 *
 * @module
 */
import { experts } from "../../dsl/mod.ts";
import type { Dedupe } from "../../dsl/types.ts";
import { routeBySpec, type RoutingSpec } from "../explore/routing_spec.ts";
import { type CostOptions, predict } from "./cost.ts";
import { TOPOLOGIES, type Topology } from "./topology.ts";

/** One published cell: ms for NCCL / DeepEP / FUSCO (fusco.md §7, README = paper Table 3). */
export interface FuscoCell {
  readonly scenario: "traces" | "single-node" | "imbalanced";
  readonly tokens: number;
  readonly nccl: number;
  readonly deepep: number;
  readonly fusco: number;
}

/** The published figures. */
export const FUSCO_PUBLISHED: readonly FuscoCell[] = Object.freeze(
  ([
    ["traces", 4096, 44.4, 30.7, 27.2],
    ["traces", 8192, 80.2, 58.4, 50.1],
    ["traces", 16384, 143.6, 116.1, 86.8],
    ["traces", 32768, 266.4, 219.6, 164.4],
    ["single-node", 4096, 44.0, 24.7, 12.6],
    ["single-node", 8192, 81.4, 43.8, 22.3],
    ["single-node", 16384, 150.1, 81.8, 41.0],
    ["single-node", 32768, 274.8, 144.2, 71.5],
    ["imbalanced", 4096, 86.2, 56.0, 43.3],
    ["imbalanced", 8192, 167.5, 108.5, 78.9],
    ["imbalanced", 16384, 339.3, 216.2, 151.3],
    ["imbalanced", 32768, 656.2, 420.9, 305.0],
  ] as const).map(([scenario, tokens, nccl, deepep, fusco]) => ({
    scenario,
    tokens,
    nccl,
    deepep,
    fusco,
  })),
);

/** Our stand-in routing for each of their scenarios. */
export function fuscoRouting(scenario: FuscoCell["scenario"], tokens: number): RoutingSpec {
  if (scenario === "single-node") return { name: "onenode", tokens };
  if (scenario === "imbalanced") return { name: "zipf", tokens, s: 1, tokenSkew: 0.5 };
  return { name: "hotmix", tokens };
}

/** A published cell with the model's predictions. */
export interface FuscoRow extends FuscoCell {
  /** The stand-in routing. */
  readonly routing: string;
  /** Model, dedupe none (one row per (token, expert): FUSCO's "planner off"). */
  readonly none: number;
  /** Model, dedupe node, rail forwarders (FUSCO's "balancer off"). */
  readonly nodeRail: number;
  /** Model, dedupe node, greedy forwarders. */
  readonly nodeGreedy: number;
  /** Model, dedupe node, rail, uniform routing at the same tokens (a reference: no skew). */
  readonly uniformNode: number;
  /** Busiest GPU's NIC MB (larger direction) with dedupe node, rail. */
  readonly nicMB: number;
  /** GB/s per GPU their FUSCO time implies for the NIC bytes of both directions. */
  readonly impliedNicGBs: number;
}

/**
 * Predicts the published cells (those `filter` keeps) on a topology
 * (default FUSCO's).
 *
 * @example
 * ```ts
 * import { fuscoTable } from "./fusco.ts";
 * import { TOPOLOGIES } from "./topology.ts";
 * const small = { ...TOPOLOGIES["h100-8x8-roce"], nodes: 2, gpusPerNode: 2 };
 * const [row] = fuscoTable((c) => c.scenario === "traces" && c.tokens === 4096, small);
 * console.assert(row.nodeRail > 0 && row.none >= row.nodeRail);
 * ```
 */
export function fuscoTable(
  filter: (c: FuscoCell) => boolean = (c) => c.tokens === 16384,
  topo: Topology = TOPOLOGIES["h100-8x8-roce"],
  cost: Omit<CostOptions, "balance"> = {},
): FuscoRow[] {
  const world = topo.nodes * topo.gpusPerNode;
  const pattern = (d: Dedupe) =>
    experts(256).byDevice().topK(8).hidden(7168).dedupe(d).compile({
      world,
      gpusPerNode: topo.gpusPerNode,
    });
  const nodePlan = pattern("node"), nonePlan = pattern("none");
  const uniformMs = new Map<number, number>();
  const uniformAt = (tokens: number): number => {
    if (!uniformMs.has(tokens)) {
      const idx = routeBySpec(nodePlan, { name: "uniform", tokens }).map((r) => r.topkIdx);
      uniformMs.set(tokens, predict(nodePlan.layout(idx), topo, cost).totalMs);
    }
    return uniformMs.get(tokens)!;
  };
  return FUSCO_PUBLISHED.filter(filter).map((c) => {
    const spec = fuscoRouting(c.scenario, c.tokens);
    const idx = routeBySpec(nodePlan, spec).map((r) => r.topkIdx);
    const nodeLayout = nodePlan.layout(idx);
    const rail = predict(nodeLayout, topo, cost);
    const greedy = predict(nodeLayout, topo, { ...cost, balance: "greedy" });
    const none = predict(nonePlan.layout(idx), topo, cost);
    const nicBytes = 2 * rail.bytes.nicMax;
    return {
      ...c,
      routing: `${spec.name}${spec.tokenSkew ? ` ±${spec.tokenSkew * 100}% tokens` : ""}`,
      none: none.totalMs,
      nodeRail: rail.totalMs,
      nodeGreedy: greedy.totalMs,
      uniformNode: uniformAt(c.tokens),
      nicMB: rail.bytes.nicMax / 1e6,
      impliedNicGBs: nicBytes / (c.fusco * 1e6),
    };
  });
}
