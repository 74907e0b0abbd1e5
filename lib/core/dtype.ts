/**
 * Conversions between f32 and the 16-bit row formats weft moves (bf16, f16),
 * on whole arrays. Host rows of a 16-bit dtype are their raw bit patterns in a
 * Uint16Array (see {@link HostRows}).
 *
 * bf16 works on the f32 bit pattern through a Uint32Array view (no DataView,
 * no per-element allocation); f16 uses V8's native Float16Array conversion,
 * which rounds to nearest even like the GPU's `__float2half_rn`.
 *
 * @module
 */
import { type DType, DTYPE_BYTES, type TensorDType } from "../../dsl/types.ts";
import { show } from "../../dsl/show.ts";
import type { HostRows } from "./engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";

function u32View(a: Float32Array): Uint32Array {
  return new Uint32Array(a.buffer, a.byteOffset, a.length);
}

function f16View(a: Uint16Array): Float16Array {
  return new Float16Array(a.buffer, a.byteOffset, a.length);
}

function checkOut(out: { length: number }, n: number): void {
  if (out.length !== n) {
    throw new WeftError({
      field: "out",
      problem: `has ${out.length} elements, the source has ${n}`,
      fix: "pass an output array of the same length",
    });
  }
}

/**
 * f32 → bf16 bits, round to nearest even. NaN stays NaN (quiet, sign kept);
 * ±Inf and overflow to ±Inf behave as on the GPU (`__float2bfloat16_rn`).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { f32ToBf16 } from "./dtype.ts";
 * assert.ok(f32ToBf16(Float32Array.of(1, -2))[1] === 0xc000);
 * ```
 */
