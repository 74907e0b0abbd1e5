/**
 * The Simulator: every rank of a plan in one process, on the CPU. It is the
 * oracle the GPU engine is tested against, so it implements DESIGN.md's
 * Semantics literally: dispatch copies raw row bits into the layout's receive
 * order (with `quantize: e4m3`, the source rows' E4M3 bytes and block scales
 * as lib/fp8.ts defines them); combine reduces in true f32 arithmetic (every product and every sum
 * rounded to f32) in the normative order, and rounds to the dtype once.
 *
 * @module
 */
import type { BatchLayout, DType, PlanSpec } from "../../dsl/types.ts";
import { computeLayout } from "../../dsl/layout.ts";
import type {
  Dispatched,
  DispatchHandle,
  DispatchResult,
  HostArray,
  HostRows,
  QuantizedInput,
  RankInput,
  RankRouting,
  RoutingInput,
  ShuffleEngine,
  Tensor,
} from "../core/engine_api.ts";
import { fromF32 } from "../core/dtype.ts";
import { QUANT_BLOCK, type QuantizedRows, quantizeRows } from "../core/fp8.ts";
import { HostTensor } from "../core/host_tensor.ts";
import {
  checkInputRows,
  checkRankInput,
  checkRankInputs,
  checkRows,
  isQuantizedInput,
} from "../core/input_check.ts";
import { WeftError } from "../../dsl/errors.ts";

/** A Simulator dispatch result: `recv` (and `recvScales`) are {@link HostTensor}s. */
export interface SimDispatchResult extends DispatchResult {
  /** [R × H] received rows, in the plan's receive order, on the host (e4m3 bytes when quantized). */
  readonly recv: HostTensor<DType | "e4m3">;
  /** [R × H/128] f32 block scales of `recv` when the pattern quantizes dispatch. */
  readonly recvScales?: HostTensor<"f32">;
}

/** What {@link Simulator.dispatch} returns: the results, the handle, and the layout for inspection. */
export interface SimDispatched extends Dispatched {
  /** One per rank, in rank order. */
  readonly results: readonly SimDispatchResult[];
  /** The batch's cached layout, for combine and re-dispatch. */
  readonly handle: SimulatorHandle;
  /** The batch's layout descriptor. */
  readonly layout: BatchLayout;
}

/**
 * One batch's cached layout and routing weights, for combine and
 * re-dispatch. Using it after `close()` throws a WeftError.
 */
export class SimulatorHandle implements DispatchHandle {
  /** Every rank of the Simulator's plan. */
  readonly ranks: readonly number[];
  #layout: BatchLayout | undefined;
  #weights: Float32Array[] | undefined;
  readonly #owner: Simulator;

  /** @internal Built by {@link Simulator.dispatch}. */
  constructor(owner: Simulator, layout: BatchLayout, weights: Float32Array[]) {
    this.#owner = owner;
    this.ranks = owner.ranks;
    this.#layout = layout;
    this.#weights = weights;
  }

  /** The batch's layout descriptor. */
  get layout(): BatchLayout {
    return this.#open().layout;
  }

  /** @internal The layout and a copy of each rank's routing weights; throws once closed. */
  open(owner: Simulator): { layout: BatchLayout; weights: Float32Array[] } {
    if (owner !== this.#owner) {
      throw new WeftError({
        field: "handle",
        problem: "belongs to another engine",
        fix: "pass the handle returned by this Simulator's dispatch",
      });
    }
    return this.#open();
  }

  #open(): { layout: BatchLayout; weights: Float32Array[] } {
    if (this.#layout === undefined || this.#weights === undefined) {
      throw new WeftError({
        field: "handle",
        problem: "is closed",
        fix: "combine or re-dispatch before closing the handle, or dispatch again",
      });
    }
    return { layout: this.#layout, weights: this.#weights };
  }

  /** Release the layout; later use throws. Idempotent. */
  close(): void {
    this.#layout = undefined;
    this.#weights = undefined;
  }

