/**
 * The binding of `native/include/weft.h`: the symbol table, the binary
 * layouts of its two structs, and the one `Deno.dlopen` call of weft
 * (lib/native.ts finds the file and checks what it opened).
 *
 * Calls that can run long (GPU work, NCCL init, waits on peers) are
 * `nonblocking`: they run on Deno's thread pool and return a Promise, so a
 * rank waiting on its peers does not freeze its event loop. The native side
 * sets its CUDA device in every entry point for that reason.
 *
 * @module
 */

/** The `weft_abi_version()` this binding was written against. */
export const WEFT_ABI_VERSION = 5;

/** Status codes of weft.h. */
export const Status: Readonly<{
  OK: 0;
  CUDA: 1;
  NCCL: 2;
  INVALID: 3;
  BAD_INPUT: 4;
  TIMEOUT: 5;
  CAPACITY: 6;
  NO_DEVICE: 7;
}> = Object.freeze(
  {
    OK: 0,
    CUDA: 1,
    NCCL: 2,
    INVALID: 3,
    BAD_INPUT: 4,
    TIMEOUT: 5,
    CAPACITY: 6,
    NO_DEVICE: 7,
  } as const,
);

/** Byte sizes fixed by weft.h. */
export const UNIQUE_ID_BYTES = 128;
/** Bytes of one rank's CUDA IPC handle. */
export const IPC_HANDLE_BYTES = 64;

/** dtype / dedupe / receive / combine codes of weft.h. */
export const Codes: Readonly<{
  dtype: Readonly<{ bf16: 0; f16: 1; f32: 2 }>;
  dedupe: Readonly<{ none: 0; device: 1; node: 2 }>;
  receive: Readonly<{ "expert-major": 0; "rank-major": 1 }>;
  combine: Readonly<{ weighted: 0; sum: 1 }>;
  quantize: Readonly<{ none: 0; e4m3: 1 }>;
}> = Object.freeze({
  dtype: Object.freeze({ bf16: 0, f16: 1, f32: 2 } as const),
  dedupe: Object.freeze({ none: 0, device: 1, node: 2 } as const),
  receive: Object.freeze({ "expert-major": 0, "rank-major": 1 } as const),
  combine: Object.freeze({ weighted: 0, sum: 1 } as const),
  quantize: Object.freeze({ none: 0, e4m3: 1 } as const),
});

/**
 * The symbol table. "buffer" parameters take a typed array (or null for a C
 * NULL); "pointer" parameters take a raw pointer (device memory, a handle).
 */