export function f32ToBf16(
  src: Float32Array,
  out: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  checkOut(out, src.length);
  const bits = u32View(src);
  for (let i = 0; i < bits.length; i++) {
    const u = bits[i];
    // NaN: truncating could clear every mantissa bit and make it Inf; set the quiet bit.
    if ((u & 0x7fffffff) > 0x7f800000) out[i] = (u >>> 16) | 0x0040;
    else out[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
  }
  return out;
}

/**
 * bf16 bits → f32 (exact: bf16 is the top half of an f32).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { bf16ToF32 } from "./dtype.ts";
 * assert.ok(bf16ToF32(Uint16Array.of(0x3f80))[0] === 1);
 * ```
 */
export function bf16ToF32(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  checkOut(out, src.length);
  const bits = u32View(out);
  for (let i = 0; i < src.length; i++) bits[i] = src[i] << 16;
  return out;
}

/**
 * f32 → f16 bits, round to nearest even; overflow → ±Inf, NaN stays NaN.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { f32ToF16 } from "./dtype.ts";
 * assert.ok(f32ToF16(Float32Array.of(1))[0] === 0x3c00);
 * ```
 */
export function f32ToF16(
  src: Float32Array,
  out: Uint16Array = new Uint16Array(src.length),
): Uint16Array {
  checkOut(out, src.length);
  f16View(out).set(src);
  return out;
}

/**
 * f16 bits → f32 (exact).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { f16ToF32 } from "./dtype.ts";
 * assert.ok(f16ToF32(Uint16Array.of(0xc000))[0] === -2);
 * ```
 */
export function f16ToF32(
  src: Uint16Array,
  out: Float32Array = new Float32Array(src.length),
): Float32Array {
  checkOut(out, src.length);
  out.set(f16View(src));
  return out;
}

/**
 * Host rows of `dtype` as f32. For f32 rows this returns `rows` itself (no
 * copy) unless `out` is given.
 *
 * @throws {WeftError} `rows` when the array type does not match `dtype`.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { toF32 } from "./dtype.ts";
 * assert.ok(toF32(Uint16Array.of(0x4000), "bf16")[0] === 2);
 * ```
 */
export function toF32(rows: HostRows, dtype: DType, out?: Float32Array): Float32Array {
  checkRowDType(dtype);
  if (dtype === "f32") {
    if (!(rows instanceof Float32Array)) throw typeMismatch(rows, dtype);
    if (out === undefined) return rows;
    checkOut(out, rows.length);
    out.set(rows);
    return out;
  }
  if (!(rows instanceof Uint16Array)) throw typeMismatch(rows, dtype);
  return dtype === "bf16" ? bf16ToF32(rows, out) : f16ToF32(rows, out);
}

/**
 * f32 values as host rows of `dtype` (a copy, rounded to nearest even).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { fromF32 } from "./dtype.ts";
 * const h = fromF32(Float32Array.of(1.5), "f16");
 * assert.ok(h instanceof Uint16Array && h[0] === 0x3e00);
 * ```
 */
export function fromF32(f32: Float32Array, dtype: DType, out?: HostRows): HostRows {
  // Checked before anything is written: an unknown dtype ("fp8") must not
  // fall through to f16 and fill the caller's `out` with f16 bits.
  checkRowDType(dtype);
  if (dtype === "f32") {
    if (out !== undefined && !(out instanceof Float32Array)) throw typeMismatch(out, dtype);
    const o = out ?? new Float32Array(f32.length);
    checkOut(o, f32.length);
    o.set(f32);
    return o;
  }
  if (out !== undefined && !(out instanceof Uint16Array)) throw typeMismatch(out, dtype);
  return dtype === "bf16" ? f32ToBf16(f32, out) : f32ToF16(f32, out);
}

/**
 * Round f32 values to the precision of `dtype` and back (what storing them in
 * that dtype loses), in place. Handy to build expected values.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { roundThrough } from "./dtype.ts";
 * assert.ok(roundThrough(Float32Array.of(1 + 2 ** -10), "bf16")[0] === 1);
 * ```
 */
export function roundThrough(f32: Float32Array, dtype: DType): Float32Array {
  if (dtype === "f32") return f32;
  return toF32(fromF32(f32, dtype), dtype, f32);
}

const ROW_DTYPES: readonly string[] = Object.keys(DTYPE_BYTES);

/** Rows on the host are bf16, f16 or f32; FP8 rows go through fp8.ts (quantizeRows). */
function checkRowDType(dtype: unknown): asserts dtype is DType {
  if (typeof dtype !== "string" || !ROW_DTYPES.includes(dtype)) {
    throw new WeftError({
      field: "dtype",
      problem: `must be one of ${ROW_DTYPES.map((d) => `"${d}"`).join(", ")}, got ${show(dtype)}`,
      fix: "convert rows to bf16, f16 or f32; for FP8 rows use quantizeRows / dequantizeRows",
    });
  }
}

function typeMismatch(rows: unknown, dtype: DType): WeftError {
  const want = dtype === "f32" ? "Float32Array" : "Uint16Array";
  return new WeftError({
    field: "rows",
    problem: `dtype ${dtype} needs a ${want}, got ${
      (rows as object)?.constructor?.name ?? typeof rows
    }`,
    fix: `pass ${dtype} rows as a ${want}`,
  });
}

/** The typed array class that holds the host data of each tensor dtype. */
export type HostArrayType =
  | Float32ArrayConstructor
  | Uint16ArrayConstructor
  | Uint8ArrayConstructor
  | Int32ArrayConstructor;

/**
 * The typed array class that holds the host data of `dtype`: Float32Array
 * for f32, Uint16Array (raw bits) for bf16/f16, Uint8Array (raw bytes) for
 * e4m3, Int32Array for i32 (routing ids).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { hostArrayType } from "./dtype.ts";
 * assert.equal(hostArrayType("e4m3"), Uint8Array);
 * assert.equal(hostArrayType("i32"), Int32Array);
 * assert.ok(new (hostArrayType("bf16"))(2) instanceof Uint16Array);
 * ```
 */
export function hostArrayType(dtype: TensorDType): HostArrayType {
  switch (dtype) {
    case "f32":
      return Float32Array;
    case "i32":
      return Int32Array;
    case "e4m3":
      return Uint8Array;
    default:
      return Uint16Array;
  }
}