  /** Same as {@link SimulatorHandle.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * The CPU engine: drives all ranks of `plan`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Simulator } from "./simulator.ts";
 * import { compilePlacement } from "../../dsl/placement.ts";
 * import type { PlanSpec } from "../../dsl/types.ts";
 * const pattern = { placement: { kind: "byDevice" }, topK: 2, dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "f32" } as const;
 * const plan: PlanSpec = {
 *   pattern, world: 2, gpusPerNode: 2, nodes: 1, experts: 4, topK: 2, hidden: 2, dtype: "f32",
 *   dedupe: "device", receive: "expert-major", combine: "weighted",
 *   ...compilePlacement({ placement: pattern.placement, experts: 4, world: 2, gpusPerNode: 2 }),
 * };
 * using sim = new Simulator(plan);
 * const d = await sim.dispatch([
 *   { x: Float32Array.of(1, 2), topkIdx: Int32Array.of(0, 3), topkWeights: Float32Array.of(0.25, 0.75) },
 *   { x: new Float32Array(0), topkIdx: new Int32Array(0), topkWeights: new Float32Array(0) },
 * ]);
 * const [out] = await sim.combine(d.handle, d.results.map((r) => r.recv));
 * assert.ok((await out.read())[1] === 2); // identity experts: x · Σw
 * d.handle.close();
 * ```
 */
export class Simulator implements ShuffleEngine {
  /** Always "simulator". */
  readonly kind = "simulator" as const;
  /** The plan every batch is shuffled by. */
  readonly plan: PlanSpec;
  /** Every rank of the plan, 0 … world−1. */
  readonly ranks: readonly number[];
  #closed = false;
  #lastLayout: BatchLayout | undefined;

  /** An engine for `plan`; holds no resources beyond the last layout. */
  constructor(plan: PlanSpec) {
    this.plan = plan;
    this.ranks = Object.freeze(Array.from({ length: plan.world }, (_, r) => r));
  }

  /** The layout of the most recent dispatch, for inspection. */
  get lastLayout(): BatchLayout | undefined {
    return this.#lastLayout;
  }

