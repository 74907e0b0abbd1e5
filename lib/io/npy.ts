/**
 * Minimal NumPy `.npy` reading and writing: format versions 1.0, 2.0 and 3.0,
 * little-endian numeric dtypes, C order. Enough to load routing traces that
 * PyTorch/NumPy tools dump (`np.save("topk.npy", idx)`), with a WeftError for
 * every malformed file instead of a silent misread.
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";

/** The element types weft reads and writes. */
export type NpyDescr = "<i4" | "<i8" | "<f4" | "<f8";

/** A parsed `.npy` array. int64 data is a BigInt64Array. */
export interface NpyArray {
  readonly descr: NpyDescr;
  readonly shape: readonly number[];
  readonly data: Int32Array | BigInt64Array | Float32Array | Float64Array;
}

const MAGIC = [0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]; // \x93NUMPY

const CTORS = {
  "<i4": Int32Array,
  "<i8": BigInt64Array,
  "<f4": Float32Array,
  "<f8": Float64Array,
} as const;

function malformed(field: string, problem: string, fix?: string): never {
  throw new WeftError({
    field,
    problem,
    fix: fix ??
      "write the file with numpy.save (a little-endian int32/int64/float32/float64 array, C order)",
  });
}

/**
 * Parse a `.npy` file.
 *
 * @param field name used in errors (e.g. the file's role, `"topkIdx.npy"`).
 * @throws {WeftError} for a bad magic, an unknown version, an unreadable
 *   header, an unsupported dtype (big-endian, non-numeric), Fortran order, or
 *   a data section of the wrong size.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpy, parseNpy } from "./npy.ts";
 * const a = parseNpy(encodeNpy(Int32Array.of(1, 2, 3, 4), [2, 2]));
 * assert.ok(a.shape.join() === "2,2" && a.data[3] === 4);
 * ```
 */
export function parseNpy(bytes: Uint8Array, field = "npy"): NpyArray {
  if (!(bytes instanceof Uint8Array)) malformed(field, `must be a Uint8Array, got ${typeof bytes}`);
  if (bytes.length < 10 || MAGIC.some((b, i) => bytes[i] !== b)) {
    malformed(field, "is not a .npy file (missing the \\x93NUMPY magic)");
  }
  const major = bytes[6];
  let headerLen: number;
  let start: number;
  if (major === 1) {
    headerLen = bytes[8] | (bytes[9] << 8);
    start = 10;
  } else if (major === 2 || major === 3) {
    if (bytes.length < 12) malformed(field, "is truncated inside the header length");
    headerLen = (bytes[8] | (bytes[9] << 8) | (bytes[10] << 16) | (bytes[11] << 24)) >>> 0;
    start = 12;
  } else {
    malformed(field, `has format version ${major}.${bytes[7]}, only 1.x, 2.x and 3.x are known`);
  }
  if (start + headerLen > bytes.length) malformed(field, "is truncated inside the header");
  const header = new TextDecoder(major === 3 ? "utf-8" : "latin1").decode(
    bytes.subarray(start, start + headerLen),
  );
  const descr = /['"]descr['"]\s*:\s*['"]([^'"]*)['"]/.exec(header)?.[1];
  const fortran = /['"]fortran_order['"]\s*:\s*(True|False)/.exec(header)?.[1];
  const shapeText = /['"]shape['"]\s*:\s*\(([^)]*)\)/.exec(header)?.[1];
  if (descr === undefined || fortran === undefined || shapeText === undefined) {
    malformed(field, `has an unreadable header ${JSON.stringify(header.trim())}`);
  }
  if (!(descr in CTORS)) {
    malformed(
      field,
      `has dtype '${descr}', expected one of ${Object.keys(CTORS).join(", ")}`,
      "convert with arr.astype('<i4') (ids) or arr.astype('<f4') (weights) before saving",
    );
  }
  if (fortran === "True") {
    malformed(field, "is in Fortran order", "save np.ascontiguousarray(arr) instead");
  }
  const parts = shapeText.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const shape = parts.map((s) => Number(s));
  if (shape.some((n) => !Number.isSafeInteger(n) || n < 0)) {
    malformed(field, `has an invalid shape (${shapeText})`);
  }
  const Ctor = CTORS[descr as NpyDescr];
  const count = shape.reduce((a, b) => a * b, 1);
  const dataStart = start + headerLen;
  const need = count * Ctor.BYTES_PER_ELEMENT;
  if (bytes.length - dataStart !== need) {
    malformed(
      field,
      `holds ${bytes.length - dataStart} data bytes, but shape (${
        shape.join(", ")
      }) of '${descr}' needs ${need}`,
      "the file is truncated or was not written by numpy.save; save it again",
    );
  }
  // Copy so the typed array is aligned whatever the header length was.
  const buf = bytes.slice(dataStart, dataStart + need).buffer;
  return { descr: descr as NpyDescr, shape, data: new Ctor(buf) };
}

/**
 * Write a `.npy` (version 1.0, C order) holding `data` with `shape`.
 *
 * @throws {WeftError} `shape` when it does not match the data length.
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { encodeNpy } from "./npy.ts";
 * const bytes = encodeNpy(Float32Array.of(0.5, 0.5), [1, 2]);
 * assert.ok(bytes.length % 64 === 8);
 * ```
 */
export function encodeNpy(
  data: Int32Array | BigInt64Array | Float32Array | Float64Array,
  shape: readonly number[],
): Uint8Array {
  const count = shape.reduce((a, b) => a * b, 1);
  if (count !== data.length) {
    throw new WeftError({
      field: "shape",
      problem: `(${shape.join(", ")}) holds ${count} elements, the data has ${data.length}`,
      fix: "pass the data's shape",
    });
  }
  const descr = data instanceof Int32Array
    ? "<i4"
    : data instanceof BigInt64Array
    ? "<i8"
    : data instanceof Float32Array
    ? "<f4"
    : "<f8";
  const shapeText = shape.length === 1 ? `${shape[0]},` : shape.join(", ");
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${shapeText}), }`;
  // numpy pads the header with spaces so the data starts on a 64-byte boundary.
  const total = Math.ceil((10 + header.length + 1) / 64) * 64;
  header = header.padEnd(total - 10 - 1, " ") + "\n";
  const out = new Uint8Array(total + data.byteLength);
  out.set(MAGIC);
  out[6] = 1;
  out[7] = 0;
  out[8] = header.length & 0xff;
  out[9] = header.length >> 8;
  out.set(new TextEncoder().encode(header), 10);
  out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), total);
  return out;
}
