/**
 * Stages 3–5 of the hierarchical protocol (native/HIER_PROTOCOL.md "Dispatch"):
 * each source packs, per remote node, the rows of the tokens bound there
 * (payload + meta); the segments travel to the forwarders slice by slice;
 * each forwarder's staging fills as slices arrive and the ranks of its node
 * fan the staged rows out into their receive buffers. Own-node sources skip
 * the forwarder: their destinations read the source's rows directly.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { dispatchRowBytes } from "../../dsl/layout.ts";
import { slotRankTable } from "../../dsl/placement.ts";
import type { HostRows } from "../core/engine_api.ts";
import { QUANT_BLOCK } from "../core/fp8.ts";
import { newResult, quantizedSources, type SimDispatchResult } from "./dispatch_rows.ts";
import type { SourceRows } from "./inputs.ts";
import { type Bases, type Exchanged, forwardStreams, type SourceRoute } from "./protocol_route.ts";
import { sliceSchedule } from "./slices.ts";
import { forwarderOf } from "../../dsl/balance.ts";
import { type StageTraffic, TrafficCounter } from "./protocol_traffic.ts";

/** Int32 words of a packed row's meta: t, then (slot or -1, ord, w bits) per k. */
export const metaWords = (topK: number): number => 1 + 3 * topK;

/** Stage 3, one source's send buffer: one segment per remote node, ascending. */
export interface SendBuffer {
  /** The source rank. */
  readonly source: number;
  /** [nodes+1] first packed row of each node's segment (the own node's is empty). */
  readonly segStart: Int32Array;
  /** [rows × dispatchRowBytes] packed payloads; null when only the layout is run. */
  readonly payload: Uint8Array | null;
  /** [rows × metaWords] packed meta; weights are f32 bits. */
  readonly meta: Int32Array;
}

/** Stage 4, one forwarder's staging: its sources' rows in send order, source ascending. */
export interface Staging {
  /** The forwarder rank f. */
  readonly forwarder: number;
  /** [W+1] offsets of each source's rows (only the sources on other nodes that f forwards for have any). */
  readonly srcStart: Int32Array;
  /** [rows × dispatchRowBytes] staged payloads; null when only the layout is run. */
  readonly payload: Uint8Array | null;
  /** [rows × metaWords] staged meta. */
  readonly meta: Int32Array;
  /** [rows] times each staged row was written: 1 everywhere after a run. */
  readonly filled: Uint8Array;
}

/** What one staged dispatch run leaves behind. */
export interface DispatchRun {
  /** Per-rank outputs; null when only the layout is run. */
  readonly results: SimDispatchResult[] | null;
  /** Every source's send buffer. */
  readonly send: readonly SendBuffer[];
  /** Every rank's staging as forwarder. */
  readonly staging: readonly Staging[];
  /** The byte counts of the run's stages. */
  readonly traffic: StageTraffic;
}

const bytesOf = (a: ArrayBufferView): Uint8Array =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/**
 * A row's payload as byte parts, each [rows × width]: row t's payload is
 * every part's row t, in order (x; or E4M3 bytes then f32 scales).
 */
interface RowParts {
  readonly parts: readonly Uint8Array[];
  readonly widths: readonly number[];
}

/** Byte widths of a payload's parts: the x row; or its E4M3 bytes, then its f32 scales. */
function payloadWidths(plan: PlanSpec): number[] {
  const H = plan.hidden;
  return plan.quantize === "e4m3" ? [H, (H / QUANT_BLOCK) * 4] : [dispatchRowBytes(plan)];
}

function sourceParts(plan: PlanSpec, xs: readonly SourceRows[]): RowParts[] {
  const widths = payloadWidths(plan);
  if (plan.quantize === "e4m3") {
    return quantizedSources(plan, xs).map((q) => ({ parts: [q.q, bytesOf(q.scales)], widths }));
  }
  return xs.map((x) => ({ parts: [bytesOf(x as HostRows)], widths }));
}

function resultParts(res: SimDispatchResult, widths: readonly number[]): RowParts {
  const parts = [bytesOf(res.recv.data)];
  if (res.recvScales !== undefined) parts.push(bytesOf(res.recvScales.data));
  return { parts, widths };
}

/** Concatenate row `t` of `src`'s parts into `buf` at packed row `row`. */
function packPayload(src: RowParts, t: number, buf: Uint8Array, row: number, rowBytes: number) {
  let at = row * rowBytes;
  src.parts.forEach((p, i) => {
    const w = src.widths[i];
    buf.set(p.subarray(t * w, (t + 1) * w), at);
    at += w;
  });
}

/** Split packed row `row` of `buf` into row `i` of `dst`'s parts. */
function unpackPayload(buf: Uint8Array, row: number, rowBytes: number, dst: RowParts, i: number) {
  let at = row * rowBytes;
  dst.parts.forEach((p, j) => {
    const w = dst.widths[j];
    p.set(buf.subarray(at, at + w), i * w);
    at += w;
  });
}

