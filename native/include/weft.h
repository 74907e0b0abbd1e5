/*
 * weft native engine — the C ABI that lib/native/ffi.ts binds with Deno.dlopen.
 *
 * Rules every entry point follows:
 *  - returns WEFT_OK (0) or a nonzero status; the message of the most recent
 *    failure in the process is available from weft_last_error() (process-wide,
 *    not per thread: Deno's nonblocking calls run on a thread pool, so the
 *    failing thread is rarely the asking one). Messages name the call, the
 *    CUDA/NCCL error and, where known, the field and the fix.
 *  - sets its own CUDA device first (FFI nonblocking calls run on Deno's
 *    thread pool, so no thread-local device can be assumed).
 *  - every CUDA/NCCL return code and every kernel launch is checked.
 *  - handles are opaque; each has a destroy call that releases everything it
 *    owns and accepts NULL.
 *
 * One process per GPU. Ranks of one node share a "symmetric heap": one
 * cudaMalloc'd region per rank of identical size and layout, mapped into every
 * peer through CUDA IPC, so kernels address a peer's buffers directly over
 * NVLink. Phases are ordered by flags in that heap; every wait is bounded by
 * the communicator's timeout and reports which peer did not arrive.
 */
#ifndef WEFT_H
#define WEFT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The ABI version, bumped on any change of this header (2: weft_dispatch_layout;
 * 3: stream-ordered returns, weft_comm_sync, weft_engine_input_rows,
 * weft_engine_pin_host, weft_dispatch_begin/_finish; 4: weft_plan_desc.quantize,
 * weft_dispatch_info.recv_scales; 5: weft_dispatch_begin_e4m3, weft_redispatch_e4m3,
 * weft_engine_input_e4m3; 6: weft_last_error_rank, this macro; 7: weft_comm_create2
 * and the hierarchical engine over nodes). weft_abi_version()
 * returns it; lib/native/ffi.ts's ABI_VERSION must equal it. */
#define WEFT_ABI_VERSION 7

#define WEFT_OK 0
#define WEFT_ERR_CUDA 1        /* a CUDA runtime call or launch failed */
#define WEFT_ERR_NCCL 2        /* an NCCL call failed, or NCCL could not be loaded */
#define WEFT_ERR_INVALID 3     /* bad argument (null, size, range) */
#define WEFT_ERR_BAD_INPUT 4   /* device-side input check failed on this or a peer rank (expert id out of range, duplicate expert) */
#define WEFT_ERR_TIMEOUT 5     /* a peer did not answer in time, or its process or connection went away (dead or stuck peer) */
#define WEFT_ERR_CAPACITY 6    /* tokens > max_tokens, or a buffer too small */
#define WEFT_ERR_NO_DEVICE 7   /* no CUDA device / driver */

#define WEFT_UNIQUE_ID_BYTES 128
#define WEFT_IPC_HANDLE_BYTES 64

/* dtype codes */
#define WEFT_BF16 0
#define WEFT_F16 1
#define WEFT_F32 2
/* dedupe codes */
#define WEFT_DEDUPE_NONE 0
#define WEFT_DEDUPE_DEVICE 1
#define WEFT_DEDUPE_NODE 2
/* receive order codes */
#define WEFT_EXPERT_MAJOR 0
#define WEFT_RANK_MAJOR 1
/* combine op codes */
#define WEFT_WEIGHTED 0
#define WEFT_SUM 1
/* quantize codes: how dispatch carries rows */
#define WEFT_QUANTIZE_NONE 0 /* in the plan's dtype, bit for bit */
#define WEFT_QUANTIZE_E4M3 1 /* FP8 E4M3 + one power-of-two f32 scale per 128 elements (lib/core/fp8.ts) */
#define WEFT_QUANT_BLOCK 128
/* balance codes: the forwarder table of dedupe node over several nodes
 * (HIER_PROTOCOL: f(s, m) = table[m][group(s)]); outputs are identical with
 * either, only the forwarded bytes move. Inert on one node or other dedupes. */
