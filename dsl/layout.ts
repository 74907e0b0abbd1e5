/**
 * The layout compiler: one batch's routing (each rank's `topkIdx`) plus a
 * plan → one {@link RankLayout} per rank, the index arrays an engine gathers
 * and scatters along. This is the CPU reference the GPU layout kernels must
 * reproduce array for array.
 *
 * Every pass is a counting sort over (source rank, token, k) in ascending
 * order, so the whole compile is O(W·T·K + W·slots + W²) with typed arrays
 * only. Walking sources, tokens and k slots in ascending order while handing
 * out rows from per-bucket cursors is what makes "(source rank, token, k)
 * ascending inside a bucket" hold without any comparison sort.
 *
 * @module
 */
import type { BatchLayout, PlanSpec, RankLayout } from "./types.ts";
import { resolveSlot, slotRankTable } from "./placement.ts";
import { checkTopkIdxArray } from "./check_routing.ts";
import { WeftError } from "./errors.ts";
import { linkTraffic } from "./layout_traffic.ts";
import { crossNodeLoads, forwarderOf, forwarderTable } from "./balance.ts";

// The layout's wire costs and text forms live apart; re-exported so that
// importers of this module keep finding them here.
export { dispatchRowBytes, linkTraffic } from "./layout_traffic.ts";
export { layoutFromJSON, layoutFromYAML, layoutToJSON, layoutToYAML } from "./layout_text.ts";

/** Sort the first n entries of a by value (n ≤ K, tiny: insertion sort). */
function sortSmall(a: Int32Array, n: number): void {
  for (let i = 1; i < n; i++) {
    const v = a[i];
    let j = i - 1;
    while (j >= 0 && a[j] > v) {
      a[j + 1] = a[j];
      j--;
    }
    a[j + 1] = v;
  }
}

/**
 * Compile one batch's layout.
 *
 * `topkIdx[r]` is rank r's [T_r × K] expert ids (`-1` = empty slot); T_r may
 * differ between ranks and may be 0. The ids are checked first (range,
 * length, duplicates) and a bad one throws before anything is built.
 *
 * Dedupe `node`: a token bound for another node is sent once per node, to
 * that node's forwarder (the plan's `balance` table, dsl/balance.ts: with
 * `rail` the rank there with the source's local index), which
 * fans it out to the destination rows of its node (`forward*` arrays); tokens
 * bound for the source's own node go straight to each device as with
 * `device`. Statistics count the inter-node row once (`sendRowsTo`) and the
 * forwarder's fan-out apart (`forwardRowsTo`, `LinkTraffic.forwardedRows`).
 *
 * @throws {WeftError} `topkIdx` when the array count or any rank's ids are bad.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { computeLayout } from "./layout.ts";
 * import { compilePlacement } from "./placement.ts";
 * import type { PlanSpec } from "./types.ts";
 * const pattern = { placement: { kind: "byDevice" }, topK: 2, dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "f32" } as const;
 * const plan: PlanSpec = {
 *   pattern, world: 2, gpusPerNode: 2, nodes: 1, experts: 4, topK: 2, hidden: 8, dtype: "f32",
 *   dedupe: "device", receive: "expert-major", combine: "weighted",
 *   ...compilePlacement({ placement: pattern.placement, experts: 4, world: 2, gpusPerNode: 2 }),
 * };
 * const l = computeLayout(plan, [Int32Array.of(2, 3), Int32Array.of(0, -1)]);
 * assert.ok(l.ranks[0].sendOffsets.join() === "0,0,1"); // rank 0 sends token 0 once, to rank 1
 * assert.ok(l.ranks[1].recvRows === 2 && l.ranks[0].recvRows === 1);
 * ```
 */
