/**
 * A [rows × cols] matrix in host memory, the Simulator's tensor type and the
 * host-side counterpart of the GPU engine's device tensors.
 *
 * @module
 */
import type { DType, TensorDType } from "../../dsl/types.ts";
import type { HostArray, HostArrayOf, HostRows, Tensor } from "./engine_api.ts";
import { fromF32, hostArrayType, toF32 } from "./dtype.ts";
import { WeftError } from "../../dsl/errors.ts";
import { show } from "../../dsl/show.ts";

/**
 * Host data with its shape and dtype. `data` is the storage itself (f32 as
 * Float32Array, bf16/f16 as raw bits in a Uint16Array, e4m3 as bytes in a
 * Uint8Array, i32 as an Int32Array); `read()` returns it without copying.
 * `D` is the dtype when known at compile time (`new HostTensor("i32", …)`
 * is a `HostTensor<"i32">`, whose data is an Int32Array).
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { HostTensor } from "./host_tensor.ts";
 * const t = HostTensor.fromF32(Float32Array.of(1, 2, 3, 4), 2, 2, "bf16");
 * assert.ok(t.device === "host" && t.toF32()[3] === 4 && t.row(1).length === 2);
 * const ids = new HostTensor("i32", 1, 2, Int32Array.of(3, -1)); // a routing's topkIdx
 * assert.ok(ids.data[1] === -1);
 * ```
 */
export class HostTensor<D extends TensorDType = TensorDType> implements Tensor<D> {
  /** Always "host". */
  readonly device = "host";
  /** Element type of `data`. */
  readonly dtype: D;
  /** Row count. */
  readonly rows: number;
  /** Elements per row. */
  readonly cols: number;
  /** The rows × cols elements, row-major (raw bits for 16-bit dtypes). */
  readonly data: HostArrayOf<D>;

  /**
   * Wrap `data` (or allocate zeros) as a rows × cols tensor of `dtype`.
   *
   * @throws {WeftError} `data` when its type or length does not fit dtype and shape. */
  constructor(dtype: D, rows: number, cols: number, data?: HostArray) {
    if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 0) {
      throw new WeftError({
        field: "shape",
        problem: `rows and cols must be integers ≥ 0, got ${show(rows)} × ${show(cols)}`,
        fix: "pass a valid shape",
      });
    }
    const n = rows * cols;
    const want = hostArrayType(dtype);
    const storage = data ?? new want(n);
    if (!(storage instanceof want) || storage.length !== n) {
      throw new WeftError({
        field: "data",
        problem:
          `a ${rows} × ${cols} ${dtype} tensor needs a ${want.name} of ${n} elements, got ${storage?.constructor?.name} of ${storage?.length}`,
        fix: "pass storage of the right type and length, or build with HostTensor.fromF32",
      });
    }
    this.dtype = dtype;
    this.rows = rows;
    this.cols = cols;
    // Checked above: storage is an instance of dtype's array class.
    this.data = storage as HostArrayOf<D>;
  }

  /** A tensor of `dtype` holding f32 values rounded to it (copied). */
  static fromF32<D extends DType>(
    values: Float32Array,
    rows: number,
    cols: number,
    dtype: D,
  ): HostTensor<D> {
    return new HostTensor(dtype, rows, cols, fromF32(values, dtype));
  }

  /** The data itself (no copy). */
  read(): Promise<HostArrayOf<D>> {
    return Promise.resolve(this.data);
  }

  /** Row i as a view into the storage. */
  row(i: number): HostArrayOf<D> {
    return this.data.subarray(i * this.cols, (i + 1) * this.cols) as HostArrayOf<D>;
  }

  /**
   * The values as f32 (a copy for 16-bit dtypes, the storage itself for
   * f32). E4M3 bytes need their scales: see lib/fp8.ts `dequantizeRows`;
   * i32 ids are not values to convert.
   */
  toF32(): Float32Array {
    const dtype: TensorDType = this.dtype;
    if (dtype === "e4m3") {
      throw new WeftError({
        field: "dtype",
        problem: "is e4m3: its values need the block scales that came with it",
        fix: "use dequantizeRows({ q: tensor.data, scales }, hidden) from lib/fp8.ts",
      });
    }
    if (dtype === "i32") {
      throw new WeftError({
        field: "dtype",
        problem: "is i32 (routing ids), not a floating-point dtype",
        fix: "read the ids with read() or data; Float32Array.from(tensor.data) converts them",
      });
    }
    return toF32(this.data as HostRows, dtype);
  }
}
