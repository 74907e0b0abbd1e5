// Hierarchical dispatch, fan-out (HIER_PROTOCOL dispatch 5): every
// destination reads its node's forwarders' staged rows (remote sources) and
// its own node's sources' staged x over CUDA IPC, and writes its receive
// rows, the index arrays and the combine links. hier_transfer.cu schedules
// the launches: per slice as each lands (fan_remote waits for the
// forwarders' landed flags), or once after the node barrier that ends the
// transfer (no wait).
#include <algorithm>

#include "hier_move.h"

namespace weft {
namespace {

struct FanArgs {
  PeerTable peers;
  uint64_t stage_off, stride, payload, recv_row, scale_row;
  uint64_t x_off, xs_off, slot_off, ord_off, w_off;  // own-node sources' staging
  const int* slot_rank;
  const int* base_mine;  // [world][L]
  const int* fan_ent;    // [n][4] (hier_slices.h)
  const int* fan_prefix; // [n+1]
  int ent_lo, ent_hi, row_lo, row_hi;  // this launch's pieces and rows (fan_remote)
  unsigned need;         // local ranks of the forwarders whose landed flag to wait for
  uint64_t landed_off;   // the landed flag in every heap (HierLayout::landed)
  uint64_t target;       // the flag value that says this launch's slice landed; 0: no wait
  uint64_t timeout_ns;
  int node_tokens[kMaxWorld + 1];
  int K, gpn, my_node, my_local, lo, hi, L, R, parts, move_rows;
  uint8_t* recv;
  float* recv_scales;
  float* recv_weights;
  int* src_rank;
  int* src_token;
  int* src_k;
  int* comb_next;
  int* comb_tgt;
  int* comb_idx;
  int* fwd_nparts;
  DevStatus* st;
};

// One (source, token)'s pairs held here, the warp together (lane k: pair
// k): writes the receive rows, the index arrays and the combine links, and
// copies the payload once per held pair.
__device__ void fan_token(const FanArgs& a, int src, int t, int s, int o, float w, const uint8_t* rq,
                          const uint8_t* rs, int tgt, long long land_base, unsigned nodemask) {
  const int lane = threadIdx.x & 31;
  const bool held = lane < a.K && s >= a.lo && s < a.hi;
  int row = -1;
  if (held) {
    row = a.base_mine[static_cast<long long>(src) * a.L + (s - a.lo)] + o;
    if (o < 0 || row < 0 || row >= a.R) {
      report_internal(a.st);
      row = -1;
    }
  }
  const unsigned hm = __ballot_sync(0xffffffffu, row >= 0);
  const unsigned after = lane >= 31 ? 0u : (hm & ~((2u << lane) - 1u));
  const int next_lane = after != 0u ? __ffs(after) - 1 : lane;
  const int next_row = __shfl_sync(0xffffffffu, row, next_lane);
  if (row >= 0) {
    a.recv_weights[row] = w;
    a.src_rank[row] = src;
    a.src_token[row] = t;
    a.src_k[row] = lane;
    a.comb_next[row] = after != 0u ? next_row : -1;
    const bool lead = (hm & ((1u << lane) - 1u)) == 0u;
    a.comb_tgt[row] = lead ? tgt : -1;
    a.comb_idx[row] = lead ? static_cast<int>(land_base + __popc(nodemask & ((1u << a.my_local) - 1u))) : 0;
  }
  if (!a.move_rows) return;
  for (unsigned m = hm; m != 0u; m &= m - 1u) {
    const int k = __ffs(m) - 1;
    const int r = __shfl_sync(0xffffffffu, row, k);
    warp_copy16(a.recv + static_cast<uint64_t>(r) * a.recv_row, rq, a.recv_row, lane);
    if (a.scale_row > 0) {
      warp_copy4(reinterpret_cast<uint8_t*>(a.recv_scales) + static_cast<uint64_t>(r) * a.scale_row, rs, a.scale_row,
                 lane);
    }
  }
}

// Thread 0 of the block waits until the landed flag of every forwarder in
// a.need reads at least a.target (acquire at system scope: the forwarder
// released it after its NCCL step had written the rows), pausing between
// reads (__nanosleep, doubling up to ~2 us) so that contexts sharing the GPU
// and NCCL's own kernels keep running; gives up at the comm's timeout
// (%globaltimer) and raises the call's status as a barrier does (the
// forwarder's bit in timeout_mask, abort): the end barrier then reports
// WEFT_ERR_TIMEOUT naming it. The block goes on only if all landed and the
// call is not aborted. Every thread of the block calls it.
__device__ bool fan_ready(const FanArgs& a) {
  __shared__ int go;
  if (threadIdx.x == 0) {
    bool ok = !call_aborted(a.st);
    if (ok && a.target != 0ull) {
      unsigned late = 0u;
      unsigned pause = 32u;
      const uint64_t start = globaltimer_ns();
      for (unsigned m = a.need; m != 0u && ok; m &= m - 1u) {
        const int lf = __ffs(m) - 1;
        const uint64_t* flag = reinterpret_cast<const uint64_t*>(a.peers.base[lf] + a.landed_off);
        while (ld_acquire_sys_u64(flag) < a.target) {
          if (call_aborted(a.st)) {
            ok = false;
            break;
          }
          if (globaltimer_ns() - start > a.timeout_ns) {
            late |= 1u << lf;
            break;
          }
          __nanosleep(pause);
          if (pause < 2048u) pause *= 2u;
        }
      }
      if (late != 0u) {
        atomicOr(&a.st->timeout_mask, late);
        atomicExch(&a.st->abort, 1u);
        ok = false;
      }
    }
    go = ok ? 1 : 0;
  }
  __syncthreads();
  return go != 0;
}

// Rows staged at the node's forwarders (remote sources): a warp per row of
// [row_lo, row_hi), grid-stride.
__global__ void __launch_bounds__(32 * kWarps) fan_remote_kernel(FanArgs a) {
  if (!fan_ready(a)) return;
  const int lane = threadIdx.x & 31;
  for (int g = a.row_lo + blockIdx.x * kWarps + (threadIdx.x >> 5); g < a.row_hi; g += gridDim.x * kWarps) {
    int lo = a.ent_lo, hi = a.ent_hi - 1;  // the piece holding g
    while (lo < hi) {
      const int mid = (lo + hi + 1) >> 1;
      if (a.fan_prefix[mid] <= g) lo = mid; else hi = mid - 1;
    }
    const int* ent = a.fan_ent + 4 * lo;
    const int lf = ent[0], src = ent[1];
    const int srow = ent[2] + (g - a.fan_prefix[lo]);
    const uint8_t* row = a.peers.base[lf] + a.stage_off + static_cast<uint64_t>(srow) * a.stride;
    const int* meta = reinterpret_cast<const int*>(row + a.payload);
    const int t = meta[0];
    int s = -1, o = -1;
    float w = 0.0f;
    unsigned bit = 0u;
    if (lane < a.K) {
      s = meta[1 + 3 * lane];
      o = meta[2 + 3 * lane];
      w = __int_as_float(meta[3 + 3 * lane]);
      if (s >= 0) bit = 1u << (a.slot_rank[s] % a.gpn);
    }
    const unsigned nodemask = __reduce_or_sync(0xffffffffu, bit);
    if (lf == a.my_local && lane == 0) a.fwd_nparts[srow] = __popc(nodemask);
    fan_token(a, src, t, s, o, w, row, row + a.recv_row, lf, static_cast<long long>(srow) * a.parts, nodemask);
  }
}

// Tokens of the own node's sources, read from their staging: a warp per
// (source, token), grid-stride.
// At least 8 blocks an SM: with the block size alone ptxas held the kernel to
// 48 registers and spilled 12 bytes; with this bound it keeps it in registers.
__global__ void __launch_bounds__(32 * kWarps, 8) fan_local_kernel(FanArgs a) {
  if (call_aborted(a.st)) return;
  const int lane = threadIdx.x & 31;
  const int items = a.node_tokens[a.gpn];
  for (int g = blockIdx.x * kWarps + (threadIdx.x >> 5); g < items; g += gridDim.x * kWarps) {
    int l = 0;
    while (g >= a.node_tokens[l + 1]) ++l;
    const int t = g - a.node_tokens[l];
    const int src = a.my_node * a.gpn + l;
    const uint8_t* heap = a.peers.base[l];
    int s = -1, o = -1;
    float w = 0.0f;
    unsigned bit = 0u;
    if (lane < a.K) {
      const long long p = static_cast<long long>(t) * a.K + lane;
      s = reinterpret_cast<const int*>(heap + a.slot_off)[p];
      o = reinterpret_cast<const int*>(heap + a.ord_off)[p];
      w = reinterpret_cast<const float*>(heap + a.w_off)[p];
      if (s >= 0 && a.slot_rank[s] / a.gpn == a.my_node) bit = 1u << (a.slot_rank[s] % a.gpn);
    }
    const unsigned nodemask = __reduce_or_sync(0xffffffffu, bit);
    const uint8_t* rq = heap + a.x_off + static_cast<uint64_t>(t) * a.recv_row;
    const uint8_t* rs = heap + a.xs_off + static_cast<uint64_t>(t) * a.scale_row;
    fan_token(a, src, t, s, o, w, rq, rs, 32 + l, static_cast<long long>(t) * a.parts, nodemask);
  }
}

// The arguments every fan-out launch shares.
FanArgs fan_args(weft_engine* e, weft_handle* h, bool move_rows) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HierLayout& hl = e->hier->hl;
  HierHandle* hh = h->hier;
  FanArgs a;
  a.peers = c->peers;
  a.stage_off = hl.stage;
  a.stride = hl.row_stride;
  a.payload = hl.payload;
  a.recv_row = p.recv_row_bytes();
  a.scale_row = p.scale_row_bytes();
  a.x_off = hl.base.xq;
  a.xs_off = hl.base.xs;
  a.slot_off = hl.base.slot;
  a.ord_off = hl.base.ord;
  a.w_off = hl.base.w;
  a.slot_rank = e->rt.slot_rank;
  a.base_mine = hh->base_mine;
  a.fan_ent = hh->fan_ent;
  a.fan_prefix = hh->fan_prefix;
  a.ent_lo = a.ent_hi = a.row_lo = a.row_hi = 0;
  a.need = 0u;
  a.landed_off = hl.landed;
  a.target = 0ull;
  a.timeout_ns = static_cast<uint64_t>(c->timeout_ms) * 1000000ull;
  for (int i = 0; i <= kMaxWorld; ++i) a.node_tokens[i] = i <= p.gpus_per_node ? hh->node_tokens[i] : 0;
  a.K = p.top_k;
  a.gpn = p.gpus_per_node;
  a.my_node = c->node;
  a.my_local = c->local_rank;
  a.lo = p.slot_base[p.rank];
  a.hi = p.slot_base[p.rank + 1];
  a.L = a.hi - a.lo;
  a.R = hh->R;
  a.parts = hl.parts;
  a.move_rows = move_rows ? 1 : 0;
  a.recv = static_cast<uint8_t*>(h->recv);
  a.recv_scales = h->recv_scales;
  a.recv_weights = h->recv_weights;
  a.src_rank = h->src_rank;
  a.src_token = h->src_token;
  a.src_k = h->src_k;
  a.comb_next = hh->comb_next;
  a.comb_tgt = hh->comb_tgt;
  a.comb_idx = hh->comb_idx;
  a.fwd_nparts = hh->fwd_nparts;
  a.st = c->d_status;
  return a;
}

}  // namespace

