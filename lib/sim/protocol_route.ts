/**
 * Stages 0–2 of the hierarchical protocol (native/HIER_PROTOCOL.md "Dispatch"):
 * each source routes its own pairs (slot, ordinal, per-slot totals, the
 * tokens bound for each remote node, an error flag), the counts are
 * exchanged over the world, and every rank derives the same receive bases
 * from them. Nothing here reads another source's routing.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import { checkTopkIdxArray } from "../../dsl/check_routing.ts";
import { resolveSlot, slotRankTable } from "../../dsl/placement.ts";
import { checkTopkWeights } from "../core/input_check.ts";
import type { SliceStream } from "./slices.ts";
import {
  forwarderOf,
  type ForwarderTable,
  forwarderTable,
  nodeRowLoads,
} from "../../dsl/balance.ts";

/** Stage 0, one source's routing state. */
export interface SourceRoute {
  /** The source rank s. */
  readonly rank: number;
  /** T_s. */
  readonly tokens: number;
  /** [T·K] slot σ of each (t,k) by the replica rule, -1 for an empty slot. */
  readonly slot: Int32Array;
  /** [T·K] ordinal of (t,k) among s's pairs of its slot, in (t,k) order; -1 for none. */
  readonly ord: Int32Array;
  /** [slots] cnt_s[σ]: s's pairs of each slot. */
  readonly count: Int32Array;
  /** [nodes] for each remote node m, s's tokens (ascending) with a pair there; empty for its own node. */
  readonly nodeTokens: readonly Int32Array[];
  /** [T·K] the routing weights as given (a copy). */
  readonly weights: Float32Array;
  /** The error flag: the input check's failure, when this source's routing is bad. */
  readonly error?: WeftError;
}

/**
 * Stage 0 on source `rank`: the input checks (range, duplicates, NaN
 * weights) throw nothing here but set the flag; a flagged source's slot and
 * ordinal tables stay -1 (stage 1 stops every rank before they are read).
 */
export function route(
  plan: PlanSpec,
  rank: number,
  topkIdx: Int32Array,
  topkWeights: Float32Array,
  tokens: number,
): SourceRoute {
  const { topK: K, gpusPerNode: gpn, nodes } = plan;
  const S = plan.slotBase[plan.world];
  let error: WeftError | undefined;
  try {
    checkTopkIdxArray(plan, rank, topkIdx, tokens);
    checkTopkWeights(plan, rank, topkIdx, topkWeights, tokens);
  } catch (e) {
    if (!(e instanceof WeftError)) throw e;
    error = e;
  }
  const slot = new Int32Array(tokens * K).fill(-1);
  const ord = new Int32Array(tokens * K).fill(-1);
  const count = new Int32Array(S);
  const nodeTokens: Int32Array[] = [];
  if (error !== undefined) {
    for (let m = 0; m < nodes; m++) nodeTokens.push(new Int32Array(0));
    return { rank, tokens, slot, ord, count, nodeTokens, weights: topkWeights.slice(), error };
  }
  const owner = slotRankTable(plan);
  const perNode = new Int32Array(nodes * tokens);
  const onNode = new Uint8Array(nodes);
  const own = (rank / gpn) | 0;
  for (let t = 0; t < tokens; t++) {
    onNode.fill(0);
    for (let k = 0; k < K; k++) {
      const e = topkIdx[t * K + k];
      if (e < 0) continue;
      const sl = resolveSlot(plan, e, rank, t);
      slot[t * K + k] = sl;
      ord[t * K + k] = count[sl]++;
      onNode[(owner[sl] / gpn) | 0] = 1;
    }
    for (let m = 0; m < nodes; m++) if (onNode[m] && m !== own) perNode[m * tokens + t] = 1;
  }
  for (let m = 0; m < nodes; m++) {
    const list: number[] = [];
    for (let t = 0; t < tokens; t++) if (perNode[m * tokens + t]) list.push(t);
    nodeTokens.push(Int32Array.from(list));
  }
  return { rank, tokens, slot, ord, count, nodeTokens, weights: topkWeights.slice() };
}

/** Stage 1: what every rank all-gathers before any row moves. */
export interface Exchanged {
  /** [W] T_s. */
  readonly tokens: Int32Array;
  /** [W] 1 where the source's error flag is set. */
  readonly errorFlag: Uint8Array;
  /** [W × slots] cnt_s[σ] at s·slots + σ. */
  readonly counts: Int32Array;
  /** [W × nodes] |nodeTokens_s[m]| at s·nodes + m: the rows s sends to node m. */
  readonly nodeRows: Int32Array;
  /**
   * The batch's forwarder table, every rank computing it from the gathered
   * node row counts (the plan's `balance`; rail when absent).
   */
  readonly forwarders: ForwarderTable;
}

