/**
 * The explorer's output: the text report (markdown tables) and the three
 * pictures of an {@link ExploreResult}.
 *
 * @module
 */
import type { Prediction } from "../model/cost.ts";
import { nicGBsPerGpu } from "../model/topology.ts";
import type { ExploreResult } from "./explore.ts";
import { barsSvg, heatmapSvg, type StageBar, stagesSvg } from "./svg.ts";

const MB = 1e6;

function table(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (c: readonly string[]) =>
    "| " + c.map((x, i) => (i === 0 ? x.padEnd(w[i]) : x.padStart(w[i]))).join(" | ") + " |";
  const rule = "|" + w.map((n, i) => "-".repeat(n + 1) + (i === 0 ? "-" : ":")).join("|") + "|";
  return [line(header), rule, ...rows.map(line)].join("\n");
}

function stats(a: ArrayLike<number>): { min: number; mean: number; max: number; argmax: number } {
  let min = Infinity, max = -Infinity, sum = 0, argmax = 0;
  for (let i = 0; i < a.length; i++) {
    min = Math.min(min, a[i]);
    if (a[i] > max) [max, argmax] = [a[i], i];
    sum += a[i];
  }
  return a.length
    ? { min, mean: sum / a.length, max, argmax }
    : { min: 0, mean: 0, max: 0, argmax: 0 };
}

const f1 = (x: number) => x.toFixed(1);
const f3 = (x: number) => x.toFixed(3);

/** Stage names and ms in time order; they sum to the prediction's total. */
export function stageList(p: Prediction): [string, number][] {
  return [
    ["quantize", p.dispatch.quantize],
    ["front", p.dispatch.front],
    ["pack ∥ NIC (dispatch)", p.dispatch.transfer],
    ["fan-out / pull", p.dispatch.fanout],
    ["partials", p.combine.partials],
    ["reduce ∥ NIC (combine)", p.combine.transfer],
    ["home sum", p.combine.home],
    ["barriers", p.barriers],
  ];
}

/**
 * The text report.
 *
 * @example
 * ```ts
 * import { explore } from "./explore.ts";
 * import { formatReport } from "./format.ts";
 * import { TOPOLOGIES } from "../model/topology.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const pattern = experts(16).byDevice().topK(2).hidden(64).spec;
 * const r = explore({ pattern, topology: TOPOLOGIES.h200x4, routing: { name: "uniform", tokens: 32 } });
 * console.assert(formatReport(r).includes("Predicted ms per stage"));
 * ```
 */
