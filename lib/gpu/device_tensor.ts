/**
 * A [rows × cols] matrix in GPU memory. Either it owns its allocation (made
 * by {@link DeviceTensor.alloc} or {@link DeviceTensor.upload}, freed by
 * `close()`), or it is a view into memory that something else owns (a
 * dispatch handle's receive buffer), which becomes unusable when its owner
 * closes.
 *
 * @module
 */
import type { HostArray, HostArrayOf, Tensor } from "../core/engine_api.ts";
import { TENSOR_DTYPE_BYTES, type TensorDType } from "../../dsl/types.ts";
import { hostArrayType } from "../core/dtype.ts";
import { WeftError } from "../../dsl/errors.ts";
import { readPointer } from "../native/pointers.ts";
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import { NativeHandle, type Release } from "../native/native_handle.ts";

/** Something that owns device memory a view points into. */
export interface ViewOwner {
  /** True once the memory is gone. */
  readonly closed: boolean;
  /** What the owner is, for error messages ("dispatch handle"). */
  readonly description: string;
}

/** Frees memory of `device` (a module-level closure: it must not hold the tensor). */
function freeOn(device: number): Release {
  return (pointer) => unwrap(native().weft_free(device, pointer), "weft_free");
}

/**
 * A matrix on one GPU; implements {@link Tensor} so engines accept it as
 * input and return it as output. `D` is the dtype when known at compile
 * time: `DeviceTensor.upload(0, "i32", T, K, ids)` is a
 * `DeviceTensor<"i32">`, a routing's `topkIdx` that stays on the GPU.
 *
 * @example
 * ```ts ignore
 * import { DeviceTensor } from "./device_tensor.ts";
 * using t = DeviceTensor.upload(0, "f32", 2, 3, new Float32Array([1, 2, 3, 4, 5, 6]));
 * console.log(await t.read()); // Float32Array [1, 2, 3, 4, 5, 6]
 * ```
 */
export class DeviceTensor<D extends TensorDType = TensorDType> implements Tensor<D>, Disposable {
  /** Element type. */
  readonly dtype: D;
  /** Row count. */
  readonly rows: number;
  /** Elements per row. */
  readonly cols: number;
  /** The CUDA device index. */
  readonly deviceIndex: number;
  readonly #owner: ViewOwner | undefined;
  /** The memory: freed by close() when this tensor owns it, else only marked closed. */
  readonly #memory: NativeHandle;
  #settle: (() => Promise<void>) | undefined;