export const symbols = {
  weft_last_error: {
    // char* buf, int32_t len → full message length
    parameters: ["buffer", "i32"],
    result: "i32",
  },
  weft_abi_version: { parameters: [], result: "i32" },
  weft_device_count: {
    // int32_t* out
    parameters: ["buffer"],
    result: "i32",
  },
  weft_alloc: {
    // int32_t device, uint64_t bytes, void** out
    parameters: ["i32", "u64", "buffer"],
    result: "i32",
  },
  weft_free: {
    // int32_t device, void* ptr
    parameters: ["i32", "pointer"],
    result: "i32",
  },
  weft_copy_h2d: {
    // int32_t device, void* dst (device), const void* src (host), uint64_t bytes
    parameters: ["i32", "pointer", "buffer", "u64"],
    result: "i32",
  },
  weft_copy_d2h: {
    // int32_t device, void* dst (host), const void* src (device), uint64_t bytes
    parameters: ["i32", "buffer", "pointer", "u64"],
    result: "i32",
  },
  weft_memset: {
    // int32_t device, void* dst (device), int32_t value (byte), uint64_t bytes
    parameters: ["i32", "pointer", "i32", "u64"],
    result: "i32",
  },
  weft_nccl_available: {
    // int32_t* out (1 if libnccl could be loaded)
    parameters: ["buffer"],
    result: "i32",
  },
  weft_nccl_unique_id: {
    // uint8_t* out (128 bytes)
    parameters: ["buffer"],
    result: "i32",
  },
  weft_comm_create: {
    // int32_t device, int32_t rank, int32_t world, const uint8_t* nccl_id (128 bytes or NULL),
    // uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out
    parameters: ["i32", "i32", "i32", "buffer", "u64", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_ipc_handle: {
    // weft_comm_t comm, uint8_t* out (64 bytes)
    parameters: ["pointer", "buffer"],
    result: "i32",
  },
  weft_comm_open_peers: {
    // weft_comm_t comm, const uint8_t* handles (world × 64, rank order)
    parameters: ["pointer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_barrier: {
    // weft_comm_t comm
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_sync: {
    // weft_comm_t comm: waits for the queued tail of the last engine call, reports its failure
    parameters: ["pointer"],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_destroy: {
    // weft_comm_t comm (NULL accepted)
    parameters: ["pointer"],
    result: "i32",
  },
  weft_engine_heap_bytes: {
    // const weft_plan_desc* plan, uint64_t* out: the symmetric heap this plan needs
    parameters: ["buffer", "buffer"],
    result: "i32",
  },
  weft_engine_create: {
    // weft_comm_t comm, const weft_plan_desc* plan, weft_engine_t* out
    parameters: ["pointer", "buffer", "buffer"],
    result: "i32",
  },
  weft_engine_input_rows: {
    // weft_engine_t engine, void** out: the heap's x staging rows [max_tokens × hidden]
    parameters: ["pointer", "buffer"],
    result: "i32",
  },
  weft_engine_pin_host: {
    // weft_engine_t engine, void* ptr, uint64_t bytes: page-lock a host range until engine destroy
    parameters: ["pointer", "buffer", "u64"],
    result: "i32",
  },
  weft_engine_destroy: {
    // weft_engine_t engine (NULL accepted)
    parameters: ["pointer"],
    result: "i32",
  },
  weft_dispatch_begin: {
    // weft_engine_t engine, const void* x, const int32_t* topk_idx, const float* topk_weights, int32_t tokens.
    // Blocking on purpose: it only enqueues (it never waits), so Deno's thread-pool hop stays off the GPU's critical path.
    parameters: ["pointer", "pointer", "pointer", "pointer", "i32"],
    result: "i32",
  },
  weft_engine_input_e4m3: {
    // weft_engine_t engine, void** q, float** scales
    parameters: ["pointer", "buffer", "buffer"],
    result: "i32",
  },
  weft_dispatch_begin_e4m3: {
    // weft_engine_t engine, const void* q, const float* scales, const int32_t* topk_idx,
    // const float* topk_weights, int32_t tokens — rows already quantized; blocking, like weft_dispatch_begin.
    parameters: ["pointer", "pointer", "pointer", "pointer", "pointer", "i32"],
    result: "i32",
  },
  weft_dispatch_finish: {
    // weft_engine_t engine, weft_handle_t* out
    parameters: ["pointer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_dispatch: {
    // weft_engine_t engine, const void* x, const int32_t* topk_idx, const float* topk_weights,
    // int32_t tokens, int32_t inputs_on_device (1: the three are device pointers), weft_handle_t* out
    parameters: ["pointer", "pointer", "pointer", "pointer", "i32", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_dispatch_layout: {
    // weft_engine_t engine, const int32_t* topk_idx (host), const float* topk_weights (host),
    // int32_t tokens, weft_handle_t* out — the layout alone; recv is filled by weft_redispatch
    parameters: ["pointer", "pointer", "pointer", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_redispatch: {
    // weft_handle_t handle, const void* x, int32_t inputs_on_device
    parameters: ["pointer", "pointer", "i32"],
    result: "i32",
    nonblocking: true,
  },
  weft_redispatch_e4m3: {
    // weft_handle_t handle, const void* q, const float* scales
    parameters: ["pointer", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  weft_handle_info: {
    // weft_handle_t handle, weft_dispatch_info* out (DISPATCH_INFO_BYTES)
    parameters: ["pointer", "buffer"],
    result: "i32",
  },
  weft_combine: {
    // weft_handle_t handle, const void* y (device), void* out (device)
    parameters: ["pointer", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  weft_handle_destroy: {
    // weft_handle_t handle (NULL accepted)
    parameters: ["pointer"],
    result: "i32",
  },
  weft_baseline_create: {
    // weft_comm_t comm, const weft_plan_desc* plan, weft_baseline_t* out
    parameters: ["pointer", "buffer", "buffer"],
    result: "i32",
  },
  weft_baseline_run: {
    // weft_baseline_t b, const void* x, const int32_t* topk_idx, const float* topk_weights,
    // int32_t tokens, void* out (device), int32_t* recv_rows_out
    parameters: ["pointer", "pointer", "pointer", "pointer", "i32", "pointer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_baseline_destroy: {
    // weft_baseline_t b
    parameters: ["pointer"],
    result: "i32",
  },
  weft_timer_create: {
    // weft_comm_t comm, weft_timer_t* out
    parameters: ["pointer", "buffer"],
    result: "i32",
  },
  weft_timer_start: {
    // weft_timer_t t
    parameters: ["pointer"],
    result: "i32",
  },
  weft_timer_stop: {
    // weft_timer_t t, float* ms_out (synchronizes)
    parameters: ["pointer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  weft_timer_destroy: {
    // weft_timer_t t
    parameters: ["pointer"],
    result: "i32",
  },
  weft_copy_ceiling: {
    // weft_comm_t comm, int32_t peer, uint64_t bytes, int32_t iters, float* ms_out (median)
    parameters: ["pointer", "i32", "u64", "i32", "buffer"],
    result: "i32",
    nonblocking: true,
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library. */
export type WeftLibrary = Deno.DynamicLibrary<typeof symbols>;
/** Its symbols. */
export type WeftSymbols = WeftLibrary["symbols"];

/**
 * Opens the shared library at `path`. The only `Deno.dlopen` in weft; call it
 * through lib/native.ts, which finds the file and turns failures into
 * WeftErrors.
 *
 * @example
 * ```ts ignore
 * import { openLibrary } from "./ffi.ts";
 * const lib = openLibrary("native/build/libweft.so");
 * console.log(lib.symbols.weft_abi_version());
 * ```
 */
export function openLibrary(path: string): WeftLibrary {
  return Deno.dlopen(path, symbols);
}

// ---------------------------------------------------------------- struct layouts
//
// x86-64 System V: int32 is 4-aligned, pointers 8-aligned, a struct is
// aligned to its widest member and padded to a multiple of it.

/**
 * `weft_plan_desc`: 14 int32 at offsets 0…52 (the last, `pad_`, stays 0)
 * end at 56, a multiple of 8, so the five pointers follow with no padding
 * at 56, 64, 72, 80, 88; 96 bytes in all.
 */
export const PLAN_DESC: Readonly<{
  bytes: 96;
  ints: Readonly<{
    world: 0;
    rank: 4;
    gpus_per_node: 8;
    experts: 12;
    top_k: 16;
    hidden: 20;
    dtype: 24;
    dedupe: 28;
    receive: 32;
    combine: 36;
    max_tokens: 40;
    combine_wire_f32: 44;
    quantize: 48;
  }>;
  pointers: Readonly<{
    local_experts: 56;
    slot_base: 64;
    slot_expert: 72;
    replica_start: 80;
    replica_slots: 88;
  }>;
}> = Object.freeze({
  bytes: 96,
  ints: Object.freeze(
    {
      world: 0,
      rank: 4,
      gpus_per_node: 8,
      experts: 12,
      top_k: 16,
      hidden: 20,
      dtype: 24,
      dedupe: 28,
      receive: 32,
      combine: 36,
      max_tokens: 40,
      combine_wire_f32: 44,
      quantize: 48,
    } as const,
  ),
  pointers: Object.freeze(
    {
      local_experts: 56,
      slot_base: 64,
      slot_expert: 72,
      replica_start: 80,
      replica_slots: 88,
    } as const,
  ),
});

/** The values of a `weft_plan_desc`; arrays are host memory that native copies. */
export interface PlanDescFields {
  /** The int32 fields, by their C names. */
  readonly ints: Readonly<Record<keyof typeof PLAN_DESC.ints, number>>;
  /** The arrays the pointer fields point at, by their C names. */
  readonly arrays: Readonly<Record<keyof typeof PLAN_DESC.pointers, Int32Array>>;
}

/**
 * The bytes of a `weft_plan_desc`, and the arrays its pointers point into:
 * keep `keepAlive` reachable for as long as native may read the struct.
 *
 * @example
 * ```ts
 * import { PLAN_DESC, packPlanDesc } from "./ffi.ts";
 * const a = new Int32Array([1]);
 * const { bytes } = packPlanDesc({
 *   ints: { world: 2, rank: 1, gpus_per_node: 2, experts: 4, top_k: 2, hidden: 8, dtype: 0, dedupe: 1,
 *     receive: 0, combine: 0, max_tokens: 16, combine_wire_f32: 1, quantize: 0 },
 *   arrays: { local_experts: a, slot_base: a, slot_expert: a, replica_start: a, replica_slots: a },
 * });
 * console.assert(bytes.length === PLAN_DESC.bytes && new DataView(bytes.buffer).getInt32(4, true) === 1);
 * ```
 */
export function packPlanDesc(
  fields: PlanDescFields,
): { bytes: Uint8Array; keepAlive: readonly Int32Array[] } {
  const bytes = new Uint8Array(PLAN_DESC.bytes);
  const view = new DataView(bytes.buffer);
  for (const [name, offset] of Object.entries(PLAN_DESC.ints)) {
    view.setInt32(offset, fields.ints[name as keyof typeof PLAN_DESC.ints], true);
  }
  const keepAlive: Int32Array[] = [];
  for (const [name, offset] of Object.entries(PLAN_DESC.pointers)) {
    const array = stableCopy(fields.arrays[name as keyof typeof PLAN_DESC.pointers]);
    keepAlive.push(array);
    view.setBigUint64(offset, pointerValue(Deno.UnsafePointer.of(array)), true);
  }
  return { bytes, keepAlive };
}

/**
 * `weft_dispatch_info`: four int32 (tokens, recv_rows, local_experts, pad_)
 * at 0…12, then eight pointers at 16, 24, …, 72; 80 bytes.
 */
export const DISPATCH_INFO: Readonly<{
  bytes: 80;
  ints: Readonly<{ tokens: 0; recv_rows: 4; local_experts: 8 }>;
  pointers: Readonly<{
    recv: 16;
    recv_weights: 24;
    expert_counts: 32;
    src_rank: 40;
    src_token: 48;
    src_k: 56;
    dest_row: 64;
    recv_scales: 72;
  }>;
}> = Object.freeze({
  bytes: 80,
  ints: Object.freeze({ tokens: 0, recv_rows: 4, local_experts: 8 } as const),
  pointers: Object.freeze(
    {
      recv: 16,
      recv_weights: 24,
      expert_counts: 32,
      src_rank: 40,
      src_token: 48,
      src_k: 56,
      dest_row: 64,
      recv_scales: 72,
    } as const,
  ),
});

/** A decoded `weft_dispatch_info`: counts, and device pointers owned by the handle. */
export interface DispatchInfo {
  /** T of this rank. */
  readonly tokens: number;
  /** R of this rank. */
  readonly recvRows: number;
  /** L of this rank. */
  readonly localExperts: number;
  /** [R × H] received rows, dtype. */
  readonly recv: Deno.PointerValue;
  /** [R] f32 weight of each row. */
  readonly recvWeights: Deno.PointerValue;
  /** [L] int32 rows per local expert. */
  readonly expertCounts: Deno.PointerValue;
  /** [R] int32 source rank of each row. */
  readonly srcRank: Deno.PointerValue;
  /** [R] int32 source token of each row. */
  readonly srcToken: Deno.PointerValue;
  /** [R] int32 k slot of each row. */
  readonly srcK: Deno.PointerValue;
  /** [T × K] int32 receive row of each of this rank's (t, k) on its destination, -1 none. */
  readonly destRow: Deno.PointerValue;
  /** [R × H/128] f32 scales of recv when the plan quantizes dispatch, else NULL. */
  readonly recvScales: Deno.PointerValue;
}

/**
 * Reads a `weft_dispatch_info` that native filled in.
 *
 * @example
 * ```ts
 * import { DISPATCH_INFO, decodeDispatchInfo } from "./ffi.ts";
 * const raw = new Uint8Array(DISPATCH_INFO.bytes);
 * new DataView(raw.buffer).setInt32(4, 12, true);
 * console.assert(decodeDispatchInfo(raw).recvRows === 12);
 * ```
 */
export function decodeDispatchInfo(raw: Uint8Array): DispatchInfo {
  const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const ptr = (offset: number): Deno.PointerValue =>
    Deno.UnsafePointer.create(view.getBigUint64(offset, true));
  const p = DISPATCH_INFO.pointers;
  return {
    tokens: view.getInt32(DISPATCH_INFO.ints.tokens, true),
    recvRows: view.getInt32(DISPATCH_INFO.ints.recv_rows, true),
    localExperts: view.getInt32(DISPATCH_INFO.ints.local_experts, true),
    recv: ptr(p.recv),
    recvWeights: ptr(p.recv_weights),
    expertCounts: ptr(p.expert_counts),
    srcRank: ptr(p.src_rank),
    srcToken: ptr(p.src_token),
    srcK: ptr(p.src_k),
    destRow: ptr(p.dest_row),
    recvScales: ptr(p.recv_scales),
  };
}

// ---------------------------------------------------------------- pointers

/** The address of a pointer (0n for NULL). */
export function pointerValue(p: Deno.PointerValue): bigint {
  return p === null ? 0n : Deno.UnsafePointer.value(p);
}

/** The pointer an out-parameter (`void** out`) received. */
export function readPointer(out: BigUint64Array): Deno.PointerValue {
  return Deno.UnsafePointer.create(out[0]);
}

/**
 * A copy of `view` in its own ArrayBuffer when it is small. V8 may keep
 * small typed arrays inside its moving heap; an ArrayBuffer made explicitly
 * always has a fixed, off-heap backing store, so its address stays valid
 * across a nonblocking call. Large views are already off-heap: no copy.
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
 * ```ts ignore
 * import { holding } from "./ffi.ts";
 * const status = await holding([handles], () => lib.weft_comm_open_peers(comm, handles));
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

/** The address of host data for a "pointer" parameter (NULL when empty). */
export function hostPointer(view: ArrayBufferView): Deno.PointerValue {
  return view.byteLength === 0 ? null : Deno.UnsafePointer.of(view as Uint8Array<ArrayBuffer>);
}
