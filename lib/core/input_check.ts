/**
 * Host-side validation of one batch's inputs against a plan, shared by the
 * Simulator, the layout compiler and the GPU engine. Every check throws a
 * {@link WeftError} naming the field (`x`, `topkIdx`, `topkWeights`, `inputs`,
 * `ys`), the rank and the fix. Engines run the checks for every rank before
 * they write anything, so a bad rank leaves all outputs untouched.
 *
 * Inputs given as tensors are checked by the shape and dtype they advertise
 * (their data may sit on a GPU); their values are checked where an engine
 * reads them: the Simulator on its host copy, the GPU engine on the device.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import type { HostRows } from "./engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { describe } from "../../dsl/check_routing.ts";
import { bad, isShape, type QuantizedShape, type RowsShape } from "./input_shape.ts";
import { checkInputRows } from "./input_check_rows.ts";
import {
  checkRoutingShape,
  checkRoutingTensor,
  checkTopkIdx,
  checkTopkWeights,
} from "./input_check_routing.ts";

// The checks by concern live in input_check_rows.ts and input_check_routing.ts;
// importers keep finding every check here.
export type { QuantizedShape, RowsShape } from "./input_shape.ts";
export { checkInputRows, checkRows, isQuantizedInput } from "./input_check_rows.ts";
export {
  checkRoutingShape,
  checkRoutingTensor,
  checkTopkIdx,
  checkTopkWeights,
} from "./input_check_routing.ts";

/**
 * The parts of a rank's input that can be checked on the host; `x` may be
 * left out (a layout has no rows). A tensor (or any {@link RowsShape}) is
 * checked by its shape and dtype, a host array also by its values.
 */
export interface RankInputLike {
  readonly x?: HostRows | RowsShape | QuantizedShape;
  readonly topkIdx: Int32Array | RowsShape;
  readonly topkWeights: Float32Array | RowsShape;
}

/** The parts of a {@link PlanSpec} the input checks read. */
export type PlanShape = Pick<PlanSpec, "experts" | "topK" | "hidden" | "dtype" | "quantize">;

/** A rank's input must be an object before any of its fields is read. */
function checkInputObject(rank: number, input: unknown): void {
  if (input === null || typeof input !== "object") {
    bad(
      "inputs",
      rank,
      `must be an object {x, topkIdx, topkWeights}, got ${describe(input)}`,
      "pass one RankInput per rank",
    );
  }
}

/**
 * Check one rank's whole input: `x` (when given), `topkIdx`, `topkWeights`.
 * The token count comes from `tokens`, else from `x`, else from
 * `topkIdx.length / topK` (or a topkIdx tensor's rows). Returns it. Host
 * arrays are checked in full, tensors by their advertised shape and dtype.
 *
 * @throws {WeftError} naming the field and the rank, with the fix.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRankInput } from "./input_check.ts";
 * const plan = { experts: 4, topK: 2, hidden: 3, dtype: "f32" as const };
 * const T = checkRankInput(plan, 0, {
 *   x: new Float32Array(6), topkIdx: Int32Array.of(0, 1, 2, 3), topkWeights: Float32Array.of(0.5, 0.5, 0.7, 0.3),
 * });
 * assert.ok(T === 2);
 * ```
 */
export function checkRankInput(
  plan: PlanShape,
  rank: number,
  input: RankInputLike,
  tokens?: number,
): number {
  checkInputObject(rank, input);
  const fromX = input.x !== undefined;
  if (fromX) tokens = checkInputRows(plan, rank, "x", input.x, tokens);
  tokens = isShape(input.topkIdx)
    ? checkRoutingTensor(plan, rank, "topkIdx", input.topkIdx, tokens, fromX ? "x has" : undefined)
    : checkTopkIdx(plan, rank, input.topkIdx, tokens);
  checkTopkWeights(plan, rank, input.topkIdx, input.topkWeights, tokens);
  return tokens;
}

/**
 * The shape half of {@link checkRankInput}: types, lengths and dtype, in
 * O(1), of host arrays and tensors alike (a tensor by the shape it
 * advertises). The GPU engine runs this on the host and the value checks
 * (expert range, duplicates, NaN weights) on the device, where they cost
 * nothing and still name the position, the rank and the fix.
 *
 * @throws {WeftError} naming the field, the rank and the fix.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRankShapes } from "./input_check.ts";
 * const plan = { experts: 4, topK: 2, hidden: 3, dtype: "f32" as const };
 * const T = checkRankShapes(plan, 0, {
 *   x: new Float32Array(6), topkIdx: Int32Array.of(0, 9, 2, 2), topkWeights: Float32Array.of(0.5, NaN, 0.7, 0.3),
 * });
 * assert.ok(T === 2); // values are left to the device check
 * ```
 */
export function checkRankShapes(
  plan: PlanShape,
  rank: number,
  input: RankInputLike,
): number {
  checkInputObject(rank, input);
  const tokens = input.x !== undefined ? checkInputRows(plan, rank, "x", input.x) : undefined;
  // The weights must match topkIdx's token count even without x (a layout).
  const T = checkRoutingShape(plan, rank, "topkIdx", input.topkIdx, tokens, "x has");
  checkRoutingShape(plan, rank, "topkWeights", input.topkWeights, T, "topkIdx has");
  return T;
}

/**
 * Check a collective call's inputs: exactly one per rank (in `ranks` order,
 * default every rank of the plan), each valid. Returns the token count of
 * each. Run before any output is allocated or written.
 *
 * @throws {WeftError} `inputs` for a wrong count, or the first bad rank's field.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRankInputs } from "./input_check.ts";
 * const plan = { world: 1, experts: 2, topK: 1, hidden: 1, dtype: "f32" as const };
 * const T = checkRankInputs(plan, [{ x: Float32Array.of(1), topkIdx: Int32Array.of(1), topkWeights: Float32Array.of(1) }]);
 * assert.ok(T[0] === 1);
 * ```
 */
export function checkRankInputs(
  plan: PlanShape & Pick<PlanSpec, "world">,
  inputs: readonly RankInputLike[],
  ranks?: readonly number[],
): number[] {
  const order = ranks ?? Array.from({ length: plan.world }, (_, r) => r);
  if (!Array.isArray(inputs) || inputs.length !== order.length) {
    throw new WeftError({
      field: "inputs",
      problem: `expected one input per driven rank (${order.length}), got ${
        Array.isArray(inputs) ? inputs.length : describe(inputs)
      }`,
      fix: `pass an array of ${order.length} RankInput objects in rank order`,
    });
  }
  return order.map((r, i) => checkRankInput(plan, r, inputs[i]));
}
