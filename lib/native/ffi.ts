/**
 * The symbol table of `native/include/weft.h`: every C function weft calls,
 * one comment per C parameter. Nothing else lives here; the loader
 * (loader.ts) opens the library with this table and checks its
 * {@link ABI_VERSION}.
 *
 * Parameter kinds: "buffer" takes a typed array (or null for a C NULL) and
 * is used for host memory native writes or reads during a blocking call;
 * "pointer" takes a raw address (device memory, an opaque handle, or host
 * memory that must stay put across a nonblocking call, see pointers.ts).
 *
 * Calls that can run long (GPU work, NCCL init, waits on peers) are
 * `nonblocking`: they run on Deno's thread pool and return a Promise, so a
 * rank waiting on its peers does not freeze its event loop. The native side
 * sets its CUDA device in every entry point for that reason.
 *
 * @module
 */
import { decodeSymbols } from "./ffi_decode.ts";

/**
 * The `WEFT_ABI_VERSION` of weft.h this table was written against; the
 * loader refuses a library whose `weft_abi_version()` differs.
 *
 * @example
 * ```ts
 * import { ABI_VERSION } from "./ffi.ts";
 * console.assert(Number.isInteger(ABI_VERSION));
 * ```
 */
export const ABI_VERSION = 7;

/**
 * The symbol table, in weft.h's order.
 *
 * @example
 * ```ts
 * import { symbols } from "./ffi.ts";
 * console.assert(symbols.weft_combine.nonblocking);
 * ```
 */
