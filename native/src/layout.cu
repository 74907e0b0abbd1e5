// Index generation on the GPU: no per-token work on the host.
//
// Source side (every rank, its own tokens; also used by the NCCL baseline):
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
//
// Destination side (after the staging barrier), all on the GPU and enqueued
// before the host's one sync, so it runs while the host waits:
//   bases         one block per destination rank d: reads every rank's
//                 per-slot totals from its heap and scans them in d's receive
//                 order (expert-major or rank-major) into the receive-row
//                 base of each (source rank, slot) on d; d = this rank also
//                 yields R and the per-expert counts. Block 0 copies every
//                 rank's token count. The host reads back only the token
//                 counts and R (what it needs to allocate recv).
//   source_rows   this rank's own pairs: their receive row on the
//                 destination (for combine), and each token's destinations;
//   recv_layout   each (source rank r, token t, k) that lands here: its
//                 receive row, and the receive-order arrays
//                 src_rank/src_token/src_k/recv_weights. Row = base[r][slot]
//                 + ordinal.
// The index arrays go to a block sized for the plan's capacity (max_tokens
// on every rank), allocated stream-ordered before the sync, so that no
// array waits for R; the handle keeps the block. They are <1% of recv's
// bytes, so the slack costs little.
#include <stdio.h>

#include <string>

#include "engine.h"

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

struct BasesArgs {
  PeerTable peers;
  uint64_t slot_count_off, meta_off;
  int world, rank, slots, expert_major;
  int slot_base[kMaxWorld + 1];
  int* base;           // [world][slots]
  int* counts_out;     // [world] tokens of each rank, then [1] R of this rank
  const DispatchCall* call;  // its ix.expert_counts: [local experts of this rank]
  const DevStatus* st;
};

constexpr int kBasesThreads = 256;

// Block d: the receive-row bases of destination d, by a block-wide scan of
// its (slot, source rank) totals in receive order, a tile at a time.
__global__ void __launch_bounds__(kBasesThreads) bases_kernel(BasesArgs a) {
  if (call_aborted(a.st)) return;
  __shared__ int warp_excl[kBasesThreads / 32];
  __shared__ int carry;
  const int d = blockIdx.x;
  const int W = a.world;
  const int lo = a.slot_base[d];
  const int L = a.slot_base[d + 1] - lo;
  const int n = L * W;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  auto count = [&](int r, int l) { return reinterpret_cast<const int*>(a.peers.base[r] + a.slot_count_off)[lo + l]; };
  if (threadIdx.x == 0) carry = 0;
  __syncthreads();
  for (int tile = 0; tile < n; tile += kBasesThreads) {
    const int i = tile + static_cast<int>(threadIdx.x);
    int r = 0, l = 0, v = 0;
    if (i < n) {
      if (a.expert_major) {
        l = i / W;
        r = i - l * W;
      } else {
        r = i / L;
        l = i - r * L;
      }
      v = count(r, l);
    }
    int incl = v;
#pragma unroll
    for (int k = 1; k < 32; k <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, incl, k);
      if (lane >= k) incl += u;
    }
    if (lane == 31) warp_excl[warp] = incl;
    __syncthreads();
    if (warp == 0) {
      const int total = lane < kBasesThreads / 32 ? warp_excl[lane] : 0;
      int run = total;
#pragma unroll
      for (int k = 1; k < 32; k <<= 1) {
        const int u = __shfl_up_sync(0xffffffffu, run, k);
        if (lane >= k) run += u;
      }
      if (lane < kBasesThreads / 32) warp_excl[lane] = run - total;
    }
    __syncthreads();
    const int excl = carry + warp_excl[warp] + incl - v;
    if (i < n) a.base[static_cast<size_t>(r) * a.slots + lo + l] = excl;
    __syncthreads();
    if (threadIdx.x == kBasesThreads - 1) carry = excl + v;
    __syncthreads();
  }
  if (d == a.rank) {
    if (threadIdx.x == 0) a.counts_out[W] = carry;
    for (int l = threadIdx.x; l < L; l += kBasesThreads) {
      int sum = 0;
      for (int r = 0; r < W; ++r) sum += count(r, l);
      a.call->ix.expert_counts[l] = sum;
    }
  }
  if (d == 0 && static_cast<int>(threadIdx.x) < W) {
    a.counts_out[threadIdx.x] = *reinterpret_cast<const int*>(a.peers.base[threadIdx.x] + a.meta_off);
  }
}

// This rank's own pairs: their receive row on the destination, -1 for none.
__global__ void source_rows_kernel(const int* slot, const int* ord, const unsigned* dmask_src, int top_k,
                                   const int* base_self, const DispatchCall* call, const DevStatus* st) {
  if (call_aborted(st)) return;
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  const int tokens = call->tokens;
  const long long pairs = static_cast<long long>(tokens) * top_k;
  if (i < pairs) {
    const int s = slot[i];
    call->ix.dest_row[i] = s >= 0 ? base_self[s] + ord[i] : -1;
  }
  if (i < tokens) call->ix.dmask[i] = dmask_src[i];
}

