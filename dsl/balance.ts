/**
 * The forwarder table of dedupe `node`: which rank of node m receives, and
 * fans out, the rows a source s sends to node m.
 *
 * - `rail` (today's forwarder): f(s, m) = m·gpn + local(s), the rank of node
 *   m with s's local index, so every cross-node row travels on s's own rail.
 * - `greedy`: FUSCO's Algorithm 1 (fusco.md §6). A *group* holds one GPU of
 *   every node; its members forward for one another. Each node sorts its GPUs
 *   by descending cross-node send volume L (ties: lower rank first), rotates
 *   that order left by its node index n (position i takes sorted entry
 *   (i + n) mod gpn), and group i is position i of every node. The heaviest
 *   senders of different nodes so land in different groups, which evens the
 *   load each group's forwarders receive. O(gpn log gpn) per node, and every
 *   rank computes the same table from the same loads.
 *
 * The table is data ({@link ForwarderTable}) so the layout compiler, the
 * Simulator's stage executor and the GPU engine can all take it; with `rail`
 * it is exactly f(s, m) = m·gpn + local(s).
 *
 * @module
 */
import { WeftError } from "./errors.ts";

/** How the forwarder of each (source, remote node) is chosen. */
export type { Balance } from "./types.ts";
import type { Balance } from "./types.ts";

/** The balancer settings the parser accepts. */
export const BALANCES: readonly Balance[] = Object.freeze(["rail", "greedy"]);

/**
 * A forwarder table: `group[r]` is rank r's group (0…gpn-1) and
 * `member[m·gpn + g]` the rank of node m in group g. The forwarder of source s
 * for node m is `member[m·gpn + group[s]]`.
 */
export interface ForwarderTable {
  /** GPUs per node. */
  readonly gpusPerNode: number;
  /** Nodes. */
  readonly nodes: number;
  /** [world] group of each rank. */
  readonly group: Int32Array;
  /** [nodes·gpn] rank of node m in group g at m·gpn + g. */
  readonly member: Int32Array;
}

function checkSizes(world: number, gpusPerNode: number): number {
  if (
    !Number.isInteger(world) || !Number.isInteger(gpusPerNode) || gpusPerNode < 1 ||
    world < 1 || world % gpusPerNode !== 0
  ) {
    throw new WeftError({
      field: "gpusPerNode",
      problem: `must divide world (${world}), got ${gpusPerNode}`,
      fix: "pass the GPUs of one node, a divisor of the world size",
    });
  }
  return world / gpusPerNode;
}

/**
 * The rail table: group = local index, so f(s, m) = m·gpn + local(s).
 *
 * @example
 * ```ts
 * import { forwarderOf, railTable } from "./balance.ts";
 * const t = railTable(8, 4);
 * console.assert(forwarderOf(t, 1, 1) === 5 && forwarderOf(t, 6, 0) === 2);
 * ```
 */
export function railTable(world: number, gpusPerNode: number): ForwarderTable {
  const nodes = checkSizes(world, gpusPerNode);
  const group = new Int32Array(world);
  for (let r = 0; r < world; r++) group[r] = r % gpusPerNode;
  const member = Int32Array.from({ length: world }, (_, i) => i);
  return { gpusPerNode, nodes, group, member };
}

/**
 * FUSCO's greedy table from each rank's cross-node send volume `load[r]`
 * (rows or bytes: only the order matters). Deterministic: ties go to the
 * lower rank.
 *
 * @throws {WeftError} `load` when its length is not the world or a value is negative or NaN.
 * @example
 * ```ts
 * import { greedyTable } from "./balance.ts";
 * // 2 nodes × 2 GPUs; node 0's heavy GPU is rank 0, node 1's is rank 2.
 * const t = greedyTable([9, 1, 8, 2], 2);
 * // node 0 keeps [0, 1]; node 1 sorts to [2, 3] and rotates by 1 → [3, 2]
 * console.assert(t.member.join() === "0,1,3,2" && t.group.join() === "0,1,1,0");
 * ```
 */
export function greedyTable(load: ArrayLike<number>, gpusPerNode: number): ForwarderTable {
  const world = load.length;
  const nodes = checkSizes(world, gpusPerNode);
  for (let r = 0; r < world; r++) {
    if (!(load[r] >= 0)) {
      throw new WeftError({
        field: "load",
        problem: `rank ${r}'s cross-node load is ${load[r]}`,
        fix: "pass a count ≥ 0 per rank",
        rank: r,
      });
    }
  }
  const group = new Int32Array(world);
  const member = new Int32Array(world);
  const gpn = gpusPerNode;
  for (let m = 0; m < nodes; m++) {
    const ranks = Array.from({ length: gpn }, (_, i) => m * gpn + i);
    ranks.sort((a, b) => load[b] - load[a] || a - b);
    for (let i = 0; i < gpn; i++) {
      const r = ranks[(i + m) % gpn];
      member[m * gpn + i] = r;
      group[r] = i;
    }
  }
  return { gpusPerNode, nodes, group, member };
}

/**
 * The forwarder of source s for node m (s itself's node gives the rank of s's
 * group there, which is s).
 *
 * @example
 * ```ts
 * import { forwarderOf, greedyTable } from "./balance.ts";
 * const t = greedyTable([9, 1, 8, 2], 2);
 * console.assert(forwarderOf(t, 0, 1) === 3 && forwarderOf(t, 2, 0) === 1);
 * ```
 */
