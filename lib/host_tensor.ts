/**
 * A [rows × cols] matrix in host memory, the Simulator's tensor type and the
 * host-side counterpart of the GPU engine's device tensors.
 *
 * @module
 */
import type { DType, TensorDType } from "../dsl/types.ts";
import type { HostRows, Tensor } from "./engine_api.ts";
import { fromF32, hostArrayType, toF32 } from "./dtype.ts";
import { WeftError } from "./errors.ts";

/**
 * Host rows with their shape and dtype. `data` is the storage itself (f32 as
 * Float32Array, bf16/f16 as raw bits in a Uint16Array); `read()` returns it
 * without copying.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { HostTensor } from "./host_tensor.ts";
 * const t = HostTensor.fromF32(Float32Array.of(1, 2, 3, 4), 2, 2, "bf16");
 * assert.ok(t.device === "host" && t.toF32()[3] === 4 && t.row(1).length === 2);
 * ```
 */
export class HostTensor implements Tensor {
  /** Always "host". */
  readonly device = "host";
  /** Element type of `data`. */
  readonly dtype: TensorDType;
  /** Row count. */
  readonly rows: number;
  /** Elements per row. */
  readonly cols: number;
  /** The rows × cols elements, row-major (raw bits for 16-bit dtypes). */
  readonly data: HostRows;

  /**
   * Wrap `data` (or allocate zeros) as a rows × cols tensor of `dtype`.
   *
   * @throws {WeftError} `data` when its type or length does not fit dtype and shape. */
  constructor(dtype: TensorDType, rows: number, cols: number, data?: HostRows) {
    if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 0) {
      throw new WeftError({
        field: "shape",
        problem: `rows and cols must be integers ≥ 0, got ${rows} × ${cols}`,
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
    this.data = storage;
  }

  /** A tensor of `dtype` holding f32 values rounded to it (copied). */
  static fromF32(values: Float32Array, rows: number, cols: number, dtype: DType): HostTensor {
    return new HostTensor(dtype, rows, cols, fromF32(values, dtype));
  }

  /** The data itself (no copy). */
  read(): Promise<HostRows> {
    return Promise.resolve(this.data);
  }

  /** Row i as a view into the storage. */
  row(i: number): HostRows {
    return this.data.subarray(i * this.cols, (i + 1) * this.cols);
  }

  /**
   * The values as f32 (a copy for 16-bit dtypes, the storage itself for
   * f32). E4M3 bytes need their scales: see lib/fp8.ts `dequantizeRows`.
   */
  toF32(): Float32Array {
    if (this.dtype === "e4m3") {
      throw new WeftError({
        field: "dtype",
        problem: "is e4m3: its values need the block scales that came with it",
        fix: "use dequantizeRows({ q: tensor.data, scales }, hidden) from lib/fp8.ts",
      });
    }
    return toF32(this.data, this.dtype);
  }
}