#define WEFT_BALANCE_RAIL 0   /* f(s, m) = m*gpus_per_node + local(s) */
#define WEFT_BALANCE_GREEDY 1 /* FUSCO Algorithm 1 per batch from the gathered cross-node loads (dsl/balance.ts) */

typedef struct weft_comm* weft_comm_t;
typedef struct weft_engine* weft_engine_t;
typedef struct weft_handle* weft_handle_t;
typedef struct weft_baseline* weft_baseline_t;
typedef struct weft_timer* weft_timer_t;

/* ---- errors, devices, memory ------------------------------------------ */

/* Copies the process's most recent error message (NUL-terminated, truncated to len). Returns its full length. */
int32_t weft_last_error(char* buf, int32_t len);
/* The rank the most recent failure (the one weft_last_error describes) names
 * as failing: this rank for its own bad input, a peer's rank when a peer
 * failed or timed out (the first such rank), -1 when no rank is known.
 * Process-wide, like weft_last_error. */
int32_t weft_last_error_rank(void);
/* WEFT_ABI_VERSION of the header the library was built with. */
int32_t weft_abi_version(void);
/* Number of visible CUDA devices (0 with WEFT_ERR_NO_DEVICE when there is no driver). */
int32_t weft_device_count(int32_t* out);
int32_t weft_alloc(int32_t device, uint64_t bytes, void** out);
/* weft_free, weft_copy_h2d, weft_copy_d2h and weft_memset first wait for all
 * work on the device, so they never race an engine call still in flight. */
int32_t weft_free(int32_t device, void* ptr);
int32_t weft_copy_h2d(int32_t device, void* dst, const void* src, uint64_t bytes);
int32_t weft_copy_d2h(int32_t device, void* dst, const void* src, uint64_t bytes);
/* Fills bytes with a byte value (used to poison outputs in tests). */
int32_t weft_memset(int32_t device, void* dst, int32_t value, uint64_t bytes);

/* ---- communicator --------------------------------------------------------
 * Creation is two-phase because the IPC handles travel through the TCP store
 * (lib/dist/store.ts) between the phases:
 *   1. weft_comm_create: set device, init NCCL (unique id from rank 0), allocate
 *      this rank's symmetric heap; weft_comm_ipc_handle gives its handle.
 *   2. weft_comm_open_peers: map the handles of every rank (world × 64 bytes,
 *      rank order; a rank's own entry is ignored), run a first barrier.
 * NCCL is optional: pass nccl_id = NULL to skip it (the NVLink engine does not
 * need NCCL; the baseline does). Ranks must all be on one node for the NVLink
 * path (local_world == world); otherwise only NCCL-based calls are available.
 */
int32_t weft_nccl_available(int32_t* out);                 /* 1 if libnccl could be loaded */
int32_t weft_nccl_unique_id(uint8_t* out /* 128 bytes */);
int32_t weft_comm_create(int32_t device, int32_t rank, int32_t world,
                         const uint8_t* nccl_id /* 128 bytes or NULL */,
                         uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out);
/* weft_comm_create over several nodes: ranks node*local_world ..
 * node*local_world + local_world - 1 form a node (consecutive ranks; node =
 * rank / local_world, local_rank = rank % local_world). The symmetric heap is
 * mapped, and weft_comm_barrier runs, among the node's ranks only
 * (local_world <= 32); weft_comm_open_peers then takes the node's handles
 * (local_world x 64 bytes, local rank order). world <= 1024. With more than
 * one node an NCCL id is required (the engine moves rows between nodes over
 * NCCL). local_world == world is exactly weft_comm_create. */
int32_t weft_comm_create2(int32_t device, int32_t rank, int32_t world, int32_t local_rank, int32_t local_world,
                          const uint8_t* nccl_id /* 128 bytes or NULL */, uint64_t heap_bytes,
                          int32_t timeout_ms, weft_comm_t* out);