export function forwarderOf(t: ForwarderTable, s: number, m: number): number {
  return t.member[m * t.gpusPerNode + t.group[s]];
}

/**
 * Load each rank receives as forwarder: Σ over sources s of other nodes of
 * `nodeRows[s·nodes + m]` (what s sends to node m) where the rank is s's
 * forwarder on m. With the rail table this is today's per-forwarder load.
 *
 * @example
 * ```ts
 * import { forwarderLoads, greedyTable, railTable } from "./balance.ts";
 * // 2 nodes × 2 GPUs; ranks 0 and 2 each send 10 rows to the other node, 1 and 3 send 1.
 * const nodeRows = [0, 10, 0, 1, 10, 0, 1, 0];
 * console.assert(Math.max(...forwarderLoads(nodeRows, railTable(4, 2))) === 10);
 * console.assert(Math.max(...forwarderLoads(nodeRows, greedyTable([10, 1, 10, 1], 2))) === 10);
 * ```
 */
export function forwarderLoads(nodeRows: ArrayLike<number>, t: ForwarderTable): Float64Array {
  const W = t.nodes * t.gpusPerNode;
  const out = new Float64Array(W);
  for (let s = 0; s < W; s++) {
    const ns = (s / t.gpusPerNode) | 0;
    for (let m = 0; m < t.nodes; m++) {
      if (m !== ns) out[forwarderOf(t, s, m)] += nodeRows[s * t.nodes + m];
    }
  }
  return out;
}

/**
 * Each source's cross-node send volume L under dedupe `node`: one row per
 * (token, remote node holding any of its pairs), from every rank's
 * `destRank` ([T·K] destination rank of each pair, -1 for none). Every rank
 * has these counts (HIER_PROTOCOL step 1 exchanges |nodeTokens_s[m]|), so
 * every rank computes the same greedy table.
 *
 * @example
 * ```ts
 * import { crossNodeLoads } from "./balance.ts";
 * // 2 nodes × 2 GPUs, K = 2: rank 0's token goes to ranks 2 and 3 (one remote node: 1 row),
 * // rank 2's token to ranks 0 and 3 (one remote node: 1 row), rank 1's to itself.
 * const L = crossNodeLoads([Int32Array.of(2, 3), Int32Array.of(1, -1), Int32Array.of(0, 3), new Int32Array(0)], 2, 2);
 * console.assert(L.join() === "1,0,1,0");
 * ```
 */
export function crossNodeLoads(
  destRank: readonly Int32Array[],
  topK: number,
  gpusPerNode: number,
): Float64Array {
  const out = new Float64Array(destRank.length);
  const seen: number[] = [];
  destRank.forEach((dr, s) => {
    const own = (s / gpusPerNode) | 0;
    for (let t = 0; t * topK < dr.length; t++) {
      seen.length = 0;
      for (let k = 0; k < topK; k++) {
        const d = dr[t * topK + k];
        if (d < 0) continue;
        const m = (d / gpusPerNode) | 0;
        if (m !== own && !seen.includes(m)) seen.push(m);
      }
      out[s] += seen.length;
    }
  });
  return out;
}

/**
 * Each source's cross-node load from the exchanged node row counts
 * (`nodeRows[s·nodes + m]` = |nodeTokens_s[m]|, HIER_PROTOCOL step 1): the
 * sum over the other nodes. The same numbers as {@link crossNodeLoads}, from
 * what every rank already has after the exchange.
 *
 * @example
 * ```ts
 * import { nodeRowLoads } from "./balance.ts";
 * // 2 nodes × 1 GPU: rank 0 sends 3 rows to node 1, rank 1 sends 2 to node 0.
 * console.assert(nodeRowLoads([0, 3, 2, 0], 2, 1).join() === "3,2");
 * ```
 */
export function nodeRowLoads(
  nodeRows: ArrayLike<number>,
  world: number,
  gpusPerNode: number,
): Float64Array {
  const W = world;
  const nodes = checkSizes(world, gpusPerNode);
  const out = new Float64Array(W);
  for (let s = 0; s < W; s++) {
    const own = (s / gpusPerNode) | 0;
    for (let m = 0; m < nodes; m++) if (m !== own) out[s] += nodeRows[s * nodes + m];
  }
  return out;
}

/**
 * The forwarder table a plan's `balance` setting gives for one batch's
 * cross-node loads (`load[r]`, e.g. {@link nodeRowLoads}): the rail table
 * for `"rail"` or an absent setting, else {@link greedyTable}. Layout
 * compiler, Simulator and the native hier engine (hier_balance.h) all call
 * this rule, so every rank and every implementation picks the same
 * forwarders.
 *
 * @example
 * ```ts
 * import { forwarderTable } from "./balance.ts";
 * console.assert(forwarderTable(undefined, [9, 1, 8, 2], 2).member.join() === "0,1,2,3");
 * console.assert(forwarderTable("greedy", [9, 1, 8, 2], 2).member.join() === "0,1,3,2");
 * ```
 */
export function forwarderTable(
  balance: Balance | undefined,
  load: ArrayLike<number>,
  gpusPerNode: number,
): ForwarderTable {
  return balance === "greedy"
    ? greedyTable(load, gpusPerNode)
    : railTable(load.length, gpusPerNode);
}
