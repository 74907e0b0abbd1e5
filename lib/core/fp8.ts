/**
 * FP8 E4M3 block quantization, the normative definition that a `quantize:
 * e4m3` dispatch follows on every engine (the Simulator calls these
 * functions; native/src/quantize.cu computes the same bits on the GPU).
 *
 * A row of H elements (H a multiple of {@link QUANT_BLOCK}) is cut into blocks
 * of 128 consecutive elements. Each block gets one scale, a power of two
 * 2^e, and each element x becomes q = e4m3(x · 2^−e), rounded to nearest
 * even; x ≈ q · 2^e. The exponent is the smallest e with amax ≤ 448 · 2^e
 * (448 is E4M3's largest finite value), where amax is the block's largest
 * |x| (NaN ignored); e is at least −126, and a block whose amax is 0 or ±Inf
 * gets e = 0. Because the scale is a power of two, x · 2^−e is exact, no
 * finite element saturates, and any two implementations agree bit for bit.
 * Power-of-two scales are also what UE8M0 scale formats (DeepGEMM) take.
 *
 * E4M3 here is the OCP FP8 format: 1 sign, 4 exponent (bias 7), 3 mantissa
 * bits; no infinities; 0x7F / 0xFF are NaN; the largest finite is 448
 * (0x7E); subnormals are m · 2^−9. Conversion saturates (±Inf → ±448) and
 * maps NaN to 0x7F, as CUDA's `__nv_cvt_float_to_fp8(v, __NV_SATFINITE,
 * __NV_E4M3)` does.
 *
 * @module
 */
import { type DType, QUANT_BLOCK } from "../../dsl/types.ts";
import type { HostRows } from "./engine_api.ts";
import { toF32 } from "./dtype.ts";
import { WeftError } from "../../dsl/errors.ts";

/** Elements per scale block (declared with the plan's types in dsl/types.ts). */
export { QUANT_BLOCK };
/** The largest finite E4M3 value. */
export const E4M3_MAX = 448;
/** The smallest scale exponent a block gets (2^−126 is the least normal f32). */
export const MIN_SCALE_EXPONENT = -126;

/** Rounds y ≥ 0 to the nearest integer, ties to even. */
function roundHalfEven(y: number): number {
  const f = Math.floor(y);
  const d = y - f;
  if (d > 0.5 || (d === 0.5 && f % 2 === 1)) return f + 1;
  return f;
}