int32_t weft_comm_ipc_handle(weft_comm_t comm, uint8_t* out /* 64 bytes */);
int32_t weft_comm_open_peers(weft_comm_t comm, const uint8_t* handles /* world × 64 */);
/* Bounded barrier over the symmetric heap flags. */
int32_t weft_comm_barrier(weft_comm_t comm);
/* Waits for the queued tail of the comm's last call (see "Stream-ordered
 * returns" below) and reports its failure; WEFT_OK when nothing is queued.
 * Not collective. */
int32_t weft_comm_sync(weft_comm_t comm);
/* Collective when peers are mapped: waits (at most timeout_ms) for every rank
 * to reach it, so no peer still reads this heap when it is unmapped. Engines,
 * handles, baselines and timers made from the comm keep its memory alive until
 * they are destroyed, but fail once the comm is destroyed.
 * timeout_ms <= 0 in weft_comm_create means 30000. After a timeout the comm is
 * unusable (calls fail fast): destroy it and create a new one. */
int32_t weft_comm_destroy(weft_comm_t comm);

/* ---- engine --------------------------------------------------------------
 * A compiled plan (dsl PlanSpec) for this rank. Arrays are host pointers, copied.
 */
typedef struct weft_plan_desc {
  int32_t world, rank, gpus_per_node;
  int32_t experts, top_k, hidden;
  int32_t dtype, dedupe, receive, combine;  /* codes above */
  int32_t max_tokens;                       /* capacity per rank per batch */
  int32_t combine_wire_f32;                 /* 1: partial sums cross in f32; 0: in dtype */
  int32_t quantize;                         /* WEFT_QUANTIZE_*; E4M3 needs hidden % 128 == 0 */
  int32_t balance;                          /* WEFT_BALANCE_RAIL 0 | WEFT_BALANCE_GREEDY 1 */
  const int32_t* local_experts;             /* [world] */
  const int32_t* slot_base;                 /* [world+1] */
  const int32_t* slot_expert;               /* [slots] */
  const int32_t* replica_start;             /* [experts+1] */
  const int32_t* replica_slots;             /* [replica_start[experts]] */
} weft_plan_desc;

/* Symmetric-heap bytes a plan needs (comm reserve included): pass at least this
 * as heap_bytes to weft_comm_create. Same value on every rank of one plan.
 * Checks the plan like weft_engine_create. */
int32_t weft_engine_heap_bytes(const weft_plan_desc* plan, uint64_t* out);
/* Not collective. Fails with WEFT_ERR_CAPACITY, naming the bytes needed, when
 * the comm's heap is smaller than weft_engine_heap_bytes. On a comm of one
 * node, the NVLink engine: world <= 32, top_k <= 32, hidden a multiple of 8;
 * dedupe NODE behaves as DEVICE (all ranks share one NVLink domain). On a
 * comm of several nodes (weft_comm_create2), the hierarchical engine (one
 * NCCL transfer per (token, destination node) to that node's forwarder, CUDA
 * IPC fan-out inside the node, combine partials reduced at the forwarder):
 * world <= 1024, plan.gpus_per_node == the comm's local_world, dedupe NODE
 * only; its calls return when their work is done. Same outputs either way. */
int32_t weft_engine_create(weft_comm_t comm, const weft_plan_desc* plan, weft_engine_t* out);
/* Where this rank's x rows are staged in its symmetric heap: [max_tokens ×
 * hidden] in the plan's dtype. A caller that writes its batch there and passes
 * this pointer as x to weft_dispatch / weft_redispatch saves the staging copy
 * (the peers read the rows from there; with quantize E4M3, dispatch quantizes
 * them from there into the rows the peers read). Write the next batch only after the
 * previous dispatch settled (weft_comm_sync, or any later call on the comm):
 * until then peers may still be reading it. */
