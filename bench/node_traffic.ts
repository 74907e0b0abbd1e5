/**
 * Bytes per link class for one batch over several nodes: NVLink/IPC inside a
 * node and the network between nodes, with dedupe `device` and dedupe
 * `node`, both counted by the CPU layout compiler (`computeLayout`) from the
 * same routing. Used by the emulated-node benchmark (bench/nodes.ts).
 *
 * @module
 */
import type { BatchLayout, PlanSpec } from "../dsl/types.ts";
import { Plan } from "../dsl/mod.ts";
import { computeLayout } from "../dsl/layout.ts";

/** Rows and bytes of one link class in one direction (dispatch). */
export interface ClassTraffic {
  readonly rows: number;
  readonly bytes: number;
}

/** One dedupe's traffic by link class. */
export interface DedupeTraffic {
  /** Between ranks of one node (NVLink / CUDA IPC), forwarded rows included. */
  readonly intra: ClassTraffic;
  /** Between nodes (NCCL's network transport). */
  readonly net: ClassTraffic;
  /** The most bytes one rank sends over the network. */
  readonly maxRankNetBytes: number;
}

/** Dedupe `device` against dedupe `node` for one batch. */
export interface NodeTraffic {
  readonly device: DedupeTraffic;
  readonly node: DedupeTraffic;
}

/**
 * Sums a layout's links by class: a link whose ends are on one node
 * (⌊rank / gpusPerNode⌋) is intra-node, any other crosses the network; rows a
 * forwarder fans out inside its node count on their own link.
 *
 * @example
 * ```ts
 * import { experts } from "../dsl/mod.ts";
 * import { computeLayout } from "../dsl/layout.ts";
 * import { classTraffic } from "./node_traffic.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).dedupe("device")
 *   .compile({ world: 4, gpusPerNode: 2 });
 * // Rank 0's token goes to experts 2 (rank 1, own node) and 4 (rank 2, other node).
 * const none = new Int32Array(0);
 * const t = classTraffic(computeLayout(plan, [Int32Array.of(2, 4), none, none, none]));
 * console.assert(t.intra.rows === 1 && t.net.rows === 1 && t.net.bytes === 32);
 * ```
 */
export function classTraffic(layout: BatchLayout): DedupeTraffic {
  const gpn = layout.plan.gpusPerNode;
  const node = (rank: number) => Math.floor(rank / gpn);
  let intraRows = 0, intraBytes = 0, netRows = 0, netBytes = 0;
  const perRankNet = new Float64Array(layout.plan.world);
  for (const l of layout.links) {
    const rows = l.rows + l.forwardedRows;
    const bytes = l.bytes + l.forwardedBytes;
    if (node(l.src) === node(l.dst)) {
      intraRows += rows;
      intraBytes += bytes;
    } else {
      netRows += rows;
      netBytes += bytes;
      perRankNet[l.src] += bytes;
    }
  }
  return {
    intra: { rows: intraRows, bytes: intraBytes },
    net: { rows: netRows, bytes: netBytes },
    maxRankNetBytes: Math.max(0, ...perRankNet),
  };
}

/**
 * The traffic of one routing under dedupe `device` and dedupe `node`: the
 * plan recompiled with each, everything else the same.
 *
 * @example
 * ```ts
 * import { experts } from "../dsl/mod.ts";
 * import { nodeTraffic } from "./node_traffic.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8)
 *   .compile({ world: 4, gpusPerNode: 2 });
 * // Rank 0's token goes to experts 4 and 6: ranks 2 and 3, both on node 1.
 * const none = new Int32Array(0);
 * const t = nodeTraffic(plan, [Int32Array.of(4, 6), none, none, none]);
 * console.assert(t.device.net.rows === 2 && t.node.net.rows === 1 && t.node.intra.rows === 1);
 * ```
 */
export function nodeTraffic(plan: PlanSpec, topkIdx: readonly Int32Array[]): NodeTraffic {
  const context = { world: plan.world, gpusPerNode: plan.gpusPerNode };
  const under = (dedupe: "device" | "node") =>
    classTraffic(computeLayout(Plan.compile({ ...plan.pattern, dedupe }, context), topkIdx));
  return { device: under("device"), node: under("node") };
}

const MB = 1e6;

/**
 * A markdown table of one batch's traffic by link class: MB with dedupe
 * `device`, with dedupe `node`, and the saving.
 *
 * @example
 * ```ts
 * import { formatNodeTraffic } from "./node_traffic.ts";
 * const c = (rows: number) => ({ rows, bytes: rows * 1e6 });
 * const t = {
 *   device: { intra: c(2), net: c(8), maxRankNetBytes: 4e6 },
 *   node: { intra: c(6), net: c(4), maxRankNetBytes: 2e6 },
 * };
 * console.assert(formatNodeTraffic(t).includes("| network (between nodes) |"));
 * console.assert(formatNodeTraffic(t).includes("2.00×"));
 * ```
 */
export function formatNodeTraffic(t: NodeTraffic): string {
  const row = (name: string, d: ClassTraffic, n: ClassTraffic) =>
    `| ${name} | ${d.rows} | ${(d.bytes / MB).toFixed(1)} | ${n.rows} | ${
      (n.bytes / MB).toFixed(1)
    } | ${n.bytes > 0 ? `${(d.bytes / n.bytes).toFixed(2)}×` : "—"} |`;
  return [
    "| link class | rows (device) | MB (device) | rows (node) | MB (node) | device / node |",
    "|---|---:|---:|---:|---:|---:|",
    row("NVLink/IPC (inside a node)", t.device.intra, t.node.intra),
    row("network (between nodes)", t.device.net, t.node.net),
    `| max network MB sent by one rank | | ${(t.device.maxRankNetBytes / MB).toFixed(1)} | | ${
      (t.node.maxRankNetBytes / MB).toFixed(1)
    } | |`,
  ].join("\n");
}
