/**
 * The benchmark's result record and its two text forms: a markdown table for
 * people and JSON for tools. Pure functions of a {@link BenchResult}, so they
 * are tested with synthetic numbers on machines without a GPU.
 *
 * Units: MB and GB are decimal (1e6, 1e9 bytes), as link rates are quoted.
 *
 * @module
 */

/** One (tokens per GPU, scenario) cell, already reduced over ranks. */
export interface BenchRow {
  /** Tokens per GPU in this batch. */
  readonly tokens: number;
  /** Routing scenario name (see bench/scenarios.ts). */
  readonly scenario: string;
  /**
   * weft dispatch + combine (identity experts), ms: each rank's median over
   * the timed iterations, then the maximum over ranks.
   */
  readonly weftMs: number;
  /**
   * weft's dispatch alone inside those same runs, ms (median, max over
   * ranks; combine is the rest); null when not measured.
   */
  readonly weftDispatchMs: number | null;
  /**
   * weft dispatch + combine like {@link weftMs} but with the inputs where a
   * host-side caller has them: x in a tensor of its own, which dispatch
   * copies into the engine's heap first, and the routing in plain host
   * arrays (weftMs has x written in place with `Engine.inputRows` and the
   * routing in device tensors; results before that change had the routing
   * in `Engine.inputRouting`'s page-locked staging); null when not measured.
   */
  readonly weftCopyInMs: number | null;
  /**
   * weft dispatch + combine like {@link weftMs} with dispatch quantized to
   * FP8 E4M3 + block scales (`.quantize("e4m3")`, about half the dispatch
   * bytes; combine unchanged, bf16); absent or null when not measured. Not
   * the same work as the baseline's bf16 rows: not in the speedup column.
   */
  readonly weftE4m3Ms?: number | null;
  /** Output check of the E4M3 run (same check as {@link weftError}, y exact). */
  readonly weftE4m3Error?: number | null;
  /**
   * Like {@link weftE4m3Ms} with the rows quantized beforehand and written in
   * place (`Engine.inputQuantizedRows`): dispatch neither copies nor
   * quantizes them, as when a model's kernel quantizes its own output.
   */
  readonly weftE4m3InPlaceMs?: number | null;
  /** The NCCL baseline's dispatch + combine, ms, reduced like {@link weftMs}. */
  readonly baselineMs: number;
  /** A cached re-dispatch through a handle, ms (median, max over ranks); null when not measured. */
  readonly redispatchMs: number | null;
  /** The layout step alone, ms; null where the native side offers no way to time it apart. */
  readonly layoutMs: number | null;
  /** Max over ranks of the remote bytes one rank sends in weft's dispatch. */
  readonly weftDispatchRemoteBytes: number;
  /** Max over ranks of the remote bytes one rank sends in dispatch + combine (weft). */
  readonly weftOutgoingRemoteBytes: number;
  /** Max over ranks of the remote bytes one rank sends in the baseline's dispatch (one row per (token, expert)). */
  readonly baselineDispatchRemoteBytes: number;
  /** Each rank's median weft time, ms, in rank order (shows imbalance between ranks). */
  readonly weftMsPerRank: readonly number[];
  /** Each rank's median baseline time, ms, in rank order. */
  readonly baselineMsPerRank: readonly number[];
  /** Dispatch bytes on every link, both engines (empty when not counted). */
  readonly links: readonly LinkBytes[];
  /**
   * Output check of weft's combine (identity experts give out ≈ x·Σw):
   * relative L2 error over sampled rows, max over ranks; null when not checked.
   */
  readonly weftError: number | null;
  /** The same check of the baseline's output. */
  readonly baselineError: number | null;
}

/** Bytes one source rank sends one destination rank in a batch's dispatch. */
export interface LinkBytes {
  /** Sending rank. */
  readonly src: number;
  /** Receiving rank. */
  readonly dst: number;
  /** weft: one row per (token, destination device) under the plan's dedupe. */
  readonly weftBytes: number;
  /** The baseline: one row per (token, expert) whose expert is off-device. */
  readonly baselineBytes: number;
}

/** One measured GPU→GPU copy-engine ceiling between two ranks. */
export interface CopyCeilingPair {
  /** Rank that sent. */
  readonly src: number;
  /** Rank that received. */
  readonly dst: number;
  /** One-way rate, GB/s. */
  readonly gbps: number;
}

/** The GPU→GPU copy ceiling measured in the same run as the engines. */
export interface CopyCeiling {
  /** Bytes per copy. */
  readonly bytes: number;
  /** Every ordered pair measured. */
  readonly pairs: readonly CopyCeilingPair[];
  /**
   * The ceiling used for "% of copy ceiling": the fastest pair, so that the
   * percentage is never flattered by one slow link.
   */
  readonly gbps: number;
}

/** A whole benchmark run. */
export interface BenchResult {
  /** What ran it, e.g. "4× NVIDIA H200". */
  readonly device: string;
  /** ISO-8601 time the run started. */
  readonly date: string;
  /** Ranks (one GPU each). */
  readonly world: number;
  /** Elements per row. */
  readonly hidden: number;
  /** Global expert count. */
  readonly experts: number;
  /** Experts per token. */
  readonly topK: number;
  /** Row element type. */
  readonly dtype: string;
  /** Timed iterations per engine and cell. */
  readonly iters: number;
  /** Untimed iterations before them. */
  readonly warmup: number;
  /** How weft's combine partials cross between GPUs: "f32" or the row dtype. */
  readonly combineWire: string;
  /** Null when the copy ceiling could not be measured (the reason is in `notes`). */
  readonly copyCeiling: CopyCeiling | null;
  /** One per (tokens, scenario), in the order measured. */
  readonly rows: readonly BenchRow[];
  /** Caveats that belong next to the numbers. */
  readonly notes: readonly string[];
}

