/**
 * Host-side checks of routing: `topkIdx` (ids, or an `i32` tensor by its
 * shape) and `topkWeights` (finite weights, or an `f32` tensor by its shape).
 * The value check of host ids is the pattern layer's (dsl/check_routing.ts).
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { checkTopkIdxArray, describe } from "../../dsl/check_routing.ts";
import { bad, isShape, type RowsShape } from "./input_shape.ts";

/**
 * Check a routing tensor (`topkIdx`: i32, `topkWeights`: f32) by the shape
 * it advertises: [tokens × topK] of its dtype, with `tokens` (x's token
 * count, or topkIdx's rows for the weights) when known. Returns its rows.
 *
 * @throws {WeftError} `field` for a wrong dtype, a column count other than
 *   topK, or a row count other than `tokens`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRoutingTensor } from "./input_check_routing.ts";
 * const plan = { topK: 2 };
 * assert.ok(checkRoutingTensor(plan, 0, "topkIdx", { rows: 3, cols: 2, dtype: "i32" }) === 3);
 * ```
 */
export function checkRoutingTensor(
  plan: Pick<PlanSpec, "topK">,
  rank: number,
  field: "topkIdx" | "topkWeights",
  t: RowsShape,
  tokens?: number,
  tokensFrom = "the batch has",
): number {
  const K = plan.topK;
  const want = field === "topkIdx" ? "i32" : "f32";
  if (t.dtype !== want) {
    bad(
      field,
      rank,
      `is a ${t.dtype} tensor; ${field} ${
        field === "topkIdx" ? "holds int32 expert ids" : "holds f32 weights"
      }, an ${want} tensor`,
      field === "topkIdx"
        ? 'pass the router\'s ids as an "i32" [tokens × topK] tensor (cast them to int32 on the GPU, or DeviceTensor.upload(device, "i32", T, K, Int32Array)), or an Int32Array'
        : 'pass the router\'s weights as an "f32" [tokens × topK] tensor, or a Float32Array',
    );
  }
  if (t.cols !== K) {
    bad(
      field,
      rank,
      `tensor has ${t.cols} columns but the plan's topK is ${K} (K mismatch?)`,
      `pass a [tokens × ${K}] tensor (pad unused slots with -1), or compile the plan with topK(${t.cols})`,
    );
  }
  if (tokens !== undefined && t.rows !== tokens) {
    bad(
      field,
      rank,
      `tensor has ${t.rows} rows but ${tokensFrom} ${tokens} tokens`,
      `pass one row of ${K} per token: a [${tokens} × ${K}] tensor`,
    );
  }
  return t.rows;
}

/**
 * Check one rank's `topkIdx`: an Int32Array of T×K ids, each -1 or in
 * [0, experts), no expert twice in one token; or an `i32` [T × K] tensor,
 * checked by its shape (its values are checked where an engine reads it).
 * Returns T.
 *
 * @throws {WeftError} `topkIdx` for a wrong type, a length that is not T×K
 *   (reported as a K mismatch when it is a whole number of other-K rows), an
 *   id out of range or a duplicated expert; for a tensor, a wrong dtype, width
 *   or row count.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkTopkIdx } from "./input_check_routing.ts";
 * const plan = { experts: 4, topK: 2, hidden: 3, dtype: "f32" as const };
 * assert.ok(checkTopkIdx(plan, 0, Int32Array.of(0, 1, 3, -1)) === 2);
 * ```
 */
export function checkTopkIdx(
  plan: Pick<PlanSpec, "experts" | "topK">,
  rank: number,
  topkIdx: unknown,
  tokens?: number,
): number {
  if (isShape(topkIdx)) return checkRoutingTensor(plan, rank, "topkIdx", topkIdx, tokens);
  return checkTopkIdxArray(plan, rank, topkIdx, tokens);
}

