// Dispatch: stage this rank's batch in its heap, route it, and pull every
// row that lands here straight from its source's heap over NVLink into its
// final receive row. No permutation pass exists: the layout says where each
// row goes and the pull writes it there.
//
// One weft_dispatch, all on the comm stream. dispatch_begin enqueues steps
// 1-4 without waiting (queued behind earlier calls' tails); dispatch_finish
// makes the one host sync, settles those tails (comm_settle), and enqueues
// 5-6, which become this call's tail:
//   1. open_call: the status reset, and what this call changes (token count,
//      where the routing is, the barrier's epoch, the index arrays: a block
//      sized for the capacity, allocated at the start of the call) written
//      where the layout kernels read it (DispatchCall);
//   2. copy x into this rank's heap staging (unless the caller wrote it in
//      place, weft_engine_input_rows), and routing that is not on this GPU;
//      with quantize E4M3, quantize the staged rows into the sent bytes and
//      scales (quantize.cu), or copy rows the caller quantized (unless
//      written in place, weft_engine_input_e4m3);
//   3. layout_source: check topk, resolve slots, ordinals, per-slot totals
//      (routing on this GPU is read where it is and copied into the heap as
//      it is read); barrier "dispatch staging" (error bits merged: one bad
//      rank fails all); layout_bases: every rank's totals → the receive-row
//      base of each (source rank, slot), R and the token counts, written
//      with the status to mapped host memory by layout_publish;
//   4. layout_build: every pair's receive row, into the index arrays, run
//      while the host waits; then, in dispatch_finish, the host sync (on the
//      counts alone). Steps 3 and 4 replay as two CUDA graphs;
//   5. allocate recv (R rows) and hand the index arrays to the handle; pull;
//   6. barrier "dispatch end" (no rank restages while a peer still reads it).
//
// The pull: one warp per (source rank r, token t) that has a pair here. It
// reads the row once (16-byte loads, 4 per lane in flight) and stores it to
// every receive row it feeds (dedupe device/node), or reads it once per pair
// (dedupe none). The (r, t) are visited interleaved over sources, starting
// at a different source on every rank, so all links carry traffic at once.
#include <string.h>

#include <algorithm>
#include <atomic>
#include <string>
#include <vector>

#include "engine.h"

namespace weft {
namespace {

constexpr int kPullThreads = 256;
constexpr int kPullUnroll = 4;  // 2 and 8 measured no faster on 4xH200

// A sent row is a head (x's row, or a quantized row's E4M3 bytes) and a
// tail (a quantized row's scales; none otherwise), each in a dense region of
// the source's heap and landing in a dense output: recv and recv_scales.
struct PullArgs {
  PeerTable peers;
  TokenTable tok;
  uint64_t head_off, tail_off;  // heap offsets of the regions (hl.xq, hl.xs)
  unsigned head_vecs;           // 16-byte vectors of a row's head
  unsigned tail_vecs;           // ... and of its tail (0 when unquantized)
  int top_k, world, rank, max_tokens, dedupe_none;
  const int* fan_rows;
  uint4* recv;
  uint4* scales;
  const DevStatus* st;
};

// Vector v of token t's sent row on source `base`: v < head_vecs in the
// head, the rest in the tail.
__device__ __forceinline__ const uint4* take(const PullArgs& a, const uint8_t* base, int t, unsigned v) {
  return v < a.head_vecs
             ? reinterpret_cast<const uint4*>(base + a.head_off) + static_cast<size_t>(t) * a.head_vecs + v
             : reinterpret_cast<const uint4*>(base + a.tail_off) + static_cast<size_t>(t) * a.tail_vecs +
                   (v - a.head_vecs);
}

// Where vector v of a sent row lands for receive row `row`.
__device__ __forceinline__ uint4* land(const PullArgs& a, int row, unsigned v) {
  return v < a.head_vecs ? a.recv + static_cast<size_t>(row) * a.head_vecs + v
                         : a.scales + static_cast<size_t>(row) * a.tail_vecs + (v - a.head_vecs);
}

// Copies token t's row from source `base` to the receive rows of the lanes
// in `mask` (each lane k holds the row of pair k in my_row). All lanes run
// every iteration; each lane keeps U 16-byte loads in flight before the
// first store.
template <int U>
__device__ __forceinline__ void copy_row(const PullArgs& a, const uint8_t* base, int t, int my_row, unsigned mask,
                                         int lane) {
  const unsigned row_vecs = a.head_vecs + a.tail_vecs;
  for (unsigned v0 = 0; v0 < row_vecs; v0 += 32u * U) {
    uint4 buf[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const unsigned v = v0 + static_cast<unsigned>(lane) + 32u * u;
      if (v < row_vecs) buf[u] = __ldg(take(a, base, t, v));
    }
    unsigned m = mask;
    while (m != 0u) {
      const int k = __ffs(m) - 1;
      m &= m - 1u;
      const int row = __shfl_sync(0xffffffffu, my_row, k);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const unsigned v = v0 + static_cast<unsigned>(lane) + 32u * u;
        if (v < row_vecs) *land(a, row, v) = buf[u];
      }
    }
  }
}

template <int U>
__global__ void __launch_bounds__(kPullThreads) pull_kernel(PullArgs a) {
  if (call_aborted(a.st)) return;
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * (kPullThreads / 32);
  const long long logical = static_cast<long long>(a.world) * a.max_tokens;
  for (long long j = (blockIdx.x * static_cast<long long>(kPullThreads) + threadIdx.x) / 32; j < logical; j += warps) {
    int r, t;
    long long item;
    if (!walk_step(a.tok, a.world, a.rank, j, &r, &t, &item)) continue;
    const int my_row = lane < a.top_k ? a.fan_rows[item * a.top_k + lane] : -1;
    const unsigned mask = __ballot_sync(0xffffffffu, my_row >= 0);
    if (mask == 0u) continue;
    const uint8_t* base = a.peers.base[r];
    if (!a.dedupe_none) {
      copy_row<U>(a, base, t, my_row, mask, lane);
    } else {
      unsigned m = mask;
      while (m != 0u) {
        const int k = __ffs(m) - 1;
        m &= m - 1u;
        copy_row<U>(a, base, t, my_row, 1u << k, lane);
      }
    }
  }
}

uint64_t align256(uint64_t v) { return (v + 255ull) & ~255ull; }

}  // namespace

