/**
 * Failing a collective call on every rank at once. A rank whose inputs fail
 * a host-side check cannot simply throw: its peers would wait for it in the
 * collective until their timeout. It enters the call anyway, with inputs
 * native rejects on every rank (an out-of-range expert id, NULL buffers),
 * then throws its own precise error while the peers throw the native one
 * naming this rank. Nothing is written anywhere.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { native } from "../native/loader.ts";
import { Status } from "../native/status.ts";
import { holding, hostPointer, readPointer } from "../native/pointers.ts";

/**
 * Enters a dispatch (or layout) with a batch the device check rejects, so
 * every peer fails together with this rank instead of waiting for it.
 */
export async function rejectOnEveryRank(
  plan: PlanSpec,
  nativeEngine: Deno.PointerValue,
): Promise<void> {
  const { topK: K, hidden: H, dtype, experts } = plan;
  const x = dtype === "f32"
    ? new Float32Array(new ArrayBuffer(H * 4))
    : new Uint16Array(new ArrayBuffer(H * 2));
  const idx = new Int32Array(new ArrayBuffer(K * 4)).fill(-1);
  idx[0] = experts; // one past the last expert: out of range by construction
  const weights = new Float32Array(new ArrayBuffer(K * 4));
  const out = new BigUint64Array(1);
  const status = await holding(
    [x, idx, weights, out],
    () =>
      native().weft_dispatch(
        nativeEngine,
        hostPointer(x),
        hostPointer(idx),
        hostPointer(weights),
        1,
        0,
        out,
      ),
  );
  if (status === Status.OK) {
    // The device check did not fire (it should): do not leak the handle.
    native().weft_handle_destroy(readPointer(out));
  }
}

/** Enters a re-dispatch with NULL rows, which fails the call on every rank. */
export async function rejectRedispatch(nativeHandle: Deno.PointerValue): Promise<void> {
  await holding([], () => native().weft_redispatch(nativeHandle, null, 0));
}

/**
 * The prepared inputs of a collective call, or, when preparing them fails on
 * this host, `reject` (which enters the collective so that every rank fails
 * at once) and then the host's error.
 *
 * @example
 * ```ts
 * import { orReject } from "./reject.ts";
 * let rejected = false;
 * const bad = Promise.reject(new Error("bad x"));
 * await orReject(bad, () => Promise.resolve(void (rejected = true))).catch(() => {});
 * console.assert(rejected);
 * ```
 */
export async function orReject<T>(
  prepared: Promise<T>,
  reject: () => Promise<void>,
): Promise<T> {
  try {
    return await prepared;
  } catch (hostError) {
    await reject();
    throw hostError;
  }
}

/** Enters the collective with NULL buffers, which native rejects on every rank. */
export async function rejectCombine(nativeHandle: Deno.PointerValue): Promise<void> {
  await holding([], () => native().weft_combine(nativeHandle, null, null));
}
