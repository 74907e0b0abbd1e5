/**
 * Human-readable summaries of one batch's layout: the bytes on every link
 * with and without deduplication, and how evenly the experts are loaded.
 * Used by the demo and the benchmark's reports.
 *
 * @module
 */
import type { BatchLayout } from "../../dsl/types.ts";

/** Totals over all links of a batch. */
export interface TrafficTotals {
  /** Rows that cross between ranks under the plan's dedupe (forwarded rows included). */
  readonly rows: number;
  /** Rows that would cross with dedupe `none` (one per (token, expert)). */
  readonly rowsNoDedupe: number;
  /** `rows` in bytes. */
  readonly bytes: number;
  /** `rowsNoDedupe` in bytes. */
  readonly bytesNoDedupe: number;
  /** The largest number of bytes one rank sends to other ranks (dispatch direction). */
  readonly maxRankSendBytes: number;
}

/**
 * Sums a batch's per-link statistics.
 *
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { trafficTotals } from "./traffic.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * const layout = plan.layout([Int32Array.of(0, 5), Int32Array.of(1, 2)]);
 * console.assert(trafficTotals(layout).rows === 2);
 * ```
 */
export function trafficTotals(layout: BatchLayout): TrafficTotals {
  let rows = 0, rowsNoDedupe = 0, bytes = 0, bytesNoDedupe = 0;
  const perRank = new Float64Array(layout.plan.world);
  for (const l of layout.links) {
    rows += l.rows + l.forwardedRows;
    rowsNoDedupe += l.rowsNoDedupe;
    bytes += l.bytes + l.forwardedBytes;
    bytesNoDedupe += l.bytesNoDedupe;
    perRank[l.src] += l.bytes + l.forwardedBytes;
  }
  return { rows, rowsNoDedupe, bytes, bytesNoDedupe, maxRankSendBytes: Math.max(0, ...perRank) };
}

const MB = 1e6;

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (cells: readonly string[]) =>
    "| " +
    cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join(" | ") +
    " |";
  const rule = "|" +
    widths.map((w, i) => (i === 0 ? "-".repeat(w + 1) + "-" : "-".repeat(w + 1) + ":")).join("|") +
    "|";
  return [line(header), rule, ...rows.map(line)].join("\n");
}

/**
 * A markdown table of every link: rows and MB with the plan's dedupe and
 * without, and the saving.
 *
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { formatLinks } from "./traffic.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * console.assert(formatLinks(plan.layout([Int32Array.of(4, 5), new Int32Array(0)])).includes("0 → 1"));
 * ```
 */
export function formatLinks(layout: BatchLayout): string {
  const rows = layout.links.map((l) => [
    `${l.src} → ${l.dst}`,
    String(l.rows + l.forwardedRows),
    ((l.bytes + l.forwardedBytes) / MB).toFixed(1),
    String(l.rowsNoDedupe),
    (l.bytesNoDedupe / MB).toFixed(1),
    l.bytesNoDedupe > 0
      ? `${(100 * (1 - (l.bytes + l.forwardedBytes) / l.bytesNoDedupe)).toFixed(0)}%`
      : "-",
  ]);
  const t = trafficTotals(layout);
  rows.push([
    "all links",
    String(t.rows),
    (t.bytes / MB).toFixed(1),
    String(t.rowsNoDedupe),
    (t.bytesNoDedupe / MB).toFixed(1),
    t.bytesNoDedupe > 0 ? `${(100 * (1 - t.bytes / t.bytesNoDedupe)).toFixed(0)}%` : "-",
  ]);
  return table(
    ["link", `rows (${layout.plan.dedupe})`, "MB", "rows (none)", "MB (none)", "saved"],
    rows,
  );
}

/**
 * A markdown table of each rank's load: tokens sent, rows received, and the
 * least and most loaded local expert.
 *
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { formatLoad } from "./traffic.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * console.assert(formatLoad(plan.layout([Int32Array.of(4, 5), new Int32Array(0)])).includes("| 1"));
 * ```
 */
export function formatLoad(layout: BatchLayout): string {
  const rows = layout.ranks.map((r) => {
    const counts = Array.from(r.expertCounts);
    const min = counts.length ? Math.min(...counts) : 0;
    const max = counts.length ? Math.max(...counts) : 0;
    const mean = counts.length ? r.recvRows / counts.length : 0;
    return [
      String(r.rank),
      String(r.tokens),
      String(r.recvRows),
      String(counts.length),
      String(min),
      String(max),
      mean > 0 ? (max / mean).toFixed(2) : "-",
    ];
  });
  return table(
    ["rank", "tokens", "rows received", "local experts", "min/expert", "max/expert", "max/mean"],
    rows,
  );
}