long long recv_capacity(const PlanHost& p) {
  const int local = p.local_experts[p.rank];
  return static_cast<long long>(p.world) * p.max_tokens * (p.top_k < local ? p.top_k : local);
}

namespace {

// Offsets of the index arrays inside their block; `take` is called in one order.
template <typename Take>
IndexArrays carve_index(const PlanHost& p, uintptr_t b, Take& take) {
  const uint64_t R = static_cast<uint64_t>(recv_capacity(p));
  const uint64_t pairs = static_cast<uint64_t>(p.max_tokens) * p.top_k;
  const uint64_t items = static_cast<uint64_t>(p.world) * p.max_tokens;
  IndexArrays ix;
  ix.block = reinterpret_cast<void*>(b);
  ix.recv_weights = reinterpret_cast<float*>(b + take(R * 4));
  ix.expert_counts = reinterpret_cast<int*>(b + take(static_cast<uint64_t>(p.local_experts[p.rank]) * 4));
  ix.src_rank = reinterpret_cast<int*>(b + take(R * 4));
  ix.src_token = reinterpret_cast<int*>(b + take(R * 4));
  ix.src_k = reinterpret_cast<int*>(b + take(R * 4));
  ix.dest_row = reinterpret_cast<int*>(b + take(pairs * 4));
  ix.dmask = reinterpret_cast<unsigned*>(b + take(static_cast<uint64_t>(p.max_tokens) * 4));
  ix.fan_rows = reinterpret_cast<int*>(b + take(items * p.top_k * 4));
  ix.part_slot = reinterpret_cast<int*>(b + take(items * 4));
  return ix;
}

struct Bump {
  uint64_t off = 0;
  uint64_t operator()(uint64_t bytes) {
    const uint64_t at = off;
    off = align256(at + (bytes > 0 ? bytes : 16));
    return at;
  }
};

}  // namespace

uint64_t index_block_bytes(const PlanHost& p) {
  Bump bump;
  (void)carve_index(p, 0, bump);
  return bump.off;
}

IndexArrays index_arrays(const PlanHost& p, void* block) {
  Bump bump;
  return carve_index(p, reinterpret_cast<uintptr_t>(block), bump);
}