  /**
   * Dispatch one batch: one input per rank. All ranks' inputs are checked
   * before anything is computed; a bad one throws a WeftError naming the
   * field and the rank. Routing given as tensors is read to the host first
   * (`await t.read()`) and then checked and used exactly as arrays are.
   */
  async dispatch(inputs: readonly RankInput[]): Promise<SimDispatched> {
    this.#checkOpen();
    const tokens = checkRankInputs(this.plan, inputs);
    const routing = await this.#readRouting(inputs, tokens);
    const xs = await this.#readInputs("x", inputs.map((i) => i.x), null);
    const layout = computeLayout(this.plan, routing.map((r) => r.topkIdx));
    const weights = routing.map((r) => r.topkWeights.slice());
    this.#lastLayout = layout;
    const handle = new SimulatorHandle(this, layout, weights);
    return { results: this.#scatter(layout, weights, xs), handle, layout };
  }

  /**
   * The layout of a batch without its rows: one routing per rank, host
   * arrays or tensors (read to the host, as in dispatch). The returned
   * handle's rows are moved by {@link redispatch}; layout then redispatch
   * gives exactly what dispatch gives.
   */
  async layout(routing: readonly RoutingInput[]): Promise<SimulatorHandle> {
    this.#checkOpen();
    const tokens = checkRankInputs(this.plan, routing);
    const host = await this.#readRouting(routing, tokens);
    const layout = computeLayout(this.plan, host.map((r) => r.topkIdx));
    this.#lastLayout = layout;
    return new SimulatorHandle(this, layout, host.map((r) => r.topkWeights.slice()));
  }

  /** Dispatch new rows (same shapes) through a handle's cached layout; returns the same handle. */
  async redispatch(
    handle: DispatchHandle,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
  ): Promise<SimDispatched> {
    this.#checkOpen();
    const { layout, weights } = this.#handle(handle).open(this);
    const rows = await this.#readInputs("xs", xs, layout.ranks.map((r) => r.tokens));
    return {
      results: this.#scatter(layout, weights, rows),
      handle: handle as SimulatorHandle,
      layout,
    };
  }

  /** Nothing runs after a Simulator call returns: resolves at once (API parity with Engine). */
  synchronize(): Promise<void> {
    this.#checkOpen();
    return Promise.resolve();
  }

  /**
   * Combine expert outputs y (one [R_d × H] per rank, in the handle's receive
   * order) into one [T_r × H] tensor per rank. For each token: a partial per
   * destination device (its pairs in ascending k), then the partials in
   * ascending device rank — with dedupe `node`, the devices of one remote
   * node are first summed into the forwarder's partial, which is then added
   * in the forwarder's turn. Every product and sum is rounded to f32; the
   * result is rounded to the dtype once. Tokens with no expert get zeros.
   */
  async combine(
    handle: DispatchHandle,
    ys: readonly (HostRows | Tensor)[],
  ): Promise<HostTensor<DType>[]> {
    this.#checkOpen();
    const { layout, weights } = this.#handle(handle).open(this);
    const y = await this.#readRows("ys", ys, layout.ranks.map((r) => r.recvRows));
    return layout.ranks.map((rl) => this.#combineRank(layout, rl.rank, y, weights[rl.rank]));
  }

  /** Release the engine; later calls throw. */
  close(): void {
    this.#closed = true;
    this.#lastLayout = undefined;
  }

  /** Same as {@link Simulator.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new WeftError({
        field: "simulator",
        problem: "is closed",
        fix: "create a new Simulator",
      });
    }
  }

  #handle(handle: DispatchHandle): SimulatorHandle {
    if (!(handle instanceof SimulatorHandle)) {
      throw new WeftError({
        field: "handle",
        problem: "is not a Simulator handle",
        fix: "pass the handle returned by this Simulator's dispatch",
      });
    }
    return handle;
  }

  /** One entry per rank, or a WeftError naming `field`. */
  #checkCount(field: string, xs: readonly unknown[]): void {
    const W = this.plan.world;
    if (!Array.isArray(xs) || xs.length !== W) {
      throw new WeftError({
        field,
        problem: `expected one entry per rank (${W}), got ${
          Array.isArray(xs) ? xs.length : typeof xs
        }`,
        fix: `pass ${W} row arrays or tensors in rank order`,
      });
    }
  }

  /**
   * Every rank's routing on the host: arrays as they are, tensors read (all
   * ranks' shapes were checked before, by `checkRankInputs`). What was read
   * is then checked like arrays are, values included, against the token
   * count its tensor advertised, for every rank before any work.
   */
  async #readRouting(
    routing: readonly RoutingInput[],
    tokens: readonly number[],
  ): Promise<RankRouting[]> {
    const host = await Promise.all(routing.map(async (r) => ({
      topkIdx: ArrayBuffer.isView(r.topkIdx) ? r.topkIdx : await r.topkIdx.read(),
      topkWeights: ArrayBuffer.isView(r.topkWeights) ? r.topkWeights : await r.topkWeights.read(),
    })));
    host.forEach((h, rank) => {
      const given = routing[rank];
      if (h.topkIdx !== given.topkIdx || h.topkWeights !== given.topkWeights) {
        checkRankInput(this.plan, rank, h, tokens[rank]);
      }
    });
    return host;
  }

  /**
   * Check every rank's rows first (count, dtype, width, row count), then read
   * them; `rows` null means the counts were already checked by the caller.
   */
  async #readRows(
    field: string,
    xs: readonly (HostRows | Tensor)[],
    rows: readonly number[] | null,
  ): Promise<HostRows[]> {
    this.#checkCount(field, xs);
    const counts = xs.map((x, r) => checkRows(this.plan, r, field, x, rows?.[r]));
    const data = await Promise.all(xs.map(hostData));
    // A device tensor's host copy must agree with the shape it advertised.
    data.forEach((d, r) => checkRows(this.plan, r, field, d, counts[r]));
    // Checked above: each is rows of the plan's dtype.
    return data as HostRows[];
  }

