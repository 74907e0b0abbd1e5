/**
 * One batch's traffic per rank and link class, read off a {@link BatchLayout}:
 * the counts the cost model turns into time. Everything is in rows (one row =
 * one token's hidden vector) in the dispatch direction; combine moves the
 * same rows back (partials cross where dispatch rows crossed), so it needs no
 * counts of its own.
 *
 * Link classes: a row between two ranks of one node crosses NVLink (direct,
 * or the forwarder's fan-out with dedupe `node`); a row between nodes crosses
 * the NIC of its source and of the rank that receives it (the destination, or
 * with dedupe `node` the forwarder). HBM counts are derived in cost.ts.
 *
 * @module
 */
import type { BatchLayout } from "../../dsl/types.ts";

/** Per-rank row counts of one batch ([world] each). */
export interface RankTraffic {
  /** Ranks. */
  readonly world: number;
  /** GPUs per node. */
  readonly gpusPerNode: number;
  /** T_r: tokens of each rank. */
  readonly tokens: Float64Array;
  /** R_r: rows each rank receives (its expert-major writes). */
  readonly recvRows: Float64Array;
  /** Rows of a rank's own tokens it keeps (one per token with pairs on itself; `none`: per pair). */
  readonly selfRows: Float64Array;
  /** Rows a rank sends over NVLink: to ranks of its node, and as forwarder, its fan-out. */
  readonly nvOut: Float64Array;
  /** Rows a rank receives over NVLink. */
  readonly nvIn: Float64Array;
  /** Of nvOut: the forwarder's fan-out (dedupe `node`). */
  readonly fanOut: Float64Array;
  /** Rows a rank sends to other nodes (its NIC, outbound). */
  readonly nicOut: Float64Array;
  /** Rows a rank receives from other nodes (its NIC, inbound; the forwarder's load). */
  readonly nicIn: Float64Array;
  /** Partials the home sums per rank (Σ over its tokens of the ranks they come back from). */
  readonly homePartials: Float64Array;
  /** Rows staged at each forwarder (dedupe `node`). */
  readonly stagedRows: Float64Array;
  /** Partials the forwarder reduces (Σ over staged rows of the node's devices with pairs). */
  readonly forwarderPartials: Float64Array;
  /** [world·nodes] rows rank s sends to node m at s·nodes + m (0 for its own node). */
  readonly nodeRows: Float64Array;
}

/**
 * Counts one batch's rows per rank and link class.
 *
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { rankTraffic } from "./rank_traffic.ts";
 * const plan = experts(8).byDevice().topK(2).hidden(8).dedupe("node").compile({ world: 4, gpusPerNode: 2 });
 * // rank 0's token 0 goes to experts 4 and 6 (ranks 2 and 3, node 1): one row to forwarder 2.
 * const t = rankTraffic(plan.layout([Int32Array.of(4, 6), new Int32Array(0), new Int32Array(0), new Int32Array(0)]));
 * console.assert(t.nicOut[0] === 1 && t.nicIn[2] === 1 && t.fanOut[2] === 1 && t.nvIn[3] === 1);
 * ```
 */
export function rankTraffic(layout: BatchLayout): RankTraffic {
  const { plan, ranks } = layout;
  const W = plan.world;
  const gpn = plan.gpusPerNode;
  const N = W / gpn;
  const node = (r: number) => (r / gpn) | 0;
  const f = () => new Float64Array(W);
  const tokens = f(), recvRows = f(), selfRows = f(), nvOut = f(), nvIn = f(), fanOut = f();
  const nicOut = f(), nicIn = f(), homePartials = f(), stagedRows = f();
  const forwarderPartials = f();
  const nodeRows = new Float64Array(W * N);
  const none = plan.dedupe === "none";
  for (const r of ranks) {
    const s = r.rank;
    tokens[s] = r.tokens;
    recvRows[s] = r.recvRows;
    homePartials[s] = r.combineFrom.length;
    stagedRows[s] = r.forwardToken.length;
    const send = none ? r.sendRowsToNoDedupe : r.sendRowsTo;
    selfRows[s] = send[s];
    for (let d = 0; d < W; d++) {
      if (d === s) continue;
      const rows = send[d];
      if (node(d) === node(s)) {
        nvOut[s] += rows;
        nvIn[d] += rows;
      } else {
        nicOut[s] += rows;
        nicIn[d] += rows;
        nodeRows[s * N + node(d)] += rows;
      }
      const fw = r.forwardRowsTo[d];
      nvOut[s] += fw;
      fanOut[s] += fw;
      nvIn[d] += fw;
    }
    // Partials at the forwarder: one per (staged row, distinct node device with pairs).
    const start = r.forwardStart, dest = r.forwardDestRank;
    for (let i = 0; i + 1 < start.length; i++) {
      let last = -1;
      for (let p = start[i]; p < start[i + 1]; p++) {
        if (dest[p] !== last) forwarderPartials[s]++;
        last = dest[p];
      }
    }
  }
  return {
    world: W,
    gpusPerNode: gpn,
    tokens,
    recvRows,
    selfRows,
    nvOut,
    nvIn,
    fanOut,
    nicOut,
    nicIn,
    homePartials,
    stagedRows,
    forwarderPartials,
    nodeRows,
  };
}
