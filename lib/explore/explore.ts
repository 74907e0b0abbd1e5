/**
 * The explorer's analysis: a pattern, a routing and a topology → the batch's
 * layout (CPU, `computeLayout`), its traffic matrix, per-rank and per-expert
 * load, bytes per link class and the cost model's prediction for each dedupe
 * mode, and the balancer's effect. No GPU; seconds at EP64 × 16384 tokens.
 * format.ts turns the result into text and SVG.
 *
 * @module
 */
import type { BatchLayout, Dedupe, PatternSpec } from "../../dsl/types.ts";
import { fromSpec } from "../../dsl/pattern.ts";
import type { Plan } from "../../dsl/plan.ts";
import { dispatchRowBytes } from "../../dsl/layout.ts";
import { type CostOptions, predict, type Prediction } from "../model/cost.ts";
import type { Topology } from "../model/topology.ts";
import { type RankTraffic, rankTraffic } from "../model/rank_traffic.ts";
import { routeBySpec, type RoutingSpec } from "./routing_spec.ts";

/** What to explore. */
export interface ExploreInput {
  /** A complete pattern (topK set); its dedupe is the one the matrix shows. */
  readonly pattern: PatternSpec;
  /** The routing. */
  readonly routing: RoutingSpec;
  /** The machine; the plan is compiled for its world and GPUs per node. */
  readonly topology: Topology;
  /** Cost-model options (combine wire, NIC duplex). */
  readonly cost?: Omit<CostOptions, "balance">;
  /** Dedupe modes to compare (default all three). */
  readonly modes?: readonly Dedupe[];
}

/** One dedupe mode's bytes and predicted time. */
export interface ModeResult {
  /** The dedupe mode. */
  readonly dedupe: Dedupe;
  /** Prediction with the rail forwarders (the layout compiled with `balance: "rail"`). */
  readonly prediction: Prediction;
  /**
   * Dedupe `node` over several nodes: the prediction of the layout compiled
   * with `balance: "greedy"` (FUSCO's table: NIC inbound and fan-out both
   * follow it).
   */
  readonly greedy?: Prediction;
}

/** Everything the explorer prints and draws. */
export interface ExploreResult {
  /** The plan of the pattern's own dedupe. */
  readonly plan: Plan;
  /** Its layout. */
  readonly layout: BatchLayout;
  /** Its per-rank traffic. */
  readonly traffic: RankTraffic;
  /** The topology. */
  readonly topology: Topology;
  /** Bytes a dispatched row crosses as. */
  readonly rowBytes: number;
  /** [src][dst] dispatch rows between distinct ranks (the layout's links, fan-out included). */
  readonly matrix: number[][];
  /** Rows each global expert receives (all its replicas). */
  readonly perExpert: number[];
  /** One entry per compared dedupe mode. */
  readonly modes: ModeResult[];
  /** Wall ms of the layout compile of the pattern's own dedupe. */
  readonly layoutMs: number;
}

/** The [src][dst] row matrix of a layout's links (rows + forwarded rows). */
export function trafficMatrix(layout: BatchLayout): number[][] {
  const W = layout.plan.world;
  const m = Array.from({ length: W }, () => new Array<number>(W).fill(0));
  for (const l of layout.links) m[l.src][l.dst] += l.rows + l.forwardedRows;
  return m;
}

/** Rows per global expert, from each rank's expertCounts through the slot table. */
export function expertLoad(layout: BatchLayout): number[] {
  const plan = layout.plan;
  const out = new Array<number>(plan.experts).fill(0);
  for (const r of layout.ranks) {
    for (let l = 0; l < r.expertCounts.length; l++) {
      out[plan.slotExpert[plan.slotBase[r.rank] + l]] += r.expertCounts[l];
    }
  }
  return out;
}

/**
 * Runs the analysis.
 *
 * @example
 * ```ts
 * import { explore } from "./explore.ts";
 * import { TOPOLOGIES } from "../model/topology.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const pattern = experts(32).byDevice().topK(4).hidden(256).dedupe("node").spec;
 * const topology = { ...TOPOLOGIES["h100-8x8-roce"], nodes: 2, gpusPerNode: 4 };
 * const r = explore({ pattern, topology, routing: { name: "uniform", tokens: 64 } });
 * console.assert(r.modes.length === 3 && r.matrix.length === 8 && r.perExpert.length === 32);
 * ```
 */
export function explore(input: ExploreInput): ExploreResult {
  const topo = input.topology;
  const ctx = { world: topo.gpusPerNode * topo.nodes, gpusPerNode: topo.gpusPerNode };
  const compile = (dedupe: Dedupe, balance = input.pattern.balance) =>
    fromSpec({ ...input.pattern, dedupe, balance }).compile(ctx);
  const plan = compile(input.pattern.dedupe);
  const idx = routeBySpec(plan, input.routing).map((r) => r.topkIdx);
  const t0 = performance.now();
  const layout = plan.layout(idx);
  const layoutMs = performance.now() - t0;
  const modes: ModeResult[] = [];
  for (const dedupe of input.modes ?? (["none", "device", "node"] as const)) {
    const balanced = dedupe === "node" && topo.nodes > 1;
    // The pattern's own layout where it is the one wanted; else compile the mode (rail first).
    const l = dedupe === plan.dedupe && (!balanced || plan.balance === undefined)
      ? layout
      : compile(dedupe, "rail").layout(idx);
    const prediction = predict(l, topo, input.cost);
    const greedy = balanced
      ? predict(
        plan.balance === "greedy" ? layout : compile(dedupe, "greedy").layout(idx),
        topo,
        input.cost,
      )
      : undefined;
    modes.push({ dedupe, prediction, greedy });
  }
  return {
    plan,
    layout,
    traffic: rankTraffic(layout),
    topology: topo,
    rowBytes: dispatchRowBytes(plan),
    matrix: trafficMatrix(layout),
    perExpert: expertLoad(layout),
    modes,
    layoutMs,
  };
}