int32_t weft_engine_input_rows(weft_engine_t engine, void** out);
/* Plans with quantize E4M3: where this rank's sent rows are staged, dense:
 * q [max_tokens × hidden] E4M3 bytes and scales [max_tokens × hidden/128]
 * f32. Rows written there and passed as q and scales to
 * weft_dispatch_begin_e4m3 / weft_redispatch_e4m3 are neither copied nor
 * quantized (the peers read them there). Same rule as weft_engine_input_rows
 * for the next batch. WEFT_ERR_INVALID for a plan that does not quantize. */
int32_t weft_engine_input_e4m3(weft_engine_t engine, void** q, float** scales);
/* Page-locks caller-owned host memory (cudaHostRegister) until the engine is
 * destroyed: topk_idx and topk_weights staged from there reach the GPU by DMA,
 * without the CPU bounce a pageable copy pays. One range per engine; it must
 * stay allocated until weft_engine_destroy returns. */
int32_t weft_engine_pin_host(weft_engine_t engine, void* ptr, uint64_t bytes);
/* Handles keep their engine (and comm) alive; destroy order does not matter. */
int32_t weft_engine_destroy(weft_engine_t engine);

/*
 * Stream-ordered returns. weft_dispatch, weft_dispatch_layout,
 * weft_redispatch and weft_combine return as soon as their last host
 * decision is made; the rest (the row movement, the end barrier) is queued
 * on the comm stream, like a CUDA kernel launch, and so is the next call,
 * behind it, without waiting. Input checks and every failure a call can see
 * before it returns are reported by the call. What fails in a queued tail (a
 * peer that died or timed out, a peer's own failure) is reported, oldest
 * first, by the next call that waits for the stream: weft_dispatch (at its
 * one host sync, so every rank reports it at the same call),
 * weft_comm_sync, weft_comm_barrier, weft_timer_stop, weft_baseline_run.
 * So:
 *  - weft_dispatch's inputs (x, topk_idx, topk_weights) may be reused as soon
 *    as it returns (they were staged before its host sync);
 *  - weft_redispatch's x, and weft_combine's y and out, belong to the call
 *    until weft_comm_sync (or a later dispatch) returns;
 *  - outputs are complete for work on the comm stream at once, and for any
 *    other reader after weft_comm_sync (or a weft_copy_* call, which waits
 *    for the device).
 * weft_comm_barrier and weft_baseline_run synchronize before they return.
 *
 * Dispatch one batch. x [tokens × hidden] in the plan's dtype, topk_idx
 * [tokens × top_k] int32 (-1 = empty slot), topk_weights [tokens × top_k] f32.
 * inputs_on_device: 1 if the three pointers are device memory on this GPU,
 * 0 if host memory. Collective: every rank calls it (tokens may be 0).
 * On a bad expert id on any rank, every rank returns WEFT_ERR_BAD_INPUT and
 * nothing is written to any output.
 */
int32_t weft_dispatch(weft_engine_t engine, const void* x, const int32_t* topk_idx,
                      const float* topk_weights, int32_t tokens, int32_t inputs_on_device,
                      weft_handle_t* out);
/*
 * weft_dispatch in two halves, for callers that must not block (an event
 * loop): weft_dispatch_begin enqueues the staging and the layout and returns
 * at once (it never waits); weft_dispatch_finish waits for the layout's
 * counts (the one host sync), then enqueues the pull and returns like
 * weft_dispatch. Together they do exactly what weft_dispatch does. After a
 * successful begin the next call on the comm must be weft_dispatch_finish.
 * The inputs may be reused once finish returns.
 */
int32_t weft_dispatch_begin(weft_engine_t engine, const void* x, const int32_t* topk_idx,
                            const float* topk_weights, int32_t tokens);