namespace {

void free_block(weft_engine* e, void* block) {
  if (block == nullptr) return;
  cudaSetDevice(e->comm->device);
  cudaFreeAsync(block, e->comm->stream);
  (void)cudaGetLastError();
}

// An index block goes back to the engine's spare slot if it is free (and
// the engine open), else to the pool.
void free_index(weft_engine* e, void* block) {
  if (block == nullptr) return;
  if (e->spare_index == nullptr && !e->closed) {
    e->spare_index = block;
    return;
  }
  free_block(e, block);
}

// Frees the index arrays of a dispatch that did not reach its handle.
void drop_pending_index(weft_engine* e) {
  free_index(e, e->pending.block);
  e->pending = {};
}

// The begun dispatch's index arrays, stream-ordered on the comm stream.
int32_t alloc_pending_index(weft_engine* e) {
  drop_pending_index(e);
  void* block = e->spare_index;
  e->spare_index = nullptr;
  const uint64_t bytes = index_block_bytes(e->plan);
  if (block == nullptr && cudaMallocAsync(&block, bytes, e->comm->stream) != cudaSuccess) {
    // Out of memory keeps the ranks in step (see dispatch_finish): not a broken comm.
    (void)cudaGetLastError();
    return WEFT_ERR_CAPACITY;
  }
  e->pending = index_arrays(e->plan, block);
  return WEFT_OK;
}

// recv (and its scales) of one handle in one stream-ordered allocation: the
// engine's spare recv block when it is large enough, else a new one with
// 1/16 to spare, so that the next batch's R (which varies a little from
// batch to batch) fits in it once this handle closes.
int32_t handle_alloc(weft_engine* e, weft_handle* h) {
  const PlanHost& p = e->plan;
  const uint64_t R = static_cast<uint64_t>(h->recv_rows);
  Bump take;
  const uint64_t o_recv = take(R * p.recv_row_bytes());
  const uint64_t o_scales = take(R * p.scale_row_bytes());
  if (e->spare_recv != nullptr && e->spare_recv_bytes >= take.off) {
    uint8_t* b = static_cast<uint8_t*>(e->spare_recv);
    h->recv_block_bytes = e->spare_recv_bytes;
    e->spare_recv = nullptr;
    e->spare_recv_bytes = 0;
    h->recv = b + o_recv;
    h->recv_scales = p.fp8() ? reinterpret_cast<float*>(b + o_scales) : nullptr;
    return WEFT_OK;
  }
  free_block(e, e->spare_recv);
  e->spare_recv = nullptr;
  e->spare_recv_bytes = 0;
  const uint64_t bytes = align256(take.off + take.off / 16);
  void* block = nullptr;
  cudaError_t err = cudaMallocAsync(&block, bytes, e->comm->stream);
  if (err == cudaSuccess) h->recv_block_bytes = bytes;
  if (err != cudaSuccess) {
    // Out of memory keeps the ranks in step (see dispatch_finish): not a broken comm.
    (void)cudaGetLastError();
    WEFT_FAIL(WEFT_ERR_CAPACITY, "cannot allocate %llu bytes for the dispatch outputs on rank %d (%d receive rows): %s",
              static_cast<unsigned long long>(take.off), e->comm->rank, h->recv_rows, cudaGetErrorString(err));
  }
  uint8_t* b = static_cast<uint8_t*>(block);
  h->recv = b + o_recv;
  h->recv_scales = p.fp8() ? reinterpret_cast<float*>(b + o_scales) : nullptr;
  return WEFT_OK;
}

// The handle takes the index arrays the layout wrote.
void handle_take_index(weft_handle* h, const IndexArrays& ix) {
  h->index_block = ix.block;
  h->recv_weights = ix.recv_weights;
  h->expert_counts = ix.expert_counts;
  h->src_rank = ix.src_rank;
  h->src_token = ix.src_token;
  h->src_k = ix.src_k;
  h->dest_row = ix.dest_row;
  h->dmask = ix.dmask;
  h->fan_rows = ix.fan_rows;
  h->part_slot = ix.part_slot;
}


void handle_free(weft_handle* h) {
  if (h == nullptr) return;
  weft_engine* e = h->engine;
  if (h->recv != nullptr) {
    if (e->spare_recv == nullptr && !e->closed) {
      e->spare_recv = h->recv;  // recv sits at the block's start
      e->spare_recv_bytes = h->recv_block_bytes;
    } else {
      free_block(e, h->recv);
    }
  }
  free_index(e, h->index_block);
  delete h;
  engine_release(e);
}

int32_t engine_enter(weft_engine* e) {
  if (e == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the engine is NULL");
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was destroyed");
  return comm_enter(e->comm, true);
}

// Failures that leave this rank's barrier count out of step with its peers
// make the communicator unusable.
int32_t finish_collective(weft_comm* c, int32_t rc) {
  if (rc == WEFT_ERR_CUDA || rc == WEFT_ERR_NCCL) comm_mark_broken(c, rc, "a CUDA call failed inside a collective");
  return rc;
}

// The rows a dispatch or re-dispatch sends: x in the plan's dtype, or (plans
// with quantize E4M3) q and scales already quantized, sent as given.
struct Rows {
  const void* x = nullptr;
  const void* q = nullptr;
  const float* scales = nullptr;
  bool quantized = false;  // q and scales, not x
  static Rows of_x(const void* x) {
    Rows r;
    r.x = x;
    return r;
  }
  // NULL parts, or a plan that does not quantize, fail the call on every rank.
  static Rows of_e4m3(const void* q, const float* scales) {
    Rows r;
    r.q = q;
    r.scales = scales;
    r.quantized = true;
    return r;
  }
  bool given() const { return quantized ? (q != nullptr && scales != nullptr) : x != nullptr; }
  // Pre-quantized rows need a quantizing plan.
  bool usable(const PlanHost& p) const { return !quantized || p.fp8(); }
};

// Stages a batch's rows where the peers read them: x copied into the heap
// (unless written in place, weft_engine_input_rows) and quantized when the
// plan says so; pre-quantized rows copied into the send rows as they are.
int32_t stage_rows(weft_engine* e, const Rows& rows, int tokens) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  if (tokens <= 0) return WEFT_OK;
  if (rows.quantized) {
    // Written in place (weft_engine_input_e4m3) needs no copy.
    const size_t T = static_cast<size_t>(tokens);
    if (rows.q != c->heap + e->hl.xq) {
      WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.xq, rows.q, T * p.recv_row_bytes(), cudaMemcpyDefault, c->stream));
    }
    if (reinterpret_cast<const uint8_t*>(rows.scales) != c->heap + e->hl.xs) {
      WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.xs, rows.scales, T * p.scale_row_bytes(), cudaMemcpyDefault,
                                c->stream));
    }
    c->profile.mark(c->stream, "stage q, scales");
    return WEFT_OK;
  }
  if (rows.x != c->heap + e->hl.x) {
    WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.x, rows.x, static_cast<size_t>(tokens) * p.row_bytes(),
                              cudaMemcpyDefault, c->stream));
  }
  c->profile.mark(c->stream, "stage x");
  if (p.fp8()) {
    WEFT_TRY(launch_quantize(e, tokens));
    c->profile.mark(c->stream, "quantize");
  }
  return WEFT_OK;
}