export function computeLayout(plan: PlanSpec, topkIdx: readonly Int32Array[]): BatchLayout {
  const W = plan.world;
  const K = plan.topK;
  const gpn = plan.gpusPerNode;
  const dedupe = plan.dedupe;
  if (!Array.isArray(topkIdx) || topkIdx.length !== W) {
    throw new WeftError({
      field: "topkIdx",
      problem: `expected one topkIdx array per rank (${W}), got ${
        Array.isArray(topkIdx) ? topkIdx.length : typeof topkIdx
      }`,
      fix: `pass ${W} Int32Arrays in rank order`,
    });
  }
  const tokens = topkIdx.map((idx, r) => checkTopkIdxArray(plan, r, idx));

  const S = plan.slotBase[W];
  const slotRank = slotRankTable(plan);
  const slotBase = plan.slotBase;

  // ---- resolve every (t,k) to a slot and destination rank ----
  const slotOf: Int32Array[] = [];
  const destRank: Int32Array[] = [];
  for (let s = 0; s < W; s++) {
    const idx = topkIdx[s];
    const so = new Int32Array(idx.length);
    const dr = new Int32Array(idx.length);
    for (let i = 0; i < idx.length; i++) {
      const e = idx[i];
      if (e < 0) {
        so[i] = -1;
        dr[i] = -1;
      } else {
        const slot = resolveSlot(plan, e, s, (i / K) | 0);
        so[i] = slot;
        dr[i] = slotRank[slot];
      }
    }
    slotOf.push(so);
    destRank.push(dr);
  }

  // ---- receive rows: counting sort by slot (and by source for rank-major) ----
  const rankMajor = plan.receive === "rank-major";
  const slotCount = new Int32Array(S);
  // Rank-major buckets are (source, slot); expert-major buckets are slots.
  const bucket = new Int32Array(rankMajor ? W * S : S);
  for (let s = 0; s < W; s++) {
    const so = slotOf[s];
    for (let i = 0; i < so.length; i++) {
      const slot = so[i];
      if (slot < 0) continue;
      slotCount[slot]++;
      bucket[rankMajor ? s * S + slot : slot]++;
    }
  }
  const recvRows = new Int32Array(W);
  // Turn bucket counts into each bucket's first row inside its destination.
  for (let d = 0; d < W; d++) {
    let acc = 0;
    if (rankMajor) {
      for (let s = 0; s < W; s++) {
        for (let slot = slotBase[d]; slot < slotBase[d + 1]; slot++) {
          const c = bucket[s * S + slot];
          bucket[s * S + slot] = acc;
          acc += c;
        }
      }
    } else {
      for (let slot = slotBase[d]; slot < slotBase[d + 1]; slot++) {
        const c = bucket[slot];
        bucket[slot] = acc;
        acc += c;
      }
    }
    recvRows[d] = acc;
  }
  const srcRankD = Array.from({ length: W }, (_, d) => new Int32Array(recvRows[d]));
  const srcTokenD = Array.from({ length: W }, (_, d) => new Int32Array(recvRows[d]));
  const srcKD = Array.from({ length: W }, (_, d) => new Int32Array(recvRows[d]));
  const localExpertD = Array.from({ length: W }, (_, d) => new Int32Array(recvRows[d]));
  const destRow: Int32Array[] = [];
  for (let s = 0; s < W; s++) {
    const so = slotOf[s];
    const dr = destRank[s];
    const rows = new Int32Array(so.length);
    for (let i = 0; i < so.length; i++) {
      const slot = so[i];
      if (slot < 0) {
        rows[i] = -1;
        continue;
      }
      const d = dr[i];
      const row = bucket[rankMajor ? s * S + slot : slot]++;
      rows[i] = row;
      srcRankD[d][row] = s;
      srcTokenD[d][row] = (i / K) | 0;
      srcKD[d][row] = i % K;
      localExpertD[d][row] = slot - slotBase[d];
    }
    destRow.push(rows);
  }

  // ---- source side: transfers, combine mapping, statistics ----
  const nodeOf = (r: number): number => (r / gpn) | 0;
  // The forwarder table, from the batch's cross-node loads (rail: no loads needed).
  const hier = dedupe === "node" && plan.nodes > 1;
  const table = forwarderTable(
    hier ? plan.balance : undefined,
    hier && plan.balance === "greedy" ? crossNodeLoads(destRank, K, gpn) : new Float64Array(W),
    gpn,
  );
  const source = Array.from({ length: W }, (_, s) => {
    const T = tokens[s];
    const dr = destRank[s];
    const forwardRank = new Int32Array(W);
    for (let d = 0; d < W; d++) {
      forwardRank[d] = hier && nodeOf(d) !== nodeOf(s) ? forwarderOf(table, s, nodeOf(d)) : d;
    }
    const sendRowsToNoDedupe = new Int32Array(W);
    for (let i = 0; i < dr.length; i++) if (dr[i] >= 0) sendRowsToNoDedupe[dr[i]]++;

    // Per token: the distinct targets (sorted); a transfer per target unless `none`.
    const targets = new Int32Array(K);
    const distinctTargets = (t: number): number => {
      let n = 0;
      for (let k = 0; k < K; k++) {
        const d = dr[t * K + k];
        if (d < 0) continue;
        const f = forwardRank[d];
        let dup = false;
        for (let j = 0; j < n; j++) {
          if (targets[j] === f) {
            dup = true;
            break;
          }
        }
        if (!dup) targets[n++] = f;
      }
      sortSmall(targets, n);
      return n;
    };

    const sendRowsTo = new Int32Array(W);
    const combineStart = new Int32Array(T + 1);
    let distinctTotal = 0;
    for (let t = 0; t < T; t++) {
      const n = distinctTargets(t);
      distinctTotal += n;
      combineStart[t + 1] = distinctTotal;
      if (dedupe !== "none") { for (let j = 0; j < n; j++) sendRowsTo[targets[j]]++; }
    }
    if (dedupe === "none") sendRowsTo.set(sendRowsToNoDedupe);
    const sendOffsets = new Int32Array(W + 1);
    for (let d = 0; d < W; d++) sendOffsets[d + 1] = sendOffsets[d] + sendRowsTo[d];
    const sendToken = new Int32Array(sendOffsets[W]);
    const combineFrom = new Int32Array(distinctTotal);
    const cursor = sendOffsets.slice(0, W);
    for (let t = 0; t < T; t++) {
      const n = distinctTargets(t);
      combineFrom.set(targets.subarray(0, n), combineStart[t]);
      if (dedupe !== "none") { for (let j = 0; j < n; j++) sendToken[cursor[targets[j]]++] = t; }
      else {
        for (let k = 0; k < K; k++) {
          const d = dr[t * K + k];
          if (d >= 0) sendToken[cursor[d]++] = t;
        }
      }
    }
    return {
      forwardRank,
      sendRowsTo,
      sendRowsToNoDedupe,
      sendOffsets,
      sendToken,
      combineStart,
      combineFrom,
    };
  });

  // ---- forwarder side (dedupe node) ----
  const forward = Array.from({ length: W }, (_, f) => {
    const forwardOffsets = new Int32Array(W + 1);
    const forwardRowsTo = new Int32Array(W);
    if (dedupe !== "node") {
      const none = new Int32Array(0);
      return {
        forwardOffsets,
        forwardToken: none,
        forwardStart: new Int32Array(1),
        forwardDestRank: none,
        forwardDestRow: none,
        forwardK: none,
        forwardRowsTo,
      };
    }
    const node = nodeOf(f);
    // Sources that use f as forwarder: other nodes, f's group in the table.
    let staged = 0;
    let pairs = 0;
    for (let s = 0; s < W; s++) {
      if (nodeOf(s) !== node && table.group[s] === table.group[f]) {
        const { sendOffsets, sendToken } = source[s];
        const dr = destRank[s];
        for (let j = sendOffsets[f]; j < sendOffsets[f + 1]; j++) {
          const t = sendToken[j];
          for (let k = 0; k < K; k++) {
            if (dr[t * K + k] >= 0 && nodeOf(dr[t * K + k]) === node) pairs++;
          }
        }
        staged += sendOffsets[f + 1] - sendOffsets[f];
      }
      forwardOffsets[s + 1] = staged;
    }
    const forwardToken = new Int32Array(staged);
    const forwardStart = new Int32Array(staged + 1);
    const forwardDestRank = new Int32Array(pairs);
    const forwardDestRow = new Int32Array(pairs);
    const forwardK = new Int32Array(pairs);
    // Key dest·K + k orders a row's fan-out by (destination, k).
    const keys = new Int32Array(K);
    let row = 0;
    let p = 0;
    for (let s = 0; s < W; s++) {
      if (forwardOffsets[s + 1] === forwardOffsets[s]) continue;
      const { sendOffsets, sendToken } = source[s];
      const dr = destRank[s];
      const rows = destRow[s];
      for (let j = sendOffsets[f]; j < sendOffsets[f + 1]; j++) {
        const t = sendToken[j];
        let n = 0;
        for (let k = 0; k < K; k++) {
          const d = dr[t * K + k];
          if (d >= 0 && nodeOf(d) === node) keys[n++] = d * K + k;
        }
        sortSmall(keys, n);
        let last = -1;
        for (let i = 0; i < n; i++) {
          const d = (keys[i] / K) | 0;
          const k = keys[i] % K;
          forwardDestRank[p] = d;
          forwardDestRow[p] = rows[t * K + k];
          forwardK[p] = k;
          p++;
          if (d !== last && d !== f) forwardRowsTo[d]++;
          last = d;
        }
        forwardToken[row] = t;
        forwardStart[++row] = p;
      }
    }
    return {
      forwardOffsets,
      forwardToken,
      forwardStart,
      forwardDestRank,
      forwardDestRow,
      forwardK,
      forwardRowsTo,
    };
  });

  const ranks: RankLayout[] = [];
  for (let r = 0; r < W; r++) {
    const expertCounts = slotCount.slice(slotBase[r], slotBase[r + 1]);
    const expertOffsets = new Int32Array(expertCounts.length + 1);
    for (let l = 0; l < expertCounts.length; l++) {
      expertOffsets[l + 1] = expertOffsets[l] + expertCounts[l];
    }
    const src = source[r];
    const fwd = forward[r];
    ranks.push({
      rank: r,
      tokens: tokens[r],
      slotOf: slotOf[r],
      destRank: destRank[r],
      destRow: destRow[r],
      sendOffsets: src.sendOffsets,
      sendToken: src.sendToken,
      forwardRank: src.forwardRank,
      combineStart: src.combineStart,
      combineFrom: src.combineFrom,
      recvRows: recvRows[r],
      expertCounts,
      expertOffsets,
      srcRank: srcRankD[r],
      srcToken: srcTokenD[r],
      srcK: srcKD[r],
      localExpert: localExpertD[r],
      forwardOffsets: fwd.forwardOffsets,
      forwardToken: fwd.forwardToken,
      forwardStart: fwd.forwardStart,
      forwardDestRank: fwd.forwardDestRank,
      forwardDestRow: fwd.forwardDestRow,
      forwardK: fwd.forwardK,
      sendRowsTo: src.sendRowsTo,
      sendRowsToNoDedupe: src.sendRowsToNoDedupe,
      forwardRowsTo: fwd.forwardRowsTo,
    });
  }
  return { plan, ranks, links: linkTraffic(plan, ranks) };
}
