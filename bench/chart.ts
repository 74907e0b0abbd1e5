/**
 * The benchmark's chart: latency against tokens per GPU (log₂ axis), weft and
 * the NCCL baseline, one panel per scenario. Hand-written SVG so the
 * benchmark needs no plotting dependency on the device machine.
 *
 * @module
 */
import type { BenchResult, BenchRow } from "./report.ts";

/** Series drawn in every panel: label, colour, dash pattern, which field. */
const SERIES: readonly {
  readonly label: string;
  readonly color: string;
  readonly dash: string;
  readonly value: (row: BenchRow) => number;
}[] = [
  { label: "weft", color: "#1f6fb4", dash: "", value: (r) => r.weftMs },
  { label: "NCCL baseline", color: "#c8342b", dash: "6 4", value: (r) => r.baselineMs },
  // Drawn where measured (a different workload: FP8 dispatch bytes).
  {
    label: "weft, e4m3 dispatch",
    color: "#2e8b57",
    dash: "2 3",
    value: (r) => r.weftE4m3Ms ?? NaN,
  },
];

const PANEL_W = 380;
const PANEL_H = 280;
/** Inner margins of a panel: room for tick labels and axis titles. */
const PAD = { left: 62, right: 16, top: 30, bottom: 50 };
const HEADER_H = 78;
const FONT = 'font-family="Helvetica, Arial, sans-serif"';

/** Escapes text for use in SVG character data and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;").replace(/'/g, "&apos;");
}

/**
 * Up to about `count` round tick values covering [0, max]: steps of 1, 2 or
 * 5 × 10^n, so labels stay short.
 */