  /**
   * Dispatch's rows for every rank, checked for all ranks before any is
   * read: rows in the dtype, or pre-quantized `{ q, scales }`.
   */
  async #readInputs(
    field: string,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
    rows: readonly number[] | null,
  ): Promise<(HostRows | QuantizedRows)[]> {
    this.#checkCount(field, xs);
    const counts = xs.map((x, r) => checkInputRows(this.plan, r, field, x, rows?.[r]));
    const data = await Promise.all(
      xs.map(async (x): Promise<HostArray | QuantizedRows> =>
        isQuantizedInput(x)
          ? {
            q: await hostData(x.q) as Uint8Array,
            scales: await hostData(x.scales) as Float32Array,
          }
          : await hostData(x)
      ),
    );
    data.forEach((d, r) => checkInputRows(this.plan, r, field, d, counts[r]));
    // Checked above: rows of the plan's dtype, or quantized rows.
    return data as (HostRows | QuantizedRows)[];
  }

  /**
   * Every received row is its source row's bits: x as given, or, when the
   * pattern quantizes dispatch, the source's E4M3 bytes and block scales
   * (lib/fp8.ts, quantized once per source row whatever its fan-out; or as
   * given, when the rows came pre-quantized).
   */
  #scatter(
    layout: BatchLayout,
    weights: Float32Array[],
    xs: (HostRows | QuantizedRows)[],
  ): SimDispatchResult[] {
    const { hidden: H, topK: K, dtype } = this.plan;
    const quantized = this.plan.quantize === "e4m3";
    const sent: QuantizedRows[] | undefined = quantized
      ? xs.map((x) =>
        isQuantizedInput(x) ? x as QuantizedRows : quantizeRows(x as HostRows, dtype, H)
      )
      : undefined;
    const S = H / QUANT_BLOCK;
    return layout.ranks.map((rl) => {
      const R = rl.recvRows;
      const recv = new HostTensor(quantized ? "e4m3" : dtype, R, H);
      const recvScales = quantized ? new HostTensor("f32", R, S) : undefined;
      const out = recv.data;
      const recvWeights = new Float32Array(R);
      for (let i = 0; i < R; i++) {
        const s = rl.srcRank[i];
        const t = rl.srcToken[i];
        if (sent !== undefined) {
          out.set(sent[s].q.subarray(t * H, (t + 1) * H), i * H);
          recvScales!.data.set(sent[s].scales.subarray(t * S, (t + 1) * S), i * S);
        } else {
          out.set((xs[s] as HostRows).subarray(t * H, (t + 1) * H), i * H);
        }
        recvWeights[i] = weights[s][t * K + rl.srcK[i]];
      }
      return {
        rank: rl.rank,
        recv,
        ...(recvScales !== undefined ? { recvScales } : {}),
        expertCounts: rl.expertCounts.slice(),
        recvWeights,
        srcRank: rl.srcRank.slice(),
        srcToken: rl.srcToken.slice(),
        srcK: rl.srcK.slice(),
      };
    });
  }

  #combineRank(
    layout: BatchLayout,
    r: number,
    ys: HostRows[],
    w: Float32Array,
  ): HostTensor<DType> {
    const { hidden: H, topK: K, dtype } = this.plan;
    const weighted = this.plan.combine === "weighted";
    const rl = layout.ranks[r];
    const out = new HostTensor(dtype, rl.tokens, H);
    const acc = new Float32Array(H);
    const group = new Float32Array(H);
    const part = new Float32Array(H);
    const kernel = dtype === "bf16" ? fmaBf16 : fmaFloat;
    const yv = ys.map((y) =>
      dtype === "f16" ? new Float16Array(y.buffer, y.byteOffset, y.length) : y
    ) as (Uint16Array & Float16Array & Float32Array)[];
    const devices = new Int32Array(K);
    const { forwardRank: fwd, destRank, destRow } = rl;

    /**
     * target ⊕= Σ over devices[a..b) ascending of (Σ_k ascending w·y) with
     * every step rounded to f32; `init` means target starts at 0. A device
     * with one pair is added straight into target (p = fround(w·y) + 0, and
     * target + p equals target + fround(w·y)); with several pairs its partial
     * is formed first, since (target + p1) + p2 ≠ target + (p1 + p2) in f32.
     */
    const reduce = (target: Float32Array, t: number, a: number, b: number, init: boolean): void => {
      for (let g = a; g < b; g++) {
        const d = devices[g];
        let pairs = 0;
        for (let k = 0; k < K; k++) if (destRank[t * K + k] === d) pairs++;
        const into = init || pairs === 1 ? target : part;
        let first = init || pairs > 1;
        for (let k = 0; k < K; k++) {
          const i = t * K + k;
          if (destRank[i] !== d) continue;
          kernel(into, yv[d], destRow[i] * H, weighted ? w[i] : 1, H, first);
          first = false;
        }
        if (into === part) { for (let j = 0; j < H; j++) target[j] += part[j]; }
        init = false;
      }
    };

    const outRows = out.data;
    for (let t = 0; t < rl.tokens; t++) {
      let n = 0;
      for (let k = 0; k < K; k++) {
        const d = destRank[t * K + k];
        if (d < 0) continue;
        let j = 0;
        while (j < n && devices[j] !== d) j++;
        if (j < n) continue;
        n++;
        while (j > 0 && devices[j - 1] > d) {
          devices[j] = devices[j - 1];
          j--;
        }
        devices[j] = d;
      }
      if (n === 0) continue; // no expert: the row stays zero
      for (let a = 0; a < n;) {
        // Devices sharing a forwarder (dedupe node) are reduced there first.
        let b = a + 1;
        while (b < n && fwd[devices[b]] === fwd[devices[a]]) b++;
        if (b - a === 1) reduce(acc, t, a, b, a === 0);
        else {
          reduce(group, t, a, b, true);
          if (a === 0) acc.set(group);
          else for (let j = 0; j < H; j++) acc[j] += group[j];
        }
        a = b;
      }
      const o = outRows.subarray(t * H, (t + 1) * H);
      if (dtype === "f32") o.set(acc);
      else fromF32(acc, dtype, o);
    }
    return out;
  }
}