struct RecvLayoutArgs {
  PeerTable peers;
  uint64_t slot_off, ord_off, w_off, dmask_off;
  int rank, world, top_k, slots, slot_lo, slot_hi, recv_cap, dedupe_none;
  long long cap;           // (rank, token, k) threads: world x max_tokens x K
  const int* counts;       // [world] tokens of each rank, then R of this rank (bases_kernel)
  const int* base;         // [world][slots]
  const DispatchCall* call;  // the index arrays written
  DevStatus* st;
};

// One thread per (source rank r, token t, k): where that pair lands here.
// Launched for the capacity (the token counts are on the device only);
// threads past the batch's (r, t, k) return at once.
__global__ void recv_layout_kernel(RecvLayoutArgs a) {
  if (call_aborted(a.st)) return;
  const long long g = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (g >= a.cap) return;
  const IndexArrays& ix = a.call->ix;
  const int item = static_cast<int>(g / a.top_k);
  const int k = static_cast<int>(g - static_cast<long long>(item) * a.top_k);
  int r = 0, first = 0;  // item's source rank and that rank's first item
  while (r < a.world && item >= first + a.counts[r]) first += a.counts[r++];
  if (r == a.world) return;
  const int t = item - first;
  const int recv_rows = a.counts[a.world];
  const long long pair = static_cast<long long>(t) * a.top_k + k;
  const uint8_t* heap = a.peers.base[r];
  const int s = reinterpret_cast<const int*>(heap + a.slot_off)[pair];
  int row = -1;
  if (s >= a.slot_lo && s < a.slot_hi) {
    const int o = reinterpret_cast<const int*>(heap + a.ord_off)[pair];
    row = a.base[static_cast<size_t>(r) * a.slots + s] + o;
    if (o < 0 || row < 0 || row >= recv_rows || row >= a.recv_cap) {
      report_internal(a.st);
      row = -1;
    } else {
      ix.src_rank[row] = r;
      ix.src_token[row] = t;
      ix.src_k[row] = k;
      ix.recv_weights[row] = reinterpret_cast<const float*>(heap + a.w_off)[pair];
    }
  }
  ix.fan_rows[g] = row;
  if (k == 0) {
    const unsigned m = reinterpret_cast<const unsigned*>(heap + a.dmask_off)[t];
    ix.part_slot[item] = a.dedupe_none ? 0 : __popc(m & ((1u << a.rank) - 1u));
  }
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

namespace {

// A dispatch's first kernel: the status reset, and the call's values copied
// from mapped host memory to where the layout kernels read them, one 8-byte
// word a lane so that the reads over PCIe are in flight together.
__global__ void __launch_bounds__(32) open_call_kernel(DevStatus* st, const DispatchCall* src, DispatchCall* out) {
  static_assert(sizeof(DispatchCall) % 8 == 0 && sizeof(DispatchCall) / 8 <= 64, "DispatchCall: two words a lane");
  constexpr int kWords = static_cast<int>(sizeof(DispatchCall) / 8);
  const volatile unsigned long long* from = reinterpret_cast<const volatile unsigned long long*>(src);
  unsigned long long* to = reinterpret_cast<unsigned long long*>(out);
  for (int i = threadIdx.x; i < kWords; i += 32) to[i] = from[i];
  if (threadIdx.x == 0) reset_status(st);
}

// The layout's values the host waits for, into mapped host memory.
__global__ void __launch_bounds__(32) publish_layout_kernel(const int* counts, int n, const DevStatus* st,
                                                            LayoutReadback* out) {
  for (int i = threadIdx.x; i < n; i += 32) out->counts[i] = counts[i];
  if (threadIdx.x == 0) publish_status(st, &out->status);
  __threadfence_system();  // every lane's stores, before the event the host waits on
}

}  // namespace

int32_t open_call(weft_engine* e, cudaStream_t s) {
  open_call_kernel<<<1, 32, 0, s>>>(e->comm->d_status, e->d_call_src, e->d_call);
  WEFT_LAUNCHED("open_call", s);
  return WEFT_OK;
}

int32_t layout_publish(weft_engine* e, cudaStream_t s) {
  publish_layout_kernel<<<1, 32, 0, s>>>(e->d_counts, e->plan.world + 1, e->comm->d_status, e->d_readback);
  WEFT_LAUNCHED("layout_publish", s);
  return WEFT_OK;
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

int32_t layout_bases(weft_engine* e, cudaStream_t s) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  BasesArgs a;
  a.peers = c->peers;
  a.slot_count_off = e->hl.slot_count;
  a.meta_off = e->hl.meta;
  a.world = p.world;
  a.rank = p.rank;
  a.slots = p.slots;
  a.expert_major = p.receive == WEFT_EXPERT_MAJOR ? 1 : 0;
  for (int r = 0; r <= p.world; ++r) a.slot_base[r] = p.slot_base[r];
  a.base = e->d_base;
  a.counts_out = e->d_counts;
  a.call = e->d_call;
  a.st = c->d_status;
  bases_kernel<<<p.world, kBasesThreads, 0, s>>>(a);
  WEFT_LAUNCHED("layout_bases", s);
  return WEFT_OK;
}

int32_t layout_build(weft_engine* e, cudaStream_t s) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  const long long own_pairs = static_cast<long long>(p.max_tokens) * p.top_k;
  const long long n_src = own_pairs > p.max_tokens ? own_pairs : p.max_tokens;
  if (n_src > 0) {
    source_rows_kernel<<<grid_for(n_src, 256), 256, 0, s>>>(
        reinterpret_cast<const int*>(c->heap + hl.slot), reinterpret_cast<const int*>(c->heap + hl.ord),
        reinterpret_cast<const unsigned*>(c->heap + hl.dmask), p.top_k,
        e->d_base + static_cast<size_t>(p.rank) * p.slots, e->d_call, c->d_status);
    WEFT_LAUNCHED("source_rows", s);
  }
  RecvLayoutArgs a;
  a.peers = c->peers;
  a.slot_off = hl.slot;
  a.ord_off = hl.ord;
  a.w_off = hl.w;
  a.dmask_off = hl.dmask;
  a.rank = p.rank;
  a.world = p.world;
  a.top_k = p.top_k;
  a.slots = p.slots;
  a.slot_lo = p.slot_base[p.rank];
  a.slot_hi = p.slot_base[p.rank + 1];
  a.recv_cap = e->recv_cap;
  a.dedupe_none = p.dedupe == WEFT_DEDUPE_NONE ? 1 : 0;
  a.cap = static_cast<long long>(p.world) * p.max_tokens * p.top_k;
  a.counts = e->d_counts;
  a.base = e->d_base;
  a.call = e->d_call;
  a.st = c->d_status;
  if (a.cap > 0) {
    recv_layout_kernel<<<grid_for(a.cap, 256), 256, 0, s>>>(a);
    WEFT_LAUNCHED("recv_layout", s);
  }
  return WEFT_OK;
}

