/**
 * Combine checks shared by the Simulator's tests: identity experts (y = the
 * received row's source row) must combine to x·Σw, within a tolerance that
 * counts the roundings a path adds.
 */
import assert from "node:assert/strict";
import type { DType, PlanSpec } from "../dsl/types.ts";
import type { HostRows, Tensor } from "../lib/core/engine_api.ts";
import { fromF32, toF32 } from "../lib/core/dtype.ts";
import { type HostInput, randomF32 } from "./fixtures.ts";
import { mulberry32 } from "../lib/io/routing.ts";

/** Relative precision of each dtype (half an ulp at 1). */
export const EPS: Readonly<Record<DType, number>> = { bf16: 2 ** -8, f16: 2 ** -11, f32: 2 ** -24 };

/**
 * The tolerance of a combine over same-sign terms that rounds to the dtype
 * `roundings` times: each rounding costs EPS, each of the ≤ 2K + 2 f32
 * steps 2^-24.
 */
export const identityTolerance = (plan: PlanSpec, roundings = 1): number =>
  roundings * EPS[plan.dtype] + (2 * plan.topK + 2) * 2 ** -24;

/** Identity experts: each received row's y is its source's x row, in the dtype. */
export function identityYs(
  plan: PlanSpec,
  inputs: readonly HostInput[],
  received: readonly { srcRank: Int32Array; srcToken: Int32Array }[],
): HostRows[] {
  const H = plan.hidden;
  const xs = inputs.map((i) => toF32(i.x as HostRows, plan.dtype));
  return received.map((s) => {
    const y = new Float32Array(s.srcRank.length * H);
    for (let i = 0; i < s.srcRank.length; i++) {
      y.set(xs[s.srcRank[i]].subarray(s.srcToken[i] * H, (s.srcToken[i] + 1) * H), i * H);
    }
    return fromF32(y, plan.dtype);
  });
}

/** Every rank's output is x·Σw (weighted) or x·count (sum), each element within `tol` relative. */
export async function assertIdentityCombine(
  plan: PlanSpec,
  inputs: readonly HostInput[],
  outs: readonly Tensor[],
  tol: number,
): Promise<void> {
  const { hidden: H, topK: K } = plan;
  for (const [r, out] of outs.entries()) {
    const T = inputs[r].topkIdx.length / K;
    assert.equal(out.rows, T);
    const x = toF32(inputs[r].x as HostRows, plan.dtype);
    const got = toF32(await out.read() as HostRows, plan.dtype);
    for (let t = 0; t < T; t++) {
      let scale = 0;
      for (let k = 0; k < K; k++) {
        if (inputs[r].topkIdx[t * K + k] >= 0) {
          scale += plan.combine === "weighted" ? inputs[r].topkWeights[t * K + k] : 1;
        }
      }
      for (let j = 0; j < H; j++) {
        const want = x[t * H + j] * scale;
        const err = Math.abs(got[t * H + j] - want);
        assert.ok(
          err <= Math.abs(want) * tol,
          `rank ${r} token ${t}: ${got[t * H + j]} vs ${want}`,
        );
      }
    }
  }
}

/** Expert outputs over a wide exponent range, so any change of summation order shows. */
export function wideYs(plan: PlanSpec, rows: readonly number[], seed: number): HostRows[] {
  return rows.map((R, d) => {
    const v = randomF32(R * plan.hidden, seed + 1000 + d);
    const rng = mulberry32(seed + d);
    for (let j = 0; j < v.length; j++) v[j] *= 2 ** (Math.floor(rng() * 25) - 12);
    return fromF32(v, plan.dtype);
  });
}
