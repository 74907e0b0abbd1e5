/**
 * Combine's arithmetic, shared by both protocols: one f32 multiply-add
 * kernel, and the one-hop combine of a rank's tokens in the normative
 * order. Every product w·y is rounded to f32 (`Math.fround`, CUDA
 * `__fmul_rn`) and then added with one f32 rounding (`__fadd_rn`): no fused
 * multiply-add, so the GPU can match it bit for bit.
 *
 * @module
 */
import type { DType, PlanSpec, RankLayout } from "../../dsl/types.ts";
import type { HostRows } from "../core/engine_api.ts";
import { fromF32 } from "../core/dtype.ts";
import { HostTensor } from "../core/host_tensor.ts";

/**
 * Every rank's expert outputs [R_d × H] in the dtype, with the one
 * multiply-add every combine step uses. One typed view per rank and dtype
 * is made up front, so each dtype's loop sees a single array type
 * (monomorphic); a 16-bit value is widened to f32 inside the loop (exact),
 * which measured faster than widening a row first and sharing one f32 loop.
 */
export class ExpertRows {
  readonly #dtype: DType;
  readonly #H: number;
  readonly #f32: readonly Float32Array[];
  readonly #bf16: readonly Uint16Array[];
  readonly #f16: readonly Float16Array[];

  /** The rows `ys[d]` of every rank d, of `dtype`, `H` elements each. */
  constructor(ys: readonly HostRows[], dtype: DType, H: number) {
    this.#dtype = dtype;
    this.#H = H;
    this.#f32 = dtype === "f32" ? ys as Float32Array[] : [];
    this.#bf16 = dtype === "bf16" ? ys as Uint16Array[] : [];
    this.#f16 = dtype === "f16"
      ? ys.map((y) => new Float16Array(y.buffer, y.byteOffset, y.length))
      : [];
  }

  /**
   * dst = (init ? 0 : dst) + fround(w · y), y = row `row` of rank d's
   * outputs, the sum rounded to f32 by the store. Starting from 0 turns a
   * -0 product into +0, as an accumulator starting at 0 would. For "sum"
   * w is 1 and fround(1·y) = y.
   */
  fma(dst: Float32Array, d: number, row: number, w: number, init: boolean): void {
    const H = this.#H;
    const off = row * H;
    if (this.#dtype === "bf16") {
      const y = this.#bf16[d];
      for (let j = 0; j < H; j++) {
        // bf16 is the top half of an f32.
        bf16Bits[0] = y[off + j] << 16;
        dst[j] = (init ? 0 : dst[j]) + Math.fround(w * bf16Value[0]);
      }
    } else if (this.#dtype === "f16") {
      const y = this.#f16[d];
      for (let j = 0; j < H; j++) dst[j] = (init ? 0 : dst[j]) + Math.fround(w * y[off + j]);
    } else {
      const y = this.#f32[d];
      for (let j = 0; j < H; j++) dst[j] = (init ? 0 : dst[j]) + Math.fround(w * y[off + j]);
    }
  }
}

const bf16Bits = new Uint32Array(1);
const bf16Value = new Float32Array(bf16Bits.buffer);

/** dst += src[off …] element by element, each sum rounded to f32. */
export function addRow(dst: Float32Array, src: Float32Array, off: number, H: number): void {
  for (let j = 0; j < H; j++) dst[j] += src[off + j];
}

/**
 * One rank's one-hop combine: for each token a partial per destination
 * device (its pairs in ascending k), then the partials in ascending device
 * rank; with dedupe `node` the devices sharing a forwarder are first summed
 * into the forwarder's partial, which is added in the forwarder's turn. One
 * rounding to the dtype at the end; tokens with no expert stay zero.
 */
export function combineRank(
  plan: PlanSpec,
  rl: RankLayout,
  ys: ExpertRows,
  w: Float32Array,
): HostTensor<DType> {
  const { hidden: H, topK: K, dtype } = plan;
  const weighted = plan.combine === "weighted";
  const out = new HostTensor(dtype, rl.tokens, H);
  const acc = new Float32Array(H);
  const group = new Float32Array(H);
  const part = new Float32Array(H);
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
        ys.fma(into, d, destRow[i], weighted ? w[i] : 1, first);
        first = false;
      }
      if (into === part) addRow(target, part, 0, H);
      init = false;
    }
  };

  for (let t = 0; t < rl.tokens; t++) {
    const n = sortedDevices(destRank, t, K, devices);
    if (n === 0) continue; // no expert: the row stays zero
    for (let a = 0; a < n;) {
      // Devices sharing a forwarder (dedupe node) are reduced there first.
      let b = a + 1;
      while (b < n && fwd[devices[b]] === fwd[devices[a]]) b++;
      if (b - a === 1) reduce(acc, t, a, b, a === 0);
      else {
        reduce(group, t, a, b, true);
        if (a === 0) acc.set(group);
        else addRow(acc, group, 0, H);
      }
      a = b;
    }
    writeRow(acc, dtype, out, t);
  }
  return out;
}

/** The distinct destination ranks of token t, ascending, into `devices`; returns their count. */
function sortedDevices(destRank: Int32Array, t: number, K: number, devices: Int32Array): number {
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
  return n;
}

/** Row t of `out` = acc rounded to the dtype once. */
export function writeRow(acc: Float32Array, dtype: DType, out: HostTensor<DType>, t: number): void {
  const H = acc.length;
  const o = out.data.subarray(t * H, (t + 1) * H);
  if (dtype === "f32") o.set(acc);
  else fromF32(acc, dtype, o);
}
