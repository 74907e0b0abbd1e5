/**
 * Dispatch handles: one dispatched batch's native layout, the outputs it
 * owns (`recv` and friends, views that die with it), and the registry of an
 * engine's open handles that frees them safely around running calls.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import type { DispatchHandle, DispatchResult, Tensor } from "../core/engine_api.ts";
import { WeftError } from "../../dsl/errors.ts";
import { QUANT_BLOCK } from "../core/fp8.ts";
import { native } from "../native/loader.ts";
import { nativeError, Status, unwrap } from "../native/status.ts";
import { NativeHandle } from "../native/native_handle.ts";
import { pointerValue } from "../native/pointers.ts";
import { decodeDispatchInfo, DISPATCH_INFO, type DispatchInfo } from "./dispatch_info.ts";
import { DeviceTensor, type ViewOwner } from "./device_tensor.ts";

/** What a handle needs of the engine that made it. */
export interface HandleEngine {
  /** The engine's plan. */
  readonly plan: PlanSpec;
  /** `[rank]`. */
  readonly ranks: readonly number[];
  /** This process's rank. */
  readonly rank: number;
  /** The CUDA device index. */
  readonly device: number;
  /** Waits for the engine's queued work and throws its failure. */
  synchronize(): Promise<void>;
}

function destroy(address: bigint): void {
  unwrap(native().weft_handle_destroy(Deno.UnsafePointer.create(address)), "weft_handle_destroy");
}

/**
 * An engine's native state: its open dispatch handles, and whether a call
 * is running on Deno's thread pool. Frees requested during such a call (by
 * `close()` or by the garbage collector) wait for it to end, so native never
 * sees a handle destroyed under a running dispatch or combine.
 */
export class HandleRegistry {
  /** Addresses of the open handles. */
  readonly live: Set<bigint> = new Set();
  /** True while a call of the engine runs. */
  busy = false;
  readonly #deferred: bigint[] = [];

  /** The registry of the native engine at `engine`. */
  constructor(readonly engine: bigint) {}

  /** Frees handle `address` now, or after the running call. */
  destroyHandle(address: bigint): void {
    if (!this.live.delete(address)) return; // already freed
    if (this.busy) this.#deferred.push(address);
    else destroy(address);
  }

  /** Frees what waited for the call that just ended. */
  flush(): void {
    for (const address of this.#deferred.splice(0)) destroy(address);
  }

  /** Frees every handle, then the engine (nothing may be running). */
  destroyAll(): void {
    const failures: unknown[] = [];
    const addresses = [...this.#deferred.splice(0), ...this.live];
    this.live.clear();
    for (const address of addresses) {
      try {
        destroy(address);
      } catch (error) {
        failures.push(error);
      }
    }
    unwrap(
      native().weft_engine_destroy(Deno.UnsafePointer.create(this.engine)),
      "weft_engine_destroy",
    );
    if (failures.length > 0) throw failures[0];
  }
}

/**
 * One dispatched batch on this rank: the layout native computed, for
 * combine and re-dispatch. Its `recv` tensor is a view that dies with it.
 */
export class GpuDispatchHandle implements DispatchHandle, ViewOwner {
  /** The one rank this handle's process drives. */
  readonly ranks: readonly number[];
  /** What this is, for messages about views into it. */
  readonly description: string = "dispatch handle";
  /** Tokens this rank dispatched. */
  readonly tokens: number;
  /** Rows this rank received. */
  readonly recvRows: number;
  /** @internal The result dispatch returned (re-dispatch returns it again). */
  readonly result: DispatchResult;
  readonly #engine: HandleEngine;
  readonly #address: bigint;
  readonly #registry: HandleRegistry;
  readonly #native: NativeHandle;

  /** @internal Built by {@link openHandle}. */
  constructor(
    engine: HandleEngine,
    pointer: Deno.PointerValue,
    registry: HandleRegistry,
    info: DispatchInfo,
  ) {
    const address = pointerValue(pointer);
    this.#engine = engine;
    this.#address = address;
    this.#registry = registry;
    this.ranks = engine.ranks;
    this.tokens = info.tokens;
    this.recvRows = info.recvRows;
    registry.live.add(address);
    this.#native = new NativeHandle(this, pointer, releaseFrom(registry, address), {
      field: "handle",
      rank: engine.rank,
      fix: "combine or re-dispatch before closing the handle (or its engine)",
    });
    this.result = dispatchResult(engine, info, this);
  }

  /** True once closed (directly or by closing its engine). */
  get closed(): boolean {
    return this.#native.closed || !this.#registry.live.has(this.#address);
  }

