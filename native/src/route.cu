// Routing on the GPU, the source side of index generation: no per-token
// work on the host. Every rank routes its own tokens; the NCCL baseline
// uses the same kernels (route_tokens). The destination side is layout.cu.
// Three kernels:
//   route_chunk   one warp per chunk of 64 tokens: checks topk_idx/weights,
//                 resolves each (t,k) to a global slot (replica rule), finds
//                 the (t,k)'s ordinal among the chunk's pairs of that slot in
//                 token order, counts pairs per slot per chunk;
//   chunk_scan    one warp per slot: exclusive scan of the chunk counts, so
//                 chunk c's pairs of slot s start at that prefix; totals;
//   ord_finalize  ordinal in chunk + chunk prefix = ordinal among all of this
//                 rank's pairs of that slot, in (t,k) order.
// A token holds each slot at most once (a repeated slot means a repeated
// expert, which is rejected), so "ordinal among pairs" is "ordinal among
// tokens" and the result is exactly the receive order inside a slot.
#include "layout.h"

namespace weft {
namespace {

struct RouteArgs {
  RouteTables rt;
  int src_rank, tokens, top_k, slots;
  const int* idx;
  const float* weights;
  // The engine's dispatch: tokens, idx and weights come from call, and
  // routing not already in the heap staging is copied there as it is read
  // (peers read the weights there; the host quotes a bad id from it).
  const DispatchCall* call;
  int* idx_stage;
  float* w_stage;
  int* slot_out;
  int* ord_out;
  unsigned* dmask_out;
  int* chunk_counts;
  int chunk_stride;
  DevStatus* st;
};

__global__ void __launch_bounds__(32) route_chunk_kernel(RouteArgs a) {
  extern __shared__ int smem[];
  const int K = a.top_k;
  int* cnt = smem;                      // [slots] pairs per slot so far in this chunk
  int* sl = cnt + a.slots;              // [chunk][K] resolved slot
  int* od = sl + kRouteChunk * K;       // [chunk][K] ordinal in chunk
  const int lane = threadIdx.x;
  const int chunk = blockIdx.x;
  const int t0 = chunk * kRouteChunk;
  const int tokens = a.call != nullptr ? a.call->tokens : a.tokens;
  const int n = min(kRouteChunk, tokens - t0);
  if (n <= 0) return;  // past this batch in a grid launched for the capacity
  const int* idx = a.call != nullptr ? a.call->idx : a.idx;
  const float* weights = a.call != nullptr ? a.call->w : a.weights;
  const bool stage_idx = a.call != nullptr && idx != a.idx_stage;
  const bool stage_w = a.call != nullptr && weights != a.w_stage;
  const long long p0 = static_cast<long long>(t0) * K;

  for (int s = lane; s < a.slots; s += 32) cnt[s] = 0;
  // Every pair independently: range and NaN checks, slot resolution.
  for (int i = lane; i < n * K; i += 32) {
    const int t = t0 + i / K;
    const int e = idx[p0 + i];
    const float w = weights[p0 + i];
    if (stage_idx) a.idx_stage[p0 + i] = e;
    if (stage_w) a.w_stage[p0 + i] = w;
    int s = -1;
    if (e < -1 || e >= a.rt.experts) {
      report_bad(a.st, static_cast<unsigned long long>(p0 + i), kBadExpertRange);
    } else if (e >= 0) {
      s = resolve_slot(a.rt, a.src_rank, t, e);
    }
    if (isnan(w)) report_bad(a.st, static_cast<unsigned long long>(p0 + i), kBadNanWeight);
    sl[i] = s;
  }
  __syncwarp();
  // Tokens in order; lane k takes slot k of the token. Slots within one
  // token are distinct unless an expert repeats, which is reported; the
  // counters stay in range either way.
  if (lane < K) {
    const unsigned kmask = K == 32 ? 0xffffffffu : ((1u << K) - 1u);
    for (int j = 0; j < n; ++j) {
      const int s = sl[j * K + lane];
      const unsigned same = __match_any_sync(kmask, s);
      if (s >= 0 && (same & ((1u << lane) - 1u)) != 0u) {
        report_bad(a.st, static_cast<unsigned long long>(p0 + j * K + lane), kBadDuplicate);
      }
      const int o = s >= 0 ? cnt[s] : -1;
      __syncwarp(kmask);
      if (s >= 0) cnt[s] = o + 1;
      __syncwarp(kmask);
      od[j * K + lane] = o;
    }
  }
  __syncwarp();
  for (int i = lane; i < n * K; i += 32) {
    a.slot_out[p0 + i] = sl[i];
    a.ord_out[p0 + i] = od[i];
  }
  if (a.dmask_out != nullptr) {
    for (int j = lane; j < n; j += 32) {
      unsigned m = 0u;
      for (int k = 0; k < K; ++k) {
        const int s = sl[j * K + k];
        if (s >= 0) m |= 1u << a.rt.slot_rank[s];
      }
      a.dmask_out[t0 + j] = m;
    }
  }
  for (int s = lane; s < a.slots; s += 32) {
    a.chunk_counts[static_cast<size_t>(s) * a.chunk_stride + chunk] = cnt[s];
  }
}

__device__ __forceinline__ int chunks_of(int tokens) { return tokens <= 0 ? 0 : (tokens + kRouteChunk - 1) / kRouteChunk; }

// One warp per slot: chunk counts → exclusive prefixes (in place), and the
// total. Thread 0 also publishes the token count (meta), when asked. With
// call, the token count (and so the chunks) comes from there. The row is
// read 32 chunks a load, kScanTiles loads in flight before their scans (the
// carry runs through the scans, not the loads).
constexpr int kScanTiles = 4;
__global__ void chunk_scan_kernel(int* chunk_counts, int chunk_stride, int chunks, int slots, int* slot_count,
                                  int* meta, int tokens, const DispatchCall* call) {
  const int warp = static_cast<int>((blockIdx.x * static_cast<unsigned>(blockDim.x) + threadIdx.x) / 32u);
  const int lane = threadIdx.x & 31;
  if (call != nullptr) {
    tokens = call->tokens;
    chunks = chunks_of(tokens);
  }
  if (meta != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *meta = tokens;
  if (warp >= slots) return;
  int* row = chunk_counts + static_cast<size_t>(warp) * chunk_stride;
  int carry = 0;
  for (int c0 = 0; c0 < chunks; c0 += 32 * kScanTiles) {
    int v[kScanTiles];
#pragma unroll
    for (int j = 0; j < kScanTiles; ++j) {
      const int c = c0 + j * 32 + lane;
      v[j] = c < chunks ? row[c] : 0;
    }
#pragma unroll
    for (int j = 0; j < kScanTiles; ++j) {
      int incl = v[j];
#pragma unroll
      for (int d = 1; d < 32; d <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += u;
      }
      const int c = c0 + j * 32 + lane;
      if (c < chunks) row[c] = carry + incl - v[j];
      carry += __shfl_sync(0xffffffffu, incl, 31);
    }
  }
  if (lane == 0) slot_count[warp] = carry;
}

__global__ void ord_finalize_kernel(const int* slot, int* ord, long long pairs, int top_k, const int* chunk_counts,
                                    int chunk_stride, const DispatchCall* call) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (call != nullptr) pairs = static_cast<long long>(call->tokens) * top_k;
  if (i >= pairs) return;
  const int s = slot[i];
  if (s < 0) return;
  const int chunk = static_cast<int>((i / top_k) / kRouteChunk);
  ord[i] += chunk_counts[static_cast<size_t>(s) * chunk_stride + chunk];
}

}  // namespace

int route_chunks(int tokens) { return tokens <= 0 ? 0 : (tokens + kRouteChunk - 1) / kRouteChunk; }

size_t route_smem_bytes(const PlanHost& p) {
  return (static_cast<size_t>(p.slots) + 2ull * kRouteChunk * p.top_k) * sizeof(int);
}

int32_t route_prepare(const PlanHost& p, size_t smem_optin) {
  const size_t need = route_smem_bytes(p);
  if (need > smem_optin) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "the plan has %d expert slots and top_k %d: routing needs %zu bytes of shared memory per block, "
              "more than this GPU's %zu",
              p.slots, p.top_k, need, smem_optin);
  }
  if (need > 48u * 1024u) {
    WEFT_CUDA(cudaFuncSetAttribute(route_chunk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   static_cast<int>(need)));
  }
  return WEFT_OK;
}