int32_t weft_dispatch_finish(weft_engine_t engine, weft_handle_t* out);
/*
 * weft_dispatch_begin with rows already quantized, for plans with quantize
 * E4M3 (e.g. from a kernel that quantizes as it writes): q [tokens × hidden]
 * E4M3 bytes and scales [tokens × hidden/128] f32, host or device memory.
 * They are sent as given, bit for bit (any scales, not only powers of two),
 * with no quantize pass. Finish with weft_dispatch_finish. NULL parts while
 * tokens > 0, or a plan without quantize E4M3, fail the call on every rank.
 */
int32_t weft_dispatch_begin_e4m3(weft_engine_t engine, const void* q, const float* scales, const int32_t* topk_idx,
                                 const float* topk_weights, int32_t tokens);
/*
 * The layout step of weft_dispatch alone: stages the routing, runs the device
 * checks and the index generation, allocates the handle and its outputs, and
 * moves no rows (recv stays unwritten until weft_redispatch fills it). Lets a
 * caller plan a batch as soon as the router has run, before the activations
 * exist; layout + redispatch produce exactly what weft_dispatch produces.
 * Collective, like weft_dispatch.
 */
int32_t weft_dispatch_layout(weft_engine_t engine, const int32_t* topk_idx, const float* topk_weights,
                             int32_t tokens, weft_handle_t* out);
/* Re-dispatch new rows through a handle's cached layout (same routing, no
 * layout work). Collective. x has the handle's token count of rows; the rows
 * land in the handle's own recv buffer (weft_handle_info), overwriting it. */
int32_t weft_redispatch(weft_handle_t handle, const void* x, int32_t inputs_on_device);
/* weft_redispatch with rows already quantized (see weft_dispatch_begin_e4m3). */
int32_t weft_redispatch_e4m3(weft_handle_t handle, const void* q, const float* scales);

typedef struct weft_dispatch_info {
  int32_t tokens;          /* T of this rank */
  int32_t recv_rows;       /* R of this rank */
  int32_t local_experts;   /* L of this rank */
  int32_t pad_;
  void* recv;              /* device [recv_rows × hidden], dtype (E4M3 bytes when quantized); owned by the handle */
  float* recv_weights;     /* device [recv_rows] */
  int32_t* expert_counts;  /* device [local_experts] */
  int32_t* src_rank;       /* device [recv_rows] */
  int32_t* src_token;      /* device [recv_rows] */
  int32_t* src_k;          /* device [recv_rows] */
  int32_t* dest_row;       /* device [tokens × top_k]: receive row of each of this rank's (t,k) on its destination, -1 none */
  float* recv_scales;      /* device [recv_rows × hidden/128] when quantized (recv · scale), else NULL */
} weft_dispatch_info;
int32_t weft_handle_info(weft_handle_t handle, weft_dispatch_info* out);

/*
 * Combine: y [recv_rows × hidden] (device, dtype) in the handle's receive
 * layout → out [tokens × hidden] (device, dtype), allocated by the caller.
 * Collective. Deterministic: partials per destination in ascending k,
 * then destinations in ascending rank, f32 accumulation. y and out must be
 * 16-byte aligned device memory of this GPU; y may be the handle's recv
 * unless the plan quantizes dispatch (recv then holds E4M3 bytes).
 */
int32_t weft_combine(weft_handle_t handle, const void* y, void* out);
int32_t weft_handle_destroy(weft_handle_t handle);

/* ---- NCCL baseline (bench) -----------------------------------------------
 * Plans with quantize other than NONE are refused.
 * The way PyTorch/Megatron users shuffle today, in the same process and run:
 * permute rows by destination expert (stable sort), exchange counts, NCCL
 * send/recv all-to-all, regroup by local expert; then the reverse and the
 * f32 weighted sum. Needs a communicator created with an NCCL id.
 * out [tokens × hidden] device; recv_rows_out gets R of this rank.
 * x, topk_idx, topk_weights may be device memory of this GPU (used in place)
 * or host memory (copied first, inside the call). Bad input on any rank makes
 * every rank fail before the row all-to-all. The "experts" are the identity:
 * out[t] = Σ_k w[t,k]·x[t] (or Σ_k x[t] for WEFT_SUM), a checkable result.
 */