  private constructor(
    deviceIndex: number,
    dtype: D,
    rows: number,
    cols: number,
    pointer: Deno.PointerValue,
    owner: ViewOwner | undefined,
  ) {
    this.deviceIndex = deviceIndex;
    this.dtype = dtype;
    this.rows = rows;
    this.cols = cols;
    this.#owner = owner;
    // Zero bytes need no allocation (NULL stands for them), and views free nothing.
    const owns = owner === undefined && pointer !== null;
    this.#memory = new NativeHandle(this, pointer, owns ? freeOn(deviceIndex) : undefined, {
      field: "tensor",
      problem: "this DeviceTensor was closed",
      fix: "read or use a tensor before closing it",
    });
  }

  /** Allocates uninitialized memory for `rows × cols` elements of `dtype` on `device`. */
  static alloc<D extends TensorDType>(
    device: number,
    dtype: D,
    rows: number,
    cols: number,
  ): DeviceTensor<D> {
    checkShape(dtype, rows, cols);
    const bytes = rows * cols * TENSOR_DTYPE_BYTES[dtype];
    // Zero bytes (a rank with no tokens) needs no allocation; NULL stands for it.
    if (bytes === 0) return new DeviceTensor(device, dtype, rows, cols, null, undefined);
    const out = new BigUint64Array(1);
    unwrap(native().weft_alloc(device, BigInt(bytes), out), "weft_alloc", {
      field: "device memory",
    });
    return new DeviceTensor(device, dtype, rows, cols, readPointer(out), undefined);
  }

  /**
   * Allocates and copies host data in (bf16/f16 as raw Uint16Array patterns,
   * i32 as an Int32Array).
   */
  static upload<D extends TensorDType>(
    device: number,
    dtype: D,
    rows: number,
    cols: number,
    data: HostArray,
  ): DeviceTensor<D> {
    const t = DeviceTensor.alloc(device, dtype, rows, cols);
    try {
      t.write(data);
    } catch (error) {
      t.close();
      throw error;
    }
    return t;
  }

  /**
   * A non-owning view of device memory that `owner` frees (for weft's own
   * engine: a dispatch handle's receive buffer).
   */
  static view<D extends TensorDType>(
    device: number,
    dtype: D,
    rows: number,
    cols: number,
    pointer: Deno.PointerValue,
    owner: ViewOwner,
  ): DeviceTensor<D> {
    checkShape(dtype, rows, cols);
    return new DeviceTensor(device, dtype, rows, cols, pointer, owner);
  }

  /** "cuda:N". */
  get device(): string {
    return `cuda:${this.deviceIndex}`;
  }

  /** Bytes of data. */
  get byteLength(): number {
    return this.rows * this.cols * TENSOR_DTYPE_BYTES[this.dtype];
  }

  /** True when this tensor owns its memory (not a view). */
  get owning(): boolean {
    return this.#owner === undefined;
  }

  /** The device address, for native calls; throws once the memory is gone. */
  get pointer(): Deno.PointerValue {
    return this.#alive();
  }

  /**
   * Makes the next {@link DeviceTensor.read} await `settle` first. Engines
   * return while their rows still move (stream-ordered, like a CUDA launch);
   * they hand their outputs this hook so that reading one reports a failure
   * of the call that wrote it (a dead peer) instead of returning its rows.
   */
  settleBeforeRead(settle: () => Promise<void>): void {
    this.#settle = settle;
  }

  /**
   * Copies the data to the host. Waits for the GPU work that writes it (and
   * for the engine call that wrote it to report success, see
   * {@link DeviceTensor.settleBeforeRead}).
   */
  async read(): Promise<HostArrayOf<D>> {
    this.#alive();
    const settle = this.#settle;
    this.#settle = undefined;
    if (settle !== undefined) await settle();
    const pointer = this.#alive();
    const host = new (hostArrayType(this.dtype))(this.rows * this.cols);
    if (host.length > 0) {
      unwrap(
        native().weft_copy_d2h(this.deviceIndex, host, pointer, BigInt(host.byteLength)),
        "weft_copy_d2h",
      );
    }
    return host as HostArrayOf<D>;
  }

  /**
   * Overwrites the data with host data of the same shape, in the array class
   * of the dtype (checked at run time: a WeftError otherwise).
   */
  write(data: HostArray): void {
    const pointer = this.#alive();
    const expected = hostArrayType(this.dtype);
    if (!(data instanceof expected) || data.length !== this.rows * this.cols) {
      throw new WeftError({
        field: "data",
        problem: `expected a ${expected.name} of ${this.rows}×${this.cols} = ${
          this.rows * this.cols
        } ${this.dtype} values, got a ${data.constructor.name} of ${data.length}`,
        fix: `pass ${
          this.dtype === "f32"
            ? "a Float32Array"
            : this.dtype === "i32"
            ? "an Int32Array"
            : this.dtype === "e4m3"
            ? "raw E4M3 bytes in a Uint8Array (lib/core/fp8.ts converts)"
            : "raw 16-bit patterns in a Uint16Array (lib/core/dtype.ts converts)"
        } of rows × cols elements`,
      });
    }
    if (data.length === 0) return;
    unwrap(
      native().weft_copy_h2d(this.deviceIndex, pointer, data, BigInt(data.byteLength)),
      "weft_copy_h2d",
    );
  }

  /**
   * Fills every byte with `byte` (0…255). Tests poison outputs first so that
   * an element a kernel forgot to write shows up (0xFF gives NaN in every
   * dtype).
   */
  poison(byte = 0xff): void {
    const pointer = this.#alive();
    if (!Number.isInteger(byte) || byte < 0 || byte > 255) {
      throw new WeftError({
        field: "byte",
        problem: `is ${byte}`,
        fix: "pass an integer in 0…255",
      });
    }
    if (this.byteLength === 0) return;
    unwrap(
      native().weft_memset(this.deviceIndex, pointer, byte, BigInt(this.byteLength)),
      "weft_memset",
    );
  }

  /** Frees owned memory (a view just detaches). Safe to call twice. */
  close(): void {
    this.#memory.close();
  }

  /** Same as {@link DeviceTensor.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  /** The memory's address; a WeftError once this tensor or its owner was closed. */
  #alive(): Deno.PointerValue {
    const pointer = this.#memory.pointer;
    if (this.#owner?.closed) {
      throw new WeftError({
        field: "tensor",
        problem: `this tensor is a view into a ${this.#owner.description} that was closed`,
        fix: `read the data (or copy it) before closing the ${this.#owner.description}`,
      });
    }
    return pointer;
  }
}

function checkShape(dtype: TensorDType, rows: number, cols: number): void {
  if (!(dtype in TENSOR_DTYPE_BYTES)) {
    throw new WeftError({
      field: "dtype",
      problem: `is "${dtype}"`,
      fix: 'use "bf16", "f16", "f32", "e4m3" or "i32"',
    });
  }
  for (const [name, v] of [["rows", rows], ["cols", cols]] as const) {
    if (!Number.isInteger(v) || v < 0) {
      throw new WeftError({ field: name, problem: `is ${v}`, fix: "pass a non-negative integer" });
    }
  }
}