/**
 * Stage 1: the all-gather of every source's {T, flag, counts, node row
 * counts}; then, if any flag is set, every rank fails with the first bad
 * source's WeftError (field `topkIdx` or `topkWeights`, its rank), before
 * anything is packed or written. Else the forwarder table follows from the
 * gathered node row counts (each source's cross-node load).
 *
 * @throws {WeftError} the lowest flagged source's input error.
 */
export function exchange(plan: PlanSpec, routes: readonly SourceRoute[]): Exchanged {
  const W = plan.world;
  const S = plan.slotBase[W];
  const N = plan.nodes;
  const ex = {
    tokens: new Int32Array(W),
    errorFlag: new Uint8Array(W),
    counts: new Int32Array(W * S),
    nodeRows: new Int32Array(W * N),
  };
  for (const r of routes) {
    ex.tokens[r.rank] = r.tokens;
    ex.errorFlag[r.rank] = r.error !== undefined ? 1 : 0;
    ex.counts.set(r.count, r.rank * S);
    r.nodeTokens.forEach((list, m) => ex.nodeRows[r.rank * N + m] = list.length);
  }
  const bad = ex.errorFlag.indexOf(1);
  if (bad >= 0) throw routes.find((r) => r.rank === bad)!.error!;
  // After the flags: a failed exchange throws the input error, before any table.
  const load = plan.balance === "greedy"
    ? nodeRowLoads(ex.nodeRows, W, plan.gpusPerNode)
    : new Float64Array(W);
  return { ...ex, forwarders: forwarderTable(plan.balance, load, plan.gpusPerNode) };
}

/** Stage 2: receive rows from the exchanged counts, the same on every rank. */
export interface Bases {
  /** [W × slots] base[s][σ]: row(s, t, k) = base[s·slots + σ] + ord[t,k] on σ's rank. */
  readonly base: Int32Array;
  /** [W] R_d. */
  readonly recvRows: Int32Array;
  /** [W] rows per local expert of each rank. */
  readonly expertCounts: readonly Int32Array[];
}

/**
 * Stage 2: receive rows in the plan's order (computeLayout's): expert-major
 * puts slot σ's rows after the rows of d's lower slots, source ascending
 * inside σ; rank-major puts source s's rows after lower sources' rows, slot
 * ascending inside s. Inside a (source, slot) bucket the ordinal orders.
 */
export function bases(plan: PlanSpec, ex: Exchanged): Bases {
  const W = plan.world;
  const S = plan.slotBase[W];
  const rankMajor = plan.receive === "rank-major";
  const base = new Int32Array(W * S);
  const recvRows = new Int32Array(W);
  const expertCounts: Int32Array[] = [];
  for (let d = 0; d < W; d++) {
    const lo = plan.slotBase[d], hi = plan.slotBase[d + 1];
    const totals = new Int32Array(hi - lo);
    let row = 0;
    if (rankMajor) {
      for (let s = 0; s < W; s++) {
        for (let sl = lo; sl < hi; sl++) {
          base[s * S + sl] = row;
          row += ex.counts[s * S + sl];
          totals[sl - lo] += ex.counts[s * S + sl];
        }
      }
    } else {
      for (let sl = lo; sl < hi; sl++) {
        for (let s = 0; s < W; s++) {
          base[s * S + sl] = row;
          row += ex.counts[s * S + sl];
        }
        totals[sl - lo] = row - base[sl];
      }
    }
    recvRows[d] = row;
    expertCounts.push(totals);
  }
  return { base, recvRows, expertCounts };
}

/**
 * The inter-node streams: each source's segment for each remote node m, to
 * its forwarder there, f(s, m) from the exchanged forwarder table (rail:
 * m·gpusPerNode + local(s));
 * source ascending, then node ascending. Combine's return path runs each
 * stream backwards (forwarder → source), in the same list order.
 */
export function forwardStreams(plan: PlanSpec, ex: Exchanged): SliceStream[] {
  const { world: W, gpusPerNode: gpn, nodes: N } = plan;
  const streams: SliceStream[] = [];
  for (let s = 0; s < W; s++) {
    for (let m = 0; m < N; m++) {
      if (m !== ((s / gpn) | 0)) {
        streams.push({
          src: s,
          dst: forwarderOf(ex.forwarders, s, m),
          rows: ex.nodeRows[s * N + m],
        });
      }
    }
  }
  return streams;
}
