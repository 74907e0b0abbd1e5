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
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { HostRows, QuantizedInput, Tensor } from "./engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { checkTopkIdxArray, describe } from "../../dsl/check_routing.ts";
import { QUANT_BLOCK } from "./fp8.ts";

/** Anything with a row count, a column count and a dtype: a {@link Tensor} or a shape descriptor. */
export type RowsShape = Pick<Tensor, "rows" | "cols" | "dtype">;

/** Pre-quantized rows as the checks see them: arrays, or tensors by their shape. */
export interface QuantizedShape {
  readonly q: Uint8Array | RowsShape;
  readonly scales: Float32Array | RowsShape;
}

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

function bad(field: string, rank: number, problem: string, fix: string): never {
  throw new WeftError({ field, rank, problem, fix });
}

function hostArrayType(dtype: DType): string {
  return dtype === "f32" ? "Float32Array" : "Uint16Array";
}

function isHostRows(x: unknown): x is HostRows {
  return x instanceof Float32Array || x instanceof Uint16Array;
}

/** A tensor, or anything else that advertises rows, cols and a dtype (not a typed array). */
function isShape(x: unknown): x is RowsShape {
  return x !== null && typeof x === "object" && !ArrayBuffer.isView(x) && "rows" in x &&
    "cols" in x && "dtype" in x;
}

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
 * import { checkRoutingTensor } from "./input_check.ts";
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
 * Check one rows argument (`x`, or one `y` of combine) against the plan's
 * dtype and hidden size, and return its row count. With `rows` given, the
 * row count must equal it.
 *
 * @throws {WeftError} `field` for a wrong array type, dtype, width or row count.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRows } from "./input_check.ts";
 * const plan = { experts: 4, topK: 2, hidden: 3, dtype: "f32" as const };
 * assert.ok(checkRows(plan, 0, "x", new Float32Array(6)) === 2);
 * ```
 */
export function checkRows(
  plan: Pick<PlanSpec, "hidden" | "dtype">,
  rank: number,
  field: string,
  x: unknown,
  rows?: number,
): number {
  const H = plan.hidden;
  const want = hostArrayType(plan.dtype);
  let n: number;
  if (isHostRows(x)) {
    if ((x instanceof Float32Array) !== (plan.dtype === "f32")) {
      bad(
        field,
        rank,
        `is a ${describe(x)} but the plan's dtype is ${plan.dtype} (host rows are a ${want})`,
        plan.dtype === "f32"
          ? "convert the 16-bit rows with toF32(rows, dtype) from lib/dtype.ts, or compile the plan with that dtype"
          : `convert with fromF32(rows, "${plan.dtype}") from lib/dtype.ts, or compile the plan with dtype f32`,
      );
    }
    if (x.length % H !== 0) {
      bad(
        field,
        rank,
        `has ${x.length} elements, not a multiple of hidden ${H}`,
        `pass rows × ${H} elements`,
      );
    }
    n = x.length / H;
  } else if (x instanceof Int32Array) {
    bad(
      field,
      rank,
      `is an Int32Array (int32 data, like routing ids); rows here are ${plan.dtype}`,
      `pass the rows as a ${want} of rows × ${H} ${plan.dtype} values (ids go in topkIdx)`,
    );
  } else if (isShape(x)) {
    const t = x;
    if (t.dtype === "i32") {
      bad(
        field,
        rank,
        `is an i32 tensor (int32 data, like routing ids); rows here are ${plan.dtype}`,
        `pass a ${plan.dtype} [rows × ${H}] tensor (i32 tensors go in topkIdx)`,
      );
    }
    if (t.dtype === "e4m3") {
      bad(
        field,
        rank,
        `is an e4m3 tensor (the recv of a quantized dispatch); rows here are ${plan.dtype}`,
        `pass the experts' outputs as a ${plan.dtype} [rows × ${H}] tensor`,
      );
    }
    if (t.dtype !== plan.dtype) {
      bad(
        field,
        rank,
        `tensor dtype is ${t.dtype} but the plan's dtype is ${plan.dtype}`,
        `convert the tensor to ${plan.dtype} or compile the plan with dtype ${t.dtype}`,
      );
    }
    if (t.cols !== H) {
      bad(
        field,
        rank,
        `tensor has ${t.cols} columns but the plan's hidden size is ${H}`,
        `pass a [rows × ${H}] tensor`,
      );
    }
    n = t.rows;
  } else {
    bad(field, rank, `must be a ${want} or a Tensor, got ${describe(x)}`, `pass a ${want}`);
  }
  if (rows !== undefined && n !== rows) {
    bad(
      field,
      rank,
      `has ${n} rows, expected ${rows} (${rows} × ${H} elements)`,
      `pass exactly ${rows} rows`,
    );
  }
  return n;
}