  /** @internal The native handle, if `engine` owns this handle and it is open. */
  pointerFor(engine: HandleEngine): Deno.PointerValue {
    if (engine !== this.#engine) {
      throw new WeftError({
        field: "handle",
        rank: engine.rank,
        problem: "belongs to another engine",
        fix: "pass the handle returned by this engine's dispatch",
      });
    }
    // Closing the engine frees its handles without closing them one by one.
    if (!this.#registry.live.has(this.#address)) this.#native.close();
    return this.#native.pointer;
  }

  /** Frees the layout and the receive buffer (its `recv` view dies). */
  close(): void {
    this.#native.close();
  }

  /** Same as {@link GpuDispatchHandle.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/** `handle` as a GPU dispatch handle, or a WeftError naming the `handle` field. */
export function ownHandle(engine: HandleEngine, handle: DispatchHandle): GpuDispatchHandle {
  if (!(handle instanceof GpuDispatchHandle)) {
    throw new WeftError({
      field: "handle",
      rank: engine.rank,
      problem: "is not a GPU dispatch handle",
      fix: "pass the handle returned by this engine's dispatch",
    });
  }
  return handle;
}

/** The release of a handle: through its registry, which may defer it past a running call. */
function releaseFrom(registry: HandleRegistry, address: bigint): () => void {
  return () => registry.destroyHandle(address);
}

/**
 * Wraps the native handle a dispatch or layout of `tokens` returned, after
 * checking what native reports about it (and freeing it if that fails).
 */
export function openHandle(
  engine: HandleEngine,
  registry: HandleRegistry,
  pointer: Deno.PointerValue,
  tokens: number,
): GpuDispatchHandle {
  const raw = new Uint8Array(DISPATCH_INFO.bytes);
  const infoStatus = native().weft_handle_info(pointer, raw);
  if (infoStatus !== Status.OK) {
    const error = nativeError(infoStatus, "weft_handle_info", { message: "", rank: -1 }, {
      rank: engine.rank,
    });
    native().weft_handle_destroy(pointer);
    throw error;
  }
  const info = decodeDispatchInfo(raw);
  const local = engine.plan.localExperts[engine.rank];
  if (info.tokens !== tokens || info.localExperts !== local || info.recvRows < 0) {
    native().weft_handle_destroy(pointer);
    throw new WeftError({
      field: "weft_handle_info",
      rank: engine.rank,
      problem:
        `native reports tokens ${info.tokens}, local experts ${info.localExperts}, rows ${info.recvRows}; expected tokens ${tokens}, local experts ${local}`,
      fix: "the native library and lib/native/ffi.ts disagree: rebuild with `deno task build`",
    });
  }
  return new GpuDispatchHandle(engine, pointer, registry, info);
}

/**
 * Marks `t` as still being written on the comm stream: reading it settles
 * the engine's call first, so a failed call is thrown instead of its rows.
 */
export function settleOnRead(engine: HandleEngine, t: Tensor): void {
  if (t instanceof DeviceTensor) t.settleBeforeRead(() => engine.synchronize());
}

/** The outputs of a dispatch: views into `owner`'s buffers, metadata read on demand. */
function dispatchResult(
  engine: HandleEngine,
  info: DispatchInfo,
  owner: ViewOwner,
): DispatchResult {
  const { plan, device, rank } = engine;
  const ints = (pointer: Deno.PointerValue, n: number) => () => readInt32(device, rank, pointer, n);
  const quantized = plan.quantize === "e4m3";
  const view = <D extends "e4m3" | "f32" | PlanSpec["dtype"]>(
    dtype: D,
    cols: number,
    pointer: Deno.PointerValue,
  ) => {
    const t = DeviceTensor.view(device, dtype, info.recvRows, cols, pointer, owner);
    settleOnRead(engine, t);
    return t;
  };
  const recv = view(quantized ? "e4m3" : plan.dtype, plan.hidden, info.recv);
  const base: Pick<DispatchResult, "rank" | "recv" | "recvScales"> = quantized
    ? { rank, recv, recvScales: view("f32", plan.hidden / QUANT_BLOCK, info.recvScales) }
    : { rank, recv };
  return withLazyMetadata(base, {
    expertCounts: ints(info.expertCounts, info.localExperts),
    recvWeights: () => new Float32Array(ints(info.recvWeights, info.recvRows)().buffer),
    srcRank: ints(info.srcRank, info.recvRows),
    srcToken: ints(info.srcToken, info.recvRows),
    srcK: ints(info.srcK, info.recvRows),
  });
}

/** Copies `n` 4-byte values from device memory (weights travel as their bits). */
function readInt32(
  device: number,
  rank: number,
  pointer: Deno.PointerValue,
  n: number,
): Int32Array {
  const out = new Int32Array(new ArrayBuffer(n * 4));
  if (n > 0) {
    unwrap(native().weft_copy_d2h(device, out, pointer, BigInt(n * 4)), "weft_copy_d2h", { rank });
  }
  return out;
}

type Metadata = Pick<
  DispatchResult,
  "expertCounts" | "recvWeights" | "srcRank" | "srcToken" | "srcK"
>;

/**
 * Completes a DispatchResult whose metadata stays on the device until first
 * read (then cached): a training step that feeds recv and the device-side
 * counts to its kernels pays no copy back, and no synchronizing copy sits
 * inside the timed dispatch.
 */
function withLazyMetadata(
  base: Pick<DispatchResult, "rank" | "recv" | "recvScales">,
  read: { readonly [K in keyof Metadata]: () => Metadata[K] },
): DispatchResult {
  const out = { ...base } as DispatchResult;
  for (const key of Object.keys(read) as (keyof Metadata)[]) {
    let cached: Metadata[typeof key] | undefined;
    Object.defineProperty(out, key, {
      enumerable: true,
      get: () => (cached ??= read[key]()),
    });
  }
  return out;
}
