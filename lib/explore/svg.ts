/**
 * The explorer's pictures as plain SVG text (no dependency): a rank × rank
 * traffic heatmap, a per-expert load bar chart and the predicted time per
 * stage. Every shape carries a `data-*` attribute with its value so tests
 * (and readers of the file) can check a picture against the numbers.
 *
 * @module
 */

/** Escapes text for an XML attribute or text node. */
export function xmlEscape(s: string): string {
  return s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(
    /"/g,
    "&quot;",
  );
}

const FONT = `font-family="sans-serif" font-size="11"`;

function svg(w: number, h: number, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}" viewBox="0 0 ${w} ${h}">`,
    `<rect x="0" y="0" width="${w}" height="${h}" fill="white"/>`,
    ...body,
    "</svg>",
    "",
  ].join("\n");
}

/** White → dark blue for v in [0, 1]. */
function shade(v: number): string {
  const c = (a: number, b: number) => Math.round(a + (b - a) * Math.max(0, Math.min(1, v)));
  return `rgb(${c(255, 8)},${c(255, 48)},${c(255, 107)})`;
}

/**
 * A W × W heatmap: one `<rect class="cell">` per (source row, destination
 * column), the diagonal included, shaded by value.
 *
 * @example
 * ```ts
 * import { heatmapSvg } from "./svg.ts";
 * const s = heatmapSvg([[0, 2], [1, 0]], { title: "rows" });
 * console.assert((s.match(/class="cell"/g) ?? []).length === 4);
 * ```
 */
export function heatmapSvg(
  m: readonly (readonly number[])[],
  opts: { readonly title: string; readonly unit?: string; readonly gpusPerNode?: number },
): string {
  const W = m.length;
  const cell = Math.max(4, Math.min(24, Math.floor(512 / Math.max(1, W))));
  const x0 = 50, y0 = 40;
  let hi = 0;
  for (const row of m) for (const v of row) hi = Math.max(hi, v);
  const body = [
    `<text x="${x0}" y="18" ${FONT}>${xmlEscape(opts.title)} (max ${hi.toPrecision(4)}${
      opts.unit ? " " + xmlEscape(opts.unit) : ""
    }; rows: source rank, columns: destination rank)</text>`,
  ];
  for (let s = 0; s < W; s++) {
    for (let d = 0; d < W; d++) {
      const v = m[s][d];
      body.push(
        `<rect class="cell" data-src="${s}" data-dst="${d}" data-value="${v}" x="${
          x0 + d * cell
        }" y="${y0 + s * cell}" width="${cell}" height="${cell}" fill="${
          shade(hi > 0 ? v / hi : 0)
        }"/>`,
      );
    }
  }
  const gpn = opts.gpusPerNode ?? W;
  // Node boundaries: inside a block rows cross NVLink, outside the NICs.
  for (let n = gpn; n < W; n += gpn) {
    const p = n * cell;
    body.push(
      `<line x1="${x0 + p}" y1="${y0}" x2="${x0 + p}" y2="${y0 + W * cell}" stroke="#c33"/>`,
      `<line x1="${x0}" y1="${y0 + p}" x2="${x0 + W * cell}" y2="${y0 + p}" stroke="#c33"/>`,
    );
  }
  return svg(x0 + W * cell + 20, y0 + W * cell + 20, body);
}

/**
 * A bar per value: `<rect class="bar" data-index="i" data-value="v">`, with a
 * dashed line at the mean.
 *
 * @example
 * ```ts
 * import { barsSvg } from "./svg.ts";
 * console.assert((barsSvg([3, 1, 2], { title: "load" }).match(/class="bar"/g) ?? []).length === 3);
 * ```
 */