/**
 * True for pre-quantized rows (`{ q, scales }`), as opposed to rows in the
 * plan's dtype.
 *
 * @example
 * ```ts
 * import { isQuantizedInput } from "./input_check.ts";
 * console.assert(isQuantizedInput({ q: new Uint8Array(128), scales: new Float32Array(1) }));
 * console.assert(!isQuantizedInput(new Float32Array(4)));
 * ```
 */
export function isQuantizedInput(x: unknown): x is QuantizedInput {
  return x !== null && typeof x === "object" && !ArrayBuffer.isView(x) && "q" in x &&
    "scales" in x;
}

/** Rows or elements of one part of a pre-quantized input, checked against its expected type and width. */
function quantizedPart(
  rank: number,
  field: string,
  part: unknown,
  array: Uint8ArrayConstructor | Float32ArrayConstructor,
  dtype: "e4m3" | "f32",
  cols: number,
): number {
  if (part instanceof array) {
    if (part.length % cols !== 0) {
      bad(
        field,
        rank,
        `has ${part.length} values, not a multiple of ${cols}`,
        `pass rows × ${cols} values`,
      );
    }
    return part.length / cols;
  }
  if (
    part !== null && typeof part === "object" && "rows" in part && "dtype" in part && "cols" in part
  ) {
    const t = part as RowsShape;
    if (t.dtype !== dtype || t.cols !== cols) {
      bad(
        field,
        rank,
        `is a ${t.dtype} tensor of ${t.cols} columns`,
        `pass a ${dtype} [rows × ${cols}] tensor`,
      );
    }
    return t.rows;
  }
  return bad(
    field,
    rank,
    `must be a ${array.name} or a ${dtype} tensor, got ${describe(part)}`,
    `pass a ${array.name}`,
  );
}

/**
 * Check rows given to dispatch or re-dispatch: rows in the plan's dtype
 * ({@link checkRows}), or, for a plan that quantizes dispatch, pre-quantized
 * `{ q, scales }` ([T × H] e4m3, [T × H/128] f32 with the same T). Returns T.
 *
 * @throws {WeftError} `field` (or `field.q`, `field.scales`) for a wrong type, width or row count,
 *   or pre-quantized rows for a plan that does not quantize.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkInputRows } from "./input_check.ts";
 * const plan = { experts: 4, topK: 2, hidden: 128, dtype: "bf16" as const, quantize: "e4m3" as const };
 * assert.ok(checkInputRows(plan, 0, "x", { q: new Uint8Array(256), scales: new Float32Array(2) }) === 2);
 * ```
 */
export function checkInputRows(
  plan: Pick<PlanSpec, "hidden" | "dtype" | "quantize">,
  rank: number,
  field: string,
  x: unknown,
  rows?: number,
): number {
  if (!isQuantizedInput(x)) return checkRows(plan, rank, field, x, rows);
  const H = plan.hidden;
  if (plan.quantize !== "e4m3") {
    bad(
      field,
      rank,
      "is pre-quantized ({ q, scales }) but the plan does not quantize dispatch",
      `pass ${plan.dtype} rows, or compile the pattern with .quantize("e4m3")`,
    );
  }
  const n = quantizedPart(rank, `${field}.q`, x.q, Uint8Array, "e4m3", H);
  const s = quantizedPart(rank, `${field}.scales`, x.scales, Float32Array, "f32", H / QUANT_BLOCK);
  if (s !== n) {
    bad(
      `${field}.scales`,
      rank,
      `has ${s} rows, q has ${n}`,
      "pass one row of scales per row of q",
    );
  }
  if (rows !== undefined && n !== rows) {
    bad(field, rank, `has ${n} rows, expected ${rows}`, `pass exactly ${rows} rows`);
  }
  return n;
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
 * import { checkTopkIdx } from "./input_check.ts";
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
 * import { checkTopkWeights } from "./input_check.ts";
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
 * The shape check of one routing part, in O(1): `topkIdx` an Int32Array or
 * an `i32` tensor, `topkWeights` a Float32Array or an `f32` tensor, of
 * `tokens` × topK values when `tokens` is given (else a whole number of
 * tokens). Returns the token count. No values are read.
 *
 * @throws {WeftError} `field` for a wrong type, dtype, length or shape.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkRoutingShape } from "./input_check.ts";
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