/**
 * Stage 3 on source s: segment m holds nodeTokens_s[m] in ascending t; a
 * row's meta keeps, per k, the slot only where (t,k) lands on node m.
 */
export function pack(
  plan: PlanSpec,
  route: SourceRoute,
  payload: RowParts | null,
): SendBuffer {
  const { topK: K, gpusPerNode: gpn, nodes: N } = plan;
  const owner = slotRankTable(plan);
  const MW = metaWords(K);
  const rowBytes = dispatchRowBytes(plan);
  const segStart = new Int32Array(N + 1);
  route.nodeTokens.forEach((list, m) => segStart[m + 1] = segStart[m] + list.length);
  const rows = segStart[N];
  const meta = new Int32Array(rows * MW);
  const wBits = new Int32Array(
    route.weights.buffer,
    route.weights.byteOffset,
    route.weights.length,
  );
  const buf = payload !== null ? new Uint8Array(rows * rowBytes) : null;
  for (let m = 0; m < N; m++) {
    const list = route.nodeTokens[m];
    for (let j = 0; j < list.length; j++) {
      const t = list[j];
      const row = segStart[m] + j;
      meta[row * MW] = t;
      for (let k = 0; k < K; k++) {
        const sl = route.slot[t * K + k];
        const here = sl >= 0 && ((owner[sl] / gpn) | 0) === m;
        meta[row * MW + 1 + 3 * k] = here ? sl : -1;
        meta[row * MW + 2 + 3 * k] = route.ord[t * K + k];
        meta[row * MW + 3 + 3 * k] = wBits[t * K + k];
      }
      if (buf !== null) packPayload(payload!, t, buf, row, rowBytes);
    }
  }
  return { source: route.rank, segStart, payload: buf, meta };
}

/** Stage 4's buffers: each forwarder's staging, sized from the exchanged node row counts. */
export function newStagings(plan: PlanSpec, ex: Exchanged, withPayload: boolean): Staging[] {
  const { world: W, gpusPerNode: gpn, nodes: N } = plan;
  const MW = metaWords(plan.topK);
  const rowBytes = dispatchRowBytes(plan);
  const nodeOf = (r: number) => (r / gpn) | 0;
  return Array.from({ length: W }, (_, f) => {
    const srcStart = new Int32Array(W + 1);
    for (let s = 0; s < W; s++) {
      const mine = nodeOf(s) !== nodeOf(f) && forwarderOf(ex.forwarders, s, nodeOf(f)) === f;
      srcStart[s + 1] = srcStart[s] + (mine ? ex.nodeRows[s * N + nodeOf(f)] : 0);
    }
    const rows = srcStart[W];
    return {
      forwarder: f,
      srcStart,
      payload: withPayload ? new Uint8Array(rows * rowBytes) : null,
      meta: new Int32Array(rows * MW),
      filled: new Uint8Array(rows),
    };
  });
}

/**
 * The destinations' side of stage 5: where a pair lands (base + ordinal),
 * its meta written there, and a count of writes per row to check that
 * every received row is written exactly once.
 */
class Receivers {
  readonly results: SimDispatchResult[] | null;
  readonly parts: RowParts[] | null;
  readonly #written: Uint8Array[];
  readonly #base: Int32Array;
  readonly #slots: number;

  constructor(plan: PlanSpec, bases: Bases, withRows: boolean) {
    const W = plan.world;
    this.results = withRows
      ? Array.from(
        { length: W },
        (_, d) => newResult(plan, d, bases.recvRows[d], bases.expertCounts[d].slice()),
      )
      : null;
    this.parts = this.results?.map((r) => resultParts(r, payloadWidths(plan))) ?? null;
    this.#written = Array.from({ length: W }, (_, d) => new Uint8Array(bases.recvRows[d]));
    this.#base = bases.base;
    this.#slots = plan.slotBase[W];
  }

  /** Rank d receives pair (s, t, k) of slot `sl`: writes its weight and source, returns its row. */
  write(d: number, s: number, t: number, k: number, sl: number, ord: number, w: number): number {
    const row = this.#base[s * this.#slots + sl] + ord;
    this.#written[d][row]++;
    const res = this.results?.[d];
    if (res !== undefined) {
      res.recvWeights[row] = w;
      res.srcRank[row] = s;
      res.srcToken[row] = t;
      res.srcK[row] = k;
    }
    return row;
  }

  /** The protocol's invariant: every received row written exactly once. */
  check(): void {
    this.#written.forEach((rows, d) => {
      const i = rows.findIndex((n) => n !== 1);
      if (i >= 0) throw new Error(`staged dispatch: rank ${d} row ${i} written ${rows[i]} times`);
    });
  }
}