/**
 * Check `topkWeights`: a Float32Array of T×K, finite wherever the slot holds
 * an expert; or an `f32` [T × K] tensor, checked by its shape. T is `tokens`
 * when given, else topkIdx's. Weights of `-1` slots are never read, so they
 * are not checked; nor are the values when either side is a tensor (the
 * engine that reads them checks them).
 *
 * @throws {WeftError} `topkWeights` for a wrong type, length or shape, or a NaN/±Inf weight.
 * @example
 * ```ts
 * import { checkTopkWeights } from "./input_check_routing.ts";
 * const plan = { experts: 4, topK: 2, hidden: 3, dtype: "f32" as const };
 * checkTopkWeights(plan, 0, Int32Array.of(0, -1), Float32Array.of(1, NaN));
 * ```
 */
export function checkTopkWeights(
  plan: Pick<PlanSpec, "topK">,
  rank: number,
  topkIdx: Int32Array | RowsShape,
  topkWeights: unknown,
  tokens?: number,
): void {
  const K = plan.topK;
  const n = tokens !== undefined
    ? tokens * K
    : ArrayBuffer.isView(topkIdx)
    ? topkIdx.length
    : topkIdx.rows * K;
  if (isShape(topkWeights)) {
    checkRoutingTensor(plan, rank, "topkWeights", topkWeights, n / K, "topkIdx has");
    return;
  }
  if (!(topkWeights instanceof Float32Array)) {
    bad(
      "topkWeights",
      rank,
      `must be a Float32Array or an f32 tensor, got ${describe(topkWeights)}`,
      "wrap the weights with Float32Array.from(weights)",
    );
  }
  if (topkWeights.length !== n) {
    bad(
      "topkWeights",
      rank,
      `has ${topkWeights.length} entries, expected tokens × topK = ${n} (one per topkIdx entry)`,
      `pass ${K} weights per token, in the same order as topkIdx`,
    );
  }
  if (!(topkIdx instanceof Int32Array)) return;
  for (let i = 0; i < topkWeights.length; i++) {
    const w = topkWeights[i];
    if (topkIdx[i] !== -1 && !Number.isFinite(w)) {
      bad(
        "topkWeights",
        rank,
        `token ${Math.floor(i / K)} slot ${i % K} has weight ${w}`,
        "fix the router output: weights of routed slots must be finite",
      );
    }
  }
}

/**
 * The shape check of one routing part, in O(1): `topkIdx` an Int32Array or
 * an `i32` tensor, `topkWeights` a Float32Array or an `f32` tensor, of
 * `tokens` × topK values when `tokens` is given (else a whole number of
 * tokens). Returns the token count. No values are read.
 *
 * @throws {WeftError} `field` for a wrong type, dtype, length or shape.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRoutingShape } from "./input_check_routing.ts";
 * const plan = { topK: 2 };
 * assert.ok(checkRoutingShape(plan, 0, "topkWeights", new Float32Array(6)) === 3);
 * assert.ok(checkRoutingShape(plan, 0, "topkIdx", { rows: 3, cols: 2, dtype: "i32" }, 3) === 3);
 * ```
 */
export function checkRoutingShape(
  plan: Pick<PlanSpec, "topK">,
  rank: number,
  field: "topkIdx" | "topkWeights",
  a: unknown,
  tokens?: number,
  tokensFrom?: string,
): number {
  if (isShape(a)) return checkRoutingTensor(plan, rank, field, a, tokens, tokensFrom);
  const K = plan.topK;
  const [ctor, dtype] = field === "topkIdx"
    ? [Int32Array, "i32"] as const
    : [Float32Array, "f32"] as const;
  if (!(a instanceof ctor)) {
    bad(
      field,
      rank,
      `must be a ${ctor.name} or an ${dtype} tensor, got ${describe(a)}`,
      `pass a ${ctor.name} of tokens × topK values, or an ${dtype} [tokens × ${K}] tensor`,
    );
  }
  const n = a.length;
  if (n % K !== 0 || (tokens !== undefined && n !== tokens * K)) {
    bad(
      field,
      rank,
      `has ${n} values, expected ${
        tokens !== undefined ? `${tokens} tokens × ${K}` : `a multiple of topK = ${K}`
      }`,
      `pass tokens × topK (${K}) values, row-major by token`,
    );
  }
  return n / K;
}