// A pointer kernels of this comm may read as device memory: an allocation
// of the comm's own GPU (not managed, not another GPU's, not the host's).
bool on_this_device(const void* ptr, int device) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice && attr.device == device;
}

// `move_rows` false: the layout alone (weft_dispatch_layout); no rows are
// read and the handle's recv stays unwritten until weft_redispatch.
// The first half of a dispatch: everything up to the one host sync, all
// enqueued without waiting. dispatch_finish does the rest.
//
// What changes per call goes to the device through open_call, which copies
// it from mapped host memory; the layout's ~10 launches that read it replay
// as graphs (layout_graph.cu), nothing in them updated per call: on
// the fast path one graph launch opens the call and runs everything up to
// the host sync, a second the build, so the GPU, not the host's issue rate,
// sets the pace up to the staging barrier.
int32_t dispatch_begin(weft_engine* e, const Rows& rows, const int32_t* idx, const float* w, int32_t tokens,
                       bool move_rows) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  c->profile.host_lap("timer start or previous call -> dispatch_begin");
  WEFT_TRY(comm_hold(c));
  // WEFT_GRAPH=2 (a diagnostic): graphs on every other call, so that one
  // process profiles both ways ("(direct)" marks the calls without).
  static const bool alternate = tuning_knob("WEFT_GRAPH", 1) == 2;
  const bool graphs = layout_graphs(e) && (!alternate || (e->dispatches & 1u) == 0u);
  e->dispatches += 1;
  const char* name = !move_rows        ? (graphs ? "layout" : "layout (direct)")
                     : !p.fp8()        ? (graphs ? "dispatch" : "dispatch (direct)")
                     : rows.quantized ? "dispatch e4m3, rows given"
                                       : "dispatch e4m3";
  c->profile.begin(c->stream, name);
  c->profile.host_lap("begin: hold, profile");
  const bool index_ok = alloc_pending_index(e) == WEFT_OK;
  c->profile.host_lap("begin: index alloc");
  const bool tokens_ok = tokens >= 0 && tokens <= p.max_tokens;
  const bool args_ok = rows.usable(p) && (tokens <= 0 || ((!move_rows || rows.given()) && idx != nullptr && w != nullptr));
  const bool ok = index_ok && tokens_ok && args_ok;
  int32_t* idx_stage = reinterpret_cast<int32_t*>(c->heap + hl.idx);
  float* w_stage = reinterpret_cast<float*>(c->heap + hl.w);
  DispatchCall call;
  call.tokens = ok ? tokens : 0;
  // Routing on this GPU is read where it is (and copied into the heap as it
  // is read); anything else is copied into the heap first, below.
  const bool idx_here = ok && tokens > 0 && on_this_device(idx, c->device);
  const bool w_here = ok && tokens > 0 && on_this_device(w, c->device);
  call.idx = idx_here ? idx : idx_stage;
  call.w = w_here ? w : w_stage;
  call.epoch = ++c->epoch;
  call.ix = e->pending;
  debug_log("rank %d barrier %llu (dispatch staging)", c->rank, static_cast<unsigned long long>(c->epoch));
  // open_call copies h_call when the GPU reaches it: the previous call's
  // copy must be done before it is rewritten. After dispatch_finish (the
  // usual case) it is; after a begin that never finished, wait for the
  // stream (an error path: no event of that call may have been recorded).
  if (e->call_unread) {
    e->call_unread = false;
    WEFT_TRY(comm_waited(c, cudaStreamSynchronize(c->stream)));
  }
  *e->h_call = call;
  e->call_unread = true;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // the stores, before the launch that reads them
  c->profile.host_lap("begin: call values");
  // Routing not on this GPU, then x (and its quantization): into the heap.
  auto stage_inputs = [&]() -> int32_t {
    const size_t pairs = static_cast<size_t>(tokens) * p.top_k;
    if (tokens > 0 && !idx_here) {
      WEFT_CUDA(cudaMemcpyAsync(idx_stage, idx, pairs * sizeof(int32_t), cudaMemcpyDefault, c->stream));
    }
    if (tokens > 0 && !w_here) {
      WEFT_CUDA(cudaMemcpyAsync(w_stage, w, pairs * sizeof(float), cudaMemcpyDefault, c->stream));
    }
    c->profile.mark(c->stream, "stage routing");
    return move_rows ? stage_rows(e, rows, tokens) : WEFT_OK;
  };
  if (ok && graphs && !p.fp8()) {
    // The fast path: copies (if any) first, as nothing in them reads the
    // status; then one launch opens the call and runs the front.
    WEFT_TRY(stage_inputs());
    WEFT_CUDA(cudaGraphLaunch(e->graph_front_open, c->stream));
    c->profile.mark(c->stream, "layout: open, source, barrier, bases (graph)");
  } else if (ok) {
    // Quantizing reads the status, so it follows the open.
    WEFT_TRY(open_call(e, c->stream));
    c->profile.mark(c->stream, "open call");
    WEFT_TRY(stage_inputs());
    if (graphs) {
      WEFT_CUDA(cudaGraphLaunch(e->graph_front, c->stream));
      c->profile.mark(c->stream, "layout: source, barrier, bases (graph)");
    } else {
      WEFT_TRY(enqueue_layout_front(e, c->stream, true));
    }
  } else {
    // Bad input: no routing; the barrier carries this rank's error bit.
    WEFT_TRY(open_call(e, c->stream));
    if (!index_ok) {
      WEFT_TRY(comm_report_bad(c, 0, kBadArgument));  // every rank fails at the staging barrier; finish says why
    } else if (!tokens_ok) {
      WEFT_TRY(comm_report_bad(c, tokens < 0 ? 0ull : static_cast<unsigned long long>(tokens), kBadCapacity));
    } else {
      WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
    }
    WEFT_TRY(comm_barrier_at(c, c->stream, &e->d_call->epoch));
    WEFT_TRY(layout_bases(e, c->stream));
    WEFT_TRY(layout_publish(e, c->stream));
  }
  c->profile.host_lap("begin: staging, front");
  // What the host waits for (the token counts, R and this call's status) is
  // in h_readback once this event has completed.
  WEFT_CUDA(cudaEventRecord(e->counts_ready, c->stream));
  // The rest of the layout runs while the host waits for those.
  if (ok && graphs) {
    WEFT_CUDA(cudaGraphLaunch(e->graph_build, c->stream));
    c->profile.mark(c->stream, "layout: build (graph)");
  } else if (ok) {
    WEFT_TRY(enqueue_layout_build(e, c->stream, true));
  }
  c->profile.host_lap("begin: read-backs, build");
  c->begun.tokens = tokens;
  c->begun.move_rows = move_rows;
  c->begun.call = move_rows ? "weft_dispatch" : "weft_dispatch_layout";
  return WEFT_OK;
}