namespace {

// The routing's three launches, in grids for grid_tokens tokens: the batch
// (a.tokens), or the capacity when a.call gives the count at run time.
int32_t launch_route(const PlanHost& p, const RouteArgs& a, int* slot_count, int* meta, int grid_tokens,
                     cudaStream_t s) {
  const int chunks = route_chunks(grid_tokens);
  if (chunks > 0) {
    route_chunk_kernel<<<chunks, 32, route_smem_bytes(p), s>>>(a);
    WEFT_LAUNCHED("route_chunk", s);
  }
  chunk_scan_kernel<<<grid_for(static_cast<long long>(p.slots) * 32, 128), 128, 0, s>>>(
      a.chunk_counts, a.chunk_stride, chunks, p.slots, slot_count, meta, a.tokens, a.call);
  WEFT_LAUNCHED("chunk_scan", s);
  const long long pairs = static_cast<long long>(grid_tokens) * p.top_k;
  if (pairs > 0) {
    ord_finalize_kernel<<<grid_for(pairs, 256), 256, 0, s>>>(a.slot_out, a.ord_out, pairs, p.top_k, a.chunk_counts,
                                                             a.chunk_stride, a.call);
    WEFT_LAUNCHED("ord_finalize", s);
  }
  return WEFT_OK;
}

}  // namespace