export function formatReport(r: ExploreResult): string {
  const { plan, topology: t, traffic: tr, layout } = r;
  const out: string[] = [];
  out.push(
    `pattern: ${plan.experts} experts (${plan.pattern.placement.kind}), top-${plan.topK}, hidden ${plan.hidden} ${plan.dtype}${
      plan.quantize ? ` (dispatch ${plan.quantize})` : ""
    }, dedupe ${plan.dedupe}${
      plan.balance ? ` (balance ${plan.balance})` : ""
    }, ${plan.receive}, ${plan.combine}`,
    `topology: ${t.name}: ${t.nodes} node(s) × ${t.gpusPerNode} GPUs; NVLink read/write ${t.nvlinkReadGBs}/${t.nvlinkWriteGBs} GB/s; ` +
      `NIC ${
        nicGBsPerGpu(t)
      } GB/s per GPU (${t.nicsPerNode} × ${t.nicGBs} GB/s a node); HBM ${t.hbmGBs} GB/s`,
    `layout: ${plan.world} ranks, ${stats(tr.tokens).mean.toFixed(0)} tokens/rank on average, ` +
      `computed on the CPU in ${r.layoutMs.toFixed(0)} ms; a row crosses as ${r.rowBytes} B`,
    "",
  );
  // ---- traffic matrix ----
  const W = plan.world, gpn = plan.gpusPerNode;
  let intra = 0, inter = 0, links = 0, linkMax = 0, maxPair = "-";
  for (let s = 0; s < W; s++) {
    for (let d = 0; d < W; d++) {
      const v = r.matrix[s][d];
      if (v === 0) continue;
      links++;
      if (((s / gpn) | 0) === ((d / gpn) | 0)) intra += v;
      else inter += v;
      if (v > linkMax) [linkMax, maxPair] = [v, `${s} → ${d}`];
    }
  }
  out.push(
    `## Traffic matrix (dispatch rows between ranks, dedupe ${plan.dedupe})`,
    table(["", "rows", "MB"], [
      ["inside nodes (NVLink)", String(intra), f1((intra * r.rowBytes) / MB)],
      ["between nodes (NIC)", String(inter), f1((inter * r.rowBytes) / MB)],
      [`busiest link (${maxPair})`, String(linkMax), f1((linkMax * r.rowBytes) / MB)],
      [`links with traffic`, String(links), "-"],
    ]),
    "",
  );
  // ---- per rank ----
  const nicOut = tr.nicOut.map((x) => x * r.rowBytes / MB);
  const nvOut = tr.nvOut.map((x) => x * r.rowBytes / MB);
  const rankRows = [
    ["tokens", tr.tokens],
    ["rows received", tr.recvRows],
    ["NVLink MB sent", nvOut],
    ["NIC MB sent", nicOut],
    ["NIC rows in (forwarder)", tr.nicIn],
  ] as const;
  out.push(
    "## Per-rank load",
    table(
      ["", "min", "mean", "max", "max/mean", "busiest rank"],
      rankRows.map(([name, a]) => {
        const s = stats(a);
        return [
          name,
          f1(s.min),
          f1(s.mean),
          f1(s.max),
          s.mean ? (s.max / s.mean).toFixed(2) : "-",
          String(s.argmax),
        ];
      }),
    ),
    "",
  );
  // ---- per expert ----
  const e = stats(r.perExpert);
  const top = r.perExpert.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 5);
  out.push(
    "## Per-expert load (rows)",
    `min ${e.min}, mean ${f1(e.mean)}, max ${e.max} (max/mean ${
      e.mean ? (e.max / e.mean).toFixed(2) : "-"
    }); busiest: ${top.map(([v, i]) => `expert ${i} (${v})`).join(", ")}`,
    "",
  );
  // ---- bytes per link class per dedupe ----
  out.push(
    "## Bytes per link class (dispatch direction; combine moves the same rows back)",
    table(
      [
        "dedupe",
        "NVLink MB/GPU max",
        "NVLink GB all",
        "NIC MB/GPU max",
        "NIC GB all",
        "HBM MB/GPU max",
        "predicted ms",
      ],
      r.modes.map((m) => {
        const b = m.prediction.bytes;
        return [
          m.dedupe,
          f1(b.nvlinkMax / MB),
          f3(b.nvlinkTotal / 1e9),
          f1(b.nicMax / MB),
          f3(b.nicTotal / 1e9),
          f1(b.hbmMax / MB),
          f3(m.prediction.totalMs),
        ];
      }),
    ),
    "",
  );
  // ---- balancer ----
  const node = r.modes.find((m) => m.greedy !== undefined);
  if (node?.greedy) {
    const a = node.prediction, b = node.greedy;
    const rows = (p: Prediction) => p.bytes.busiestForwarderRows;
    out.push(
      "## Balancer (dedupe node): the busiest forwarder's inbound NIC rows",
      table(["forwarders", "busiest rows", "busiest MB", "predicted ms"], [
        ["rail (same local index)", String(rows(a)), f1(rows(a) * r.rowBytes / MB), f3(a.totalMs)],
        ["greedy (FUSCO Alg. 1)", String(rows(b)), f1(rows(b) * r.rowBytes / MB), f3(b.totalMs)],
      ]),
      `change: ${rows(a) ? (100 * (rows(b) / rows(a) - 1)).toFixed(1) : "0"}% rows, ${
        (100 * (b.totalMs / a.totalMs - 1)).toFixed(1)
      }% time (each row: the layout compiled with that table)`,
      "",
    );
  }
  // ---- stages ----
  const names = stageList(r.modes[0].prediction).map(([n]) => n);
  out.push(
    "## Predicted ms per stage (each stage: its slowest rank)",
    table(
      ["dedupe", ...names, "dispatch", "combine", "total"],
      r.modes.flatMap((m) => {
        const line = (label: string, p: Prediction) => [
          label,
          ...stageList(p).map(([, v]) => f3(v)),
          f3(p.dispatchMs),
          f3(p.combineMs),
          f3(p.totalMs),
        ];
        const rows = [line(m.dedupe, m.prediction)];
        if (m.greedy) rows.push(line(`${m.dedupe} + greedy`, m.greedy));
        return rows;
      }),
    ),
  );
  void layout;
  return out.join("\n") + "\n";
}

/** The three pictures: file name → SVG text. */
export function explorePictures(r: ExploreResult): Record<string, string> {
  const bars: StageBar[] = r.modes.flatMap((m) => {
    const b: StageBar[] = [{ label: m.dedupe, stages: stageList(m.prediction) }];
    if (m.greedy) b.push({ label: `${m.dedupe}+greedy`, stages: stageList(m.greedy) });
    return b;
  });
  return {
    "traffic.svg": heatmapSvg(r.matrix, {
      title: `dispatch rows per rank pair, dedupe ${r.plan.dedupe}`,
      unit: "rows",
      gpusPerNode: r.plan.gpusPerNode,
    }),
    "experts.svg": barsSvg(r.perExpert, { title: "rows per expert", unit: "rows" }),
    "stages.svg": stagesSvg(bars, {
      title: `predicted ms per stage on ${r.topology.name} (dispatch + combine)`,
    }),
  };
}