// The second half: waits for the counts, checks every rank's input, builds
// the handle and enqueues the pull; returns while the rows move.
int32_t dispatch_finish(weft_engine* e, weft_handle** out) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  const int tokens = c->begun.tokens;
  const bool move_rows = c->begun.move_rows;
  c->begun = {};
  // The index arrays the layout wrote: the handle takes them below; every
  // failure before that frees them.
  const IndexArrays ix = e->pending;
  e->pending = {};
  auto fail_early = [e, &ix](int32_t rc) {
    free_index(e, ix.block);
    return rc;
  };
  // The one host sync: first the queued tails of earlier calls, in order
  // (every rank reports their failures here, at the same call), then this
  // call's counts and status.
  c->profile.host_lap("dispatch_begin -> dispatch_finish");
  int32_t rc = comm_settle(c);
  if (rc != WEFT_OK) return fail_early(rc);
  c->profile.host_lap("finish: settle tails");
  e->call_unread = false;
  rc = comm_waited(c, cudaEventSynchronize(e->counts_ready));
  if (rc != WEFT_OK) return fail_early(rc);
  *c->h_status = e->h_readback->status;
  c->profile.host_lap("finish: wait for counts");
  rc = comm_check_peers(c, "dispatch");
  if (rc != WEFT_OK) return fail_early(rc);
  if (c->h_status->local_bad != 0u) {
    if (ix.block == nullptr) {
      set_error("cannot allocate %llu bytes for the dispatch's index arrays on rank %d (max_tokens %d on %d ranks): "
                "free device memory or lower max_tokens. Every rank failed the call",
                static_cast<unsigned long long>(index_block_bytes(p)), c->rank, p.max_tokens, p.world);
      return fail_early(WEFT_ERR_CAPACITY);
    }
    const unsigned kind = static_cast<unsigned>(c->h_status->bad_key & 15ull);
    const std::string msg =
        bad_input_message(p, *c->h_status, c->rank, tokens, reinterpret_cast<const int*>(c->heap + hl.idx),
                          "x, topk_idx or topk_weights is NULL while tokens > 0, or q and scales are not both "
                          "given, or given to a plan without quantize E4M3");
    set_error("%s", msg.c_str());
    return fail_early(bad_input_code(kind));
  }

  const int W = p.world;
  const int* tokens_of = e->h_readback->counts;
  weft_handle* h = new weft_handle();
  h->engine = e;
  engine_retain(e);
  handle_take_index(h, ix);
  h->tokens = tokens;
  h->local_experts = p.local_experts[p.rank];
  h->tok.base[0] = 0;
  for (int r = 0; r < W; ++r) {
    const int n = tokens_of[r];
    if (n < 0 || n > p.max_tokens || (r == p.rank && n != tokens)) {
      handle_free(h);
      comm_mark_broken(c, WEFT_ERR_INVALID, "staged token counts disagree");
      WEFT_FAIL(WEFT_ERR_INVALID, "internal error: rank %d's staged token count reads %d (do all ranks use the same plan?)", r, n);
    }
    h->tok.tokens[r] = n;
    h->tok.base[r + 1] = h->tok.base[r] + n;
  }
  h->items = h->tok.base[W];
  h->recv_rows = tokens_of[W];
  if (h->recv_rows < 0 || h->recv_rows > e->recv_cap) {
    const int R = h->recv_rows;
    handle_free(h);
    comm_mark_broken(c, WEFT_ERR_INVALID, "receive row count out of range");
    WEFT_FAIL(WEFT_ERR_INVALID, "internal error: rank %d's receive row count reads %d, capacity %d (a weft bug)", c->rank,
              R, e->recv_cap);
  }

  // From here on every failure frees the handle.
  auto fail = [h](int32_t rc) {
    handle_free(h);
    return rc;
  };
  c->profile.host_lap("finish: checks, handle");
  rc = handle_alloc(e, h);
  c->profile.host_lap("finish: recv alloc");
  const int32_t alloc_rc = rc;
  if (alloc_rc != WEFT_OK) {
    // Keep in step with the peers: raise this rank's error bit at the end
    // barrier so every rank fails the call together. The allocation's
    // message stays the last error unless something worse happens.
    rc = comm_report_bad(c, 0, kBadArgument);
    if (rc != WEFT_OK) return fail(rc);
  } else {
    c->profile.mark(c->stream, "host: alloc");
    if (move_rows) rc = launch_pull(e, h);
    c->profile.host_lap("finish: pull launch");
    c->profile.mark(c->stream, "pull");
    if (rc != WEFT_OK) return fail(rc);
  }
  // Every host decision is made: return while the rows move; a peer that
  // fails from here on is reported by a later call (comm_settle). A rank that
  // failed to allocate waits instead, so every rank's error is in view.
  rc = comm_end_with_barrier(c, "dispatch end", move_rows ? "weft_dispatch" : "weft_dispatch_layout", "dispatch",
                             alloc_rc == WEFT_OK);
  if (rc == WEFT_OK) rc = alloc_rc;
  if (rc != WEFT_OK) return fail(rc);
  c->profile.host_lap("finish: end barrier, tail");
  *out = h;
  return WEFT_OK;
}