export function niceTicks(max: number, count = 5): number[] {
  if (!(max > 0) || !Number.isFinite(max)) return [0, 1];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  for (let v = 0; v < max + step * 0.999; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

function tokenLabel(tokens: number): string {
  return tokens >= 1024 && tokens % 1024 === 0 ? `${tokens / 1024}k` : String(tokens);
}

function f(n: number): string {
  return n.toFixed(1);
}

function panel(scenario: string, rows: readonly BenchRow[], x0: number, y0: number): string {
  const out: string[] = [];
  const plotW = PANEL_W - PAD.left - PAD.right;
  const plotH = PANEL_H - PAD.top - PAD.bottom;
  const left = x0 + PAD.left;
  const top = y0 + PAD.top;
  const bottom = top + plotH;

  const tokens = [...new Set(rows.map((r) => r.tokens))].filter((t) => t > 0).sort((a, b) => a - b);
  // A single size has no log range; widen by one octave each side so it sits mid-panel.
  let lo = Math.log2(tokens[0] ?? 1);
  let hi = Math.log2(tokens[tokens.length - 1] ?? 2);
  if (hi - lo < 1e-9) [lo, hi] = [lo - 1, hi + 1];
  // A little air so end markers do not sit on the frame.
  const span = hi - lo;
  lo -= span * 0.06;
  hi += span * 0.06;
  const xOf = (t: number): number => left + ((Math.log2(t) - lo) / (hi - lo)) * plotW;

  const values = rows.flatMap((r) => SERIES.map((s) => s.value(r))).filter(Number.isFinite);
  const ticks = niceTicks(Math.max(0, ...values));
  const yMax = ticks[ticks.length - 1];
  const yOf = (v: number): number => bottom - (v / yMax) * plotH;

  out.push(`<g class="panel" data-scenario="${escapeXml(scenario)}">`);
  out.push(
    `<text x="${f(left + plotW / 2)}" y="${f(y0 + 18)}" text-anchor="middle" font-size="14" ` +
      `font-weight="bold" ${FONT}>${escapeXml(scenario)}</text>`,
  );
  // An axis mark: a line from (x1, y1) to (x2, y2) and its label at (tx, ty).
  const mark = (
    [x1, y1, x2, y2]: readonly number[],
    stroke: string,
    [tx, ty]: readonly number[],
    anchor: "end" | "middle",
    label: string,
  ): void => {
    out.push(
      `<line x1="${f(x1)}" y1="${f(y1)}" x2="${f(x2)}" y2="${f(y2)}" stroke="${stroke}"/>`,
      `<text x="${f(tx)}" y="${f(ty)}" text-anchor="${anchor}" font-size="11" ${FONT}>` +
        `${label}</text>`,
    );
  };
  for (const v of ticks) {
    const y = yOf(v);
    mark([left, y, left + plotW, y], "#e4e4e4", [left - 6, y + 4], "end", escapeXml(String(v)));
  }
  for (const t of tokens) {
    const x = xOf(t);
    mark([x, bottom, x, bottom + 4], "#333", [x, bottom + 17], "middle", tokenLabel(t));
  }
  out.push(
    `<rect x="${f(left)}" y="${f(top)}" width="${f(plotW)}" height="${f(plotH)}" fill="none" ` +
      `stroke="#333"/>`,
  );
  out.push(
    `<text x="${f(left + plotW / 2)}" y="${f(bottom + 38)}" text-anchor="middle" font-size="12" ` +
      `${FONT}>tokens per GPU (log₂ scale)</text>`,
  );
  const yLabelX = x0 + 16;
  const yLabelY = top + plotH / 2;
  out.push(
    `<text x="${f(yLabelX)}" y="${f(yLabelY)}" text-anchor="middle" font-size="12" ` +
      `transform="rotate(-90 ${f(yLabelX)} ${f(yLabelY)})" ${FONT}>latency, ms</text>`,
  );

  for (const s of SERIES) {
    const pts = rows
      .filter((r) => r.tokens > 0 && Number.isFinite(s.value(r)))
      .sort((a, b) => a.tokens - b.tokens)
      .map((r) => [xOf(r.tokens), yOf(s.value(r))] as const);
    if (pts.length === 0) continue;
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    out.push(
      `<polyline class="series" data-series="${escapeXml(s.label)}" fill="none" ` +
        `stroke="${s.color}" stroke-width="2"${dash} ` +
        `points="${pts.map(([x, y]) => `${f(x)},${f(y)}`).join(" ")}"/>`,
    );
    for (const [x, y] of pts) {
      out.push(`<circle cx="${f(x)}" cy="${f(y)}" r="3.5" fill="${s.color}"/>`);
    }
  }
  out.push(`</g>`);
  return out.join("\n");
}

/**
 * Renders the result as a standalone SVG document: a title naming the device
 * and date, a legend, and one latency panel per scenario (in first-seen
 * order), laid out two to a row.
 */
export function latencyChart(result: BenchResult): string {
  const scenarios = [...new Set(result.rows.map((r) => r.scenario))];
  const cols = Math.max(1, Math.min(2, scenarios.length));
  const gridRows = Math.max(1, Math.ceil(scenarios.length / cols));
  const width = cols * PANEL_W + 20;
  const height = HEADER_H + gridRows * PANEL_H + 10;
  const date = result.date.slice(0, 10);

  const out: string[] = [
    `<?xml version="1.0" encoding="UTF-8"?>`,
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
    `viewBox="0 0 ${width} ${height}">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="${width / 2}" y="26" text-anchor="middle" font-size="17" font-weight="bold" ` +
    `${FONT}>MoE dispatch + combine latency: weft vs NCCL baseline</text>`,
    `<text x="${width / 2}" y="46" text-anchor="middle" font-size="12" ${FONT}>` +
    escapeXml(
      `${result.device}, ${result.world} ranks, ${date} · hidden ${result.hidden} ` +
        `${result.dtype}, ${result.experts} experts, top-${result.topK} · median of ` +
        `${result.iters}, max over ranks`,
    ) + `</text>`,
  ];
  // Legend, centred under the subtitle.
  const legendW = 150 * SERIES.length;
  let lx = width / 2 - legendW / 2;
  out.push(`<g class="legend">`);
  for (const s of SERIES) {
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    out.push(
      `<line x1="${lx}" y1="63" x2="${
        lx + 28
      }" y2="63" stroke="${s.color}" stroke-width="2"${dash}/>`,
    );
    out.push(`<circle cx="${lx + 14}" cy="63" r="3.5" fill="${s.color}"/>`);
    out.push(
      `<text x="${lx + 34}" y="67" font-size="12" ${FONT}>${escapeXml(s.label)}</text>`,
    );
    lx += legendW / SERIES.length;
  }
  out.push(`</g>`);

  scenarios.forEach((scenario, i) => {
    const x0 = 10 + (i % cols) * PANEL_W;
    const y0 = HEADER_H + Math.floor(i / cols) * PANEL_H;
    out.push(panel(scenario, result.rows.filter((r) => r.scenario === scenario), x0, y0));
  });
  out.push(`</svg>`);
  return out.join("\n") + "\n";
}
