/**
 * The benchmark's routing scenarios and the traffic each engine must move for
 * one batch of them.
 *
 * Scenarios draw from lib/routing.ts's seeded generators, so every rank can
 * regenerate the whole world's routing by itself and rank 0 can count the
 * bytes on every link without shipping routing between processes.
 *
 * @module
 */
import type { PlanSpec } from "../dsl/types.ts";
import { DTYPE_BYTES } from "../dsl/types.ts";
import { computeLayout, dispatchRowBytes } from "../dsl/layout.ts";
import { WeftError } from "../dsl/errors.ts";
import type { LinkBytes } from "./report.ts";
import { deviceLocal, hotMix, type RankRouting, uniform, zipf } from "../lib/io/routing.ts";

/** Plan fields the scenarios need (a compiled Plan satisfies it). */
export type ScenarioPlan = PlanSpec;

/** One routing scenario of the benchmark. */
export interface Scenario {
  /** Short name used on the command line and in the table. */
  readonly name: string;
  /** What it models, for the report. */
  readonly description: string;
  /** Every rank's routing for `tokens` tokens per rank. */
  route(plan: ScenarioPlan, tokens: number, seed: number): RankRouting[];
}

/** Zipf exponent of the anchor's skewed scenario (anchors/moe_baseline.py: popularity ∝ 1/i^1.0). */
export const ZIPF_EXPONENT = 1.0;

/**
 * The scenarios, in the order the benchmark runs them by default.
 *
 * @example
 * ```ts
 * import { SCENARIOS } from "./scenarios.ts";
 * console.assert(SCENARIOS.map((s) => s.name).join() === "uniform,zipf,local,hotmix");
 * ```
 */
export const SCENARIOS: readonly Scenario[] = Object.freeze([
  {
    name: "uniform",
    description: "every token picks K distinct experts uniformly",
    route: (plan: ScenarioPlan, tokens: number, seed: number) => uniform(plan, { tokens, seed }),
  },
  {
    name: "zipf",
    description: `load imbalance: expert popularity ∝ 1/i^${ZIPF_EXPONENT} over a seeded order`,
    route: (plan: ScenarioPlan, tokens: number, seed: number) =>
      zipf(plan, { tokens, seed, s: ZIPF_EXPONENT }),
  },
  {
    name: "local",
    description: "every expert of a token lives on the token's own GPU",
    route: (plan: ScenarioPlan, tokens: number, seed: number) =>
      deviceLocal(plan, { tokens, seed }),
  },
  {
    name: "hotmix",
    description: "trace-like: a few hot experts take half the draws, the rest uniform",
    // lib/routing.ts's defaults (E/32 hot experts, half of all draws) are the trace-like mix.
    route: (plan: ScenarioPlan, tokens: number, seed: number) => hotMix(plan, { tokens, seed }),
  },
]);

/**
 * Looks scenarios up by name, keeping the given order.
 *
 * @throws {WeftError} `--scenarios` for an unknown name.
 * @example
 * ```ts
 * import { scenariosByName } from "./scenarios.ts";
 * console.assert(scenariosByName(["local", "zipf"])[0].name === "local");
 * ```
 */
export function scenariosByName(names: readonly string[]): Scenario[] {
  return names.map((name) => {
    const found = SCENARIOS.find((s) => s.name === name);
    if (found === undefined) {
      throw new WeftError({
        field: "--scenarios",
        problem: `"${name}" is not a scenario`,
        fix: `choose from ${SCENARIOS.map((s) => s.name).join(", ")}`,
      });
    }
    return found;
  });
}

/** What each engine must move for one batch, from the CPU layout compiler. */
export interface BatchTraffic {
  /** Every ordered pair of distinct ranks with traffic, dispatch direction. */
  readonly links: readonly LinkBytes[];
  /** [W] remote bytes each rank sends in weft's dispatch. */
  readonly weftDispatchOut: readonly number[];
  /** [W] remote bytes each rank sends in weft's combine (its partial sums going home). */
  readonly weftCombineOut: readonly number[];
  /** [W] remote bytes each rank sends in the baseline's dispatch. */
  readonly baselineDispatchOut: readonly number[];
}

/**
 * Counts the bytes on every link for one batch.
 *
 * Combine sends back one row per dispatched row (partials are reduced on the
 * expert's side before crossing), so a rank's combine output is what it
 * received in dispatch, at `combineRowBytes` a row: the plan's row size, or
 * 4·hidden where the engine sends partial sums in f32.
 *
 * @example
 * ```ts
 * import { batchTraffic } from "./scenarios.ts";
 * import { experts } from "../dsl/mod.ts";
 * const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * const t = batchTraffic(plan, [Int32Array.of(2, 3), Int32Array.of(0, 1)], 32);
 * console.assert(t.weftDispatchOut[0] === 32 && t.baselineDispatchOut[0] === 64);
 * ```
 */
export function batchTraffic(
  plan: ScenarioPlan,
  topkIdx: readonly Int32Array[],
  combineRowBytes: number,
): BatchTraffic {
  // weft's rows cross as the plan says (E4M3 + scales when quantized); the
  // baseline always moves rows in the dtype.
  const rowBytes = dispatchRowBytes(plan);
  const baselineRowBytes = plan.hidden * DTYPE_BYTES[plan.dtype];
  const layout = computeLayout(plan, topkIdx);
  const W = plan.world;
  const weftDispatchOut = new Array<number>(W).fill(0);
  const weftCombineOut = new Array<number>(W).fill(0);
  const baselineDispatchOut = new Array<number>(W).fill(0);
  const links: LinkBytes[] = [];
  for (const l of layout.links) {
    // Forwarded rows (dedupe `node`) also cross this link, inside the node.
    const rows = l.rows + (l.forwardedRows ?? 0);
    links.push({
      src: l.src,
      dst: l.dst,
      weftBytes: rows * rowBytes,
      baselineBytes: l.rowsNoDedupe * baselineRowBytes,
    });
    weftDispatchOut[l.src] += rows * rowBytes;
    weftCombineOut[l.dst] += rows * combineRowBytes;
    baselineDispatchOut[l.src] += l.rowsNoDedupe * baselineRowBytes;
  }
  return { links, weftDispatchOut, weftCombineOut, baselineDispatchOut };
}