int32_t redispatch_impl(weft_handle* h, const Rows& rows) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  c->profile.begin(c->stream, p.fp8() ? "redispatch e4m3" : "redispatch");
  WEFT_TRY(comm_reset_status(c));
  const bool bad = !rows.usable(p) || (h->tokens > 0 && !rows.given());
  if (bad) {
    WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
  } else {
    WEFT_TRY(stage_rows(e, rows, h->tokens));
  }
  WEFT_TRY(comm_barrier_async(c, "redispatch staging"));
  c->profile.mark(c->stream, "barrier: staged");
  WEFT_TRY(launch_pull(e, h));
  c->profile.mark(c->stream, "pull");
  // x was staged in stream order; a peer's failure surfaces at a later call.
  WEFT_TRY(comm_end_with_barrier(c, "redispatch end", "weft_redispatch", "redispatch", !bad));
  if (bad) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "x is NULL while the handle has %d tokens on rank %d, or q and scales are not both given, or given to "
              "a plan without quantize E4M3. Every rank failed the call",
              h->tokens, c->rank);
  }
  return WEFT_OK;
}

}  // namespace

int32_t launch_pull(weft_engine* e, weft_handle* h) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  int max_tokens_now = 0;
  for (int r = 0; r < p.world; ++r) max_tokens_now = std::max(max_tokens_now, h->tok.tokens[r]);
  if (max_tokens_now == 0 || h->recv_rows == 0) return WEFT_OK;
  if (pull_tma_wanted(e)) return launch_pull_tma(e, h, max_tokens_now);
  auto kernel = pull_kernel<kPullUnroll>;
  int occupancy = 0;
  WEFT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, kPullThreads, 0));
  // A persistent grid: every resident warp strides over the (rank, token) pairs.
  const long long logical = static_cast<long long>(p.world) * max_tokens_now;
  const int sms = std::min(c->num_sms, tuning_knob("WEFT_PULL_SMS", c->num_sms));
  // Two 8-warp blocks per SM: on 4xH200 this read over NVLink a few percent
  // faster than full occupancy, and one block starved the local copies.
  const int per_sm = std::min(std::max(occupancy, 1), tuning_knob("WEFT_PULL_BLOCKS_PER_SM", 2));
  long long blocks = static_cast<long long>(sms) * std::max(per_sm, 1);
  blocks = std::min(blocks, (logical + kPullThreads / 32 - 1) / (kPullThreads / 32));
  PullArgs a;
  a.peers = c->peers;
  a.tok = h->tok;
  a.head_off = e->hl.xq;
  a.tail_off = e->hl.xs;
  a.head_vecs = static_cast<unsigned>(p.recv_row_bytes() / 16);
  a.tail_vecs = static_cast<unsigned>(p.scale_row_bytes() / 16);
  a.top_k = p.top_k;
  a.world = p.world;
  a.rank = p.rank;
  a.max_tokens = max_tokens_now;
  a.dedupe_none = p.dedupe == WEFT_DEDUPE_NONE ? 1 : 0;
  a.fan_rows = h->fan_rows;
  a.recv = static_cast<uint4*>(h->recv);
  a.scales = reinterpret_cast<uint4*>(h->recv_scales);
  a.st = c->d_status;
  kernel<<<static_cast<unsigned>(blocks), kPullThreads, 0, c->stream>>>(a);
  WEFT_LAUNCHED("pull", c->stream);
  return WEFT_OK;
}

}  // namespace weft