export const symbols = {
  // ---- errors, devices, memory
  weft_last_error: {
    parameters: [
      "buffer", // char* buf: receives the NUL-terminated message, truncated to len
      "i32", // int32_t len
    ],
    result: "i32", // the message's full length
  },
  weft_last_error_rank: {
    parameters: [],
    result: "i32", // the rank that failure names as failing, -1 when none is known
  },
  weft_abi_version: { parameters: [], result: "i32" },
  weft_device_count: {
    parameters: [
      "buffer", // int32_t* out
    ],
    result: "i32",
  },
  weft_alloc: {
    parameters: [
      "i32", // int32_t device
      "u64", // uint64_t bytes
      "buffer", // void** out
    ],
    result: "i32",
  },
  weft_free: {
    parameters: [
      "i32", // int32_t device
      "pointer", // void* ptr (device)
    ],
    result: "i32",
  },
  weft_copy_h2d: {
    parameters: [
      "i32", // int32_t device
      "pointer", // void* dst (device)
      "buffer", // const void* src (host)
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
  weft_copy_d2h: {
    parameters: [
      "i32", // int32_t device
      "buffer", // void* dst (host)
      "pointer", // const void* src (device)
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
  weft_memset: {
    parameters: [
      "i32", // int32_t device
      "pointer", // void* dst (device)
      "i32", // int32_t value: the byte to fill with
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },

  // ---- communicator
  weft_nccl_available: {
    parameters: [
      "buffer", // int32_t* out: 1 if libnccl could be loaded
    ],
    result: "i32",
  },
  weft_nccl_unique_id: {
    parameters: [
      "buffer", // uint8_t* out: UNIQUE_ID_BYTES
    ],
    result: "i32",
  },
  weft_comm_create: {
    parameters: [
      "i32", // int32_t device
      "i32", // int32_t rank
      "i32", // int32_t world
      "buffer", // const uint8_t* nccl_id: UNIQUE_ID_BYTES, or NULL for no NCCL
      "u64", // uint64_t heap_bytes: this rank's symmetric heap
      "i32", // int32_t timeout_ms: the bound of every wait on a peer
      "buffer", // weft_comm_t* out
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_ipc_handle: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // uint8_t* out: IPC_HANDLE_BYTES
    ],
    result: "i32",
  },
  weft_comm_open_peers: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // const uint8_t* handles: world × IPC_HANDLE_BYTES, rank order
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_barrier: {
    parameters: [
      "pointer", // weft_comm_t comm
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_sync: {
    parameters: [
      "pointer", // weft_comm_t comm: waits for the queued tail of its last call, reports its failure
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_destroy: {
    parameters: [
      "pointer", // weft_comm_t comm (NULL accepted)
    ],
    result: "i32",
  },

  // ---- engine
  weft_engine_heap_bytes: {
    parameters: [
      "buffer", // const weft_plan_desc* plan
      "buffer", // uint64_t* out: the symmetric heap this plan needs per rank
    ],
    result: "i32",
  },
  weft_engine_create: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // const weft_plan_desc* plan
      "buffer", // weft_engine_t* out
    ],
    result: "i32",
  },
  weft_engine_input_rows: {
    parameters: [
      "pointer", // weft_engine_t engine
      "buffer", // void** out: the heap's x staging rows [max_tokens × hidden]
    ],
    result: "i32",
  },
  weft_engine_input_e4m3: {
    parameters: [
      "pointer", // weft_engine_t engine
      "buffer", // void** q: staging [max_tokens × hidden] e4m3
      "buffer", // float** scales: staging [max_tokens × hidden/128] f32
    ],
    result: "i32",
  },
  weft_engine_pin_host: {
    parameters: [
      "pointer", // weft_engine_t engine
      "buffer", // void* ptr: host range page-locked until the engine is destroyed
      "u64", // uint64_t bytes
    ],
    result: "i32",
  },
  weft_engine_destroy: {
    parameters: [
      "pointer", // weft_engine_t engine (NULL accepted)
    ],
    result: "i32",
  },

  // ---- dispatch. The begin halves only enqueue (they never wait), so they
  // are blocking on purpose: a hop to Deno's thread pool would sit on the
  // GPU's critical path.
  weft_dispatch: {
    parameters: [
      "pointer", // weft_engine_t engine
      "pointer", // const void* x [tokens × hidden]
      "pointer", // const int32_t* topk_idx [tokens × top_k]
      "pointer", // const float* topk_weights [tokens × top_k]
      "i32", // int32_t tokens
      "i32", // int32_t inputs_on_device: ignored by native (it copies with cudaMemcpyDefault)
      "buffer", // weft_handle_t* out
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_dispatch_begin: {
    parameters: [
      "pointer", // weft_engine_t engine
      "pointer", // const void* x [tokens × hidden], host or device
      "pointer", // const int32_t* topk_idx [tokens × top_k], host or device
      "pointer", // const float* topk_weights [tokens × top_k], host or device
      "i32", // int32_t tokens
    ],
    result: "i32",
  },
  weft_dispatch_finish: {
    parameters: [
      "pointer", // weft_engine_t engine
      "buffer", // weft_handle_t* out
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_dispatch_begin_e4m3: {
    parameters: [
      "pointer", // weft_engine_t engine
      "pointer", // const void* q [tokens × hidden] e4m3, already quantized
      "pointer", // const float* scales [tokens × hidden/128]
      "pointer", // const int32_t* topk_idx [tokens × top_k]
      "pointer", // const float* topk_weights [tokens × top_k]
      "i32", // int32_t tokens
    ],
    result: "i32",
  },
  weft_dispatch_layout: {
    parameters: [
      "pointer", // weft_engine_t engine
      "pointer", // const int32_t* topk_idx [tokens × top_k]
      "pointer", // const float* topk_weights [tokens × top_k]
      "i32", // int32_t tokens
      "buffer", // weft_handle_t* out: the layout alone; weft_redispatch fills recv
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_redispatch: {
    parameters: [
      "pointer", // weft_handle_t handle
      "pointer", // const void* x [tokens × hidden]; NULL fails the call on every rank
      "i32", // int32_t inputs_on_device: ignored by native
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_redispatch_e4m3: {
    parameters: [
      "pointer", // weft_handle_t handle
      "pointer", // const void* q [tokens × hidden] e4m3
      "pointer", // const float* scales [tokens × hidden/128]
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_handle_info: {
    parameters: [
      "pointer", // weft_handle_t handle
      "buffer", // weft_dispatch_info* out (lib/gpu/dispatch_info.ts)
    ],
    result: "i32",
  },

  // ---- combine
  weft_combine: {
    parameters: [
      "pointer", // weft_handle_t handle
      "pointer", // const void* y [recv_rows × hidden] (device); NULL fails the call on every rank
      "pointer", // void* out [tokens × hidden] (device)
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_handle_destroy: {
    parameters: [
      "pointer", // weft_handle_t handle (NULL accepted)
    ],
    result: "i32",
  },

  // ---- NCCL baseline
  weft_baseline_create: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // const weft_plan_desc* plan
      "buffer", // weft_baseline_t* out
    ],
    result: "i32",
  },
  weft_baseline_run: {
    parameters: [
      "pointer", // weft_baseline_t b
      "pointer", // const void* x [tokens × hidden]
      "pointer", // const int32_t* topk_idx [tokens × top_k]
      "pointer", // const float* topk_weights [tokens × top_k]
      "i32", // int32_t tokens
      "pointer", // void* out [tokens × hidden] (device)
      "buffer", // int32_t* recv_rows_out
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_baseline_destroy: {
    parameters: [
      "pointer", // weft_baseline_t b
    ],
    result: "i32",
  },

  // ---- timing
  weft_timer_create: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // weft_timer_t* out
    ],
    result: "i32",
  },
  weft_timer_start: {
    parameters: [
      "pointer", // weft_timer_t t
    ],
    result: "i32",
  },
  weft_timer_stop: {
    parameters: [
      "pointer", // weft_timer_t t
      "buffer", // float* ms_out (synchronizes)
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_timer_destroy: {
    parameters: [
      "pointer", // weft_timer_t t
    ],
    result: "i32",
  },
  weft_copy_ceiling: {
    parameters: [
      "pointer", // weft_comm_t comm
      "i32", // int32_t peer
      "u64", // uint64_t bytes
      "i32", // int32_t iters
      "buffer", // float* ms_out: the median
    ],
    result: "i32",
    nonblocking: true,
  },
  weft_comm_create2: {
    parameters: [
      "i32", // int32_t device
      "i32", // int32_t rank
      "i32", // int32_t world
      "i32", // int32_t local_rank: rank % local_world
      "i32", // int32_t local_world: ranks per node (nodes are consecutive ranks)
      "buffer", // const uint8_t* nccl_id: UNIQUE_ID_BYTES (required with several nodes)
      "u64", // uint64_t heap_bytes: this rank's symmetric heap
      "i32", // int32_t timeout_ms: the bound of every wait on a peer
      "buffer", // weft_comm_t* out
    ],
    result: "i32",
    nonblocking: true,
  },
  ...decodeSymbols,
} as const satisfies Deno.ForeignLibraryInterface;

/** The opened library. */
export type WeftLibrary = Deno.DynamicLibrary<typeof symbols>;
/** Its symbols. */
export type WeftSymbols = WeftLibrary["symbols"];