// One kernel per dtype keeps each loop monomorphic. `init`: dst = fround(w·y) + 0
// (the + 0 makes a -0 product +0, as an accumulator starting at 0 would);
// otherwise dst += fround(w·y), the sum rounded to f32 by the store. For
// "sum" w is 1 and fround(1·y) = y.

const bf16Bits = new Uint32Array(1);
const bf16Value = new Float32Array(bf16Bits.buffer);

function fmaBf16(
  dst: Float32Array,
  y: Uint16Array,
  off: number,
  w: number,
  H: number,
  init: boolean,
): void {
  if (init) {
    for (let j = 0; j < H; j++) {
      bf16Bits[0] = y[off + j] << 16;
      dst[j] = Math.fround(w * bf16Value[0]) + 0;
    }
  } else {
    for (let j = 0; j < H; j++) {
      bf16Bits[0] = y[off + j] << 16;
      dst[j] += Math.fround(w * bf16Value[0]);
    }
  }
}

/** dst (+)= w·y for f16 and f32 rows, which read as numbers directly. */
function fmaFloat(
  dst: Float32Array,
  y: Float16Array | Float32Array,
  off: number,
  w: number,
  H: number,
  init: boolean,
): void {
  if (init) { for (let j = 0; j < H; j++) dst[j] = Math.fround(w * y[off + j]) + 0; }
  else for (let j = 0; j < H; j++) dst[j] += Math.fround(w * y[off + j]);
}

/**
 * Host data of rows: a HostTensor's storage or a typed array as they are, a
 * device tensor read back. A tensor may hold any dtype: callers check what
 * came back.
 */
function hostData(x: HostRows | Tensor): Promise<HostArray> {
  if (x instanceof HostTensor) return Promise.resolve(x.data);
  return ArrayBuffer.isView(x) ? Promise.resolve(x) : x.read();
}