int32_t route_tokens(const PlanHost& p, const RouteTables& rt, int src_rank, int tokens, const int* idx,
                     const float* weights, const RouteOut& out, DevStatus* st, cudaStream_t stream) {
  if (route_chunks(tokens) > out.chunk_stride) {
    WEFT_FAIL(WEFT_ERR_CAPACITY, "tokens = %d exceeds the routing scratch (%d chunks)", tokens, out.chunk_stride);
  }
  RouteArgs a;
  a.rt = rt;
  a.src_rank = src_rank;
  a.tokens = tokens;
  a.top_k = p.top_k;
  a.slots = p.slots;
  a.idx = idx;
  a.weights = weights;
  a.slot_out = out.slot;
  a.ord_out = out.ord;
  a.dmask_out = out.dmask;
  a.chunk_counts = out.chunk_counts;
  a.chunk_stride = out.chunk_stride;
  a.call = nullptr;
  a.idx_stage = nullptr;
  a.w_stage = nullptr;
  a.st = st;
  return launch_route(p, a, out.slot_count, out.meta, tokens, stream);
}

// The routing of this rank's tokens (route_tokens' kernels, reading the
// call), in grids for max_tokens.
int32_t layout_source(weft_engine* e, cudaStream_t s) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  RouteArgs a;
  a.rt = e->rt;
  a.src_rank = c->rank;
  a.tokens = 0;
  a.top_k = p.top_k;
  a.slots = p.slots;
  a.idx = nullptr;
  a.weights = nullptr;
  a.call = e->d_call;
  a.idx_stage = reinterpret_cast<int*>(c->heap + hl.idx);
  a.w_stage = reinterpret_cast<float*>(c->heap + hl.w);
  a.slot_out = reinterpret_cast<int*>(c->heap + hl.slot);
  a.ord_out = reinterpret_cast<int*>(c->heap + hl.ord);
  a.dmask_out = reinterpret_cast<unsigned*>(c->heap + hl.dmask);
  a.chunk_counts = e->d_chunk_counts;
  a.chunk_stride = e->chunk_stride;
  a.st = c->d_status;
  return launch_route(p, a, reinterpret_cast<int*>(c->heap + hl.slot_count), reinterpret_cast<int*>(c->heap + hl.meta),
                      p.max_tokens, s);
}

}  // namespace weft
