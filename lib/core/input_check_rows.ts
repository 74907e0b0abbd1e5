/**
 * Host-side checks of rows: `x` of dispatch (in the plan's dtype, or
 * pre-quantized `{ q, scales }` for a plan that quantizes) and the `ys` of
 * combine. Each names the field, the rank and the fix.
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { HostRows, QuantizedInput } from "./engine_api.ts";
import { describe } from "../../dsl/check_routing.ts";
import { checkScales, QUANT_BLOCK } from "./fp8.ts";
import { HostTensor } from "./host_tensor.ts";
import { bad, isShape, type RowsShape } from "./input_shape.ts";

function hostArrayType(dtype: DType): string {
  return dtype === "f32" ? "Float32Array" : "Uint16Array";
}

function isHostRows(x: unknown): x is HostRows {
  return x instanceof Float32Array || x instanceof Uint16Array;
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
 * import { checkRows } from "./input_check_rows.ts";
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
 * import { isQuantizedInput } from "./input_check_rows.ts";
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
 *   a host scale that is NaN, ±Infinity, zero or negative, or pre-quantized rows for a plan
 *   that does not quantize.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkInputRows } from "./input_check_rows.ts";
 * const plan = { experts: 4, topK: 2, hidden: 128, dtype: "bf16" as const, quantize: "e4m3" as const };
 * assert.ok(checkInputRows(plan, 0, "x", { q: new Uint8Array(256), scales: new Float32Array(2).fill(1) }) === 2);
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
  // Host scales are cheap to check (one per 128 elements); a NaN, zero or
  // negative one would corrupt its whole block silently.
  const hostScales = x.scales instanceof HostTensor ? x.scales.data : x.scales;
  if (hostScales instanceof Float32Array) {
    checkScales(hostScales, hostScales.length, H / QUANT_BLOCK, `${field}.scales`, rank);
  }
  return n;
}
