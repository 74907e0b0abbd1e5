/**
 * The hierarchical protocol's combine (native/HIER_PROTOCOL.md "Combine"): device
 * partials, each rounded to the wire dtype (the one that stays on its rank
 * too, as the GPU engine's landing buffers hold the wire dtype: so the
 * result does not depend on which rank forwards or is home),
 * the forwarders' reduce, the return path slice by slice, and the home sum
 * in ascending rank order. With an f32 wire every step is exact f32
 * arithmetic and the result equals the one-hop combine bit for bit.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import { DTYPE_BYTES } from "../../dsl/types.ts";
import { slotRankTable } from "../../dsl/placement.ts";
import type { HostRows } from "../core/engine_api.ts";
import { fromF32, toF32 } from "../core/dtype.ts";
import { HostTensor } from "../core/host_tensor.ts";
import { addRow, type ExpertRows, writeRow } from "./combine_math.ts";
import { type Bases, type Exchanged, forwardStreams, type SourceRoute } from "./protocol_route.ts";
import { metaWords, type Staging } from "./protocol_dispatch.ts";
import { sliceSchedule } from "./slices.ts";
import { type StageTraffic, TrafficCounter } from "./protocol_traffic.ts";

/** Partials of one reduce point (a forwarder's staged rows, or a home's tokens): CSR by row. */
interface Partials {
  /** [rows+1] offsets into `rank` by row. */
  readonly start: Int32Array;
  /** The device each partial comes from, ascending inside a row. */
  readonly rank: Int32Array;
  /** [partials × H] the partials as landed (wire-rounded). */
  readonly value: Float32Array;
}

/** Rows in the wire dtype: what a partial crosses ranks as. */
class WireRows {
  readonly data: HostRows;
  readonly #bytes: Uint8Array;
  readonly #H: number;

  constructor(readonly dtype: DType, rows: number, H: number) {
    this.data = dtype === "f32" ? new Float32Array(rows * H) : new Uint16Array(rows * H);
    this.#bytes = new Uint8Array(this.data.buffer);
    this.#H = H;
  }

