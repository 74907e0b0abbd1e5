// Hierarchical combine (HIER_PROTOCOL combine 1-5), one collective call:
//   main   an all-gather of "my arguments are usable" (nothing is written
//          unless every rank's are) → partial: per (source, token) with
//          pairs here, Σ over its pairs in ascending k of fround(w·y)
//          (__fmul_rn, __fadd_rn: no FMA contraction), rounded to the wire
//          dtype, stored over IPC into the home's landing (own node) or the
//          forwarder's (remote source) → node barrier;
//   side   forwarder reduce of slice j (q = Σ the node devices' partials in
//          ascending rank, rounded to the wire dtype) → event;
//   main   waits for it, NCCL slice j back to the sources (one group per
//          slice; reducing j+1 overlaps sending j) → home sum (contributors
//          in ascending rank: own-node devices one by one, each remote node
//          as one, acc = first, acc += next, one rounding) → end barrier.
#include <algorithm>
#include <string>

#include "hier_move.h"

namespace weft {
namespace {

template <int DT>
__device__ __forceinline__ float load_elem(const uint8_t* p, long long i) {
  if constexpr (DT == WEFT_F32) {
    return reinterpret_cast<const float*>(p)[i];
  } else if constexpr (DT == WEFT_BF16) {
    return bf16_bits_to_f32(reinterpret_cast<const unsigned short*>(p)[i]);
  } else {
    return f16_bits_to_f32(reinterpret_cast<const unsigned short*>(p)[i]);
  }
}
template <int DT>
__device__ __forceinline__ void store_elem(uint8_t* p, long long i, float v) {
  if constexpr (DT == WEFT_F32) {
    reinterpret_cast<float*>(p)[i] = v;
  } else if constexpr (DT == WEFT_BF16) {
    reinterpret_cast<unsigned short*>(p)[i] = static_cast<unsigned short>(f32_to_bf16_bits(v));
  } else {
    reinterpret_cast<unsigned short*>(p)[i] = static_cast<unsigned short>(f32_to_f16_bits(v));
  }
}

struct PartialArgs {
  PeerTable peers;
  uint64_t fwd_land, home_land, wire_row, y_row;
  const uint8_t* y;
  const float* recv_weights;
  const int *comb_next, *comb_tgt, *comb_idx;  // the handle's combine links (HierHandle)
  int R, H, weighted;
  const DevStatus* st;
};

// A warp per lead receive row: the (source, token)'s partial over its rows here.
template <int DT, int WDT>
__global__ void __launch_bounds__(32 * kWarps) partial_kernel(PartialArgs a) {
  if (call_aborted(a.st)) return;
  const int r0 = blockIdx.x * kWarps + (threadIdx.x >> 5);
  if (r0 >= a.R) return;
  const int tgt = a.comb_tgt[r0];
  if (tgt < 0) return;
  const int lane = threadIdx.x & 31;
  uint8_t* dst = a.peers.base[tgt & 31] + (tgt >= 32 ? a.home_land : a.fwd_land) +
                 static_cast<uint64_t>(a.comb_idx[r0]) * a.wire_row;
  for (int j = lane; j < a.H; j += 32) {
    float acc = 0.0f;
    for (int r = r0; r >= 0; r = a.comb_next[r]) {
      const float y = load_elem<DT>(a.y + static_cast<uint64_t>(r) * a.y_row, j);
      const float w = a.weighted ? a.recv_weights[r] : 1.0f;
      acc = __fadd_rn(acc, __fmul_rn(w, y));
    }
    store_elem<WDT>(dst, j, acc);
  }
}

struct ReduceArgs {
  const uint8_t* land;  // fwd_land (own heap)
  uint8_t* ret;         // fwd_ret (own heap)
  const int* nparts;
  const int* stage_seg;  // [n][2]
  uint64_t wire_row;
  int parts, H, slice, j;
  const DevStatus* st;
};

// Slice j of every source's staged rows: a warp per row, q = Σ partials ascending.
template <int WDT>
__global__ void __launch_bounds__(32 * kWarps) fwd_reduce_kernel(ReduceArgs a) {
  if (call_aborted(a.st)) return;
  const int seg = blockIdx.y;
  const int i = a.j * a.slice + blockIdx.x * kWarps + (threadIdx.x >> 5);
  const int off = a.stage_seg[2 * seg], rows = a.stage_seg[2 * seg + 1];
  if (i >= rows || i >= (a.j + 1) * a.slice) return;
  const int lane = threadIdx.x & 31;
  const int g = off + i;
  const int n = a.nparts[g];
  const uint8_t* src = a.land + static_cast<uint64_t>(g) * a.parts * a.wire_row;
  uint8_t* dst = a.ret + static_cast<uint64_t>(g) * a.wire_row;
  for (int j = lane; j < a.H; j += 32) {
    float q = load_elem<WDT>(src, j);
    for (int k = 1; k < n; ++k) q = __fadd_rn(q, load_elem<WDT>(src + static_cast<uint64_t>(k) * a.wire_row, j));
    store_elem<WDT>(dst, j, q);
  }
}

struct HomeArgs {
  const uint8_t* home_land;
  const uint8_t* home_ret;
  uint8_t* out;
  const int* pos_tk;
  const int* node_tk;
  const unsigned* ownmask;
  const int* send_seg;  // [N][3]
  uint64_t wire_row, out_row;
  int T, K, H, parts, my_node;
  const DevStatus* st;
};

constexpr int kMaxContrib = 64;  // remote nodes (<= K <= 32) + own-node devices (<= 32)

// A warp per token: its contributors in ascending rank, summed in that order.
template <int DT, int WDT>
__global__ void __launch_bounds__(32 * kWarps) home_sum_kernel(HomeArgs a) {
  __shared__ uint64_t list[kWarps][kMaxContrib];
  __shared__ int count[kWarps];
  if (call_aborted(a.st)) return;
  const int wid = threadIdx.x >> 5;
  const int t = blockIdx.x * kWarps + wid;
  if (t >= a.T) return;
  const int lane = threadIdx.x & 31;
  if (lane == 0) {
    // Remote nodes of t, ascending (insertion sort of at most K).
    int nodes[32], rows[32], nr = 0;
    for (int k = 0; k < a.K; ++k) {
      const int m = a.node_tk[static_cast<long long>(t) * a.K + k];
      if (m < 0) continue;
      bool dup = false;
      for (int i = 0; i < nr; ++i) dup |= nodes[i] == m;
      if (dup) continue;
      int i = nr++;
      while (i > 0 && nodes[i - 1] > m) {
        nodes[i] = nodes[i - 1];
        rows[i] = rows[i - 1];
        --i;
      }
      nodes[i] = m;
      rows[i] = a.send_seg[3 * m] + a.pos_tk[static_cast<long long>(t) * a.K + k];
    }
    int n = 0, i = 0;
    const uint64_t W = a.wire_row;
    for (; i < nr && nodes[i] < a.my_node; ++i) list[wid][n++] = static_cast<uint64_t>(rows[i]) * W | 1ull << 63;
    const unsigned own = a.ownmask[t];
    for (int p = 0; p < __popc(own); ++p) {
      list[wid][n++] = (static_cast<uint64_t>(t) * a.parts + p) * W;
    }
    for (; i < nr; ++i) list[wid][n++] = static_cast<uint64_t>(rows[i]) * W | 1ull << 63;
    count[wid] = n;
  }
  __syncwarp();
  const int n = count[wid];
  uint8_t* o = a.out + static_cast<uint64_t>(t) * a.out_row;
  for (int j = lane; j < a.H; j += 32) {
    float acc = 0.0f;
    for (int c = 0; c < n; ++c) {
      const uint64_t e = list[wid][c];
      const uint8_t* src = (e >> 63) != 0ull ? a.home_ret + (e & ~(1ull << 63)) : a.home_land + e;
      const float v = load_elem<WDT>(src, j);
      acc = c == 0 ? v : __fadd_rn(acc, v);
    }
    store_elem<DT>(o, j, acc);
  }
}

// A warp per item: f32_wire when the wire is f32, else row_wire (the wire
// is the row dtype).
template <typename Args>
int32_t launch_by_wire(void (*f32_wire)(Args), void (*row_wire)(Args), const Args& a, int items, int wire,
                       const char* name, cudaStream_t s) {
  const unsigned g = grid_for(items, kWarps);
  if (g == 0) return WEFT_OK;
  auto kernel = wire == WEFT_F32 ? f32_wire : row_wire;
  kernel<<<g, 32 * kWarps, 0, s>>>(a);
  WEFT_LAUNCHED(name, s);
  return WEFT_OK;
}

template <int DT>
int32_t launch_partial(const PartialArgs& a, int wire, cudaStream_t s) {
  return launch_by_wire(partial_kernel<DT, WEFT_F32>, partial_kernel<DT, DT == WEFT_F32 ? WEFT_F32 : DT>, a, a.R, wire,
                        "hier partial", s);
}

template <int DT>
int32_t launch_home(const HomeArgs& a, int wire, cudaStream_t s) {
  return launch_by_wire(home_sum_kernel<DT, WEFT_F32>, home_sum_kernel<DT, DT == WEFT_F32 ? WEFT_F32 : DT>, a, a.T,
                        wire, "hier home_sum", s);
}

int32_t launch_reduce(const ReduceArgs& a, int wire, int segs, cudaStream_t s) {
  if (segs <= 0) return WEFT_OK;
  dim3 grid(grid_for(a.slice, kWarps), segs);
  switch (wire) {
    case WEFT_F32: fwd_reduce_kernel<WEFT_F32><<<grid, 32 * kWarps, 0, s>>>(a); break;
    case WEFT_BF16: fwd_reduce_kernel<WEFT_BF16><<<grid, 32 * kWarps, 0, s>>>(a); break;
    default: fwd_reduce_kernel<WEFT_F16><<<grid, 32 * kWarps, 0, s>>>(a); break;
  }
  WEFT_LAUNCHED("hier fwd_reduce", s);
  return WEFT_OK;
}

bool device_ptr(const void* ptr, int device) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice && attr.device == device;
}

int32_t combine_body(weft_handle* h, const void* y, void* out) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  HierEngine* he = e->hier;
  const HierLayout& hl = he->hl;
  HierHandle* hh = h->hier;
  const int wire = p.wire_dtype();
  cudaStream_t s = c->stream;
  PartialArgs pa;
  pa.peers = c->peers;
  pa.fwd_land = hl.fwd_land;
  pa.home_land = hl.home_land;
  pa.wire_row = p.wire_row_bytes();
  pa.y_row = p.row_bytes();
  pa.y = static_cast<const uint8_t*>(y);
  pa.recv_weights = h->recv_weights;
  pa.comb_next = hh->comb_next;
  pa.comb_tgt = hh->comb_tgt;
  pa.comb_idx = hh->comb_idx;
  pa.R = hh->R;
  pa.H = p.hidden;
  pa.weighted = p.combine == WEFT_WEIGHTED ? 1 : 0;
  pa.st = c->d_status;
  switch (p.dtype) {
    case WEFT_BF16: WEFT_TRY(launch_partial<WEFT_BF16>(pa, wire, s)); break;
    case WEFT_F16: WEFT_TRY(launch_partial<WEFT_F16>(pa, wire, s)); break;
    default: WEFT_TRY(launch_partial<WEFT_F32>(pa, wire, s)); break;
  }
  WEFT_TRY(comm_barrier_async(c, "combine partials (node)"));
  // The reverse path, sliced like dispatch: reduce slice j on the side
  // stream while slice j-1 is on the wire.
  const int C = he->slice;
  const int J = hier_slice_count(hh, C);
  WEFT_TRY(hier_stream_wait(e, 0, s, he->side));
  ReduceArgs ra;
  ra.land = c->heap + hl.fwd_land;
  ra.ret = c->heap + hl.fwd_ret;
  ra.nparts = hh->fwd_nparts;
  ra.stage_seg = hh->stage_seg;
  ra.wire_row = p.wire_row_bytes();
  ra.parts = hl.parts;
  ra.H = p.hidden;
  ra.slice = C;
  ra.st = c->d_status;
  const uint64_t WB = p.wire_row_bytes();
  uint8_t* fwd_ret = c->heap + hl.fwd_ret;
  uint8_t* home_ret = c->heap + hl.home_ret;
  for (int j = 0; j < J; ++j) {
    ra.j = j;
    if (hh->stage_rows > 0) WEFT_TRY(launch_reduce(ra, wire, static_cast<int>(hh->stage.size()), he->side));
    WEFT_TRY(hier_stream_wait(e, 1 + j, he->side, s));
    WEFT_TRY(hier_slice_transfer(c, s, hh->stage, fwd_ret, hh->send, home_ret, WB, C, j,
                                 {"ncclGroupStart (combine)", "ncclSend (combine partials)",
                                  "ncclRecv (combine partials)", "combine partials (NCCL group)"}));
  }
  HomeArgs ha;
  ha.home_land = c->heap + hl.home_land;
  ha.home_ret = home_ret;
  ha.out = static_cast<uint8_t*>(out);
  ha.pos_tk = hh->pos_tk;
  ha.node_tk = hh->node_tk;
  ha.ownmask = hh->ownmask;
  ha.send_seg = hh->send_seg;
  ha.wire_row = WB;
  ha.out_row = p.row_bytes();
  ha.T = hh->T;
  ha.K = p.top_k;
  ha.H = p.hidden;
  ha.parts = hl.parts;
  ha.my_node = c->node;
  ha.st = c->d_status;
  switch (p.dtype) {
    case WEFT_BF16: WEFT_TRY(launch_home<WEFT_BF16>(ha, wire, s)); break;
    case WEFT_F16: WEFT_TRY(launch_home<WEFT_F16>(ha, wire, s)); break;
    default: WEFT_TRY(launch_home<WEFT_F32>(ha, wire, s)); break;
  }
  return hier_end_call(e, "combine end");
}

}  // namespace

int32_t hier_combine(weft_handle* h, const void* y, void* out) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  WEFT_TRY(comm_settle(c));
  const bool ok = (h->recv_rows == 0 || (y != nullptr && device_ptr(y, c->device))) &&
                  (h->tokens == 0 || (out != nullptr && device_ptr(out, c->device)));
  int32_t rc = comm_reset_status(c);
  if (rc == WEFT_OK) {
    rc = hier_agree(e, ok, "combine",
                    "y [recv_rows x hidden] and out [tokens x hidden] must be device memory of this rank's GPU");
  }
  if (rc == WEFT_OK) rc = combine_body(h, y, out);
  if (rc == WEFT_ERR_CUDA || rc == WEFT_ERR_NCCL) comm_mark_broken(c, rc, "a CUDA or NCCL call failed inside weft_combine");
  return rc;
}

}  // namespace weft