namespace weft {
namespace {

// weft_dispatch_begin and weft_dispatch_begin_e4m3.
int32_t begin_entry(weft_engine* e, const Rows& rows, const int32_t* idx, const float* w, int32_t tokens) {
  WEFT_TRY(engine_enter(e));
  CommLock lock(e->comm);
  weft_comm* c = e->comm;
  WEFT_TRY(comm_check_not_begun(c));
  const int32_t rc = dispatch_begin(e, rows, idx, w, tokens, true);
  if (rc != WEFT_OK) {
    c->begun = {};
    drop_pending_index(e);
  }
  return finish_collective(c, rc);
}

// weft_redispatch and weft_redispatch_e4m3.
int32_t redispatch_entry(weft_handle* h, const Rows& rows) {
  if (h == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the handle is NULL");
  WEFT_TRY(engine_enter(h->engine));
  CommLock lock(h->engine->comm);
  WEFT_TRY(comm_check_not_begun(h->engine->comm));
  return finish_collective(h->engine->comm, redispatch_impl(h, rows));
}

// Both halves in one call (weft_dispatch, weft_dispatch_layout).
int32_t dispatch_whole(weft_engine* e, const void* x, const int32_t* idx, const float* w, int32_t tokens,
                       bool move_rows, weft_handle** out) {
  WEFT_TRY(engine_enter(e));
  CommLock lock(e->comm);
  WEFT_TRY(comm_check_not_begun(e->comm));
  int32_t rc = dispatch_begin(e, Rows::of_x(x), idx, w, tokens, move_rows);
  if (rc == WEFT_OK) {
    rc = dispatch_finish(e, out);  // takes the index arrays, or frees them
  } else {
    drop_pending_index(e);
  }
  e->comm->begun = {};
  return finish_collective(e->comm, rc);
}

}  // namespace
}  // namespace weft

extern "C" int32_t weft_dispatch(weft_engine_t e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                                 int32_t tokens, int32_t inputs_on_device, weft_handle_t* out) {
  WEFT_API("weft_dispatch");
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  // Host and device inputs are both copied with cudaMemcpyDefault (unified
  // addressing tells them apart); the flag is kept for the ABI.
  (void)inputs_on_device;
  return weft::dispatch_whole(e, x, topk_idx, topk_weights, tokens, true, out);
}

extern "C" int32_t weft_dispatch_begin(weft_engine_t e, const void* x, const int32_t* topk_idx,
                                       const float* topk_weights, int32_t tokens) {
  WEFT_API("weft_dispatch_begin");
  return weft::begin_entry(e, weft::Rows::of_x(x), topk_idx, topk_weights, tokens);
}

extern "C" int32_t weft_dispatch_begin_e4m3(weft_engine_t e, const void* q, const float* scales,
                                            const int32_t* topk_idx, const float* topk_weights, int32_t tokens) {
  WEFT_API("weft_dispatch_begin_e4m3");
  return weft::begin_entry(e, weft::Rows::of_e4m3(q, scales), topk_idx, topk_weights, tokens);
}

extern "C" int32_t weft_dispatch_finish(weft_engine_t e, weft_handle_t* out) {
  WEFT_API("weft_dispatch_finish");
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(weft::engine_enter(e));
  weft::CommLock lock(e->comm);
  if (e->comm->begun.call == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "no weft_dispatch_begin precedes this call");
  return weft::finish_collective(e->comm, weft::dispatch_finish(e, out));
}

extern "C" int32_t weft_dispatch_layout(weft_engine_t e, const int32_t* topk_idx, const float* topk_weights,
                                        int32_t tokens, weft_handle_t* out) {
  WEFT_API("weft_dispatch_layout");
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  return weft::dispatch_whole(e, nullptr, topk_idx, topk_weights, tokens, false, out);
}

extern "C" int32_t weft_redispatch(weft_handle_t h, const void* x, int32_t inputs_on_device) {
  WEFT_API("weft_redispatch");
  (void)inputs_on_device;
  return weft::redispatch_entry(h, weft::Rows::of_x(x));
}

extern "C" int32_t weft_redispatch_e4m3(weft_handle_t h, const void* q, const float* scales) {
  WEFT_API("weft_redispatch_e4m3");
  return weft::redispatch_entry(h, weft::Rows::of_e4m3(q, scales));
}

extern "C" int32_t weft_handle_info(weft_handle_t h, weft_dispatch_info* out) {
  WEFT_API("weft_handle_info");
  if (h == nullptr || out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "handle or out is NULL");
  out->tokens = h->tokens;
  out->recv_rows = h->recv_rows;
  out->local_experts = h->local_experts;
  out->pad_ = 0;
  out->recv = h->recv;
  out->recv_weights = h->recv_weights;
  out->expert_counts = h->expert_counts;
  out->src_rank = h->src_rank;
  out->src_token = h->src_token;
  out->src_k = h->src_k;
  out->dest_row = h->dest_row;
  out->recv_scales = h->recv_scales;
  return WEFT_OK;
}

extern "C" int32_t weft_handle_destroy(weft_handle_t h) {
  WEFT_API("weft_handle_destroy");
  weft::handle_free(h);
  return WEFT_OK;
}
