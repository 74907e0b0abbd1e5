/**
 * Comparisons of GPU results against the Simulator's: dispatch bit for bit,
 * combine within the dtype's rounding (or bit for bit), measured against
 * Σ|w·y| of each output element.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { DispatchResult, HostRows } from "../../lib/core/engine_api.ts";
import { toF32 } from "../../lib/core/dtype.ts";

/** Unit roundoff of a dtype. */
export function unitRoundoff(dtype: DType): number {
  return dtype === "bf16" ? 2 ** -8 : dtype === "f16" ? 2 ** -11 : 2 ** -24;
}

/** The rows' bit patterns (f32 as u32), for bitwise comparison. */
export function bits(rows: HostRows): Uint8Array | Uint16Array | Uint32Array {
  return rows instanceof Float32Array
    ? new Uint32Array(rows.buffer, rows.byteOffset, rows.length)
    : rows;
}

/**
 * Index of the first difference, or -1.
 *
 * @example
 * ```ts
 * import { firstDiff } from "./checks.ts";
 * console.assert(firstDiff([1, 2, 3], [1, 5, 3]) === 1 && firstDiff([1], [1]) === -1);
 * ```
 */
export function firstDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Empty when `got` equals the oracle's dispatch result bit for bit; else what differs. */
export async function compareDispatch(got: DispatchResult, want: DispatchResult): Promise<string> {
  const problems: string[] = [];
  for (const field of ["expertCounts", "srcRank", "srcToken", "srcK"] as const) {
    const i = firstDiff(got[field], want[field]);
    if (i >= 0) {
      problems.push(
        `${field}[${i}] = ${got[field][i]}, want ${want[field][i]} (lengths ${got[field].length}/${
          want[field].length
        })`,
      );
    }
  }
  const w = firstDiff(bits(got.recvWeights), bits(want.recvWeights));
  if (w >= 0) {
    problems.push(`recvWeights[${w}] = ${got.recvWeights[w]}, want ${want.recvWeights[w]}`);
  }
  if (got.recv.rows !== want.recv.rows || got.recv.cols !== want.recv.cols) {
    problems.push(
      `recv is ${got.recv.rows}×${got.recv.cols}, want ${want.recv.rows}×${want.recv.cols}`,
    );
  } else {
    const r = firstDiff(bits(await got.recv.read()), bits(await want.recv.read()));
    if (r >= 0) {
      problems.push(
        `recv differs at row ${Math.floor(r / got.recv.cols)}, column ${r % got.recv.cols}`,
      );
    }
  }
  if ((got.recvScales === undefined) !== (want.recvScales === undefined)) {
    problems.push(`recvScales ${got.recvScales ? "present" : "absent"}, want the opposite`);
  } else if (got.recvScales !== undefined && want.recvScales !== undefined) {
    const s = firstDiff(bits(await got.recvScales.read()), bits(await want.recvScales.read()));
    if (s >= 0) {
      const cols = want.recvScales.cols;
      problems.push(`recvScales differ at row ${Math.floor(s / cols)}, block ${s % cols}`);
    }
  }
  return problems.join("; ");
}

/**
 * Σ_k |w|·|y| of every output element of rank `rank`, from the oracle's
 * receive metadata over all ranks: the scale the combine error is measured
 * against.
 */
export function combineScale(
  plan: PlanSpec,
  rank: number,
  tokens: number,
  oracle: readonly DispatchResult[],
  ys: readonly HostRows[],
): Float64Array {
  const H = plan.hidden;
  const scale = new Float64Array(tokens * H);
  oracle.forEach((res, d) => {
    const y = toF32(ys[d], plan.dtype);
    for (let i = 0; i < res.srcRank.length; i++) {
      if (res.srcRank[i] !== rank) continue;
      const w = plan.combine === "weighted" ? Math.abs(res.recvWeights[i]) : 1;
      const t = res.srcToken[i];
      for (let h = 0; h < H; h++) scale[t * H + h] += w * Math.abs(y[i * H + h]);
    }
  });
  return scale;
}

/** Max relative error of `got` against `want`, and the first element over `bound`. */
export function combineError(
  got: Float32Array,
  want: Float32Array,
  scale: Float64Array,
  bound: number,
): { maxErr: number; problem: string } {
  let maxErr = 0;
  let problem = "";
  for (let i = 0; i < want.length; i++) {
    const err = scale[i] === 0
      ? (got[i] === 0 && want[i] === 0 ? 0 : Infinity)
      : Math.abs(got[i] - want[i]) / scale[i];
    if (!(err <= bound) && problem === "") {
      problem = `element ${i}: got ${got[i]}, want ${want[i]} (scale ${scale[i]})`;
    }
    if (!(err <= maxErr)) maxErr = Number.isNaN(err) ? Infinity : err;
  }
  return { maxErr, problem };
}