/** floor(log2(a)) for a finite a > 0, exact (Math.log2 alone can be off by one near powers of two). */
function floorLog2(a: number): number {
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  else if (2 ** (e + 1) <= a) e++;
  return e;
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/**
 * One value → its E4M3 byte: round to nearest even, saturate to ±448, NaN →
 * 0x7F. `v` is taken as an f32 first, as on the GPU (an f32 value times a
 * power of two, what quantizeRows passes, is exact). Works on the f32 bits,
 * the way native/src/quantize.cu's conversion and the mock's C code do.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { e4m3Encode } from "./fp8.ts";
 * assert.equal(e4m3Encode(1), 0x38);
 * assert.equal(e4m3Encode(-448), 0xfe);
 * assert.equal(e4m3Encode(1e9), 0x7e); // saturates
 * ```
 */
export function e4m3Encode(v: number): number {
  scratchF32[0] = v;
  const u = scratchU32[0];
  const sign = (u >>> 24) & 0x80;
  const mag = u & 0x7fffffff;
  if (mag > 0x7f800000) return 0x7f; // NaN
  if (mag > 0x43e00000) return sign | 0x7e; // beyond 448 (Inf included): saturate
  let code: number;
  if (mag < 0x3c800000) {
    // Below 2^-6: subnormal quantum 2^-9; 8 quanta carry into the least normal (code 8).
    code = roundHalfEven(Math.abs(scratchF32[0]) * 512);
  } else {
    // Normal: keep 3 mantissa bits, round the other 20 to nearest even; a
    // carry out of the mantissa moves into the exponent by itself.
    const e = (mag >>> 23) - 127;
    let keep = (mag >>> 20) & 7;
    const rest = mag & 0xfffff;
    if (rest > 0x80000 || (rest === 0x80000 && (keep & 1) === 1)) keep++;
    code = ((e + 7) << 3) + keep;
  }
  return sign | Math.min(code, 0x7e);
}

/**
 * One E4M3 byte → its value (NaN for 0x7F / 0xFF).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { e4m3Decode } from "./fp8.ts";
 * assert.equal(e4m3Decode(0x7e), 448);
 * assert.equal(e4m3Decode(0x01), 2 ** -9);
 * ```
 */
export function e4m3Decode(b: number): number {
  const sign = b & 0x80 ? -1 : 1;
  const exp = (b >> 3) & 0xf;
  const man = b & 7;
  if (exp === 15 && man === 7) return NaN;
  if (exp === 0) return sign * man * 2 ** -9;
  return sign * (1 + man / 8) * 2 ** (exp - 7);
}

/** Every byte's value, for decoding whole rows. */
const E4M3_VALUES = Float64Array.from({ length: 256 }, (_, b) => e4m3Decode(b));

/**
 * The scale exponent of a block whose largest |x| is `amax`: the smallest
 * integer e with amax ≤ 448 · 2^e, at least −126; 0 when amax is 0 or
 * not finite.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { scaleExponent } from "./fp8.ts";
 * assert.equal(scaleExponent(448), 0);
 * assert.equal(scaleExponent(449), 1);
 * assert.equal(scaleExponent(1), -8); // 1 ≤ 448 · 2^-8 = 1.75
 * ```
 */
export function scaleExponent(amax: number): number {
  if (!(amax > 0) || !Number.isFinite(amax)) return 0;
  const e = floorLog2(amax);
  // amax = m · 2^e with m in [1, 2); 448 = 1.75 · 2^8.
  const need = amax / 2 ** e <= 1.75 ? e - 8 : e - 7;
  return Math.max(need, MIN_SCALE_EXPONENT);
}

/** Rows quantized to E4M3: the bytes and one f32 scale per block of 128. */
export interface QuantizedRows {
  /** [rows × H] E4M3 bytes. */
  readonly q: Uint8Array;
  /** [rows × H/128] scales, each a power of two: x ≈ q · scale. */
  readonly scales: Float32Array;
}

/**
 * Quantizes host rows of `dtype` (H elements each) block by block as the
 * module comment defines.
 *
 * @throws {WeftError} `hidden` when H is not a positive multiple of 128.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { quantizeRows } from "./fp8.ts";
 * const x = new Float32Array(128).fill(3);
 * const { q, scales } = quantizeRows(x, "f32", 128);
 * assert.equal(scales[0], 2 ** -7); // 3 ≤ 448 · 2^-7 = 3.5
 * assert.equal(q[0], 0x7c); // 3 / 2^-7 = 384 = 1.5 · 2^8
 * ```
 */
export function quantizeRows(rows: HostRows, dtype: DType, H: number): QuantizedRows {
  checkQuantHidden(H);
  if (rows instanceof Uint8Array) {
    throw new WeftError({
      field: "rows",
      problem: "are already E4M3 bytes",
      fix: "quantize the rows of the plan's dtype (bf16, f16 or f32)",
    });
  }
  const n = rows.length;
  if (n % H !== 0) {
    throw new WeftError({
      field: "rows",
      problem: `has ${n} values, not a whole number of rows of ${H}`,
      fix: `pass rows × ${H} values`,
    });
  }
  const q = new Uint8Array(n);
  const scales = new Float32Array(n / QUANT_BLOCK);
  // Converted to f32 a chunk at a time: no full-size copy of the rows.
  const CHUNK = QUANT_BLOCK * 64;
  const x = new Float32Array(CHUNK);
  for (let lo0 = 0; lo0 < n; lo0 += CHUNK) {
    const len = Math.min(CHUNK, n - lo0);
    const part = x.subarray(0, len);
    toF32(rows.subarray(lo0, lo0 + len) as HostRows, dtype, part);
    for (let lo = 0; lo < len; lo += QUANT_BLOCK) {
      let amax = 0;
      for (let i = lo; i < lo + QUANT_BLOCK; i++) {
        const v = Math.abs(part[i]);
        if (v > amax) amax = v; // NaN compares false: ignored
      }
      const e = scaleExponent(amax);
      scales[(lo0 + lo) / QUANT_BLOCK] = 2 ** e;
      const inv = 2 ** -e;
      for (let i = lo; i < lo + QUANT_BLOCK; i++) q[lo0 + i] = e4m3Encode(part[i] * inv);
    }
  }
  return { q, scales };
}

/**
 * E4M3 rows and their block scales back to f32 (q · scale, exact), into
 * `out` when given (same length as q).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { dequantizeRows, quantizeRows } from "./fp8.ts";
 * const x = Float32Array.from({ length: 256 }, (_, i) => i / 8);
 * const y = dequantizeRows(quantizeRows(x, "f32", 128), 128);
 * assert.ok(Math.abs(y[200] - x[200]) <= x[200] / 16);
 * ```
 */
export function dequantizeRows(
  rows: QuantizedRows,
  H: number,
  out: Float32Array = new Float32Array(rows.q.length),
): Float32Array {
  checkQuantHidden(H);
  if (out.length !== rows.q.length) {
    throw new WeftError({
      field: "out",
      problem: `has ${out.length} elements, the rows have ${rows.q.length}`,
      fix: "pass an output array of the same length",
    });
  }
  // Everything is checked before `out` is written: a short scales array
  // would otherwise fill the caller's output with NaN.
  if (!(rows.q instanceof Uint8Array) || rows.q.length % H !== 0) {
    throw new WeftError({
      field: "rows.q",
      problem: `must be a Uint8Array of rows × ${H} E4M3 bytes, got ${
        rows.q instanceof Uint8Array ? `${rows.q.length} bytes` : typeof rows.q
      }`,
      fix: "pass the q of quantizeRows (or of a quantized dispatch's recv)",
    });
  }
  checkScales(rows.scales, rows.q.length / QUANT_BLOCK, H / QUANT_BLOCK, "rows.scales");
  const blocks = out.length / QUANT_BLOCK;
  for (let b = 0; b < blocks; b++) {
    const scale = rows.scales[b];
    for (let i = b * QUANT_BLOCK; i < (b + 1) * QUANT_BLOCK; i++) {
      out[i] = E4M3_VALUES[rows.q[i]] * scale;
    }
  }
  return out;
}

/**
 * Checks a scales array of quantized rows before anything reads it: a
 * Float32Array of exactly `count` scales (`perRow` a row), each finite and
 * > 0, since a NaN, zero or negative scale turns every value of its block
 * into NaN, 0 or a sign flip without a word.
 *
 * @throws {WeftError} `field` (with `rank` when given) naming the row and block at fault.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkScales } from "./fp8.ts";
 * checkScales(Float32Array.of(1, 0.5), 2, 1, "x.scales");
 * assert.throws(() => checkScales(Float32Array.of(1, -2), 2, 1, "x.scales"), /row 1 block 0/);
 * ```
 */
export function checkScales(
  scales: unknown,
  count: number,
  perRow: number,
  field: string,
  rank?: number,
): asserts scales is Float32Array {
  const where = rank !== undefined ? { rank } : {};
  if (!(scales instanceof Float32Array) || scales.length !== count) {
    throw new WeftError({
      field,
      ...where,
      problem: `must be a Float32Array of ${count} scales (${perRow} a row), got ${
        scales instanceof Float32Array ? `${scales.length}` : typeof scales
      }`,
      fix: `pass one f32 scale per ${QUANT_BLOCK} elements of every row`,
    });
  }
  for (let i = 0; i < count; i++) {
    const s = scales[i];
    if (!(s > 0) || !Number.isFinite(s)) {
      throw new WeftError({
        field,
        ...where,
        problem: `row ${Math.floor(i / perRow)} block ${i % perRow} has scale ${s}; ` +
          "scales must be finite and > 0",
        fix: "pass the scales quantizeRows wrote (powers of two), not NaN, zero or negative ones",
      });
    }
  }
}

/**
 * Checks that H can be cut into whole blocks of 128.
 *
 * @throws {WeftError} `hidden` otherwise.
 * @example
 * ```ts
 * import { checkQuantHidden } from "./fp8.ts";
 * checkQuantHidden(7168);
 * ```
 */
export function checkQuantHidden(H: number): void {
  if (!Number.isInteger(H) || H < QUANT_BLOCK || H % QUANT_BLOCK !== 0) {
    throw new WeftError({
      field: "hidden",
      problem: `is ${H}; an e4m3 dispatch scales blocks of ${QUANT_BLOCK} elements`,
      fix: `use a hidden size that is a multiple of ${QUANT_BLOCK}, or drop .quantize("e4m3")`,
    });
  }
}