int32_t weft_baseline_create(weft_comm_t comm, const weft_plan_desc* plan, weft_baseline_t* out);
int32_t weft_baseline_run(weft_baseline_t b, const void* x, const int32_t* topk_idx,
                          const float* topk_weights, int32_t tokens, void* out,
                          int32_t* recv_rows_out);
int32_t weft_baseline_destroy(weft_baseline_t b);

/* ---- timing (bench) ------------------------------------------------------
 * CUDA events on the stream the engine and baseline use for this comm.
 */
int32_t weft_timer_create(weft_comm_t comm, weft_timer_t* out);
int32_t weft_timer_start(weft_timer_t t);
int32_t weft_timer_stop(weft_timer_t t, float* ms_out); /* synchronizes */
int32_t weft_timer_destroy(weft_timer_t t);
/* GPU→GPU copy ceiling: copy `bytes` from this rank's heap to peer's heap with
 * the copy engine `iters` times, return median ms. Not collective; it writes
 * over the peer's engine staging, so bracket it with weft_comm_barrier and run
 * no engine call meanwhile. bytes <= heap_bytes - 4096. */
int32_t weft_copy_ceiling(weft_comm_t comm, int32_t peer, uint64_t bytes, int32_t iters, float* ms_out);


/* ---- decode mode -----------------------------------------------------------
 * Dispatch and combine for small batches (decode steps) in which every size
 * is fixed by a stated capacity and nothing reads the host between the
 * routing and combine's output, so the pair can be captured in a CUDA graph
 * and replayed every step. One node only (an NVLink/IPC domain, world <= 32);
 * a communicator over several nodes is refused (its engine needs a host
 * exchange of counts per call). Plans with quantize E4M3 or receive
 * rank-major are refused.
 *
 * Capacity: plan.max_tokens is the most tokens a rank sends per step
 * (capacity); expert_capacity C is the most rows one local expert receives
 * (0: world * max_tokens, the worst case, which never overflows). The
 * receive buffer is [local_experts x C x hidden]: the rows of local expert l
 * land at l*C + j, j = 0 .. counts[l]-1, in (source rank, token, k) order,
 * i.e. the normal engine's expert-major rows placed at padded offsets.
 * Padding rows keep stale data; their weights are 0 and their sources -1.
 * More than C rows for a local expert is an overflow: rows past C are
 * dropped (never written), counts[l] = C, the step's combine writes nothing,
 * and the next weft_decode_check fails with WEFT_ERR_CAPACITY on every rank.
 *
 * Inputs live at fixed addresses in this rank's symmetric heap
 * (weft_decode_info: x, topk_idx, topk_weights, tokens): write a step's
 * inputs there (the token count too: a device int32 in [0, max_tokens]),
 * then dispatch. They belong to the step until its combine has run.
 * Combine is expert-major weighted (or sum) with DESIGN's order: a partial
 * per destination device (its pairs in ascending k, f32), partials in
 * ascending rank, one rounding; a one-term partial crosses as the raw y row
 * and is weighted at the home, so with combine_wire_f32, or with at most one
 * pair per (token, device), the output is bitwise the Simulator's.
 *
 * Errors (bad expert id, NaN weight, duplicate expert, tokens out of range,
 * overflow, a peer missing a barrier within timeout_ms) are detected on the
 * device, make every rank skip the step's remaining writes, and stay set
 * until weft_decode_check reports them (on every rank: call it at the same
 * step on all ranks) and clears them. The enqueueing calls never look at
 * them (ranks would see a finished step's error at different moments).
 */
typedef struct weft_decode* weft_decode_t;