  /** Row `row` = v rounded to the wire dtype. */
  write(row: number, v: Float32Array): void {
    fromF32(v, this.dtype, this.data.subarray(row * this.#H, (row + 1) * this.#H) as HostRows);
  }

  /** out = row `row` as f32 (exact). */
  read(row: number, out: Float32Array): void {
    toF32(this.data.subarray(row * this.#H, (row + 1) * this.#H) as HostRows, this.dtype, out);
  }

  /** Rows [from, from + rows) of `src` land at row `to`, bit for bit. */
  receive(src: WireRows, from: number, rows: number, to: number): void {
    const b = this.data.BYTES_PER_ELEMENT * this.#H;
    this.#bytes.set(src.#bytes.subarray(from * b, (from + rows) * b), to * b);
  }
}

/** What a staged combine returns. */
export interface CombineRun {
  /** One [T × H] output per rank. */
  readonly outs: HostTensor<DType>[];
  /** The byte counts of the run's stages. */
  readonly traffic: StageTraffic;
}

/**
 * Run the staged combine for every rank: `ys` are the expert outputs, in
 * the receive rows the bases define; `wire` is the dtype partials cross
 * ranks in.
 */
export function runCombine(
  plan: PlanSpec,
  routes: readonly SourceRoute[],
  ex: Exchanged,
  bases: Bases,
  staging: readonly Staging[],
  ys: ExpertRows,
  wire: DType,
  sliceRows: number,
): CombineRun {
  const { world: W, topK: K, hidden: H, gpusPerNode: gpn, nodes: N } = plan;
  const S = plan.slotBase[W];
  const MW = metaWords(K);
  const owner = slotRankTable(plan);
  const weighted = plan.combine === "weighted";
  const nodeOf = (r: number) => (r / gpn) | 0;
  const traffic = new TrafficCounter(W, H * DTYPE_BYTES[wire], 0);
  const onWire = new WireRows(wire, 1, H);
  /**
   * A partial lands in the wire dtype, whether it crosses to another rank
   * (counted as traffic) or stays on its own (the forwarder's or the home's
   * partial): which rank forwards (the balance table) must not change bits.
   */
  const land = (v: Float32Array, from: number, to: number): void => {
    if (from !== to) traffic.add("partial", from, to);
    onWire.write(0, v);
    onWire.read(0, v);
  };

  /**
   * Stages 1–2 at one reduce point: for each row (a staged row, or a home
   * token) the distinct devices with pairs, ascending; each forms its
   * partial p = Σ_k ascending fround(w·y) and sends it to rank `at`.
   */
  const partials = (
    rows: number,
    at: number,
    pair: (row: number, k: number) => { s: number; sl: number; ord: number; w: number } | null,
  ): Partials => {
    const start = new Int32Array(rows + 1);
    const ranks: number[] = [];
    const devices = new Int32Array(K);
    const perRow: number[][] = [];
    for (let i = 0; i < rows; i++) {
      let n = 0;
      for (let k = 0; k < K; k++) {
        const p = pair(i, k);
        if (p !== null && !devices.subarray(0, n).includes(owner[p.sl])) devices[n++] = owner[p.sl];
      }
      const list = Array.from(devices.subarray(0, n)).sort((a, b) => a - b);
      perRow.push(list);
      ranks.push(...list);
      start[i + 1] = ranks.length;
    }
    const value = new Float32Array(ranks.length * H);
    for (let i = 0; i < rows; i++) {
      perRow[i].forEach((d, j) => {
        const p = value.subarray((start[i] + j) * H, (start[i] + j + 1) * H);
        let first = true;
        for (let k = 0; k < K; k++) {
          const q = pair(i, k);
          if (q === null || owner[q.sl] !== d) continue;
          const row = bases.base[q.s * S + q.sl] + q.ord;
          ys.fma(p, d, row, weighted ? q.w : 1, first);
          first = false;
        }
        land(p, d, at);
      });
    }
    return { start, rank: Int32Array.from(ranks), value };
  };

  // Stages 1–2, remote sources: the devices of f's node send partials of f's staged rows to f.
  const atForwarder = staging.map((st) => {
    const f = st.forwarder;
    const wf = new Float32Array(st.meta.buffer, st.meta.byteOffset, st.meta.length);
    const srcOf = new Int32Array(st.srcStart[W]);
    for (let s = 0; s < W; s++) srcOf.fill(s, st.srcStart[s], st.srcStart[s + 1]);
    return partials(srcOf.length, f, (i, k) => {
      const sl = st.meta[i * MW + 1 + 3 * k];
      if (sl < 0) return null;
      return { s: srcOf[i], sl, ord: st.meta[i * MW + 2 + 3 * k], w: wf[i * MW + 3 + 3 * k] };
    });
  });
  // Stages 1–3, own-node sources: the devices of s's node send their partials to s.
  const atHome = routes.map((r) =>
    partials(r.tokens, r.rank, (t, k) => {
      const sl = r.slot[t * K + k];
      if (sl < 0 || nodeOf(owner[sl]) !== nodeOf(r.rank)) return null;
      return { s: r.rank, sl, ord: r.ord[t * K + k], w: r.weights[t * K + k] };
    })
  );

  // Stage 4: each forwarder sums a staged row's partials in ascending rank, rounds it to the wire.
  const q = new Float32Array(H);
  const retSend = atForwarder.map((p) => {
    const rows = new WireRows(wire, p.start.length - 1, H);
    for (let i = 0; i + 1 < p.start.length; i++) {
      sumRow(p, i, q, H);
      rows.write(i, q);
    }
    return rows;
  });

  // The return path: the reverse of dispatch's streams, sliced the same way.
  const segStart = routes.map((r) => {
    const seg = new Int32Array(N + 1);
    for (let m = 0; m < N; m++) seg[m + 1] = seg[m] + ex.nodeRows[r.rank * N + m];
    return seg;
  });
  const retRecv = segStart.map((seg) => new WireRows(wire, seg[N], H));
  const back = forwardStreams(plan, ex).map((s) => ({ src: s.dst, dst: s.src, rows: s.rows }));
  for (const step of sliceSchedule(back, sliceRows)) {
    for (const tr of step) {
      const from = staging[tr.src].srcStart[tr.dst] + tr.firstRow;
      const to = segStart[tr.dst][nodeOf(tr.src)] + tr.firstRow;
      retRecv[tr.dst].receive(retSend[tr.src], from, tr.rows, to);
      traffic.add("return", tr.src, tr.dst, tr.rows);
    }
  }

  // Stage 5: the home adds its contributors in ascending rank, rounds once to the dtype.
  const outs = routes.map((r) => {
    const out = new HostTensor(plan.dtype, r.tokens, H);
    const acc = new Float32Array(H);
    const cursor = new Int32Array(N);
    const own = nodeOf(r.rank);
    const home = atHome[r.rank];
    for (let t = 0; t < r.tokens; t++) {
      let first = true;
      const add = (v: Float32Array, off: number) => {
        if (first) acc.set(v.subarray(off, off + H));
        else addRow(acc, v, off, H);
        first = false;
      };
      for (let m = 0; m < N; m++) {
        if (m === own) {
          for (let j = home.start[t]; j < home.start[t + 1]; j++) add(home.value, j * H);
        } else if (r.nodeTokens[m][cursor[m]] === t) {
          retRecv[r.rank].read(segStart[r.rank][m] + cursor[m]++, q);
          add(q, 0);
        }
      }
      if (!first) writeRow(acc, plan.dtype, out, t);
    }
    return out;
  });
  return { outs, traffic: traffic.finish("combine", nodeOf) };
}

/** q = the row's partials summed in ascending rank: q = p_first; q += p_next … */
function sumRow(p: Partials, i: number, q: Float32Array, H: number): void {
  q.fill(0);
  for (let j = p.start[i]; j < p.start[i + 1]; j++) {
    if (j === p.start[i]) q.set(p.value.subarray(j * H, (j + 1) * H));
    else addRow(q, p.value, j * H, H);
  }
}