export function barsSvg(
  values: readonly number[],
  opts: { readonly title: string; readonly unit?: string },
): string {
  const n = values.length;
  const bw = Math.max(2, Math.min(20, Math.floor(900 / Math.max(1, n))));
  const x0 = 50, y0 = 30, h = 220;
  const hi = Math.max(0, ...values);
  const mean = n ? values.reduce((a, b) => a + b, 0) / n : 0;
  const body = [
    `<text x="${x0}" y="18" ${FONT}>${xmlEscape(opts.title)} (max ${hi}, mean ${mean.toFixed(1)}${
      opts.unit ? " " + xmlEscape(opts.unit) : ""
    })</text>`,
    `<line x1="${x0}" y1="${y0 + h}" x2="${x0 + n * bw}" y2="${y0 + h}" stroke="black"/>`,
  ];
  values.forEach((v, i) => {
    const bh = hi > 0 ? (v / hi) * h : 0;
    body.push(
      `<rect class="bar" data-index="${i}" data-value="${v}" x="${x0 + i * bw}" y="${
        (y0 + h - bh).toFixed(2)
      }" width="${Math.max(1, bw - 1)}" height="${bh.toFixed(2)}" fill="#3465a4"/>`,
    );
  });
  if (hi > 0) {
    const y = (y0 + h - (mean / hi) * h).toFixed(2);
    body.push(
      `<line x1="${x0}" y1="${y}" x2="${
        x0 + n * bw
      }" y2="${y}" stroke="#c33" stroke-dasharray="4 3"/>`,
    );
  }
  return svg(x0 + n * bw + 20, y0 + h + 30, body);
}

/** One horizontal stacked bar: a label and its stages in order. */
export interface StageBar {
  /** Row label (e.g. the dedupe mode). */
  readonly label: string;
  /** [stage name, ms] in time order. */
  readonly stages: readonly (readonly [string, number])[];
}

const PALETTE = [
  "#3465a4",
  "#73d216",
  "#f57900",
  "#cc0000",
  "#75507b",
  "#c4a000",
  "#06989a",
  "#888a85",
];

/**
 * Predicted time per stage: one row per bar, one `<rect class="stage">` per
 * stage with its ms, in time order.
 *
 * @example
 * ```ts
 * import { stagesSvg } from "./svg.ts";
 * const s = stagesSvg([{ label: "node", stages: [["front", 0.1], ["network", 2]] }], { title: "ms" });
 * console.assert((s.match(/class="stage"/g) ?? []).length === 2);
 * ```
 */
export function stagesSvg(bars: readonly StageBar[], opts: { readonly title: string }): string {
  const x0 = 130, y0 = 30, bh = 22, width = 640;
  const total = Math.max(1e-9, ...bars.map((b) => b.stages.reduce((a, [, v]) => a + v, 0)));
  const names = [...new Set(bars.flatMap((b) => b.stages.map(([n]) => n)))];
  const color = (n: string) => PALETTE[names.indexOf(n) % PALETTE.length];
  const body = [`<text x="10" y="18" ${FONT}>${xmlEscape(opts.title)}</text>`];
  bars.forEach((b, i) => {
    const y = y0 + i * (bh + 8);
    body.push(`<text x="10" y="${y + 15}" ${FONT}>${xmlEscape(b.label)}</text>`);
    let x = x0;
    for (const [name, v] of b.stages) {
      const w = (v / total) * width;
      body.push(
        `<rect class="stage" data-bar="${xmlEscape(b.label)}" data-stage="${
          xmlEscape(name)
        }" data-value="${v}" x="${x.toFixed(2)}" y="${y}" width="${
          w.toFixed(2)
        }" height="${bh}" fill="${color(name)}"><title>${xmlEscape(name)} ${
          v.toFixed(3)
        } ms</title></rect>`,
      );
      x += w;
    }
    const sum = b.stages.reduce((a, [, v]) => a + v, 0);
    body.push(`<text x="${(x + 6).toFixed(2)}" y="${y + 15}" ${FONT}>${sum.toFixed(3)} ms</text>`);
  });
  const ly = y0 + bars.length * (bh + 8) + 10;
  names.forEach((n, i) => {
    body.push(
      `<rect x="${10 + i * 110}" y="${ly}" width="10" height="10" fill="${color(n)}"/>`,
      `<text x="${24 + i * 110}" y="${ly + 9}" ${FONT}>${xmlEscape(n)}</text>`,
    );
  });
  return svg(x0 + width + 90, ly + 30, body);
}