typedef struct weft_decode_info {
  int32_t max_tokens;      /* capacity: tokens per rank per step */
  int32_t expert_capacity; /* C: rows per local expert */
  int32_t local_experts;   /* L of this rank */
  int32_t graphs;          /* graphs captured so far */
  uint64_t heap_bytes;     /* symmetric heap the engine needs (comm reserve included) */
  uint64_t device_bytes;   /* private device memory it allocated */
  void* x;                 /* heap [max_tokens x hidden], dtype */
  int32_t* topk_idx;       /* heap [max_tokens x top_k] */
  float* topk_weights;     /* heap [max_tokens x top_k] */
  int32_t* tokens;         /* heap, one int32: this step's token count */
  void* recv;              /* device [L x C x hidden], dtype */
  float* recv_weights;     /* device [L x C] (0 in padding) */
  int32_t* expert_counts;  /* device [L] */
  int32_t* src_rank;       /* device [L x C] (-1 in padding) */
  int32_t* src_token;      /* device [L x C] */
  int32_t* src_k;          /* device [L x C] */
  void* out;               /* device [max_tokens x hidden], dtype: combine's default output */
  void* stream;            /* the comm's cudaStream_t: enqueue your expert kernels here */
} weft_decode_info;

/* Heap bytes (pass at least this to weft_comm_create) and private device
 * bytes of a decode engine for plan (max_tokens = capacity) and C
 * (expert_capacity, 0 = world * max_tokens). Checks like weft_decode_create. */
int32_t weft_decode_heap_bytes(const weft_plan_desc* plan, int32_t expert_capacity, uint64_t* heap_out,
                               uint64_t* device_out);
/* Collective (two comm barriers around the reset of the decode flags). The
 * decode engine uses the comm's heap from the comm's reserve on: do not run
 * a weft_engine on the same comm. */
int32_t weft_decode_create(weft_comm_t comm, const weft_plan_desc* plan, int32_t expert_capacity,
                           weft_decode_t* out);
int32_t weft_decode_get_info(weft_decode_t d, weft_decode_info* out);
/* Enqueue a dispatch of the step staged in the heap (collective; no host
 * sync; may be called while capturing). */
int32_t weft_decode_dispatch(weft_decode_t d);
/* Enqueue combine: y [L x C x hidden] in the receive layout (NULL: recv, the
 * identity expert), out [max_tokens x hidden] (NULL: the engine's out);
 * 16-byte aligned device memory of this GPU, fixed while a graph uses it.
 * Each combine consumes the dispatch before it (collective, like it): a
 * combine with no dispatch since the previous combine (or a replay of a graph
 * that starts with one) fails with WEFT_ERR_INVALID, since its partials could
 * overwrite a home's landing that the previous reduce still reads. */
int32_t weft_decode_combine(weft_decode_t d, const void* y, void* out);
/* Starts capturing the comm stream: the decode calls and any work the caller
 * enqueues on info.stream until weft_decode_capture_end are recorded, not run. */
int32_t weft_decode_capture_begin(weft_decode_t d);
/* Ends the capture and instantiates it; *graph gets its index (< 8 graphs). */
int32_t weft_decode_capture_end(weft_decode_t d, int32_t* graph);
/* Launches captured graph `graph` on the comm stream (collective: every rank
 * replays the same graphs in the same order). Returns at once. */
int32_t weft_decode_replay(weft_decode_t d, int32_t graph);
/* Waits for the engine's work and reports (then clears) any error of the
 * steps since the last check: WEFT_ERR_BAD_INPUT, WEFT_ERR_CAPACITY
 * (overflow), WEFT_ERR_TIMEOUT (the comm is then unusable). Not collective. */
int32_t weft_decode_check(weft_decode_t d);
/* Waits for the engine's work, frees its graphs and memory. */
int32_t weft_decode_destroy(weft_decode_t d);

#ifdef __cplusplus
}
#endif
#endif /* WEFT_H */
