/**
 * The shapes the input checks speak of (a tensor by its rows, cols and dtype;
 * pre-quantized rows) and the one way they report a bad input, shared by the
 * row checks, the routing checks and the per-rank checks.
 *
 * @module
 */
import type { Tensor } from "./engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";

/** Anything with a row count, a column count and a dtype: a {@link Tensor} or a shape descriptor. */
export type RowsShape = Pick<Tensor, "rows" | "cols" | "dtype">;

/** Pre-quantized rows as the checks see them: arrays, or tensors by their shape. */
export interface QuantizedShape {
  readonly q: Uint8Array | RowsShape;
  readonly scales: Float32Array | RowsShape;
}

/**
 * Throws the WeftError of a bad input: `field` on `rank`, what is wrong, the fix.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bad } from "./input_shape.ts";
 * assert.throws(() => bad("x", 1, "is empty", "pass rows"), /x \(rank 1\): is empty/);
 * ```
 */
export function bad(field: string, rank: number, problem: string, fix: string): never {
  throw new WeftError({ field, rank, problem, fix });
}

/**
 * A tensor, or anything else that advertises rows, cols and a dtype (not a typed array).
 *
 * @example
 * ```ts
 * import { isShape } from "./input_shape.ts";
 * console.assert(isShape({ rows: 1, cols: 2, dtype: "f32" }) && !isShape(new Float32Array(2)));
 * ```
 */
export function isShape(x: unknown): x is RowsShape {
  return x !== null && typeof x === "object" && !ArrayBuffer.isView(x) && "rows" in x &&
    "cols" in x && "dtype" in x;
}