std::string bad_input_message(const PlanHost& p, const DevStatus& s, int rank, int tokens, const int* idx_device,
                              const std::string& host_msg) {
  const unsigned kind = static_cast<unsigned>(s.bad_key & 15ull);
  const unsigned long long pos = s.bad_key >> 4;
  const int K = p.top_k;
  const long long t = static_cast<long long>(pos / static_cast<unsigned long long>(K));
  const int k = static_cast<int>(pos % static_cast<unsigned long long>(K));
  int value = 0;
  if ((kind == kBadExpertRange || kind == kBadDuplicate) && idx_device != nullptr) {
    if (cudaMemcpy(&value, idx_device + pos, sizeof value, cudaMemcpyDeviceToHost) != cudaSuccess) {
      (void)cudaGetLastError();
    }
  }
  char buf[1024];
  switch (kind) {
    case kBadExpertRange:
      snprintf(buf, sizeof buf,
               "topk_idx[%lld][%d] = %d on rank %d is not an expert id: ids must be in [-1, %d) (-1 = empty slot). "
               "Every rank failed the call; nothing was written",
               t, k, value, rank, p.experts);
      break;
    case kBadDuplicate:
      snprintf(buf, sizeof buf,
               "topk_idx[%lld] on rank %d lists expert %d twice (again at k = %d): a token's experts must be "
               "distinct. Every rank failed the call; nothing was written",
               t, rank, value, k);
      break;
    case kBadNanWeight:
      snprintf(buf, sizeof buf,
               "topk_weights[%lld][%d] on rank %d is NaN: routing weights must be numbers. Every rank failed the "
               "call; nothing was written",
               t, k, rank);
      break;
    case kBadCapacity:
      snprintf(buf, sizeof buf,
               "tokens = %d on rank %d exceeds the plan's max_tokens = %d: raise max_tokens (and the heap, see "
               "weft_engine_heap_bytes) or split the batch. Every rank failed the call",
               tokens, rank, p.max_tokens);
      break;
    default:
      snprintf(buf, sizeof buf, "%s on rank %d. Every rank failed the call; nothing was written",
               host_msg.empty() ? "bad argument" : host_msg.c_str(), rank);
      break;
  }
  return buf;
}

int32_t bad_input_code(unsigned kind) {
  switch (kind) {
    case kBadExpertRange:
    case kBadDuplicate:
    case kBadNanWeight:
      return WEFT_ERR_BAD_INPUT;
    case kBadCapacity:
      return WEFT_ERR_CAPACITY;
    default:
      return WEFT_ERR_INVALID;
  }
}

}  // namespace weft
