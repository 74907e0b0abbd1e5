/**
 * Passing memory across the FFI boundary: addresses of host data, pointers
 * native wrote into out-parameters, and keeping host buffers alive and in
 * place while a nonblocking call reads them.
 *
 * @module
 */

/** Bytes of an NCCL unique id (`WEFT_UNIQUE_ID_BYTES`). */
export const UNIQUE_ID_BYTES = 128;
/** Bytes of one rank's CUDA IPC handle (`WEFT_IPC_HANDLE_BYTES`). */
export const IPC_HANDLE_BYTES = 64;

/**
 * The address of a pointer (0n for NULL).
 *
 * @example
 * ```ts
 * import { pointerValue } from "./pointers.ts";
 * console.assert(pointerValue(null) === 0n);
 * ```
 */
export function pointerValue(p: Deno.PointerValue): bigint {
  return p === null ? 0n : Deno.UnsafePointer.value(p);
}

/**
 * The pointer an out-parameter (`void** out`) received.
 *
 * @example
 * ```ts
 * import { pointerValue, readPointer } from "./pointers.ts";
 * console.assert(pointerValue(readPointer(BigUint64Array.of(0x1000n))) === 0x1000n);
 * ```
 */
export function readPointer(out: BigUint64Array): Deno.PointerValue {
  return Deno.UnsafePointer.create(out[0]);
}

/**
 * The address of host data for a "pointer" parameter (NULL when empty).
 *
 * @example
 * ```ts
 * import { hostPointer } from "./pointers.ts";
 * console.assert(hostPointer(new Uint8Array(0)) === null);
 * ```
 */
export function hostPointer(view: ArrayBufferView): Deno.PointerValue {
  return view.byteLength === 0 ? null : Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>);
}

/**
 * A copy of `view` in its own ArrayBuffer when it is small. V8 may keep
 * small typed arrays inside its moving heap; an ArrayBuffer made explicitly
 * always has a fixed, off-heap backing store, so its address stays valid
 * across a nonblocking call. Large views are already off-heap: no copy.
 *
 * @example
 * ```ts
 * import { stableCopy } from "./pointers.ts";
 * const small = Int32Array.of(1, 2);
 * console.assert(stableCopy(small) !== small && stableCopy(small)[1] === 2);
 * ```
 */
export function stableCopy<T extends Int32Array | Float32Array | Uint16Array | Uint8Array>(
  view: T,
): T {
  if (view.byteLength > 64) return view;
  const copy = new (view.constructor as { new (buffer: ArrayBuffer): T })(
    new ArrayBuffer(view.byteLength),
  );
  copy.set(view as never);
  return copy;
}

const inFlight = new Set<readonly unknown[]>();

/**
 * Runs a nonblocking native call while keeping `values` reachable. Deno does
 * not hold the buffers of a nonblocking call, and an async function's locals
 * that are not used after an `await` may be collected during it; host
 * buffers (and DeviceTensors, whose finalizer frees device memory) that the
 * call reads go in `values`.
 *
 * @example
 * ```ts
 * import { holding } from "./pointers.ts";
 * const rows = new Float32Array(4);
 * console.assert((await holding([rows], () => Promise.resolve(0))) === 0);
 * ```
 */
export async function holding<T>(values: readonly unknown[], call: () => Promise<T>): Promise<T> {
  inFlight.add(values);
  try {
    return await call();
  } finally {
    inFlight.delete(values);
  }
}
