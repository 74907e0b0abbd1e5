// Index generation on the GPU, the destination side: no per-token work on
// the host. The source side (routing every rank's own tokens, before the
// staging barrier) is route.cu.
//
// After the staging barrier, all on the GPU and enqueued before the host's
// one sync, so it runs while the host waits:
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
#include "layout.h"

#include "combine.h"

namespace weft {
namespace {

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

// The layout's values the host waits for, into mapped host memory.
__global__ void __launch_bounds__(32) publish_layout_kernel(const int* counts, int n, const DevStatus* st,
                                                            LayoutReadback* out) {
  for (int i = threadIdx.x; i < n; i += 32) out->counts[i] = counts[i];
  if (threadIdx.x == 0) publish_status(st, &out->status);
  __threadfence_system();  // every lane's stores, before the event the host waits on
}

}  // namespace

int32_t layout_publish(weft_engine* e, cudaStream_t s) {
  publish_layout_kernel<<<1, 32, 0, s>>>(e->d_counts, e->plan.world + 1, e->comm->d_status, e->d_readback);
  WEFT_LAUNCHED("layout_publish", s);
  return WEFT_OK;
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
  return launch_combine_home_weights(e, s);  // the home's weights of one-term partials (combine.cu)
}

}  // namespace weft