/** The distinct ranks a row goes to other than its holder (a token has at most K). */
class Targets {
  readonly #ranks: Int32Array;
  #n = 0;
  constructor(K: number) {
    this.#ranks = new Int32Array(K);
  }
  reset(): void {
    this.#n = 0;
  }
  add(d: number): void {
    for (let j = 0; j < this.#n; j++) if (this.#ranks[j] === d) return;
    this.#ranks[this.#n++] = d;
  }
  forEach(fn: (d: number) => void): void {
    for (let j = 0; j < this.#n; j++) fn(this.#ranks[j]);
  }
}

/**
 * Run stages 3–5 for every rank: pack, move the segments slice by slice
 * (`sliceSchedule`), stage and fan out each slice as it arrives, and
 * deliver own-node rows directly. With `xs` null only the meta moves (the
 * layout step: the forwarders' staged meta is what combine reduces by).
 */
export function runDispatch(
  plan: PlanSpec,
  routes: readonly SourceRoute[],
  ex: Exchanged,
  bases: Bases,
  xs: readonly SourceRows[] | null,
  sliceRows: number,
): DispatchRun {
  const { world: W, topK: K, gpusPerNode: gpn } = plan;
  const MW = metaWords(K);
  const rowBytes = dispatchRowBytes(plan);
  const owner = slotRankTable(plan);
  const nodeOf = (r: number) => (r / gpn) | 0;
  const traffic = new TrafficCounter(W, rowBytes, MW * 4);
  const src = xs !== null ? sourceParts(plan, xs) : null;
  const recv = new Receivers(plan, bases, xs !== null);
  const targets = new Targets(K);

  const send = routes.map((r) => pack(plan, r, src?.[r.rank] ?? null));
  const staging = newStagings(plan, ex, xs !== null);
  for (const step of sliceSchedule(forwardStreams(plan, ex), sliceRows)) {
    for (const tr of step) {
      // Stage 4: the slice lands in the forwarder's staging, after earlier slices.
      const sb = send[tr.src];
      const st = staging[tr.dst];
      const from = sb.segStart[nodeOf(tr.dst)] + tr.firstRow;
      const to = st.srcStart[tr.src] + tr.firstRow;
      st.meta.set(sb.meta.subarray(from * MW, (from + tr.rows) * MW), to * MW);
      st.payload?.set(
        sb.payload!.subarray(from * rowBytes, (from + tr.rows) * rowBytes),
        to * rowBytes,
      );
      traffic.add("nic", tr.src, tr.dst, tr.rows);
      // Stage 5: the node's ranks fan out the slice that just arrived.
      const wf = new Float32Array(st.meta.buffer, st.meta.byteOffset, st.meta.length);
      for (let i = to; i < to + tr.rows; i++) {
        st.filled[i]++;
        targets.reset();
        for (let k = 0; k < K; k++) {
          const m = i * MW + 1 + 3 * k;
          const sl = st.meta[m];
          if (sl < 0) continue;
          const d = owner[sl];
          if (d !== tr.dst) targets.add(d);
          const row = recv.write(d, tr.src, st.meta[i * MW], k, sl, st.meta[m + 1], wf[m + 2]);
          if (recv.parts !== null) unpackPayload(st.payload!, i, rowBytes, recv.parts[d], row);
        }
        targets.forEach((d) => traffic.add("fan-out", tr.dst, d));
      }
    }
  }

  // Stage 5, own node: destinations read the source's rows and routing directly.
  for (const r of routes) {
    const s = r.rank;
    for (let t = 0; t < r.tokens; t++) {
      targets.reset();
      for (let k = 0; k < K; k++) {
        const sl = r.slot[t * K + k];
        if (sl < 0 || nodeOf(owner[sl]) !== nodeOf(s)) continue;
        const d = owner[sl];
        if (d !== s) targets.add(d);
        const row = recv.write(d, s, t, k, sl, r.ord[t * K + k], r.weights[t * K + k]);
        if (recv.parts !== null) copyRow(src![s], t, recv.parts[d], row);
      }
      targets.forEach((d) => traffic.add("own-node", s, d));
    }
  }

  recv.check();
  for (const st of staging) {
    const i = st.filled.findIndex((n) => n !== 1);
    if (i >= 0) {
      throw new Error(
        `staged dispatch: forwarder ${st.forwarder} row ${i} staged ${st.filled[i]} times`,
      );
    }
  }
  return { results: recv.results, send, staging, traffic: traffic.finish("dispatch", nodeOf) };
}

/** Row t of `src`'s parts into row i of `dst`'s (same widths). */
function copyRow(src: RowParts, t: number, dst: RowParts, i: number): void {
  src.parts.forEach((p, j) => {
    const w = src.widths[j];
    dst.parts[j].set(p.subarray(t * w, (t + 1) * w), i * w);
  });
}
