/**
 * The cost model against what we measured: every row here is a recorded
 * device measurement (bench/RESULTS.md, README, the session logs), re-laid
 * out on the CPU with the bench's own routing (same generators, seed 1) and
 * predicted with {@link predict}. The fit of ENGINE_CONSTANTS (cost.ts):
 * `scatterEff` from the 4-GPU `local` rows (no NVLink bytes: only HBM
 * scatter), `scatterEffSingle` and `frontMsSingle` from the two world-1 rows,
 * `pullRowNs` from the two 4-GPU e4m3 rows (7392-byte rows, where the pull's
 * per-row cost, not the fabric, sets the rate), the rest from the 16384
 * uniform profile (front 0.115, barriers 0.04); the NVLink rates are the
 * fabric probe's, not fitted. So the world-1 rows and the e4m3 rows test the
 * fit less than the others, which it was not fitted on.
 *
 * @module
 */
import { experts } from "../../dsl/mod.ts";
import type { Plan } from "../../dsl/plan.ts";
import { deviceLocal, hotMix, type RankRouting, uniform, zipf } from "../io/routing.ts";
import { predict } from "./cost.ts";
import { TOPOLOGIES, type Topology } from "./topology.ts";

/** One measured row. */
export interface MeasuredRow {
  /** Topology preset it ran on. */
  readonly topology: "h200x4" | "h200x8" | "h200x1";
  /** Tokens per GPU. */
  readonly tokens: number;
  /** Routing scenario (the bench's names). */
  readonly scenario: "uniform" | "zipf" | "local" | "hotmix";
  /** FP8 dispatch (`.quantize("e4m3")`, quantize pass inside dispatch). */
  readonly e4m3?: boolean;
  /** Measured dispatch + combine, ms (median, slowest rank). */
  readonly ms: number;
  /** Where it is recorded. */
  readonly source: string;
}

const R1220 = "bench/RESULTS.md 2026-11-22 12:20, commit 00f50a5";
const W1 = "the session logs 2026-12-03 01:15, nvidia-h200, world 1";
const X8 = "README 'On 8 GPUs', 2026-11-22 10:47, commit e2682ca";

/** The measured rows the model is held to. */
export const MEASURED: readonly MeasuredRow[] = Object.freeze([
  ...([
    [4096, "uniform", 1.210],
    [4096, "zipf", 1.378],
    [4096, "local", 0.760],
    [4096, "hotmix", 1.407],
    [8192, "uniform", 2.225],
    [8192, "zipf", 2.349],
    [8192, "local", 1.183],
    [8192, "hotmix", 2.342],
    [16384, "uniform", 4.250],
    [16384, "zipf", 4.720],
    [16384, "local", 2.262],
    [16384, "hotmix", 4.671],
    [32768, "uniform", 8.364],
    [32768, "zipf", 8.904],
    [32768, "local", 4.209],
    [32768, "hotmix", 8.860],
  ] as const).map(([tokens, scenario, ms]) => ({
    topology: "h200x4" as const,
    tokens,
    scenario,
    ms,
    source: R1220,
  })),
  { topology: "h200x4", tokens: 4096, scenario: "uniform", e4m3: true, ms: 1.151, source: R1220 },
  { topology: "h200x4", tokens: 16384, scenario: "uniform", e4m3: true, ms: 3.604, source: R1220 },
  { topology: "h200x1", tokens: 4096, scenario: "uniform", ms: 0.509, source: W1 },
  { topology: "h200x1", tokens: 16384, scenario: "uniform", ms: 1.408, source: W1 },
  { topology: "h200x1", tokens: 4096, scenario: "uniform", e4m3: true, ms: 0.451, source: W1 },
  { topology: "h200x1", tokens: 16384, scenario: "uniform", e4m3: true, ms: 1.173, source: W1 },
  { topology: "h200x8", tokens: 16384, scenario: "uniform", ms: 7.34, source: X8 },
]);

/** A measured row with the model's prediction. */
export interface CalibrationRow extends MeasuredRow {
  /** Predicted ms. */
  readonly predicted: number;
  /** (predicted − measured) / measured, in %. */
  readonly errorPct: number;
  /** The busiest rank's NVLink bytes sent to other GPUs in dispatch (the bench's remote MB). */
  readonly remoteMB: number;
}

function topologyOf(name: MeasuredRow["topology"]): Topology {
  if (name === "h200x1") {
    return { ...TOPOLOGIES.h200x4, name: "h200x1", gpusPerNode: 1, source: W1 };
  }
  return TOPOLOGIES[name];
}

/** The bench's routing for a scenario (bench/scenarios.ts, seed 1). */
export function benchRouting(plan: Plan, scenario: string, tokens: number): RankRouting[] {
  const o = { tokens, seed: 1 };
  if (scenario === "zipf") return zipf(plan, { ...o, s: 1 });
  if (scenario === "local") return deviceLocal(plan, o);
  if (scenario === "hotmix") return hotMix(plan, o);
  return uniform(plan, o);
}

/**
 * Predicts every measured row (or those `filter` keeps).
 *
 * @example
 * ```ts
 * import { calibrate } from "./calibration.ts";
 * const [row] = calibrate((r) => r.topology === "h200x1" && r.tokens === 4096 && !r.e4m3);
 * console.assert(Math.abs(row.errorPct) < 15);
 * ```
 */
export function calibrate(filter: (r: MeasuredRow) => boolean = () => true): CalibrationRow[] {
  return MEASURED.filter(filter).map((m) => {
    const topo = topologyOf(m.topology);
    let p = experts(256).byDevice().topK(8).hidden(7168);
    if (m.e4m3) p = p.quantize("e4m3");
    const plan = p.compile({ world: topo.gpusPerNode, gpusPerNode: topo.gpusPerNode });
    const layout = plan.layout(benchRouting(plan, m.scenario, m.tokens).map((r) => r.topkIdx));
    const predicted = predict(layout, topo).totalMs;
    let remote = 0;
    for (const r of layout.ranks) {
      let out = 0;
      for (let d = 0; d < plan.world; d++) if (d !== r.rank) out += r.sendRowsTo[d];
      remote = Math.max(remote, out);
    }
    return {
      ...m,
      predicted,
      errorPct: (100 * (predicted - m.ms)) / m.ms,
      remoteMB: (remote * (m.e4m3 ? 7392 : 14336)) / 1e6,
    };
  });
}