int32_t hier_fan_remote(weft_engine* e, weft_handle* h, bool move_rows, const FanSlice& sl, uint64_t target,
                        cudaStream_t s, unsigned max_grid) {
  if (sl.row_hi <= sl.row_lo) return WEFT_OK;
  FanArgs a = fan_args(e, h, move_rows);
  a.ent_lo = sl.ent_lo;
  a.ent_hi = sl.ent_hi;
  a.row_lo = sl.row_lo;
  a.row_hi = sl.row_hi;
  a.need = sl.need;
  a.target = target;
  const unsigned grid = std::min(grid_for(sl.row_hi - sl.row_lo, kWarps), std::max(max_grid, 1u));
  fan_remote_kernel<<<grid, 32 * kWarps, 0, s>>>(a);
  WEFT_LAUNCHED("hier fan_remote", s);
  return WEFT_OK;
}

int32_t hier_fan_local(weft_engine* e, weft_handle* h, bool move_rows, cudaStream_t s, unsigned max_grid) {
  const int items = h->hier->node_tokens[e->plan.gpus_per_node];
  if (items <= 0) return WEFT_OK;
  const FanArgs a = fan_args(e, h, move_rows);
  const unsigned grid = std::min(grid_for(items, kWarps), std::max(max_grid, 1u));
  fan_local_kernel<<<grid, 32 * kWarps, 0, s>>>(a);
  WEFT_LAUNCHED("hier fan_local", s);
  return WEFT_OK;
}

}  // namespace weft