/** The numbers the table derives from a row. */
export interface DerivedMetrics {
  /** baseline ms / weft ms. */
  readonly speedup: number;
  /** weft's dispatch remote traffic per rank per direction, MB. */
  readonly weftRemoteMBPerDir: number;
  /** Max per-rank outgoing remote bytes (dispatch + combine) over weft's time, GB/s. */
  readonly achievedGBps: number;
  /** achievedGBps as a percentage of the copy ceiling; null without a ceiling. */
  readonly ceilingPercent: number | null;
}

/**
 * Derives speedup, traffic and rates for one row.
 *
 * @example
 * ```ts
 * import { derive } from "./report.ts";
 * const d = derive({
 *   tokens: 4096, scenario: "uniform", weftMs: 2, weftDispatchMs: null, weftCopyInMs: null, baselineMs: 6, redispatchMs: null,
 *   layoutMs: null, weftDispatchRemoteBytes: 1e8, weftOutgoingRemoteBytes: 2e8,
 *   baselineDispatchRemoteBytes: 3e8, weftMsPerRank: [2], baselineMsPerRank: [6], links: [],
 *   weftError: null, baselineError: null,
 * }, 400);
 * console.assert(d.speedup === 3 && d.achievedGBps === 100 && d.ceilingPercent === 25);
 * ```
 */
export function derive(row: BenchRow, ceilingGBps: number | null): DerivedMetrics {
  const achievedGBps = row.weftOutgoingRemoteBytes / (row.weftMs * 1e-3) / 1e9;
  return {
    speedup: row.baselineMs / row.weftMs,
    weftRemoteMBPerDir: row.weftDispatchRemoteBytes / 1e6,
    achievedGBps,
    ceilingPercent: ceilingGBps !== null && ceilingGBps > 0
      ? (achievedGBps / ceilingGBps) * 100
      : null,
  };
}

/** Median of a non-empty list (mean of the middle two for even lengths). */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError("median of an empty list");
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
}

/** Column headers of {@link markdownTable}, in order. */
export const TABLE_COLUMNS: readonly string[] = Object.freeze([
  "tokens/GPU",
  "scenario",
  "weft ms",
  "baseline ms",
  "speedup",
  "weft ms, inputs copied in",
  "weft ms, e4m3 dispatch",
  "e4m3, pre-quantized in place",
  "weft remote MB/rank/dir",
  "achieved GB/s",
  "% of copy ceiling",
  "redispatch ms",
  "layout ms",
]);

function fixed(value: number | null, digits: number): string {
  return value === null || !Number.isFinite(value) ? "n/a" : value.toFixed(digits);
}

/**
 * The result as a markdown table (one line per row, in the result's order)
 * followed by the run's conditions and notes.
 */
export function markdownTable(result: BenchResult): string {
  const ceiling = result.copyCeiling?.gbps ?? null;
  const lines: string[] = [
    `| ${TABLE_COLUMNS.join(" | ")} |`,
    `|${TABLE_COLUMNS.map((_, i) => (i < 2 ? "---" : "---:")).join("|")}|`,
  ];
  for (const row of result.rows) {
    const d = derive(row, ceiling);
    lines.push(
      `| ${
        [
          String(row.tokens),
          row.scenario,
          fixed(row.weftMs, 3),
          fixed(row.baselineMs, 3),
          `${fixed(d.speedup, 2)}×`,
          fixed(row.weftCopyInMs, 3),
          fixed(row.weftE4m3Ms ?? null, 3),
          fixed(row.weftE4m3InPlaceMs ?? null, 3),
          fixed(d.weftRemoteMBPerDir, 1),
          fixed(d.achievedGBps, 1),
          fixed(d.ceilingPercent, 1),
          fixed(row.redispatchMs, 3),
          fixed(row.layoutMs, 3),
        ].join(" | ")
      } |`,
    );
  }
  lines.push("");
  lines.push(
    `${result.device}, world ${result.world}, ${result.date}. Shape: hidden ${result.hidden} ` +
      `${result.dtype}, ${result.experts} experts, top-${result.topK}. ` +
      `Times: CUDA events around dispatch + combine, ${result.warmup} warm-up, ` +
      `median of ${result.iters} iterations per rank, max over ranks.`,
  );
  if (result.copyCeiling !== null) {
    const cc = result.copyCeiling;
    const rates = cc.pairs.map((p) => p.gbps);
    lines.push(
      `GPU→GPU copy ceiling (copy engine, ${fixed(cc.bytes / 2 ** 30, 2)} GiB, one-way): ` +
        `${fixed(cc.gbps, 1)} GB/s (fastest of ${cc.pairs.length} pairs; slowest ` +
        `${fixed(Math.min(...rates), 1)} GB/s).`,
    );
  }
  for (const note of result.notes) lines.push(`- ${note}`);
  return lines.join("\n") + "\n";
}

/**
 * The result as JSON: the raw record plus each row's derived metrics, so a
 * reader needs no formula to compare runs.
 */
export function toJson(result: BenchResult): string {
  const ceiling = result.copyCeiling?.gbps ?? null;
  return JSON.stringify(
    { ...result, rows: result.rows.map((row) => ({ ...row, ...derive(row, ceiling) })) },
    null,
    2,
  ) + "\n";
}
