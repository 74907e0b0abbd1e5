// Combine: expert outputs back to each token's home, weighted and summed.
//
// Expert side (this rank as destination d): one warp per (home rank r, token
// t) with pairs here. It sums its pairs' rows of y in ascending k, in f32
// (w·y, or y for the "sum" op), rounds once to the wire dtype and stores the
// partial straight into r's landing area over NVLink — one partial per
// (token, device), at row (d, t) of d's own region when the plan lands by
// source (PlanHost::landing_by_source), else at slot (t, index of d among
// t's destination ranks, ascending) — or at slot (t, k) with dedupe none.
// Barrier. Home side: out[t] = the sum of t's partials in ascending
// destination rank (ascending k for dedupe none), in f32, one rounding to the
// dtype. Every sum has a fixed order, so results are identical run to run.
// Products and sums are rounded separately (no fused multiply-add), as a
// plain f32 loop on the CPU would do them.
#include <algorithm>
#include <string>

#include "combine.h"

namespace weft {
namespace {

constexpr int kPushThreads = 256;
constexpr int kPushUnroll = 4;  // 2 measured no faster on 4xH200
constexpr int kReduceThreads = 256;

struct PushArgs {
  PeerTable peers;
  TokenTable tok;
  uint64_t landing_off;
  unsigned row_vecs;       // 16-byte vectors per row of y
  unsigned wire_row_vecs;  // 16-byte vectors per row on the wire
  int parts, top_k, world, rank, max_tokens, dedupe_none;
  int by_source, landing_rows;  // landing_by_source; rows of one source's region (the plan's max_tokens)
  const int* fan_rows;
  const int* part_slot;
  const float* recv_weights;
  const uint4* y;
  const DevStatus* st;
};

// Sums the rows of the lanes in `mask` (ascending k) and stores the partial
// at dst in the wire dtype. All lanes run every iteration.
template <int DT, int WDT, bool WEIGHTED, int U>
__device__ __forceinline__ void push_partial(const uint4* __restrict__ y, unsigned row_vecs, int my_row, float my_w,
                                             unsigned mask, uint4* __restrict__ dst, int lane) {
  constexpr int N = Vec<DT>::kElems;
  using W = Wire<WDT, N>;
  for (unsigned v0 = 0; v0 < row_vecs; v0 += 32u * U) {
    float acc[U][N];
#pragma unroll
    for (int u = 0; u < U; ++u) {
#pragma unroll
      for (int i = 0; i < N; ++i) acc[u][i] = 0.f;
    }
    unsigned m = mask;
    while (m != 0u) {
      const int k = __ffs(m) - 1;
      m &= m - 1u;
      const int row = __shfl_sync(0xffffffffu, my_row, k);
      const float w = __shfl_sync(0xffffffffu, my_w, k);
      const uint4* src = y + static_cast<size_t>(row) * row_vecs;
      uint4 buf[U];
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const unsigned v = v0 + static_cast<unsigned>(lane) + 32u * u;
        if (v < row_vecs) buf[u] = __ldg(src + v);
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const unsigned v = v0 + static_cast<unsigned>(lane) + 32u * u;
        if (v < row_vecs) {
          float f[N];
          Vec<DT>::unpack(buf[u], f);
#pragma unroll
          for (int i = 0; i < N; ++i) acc[u][i] = __fadd_rn(acc[u][i], WEIGHTED ? __fmul_rn(w, f[i]) : f[i]);
        }
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const unsigned v = v0 + static_cast<unsigned>(lane) + 32u * u;
      if (v < row_vecs) W::store(dst + static_cast<size_t>(v) * W::kVecs, acc[u]);
    }
  }
}

template <int DT, int WDT, bool WEIGHTED, int U>
__global__ void __launch_bounds__(kPushThreads) push_kernel(PushArgs a) {
  if (call_aborted(a.st)) return;
  const int lane = threadIdx.x & 31;
  const long long warps = static_cast<long long>(gridDim.x) * (kPushThreads / 32);
  const long long logical = static_cast<long long>(a.world) * a.max_tokens;
  for (long long j = (blockIdx.x * static_cast<long long>(kPushThreads) + threadIdx.x) / 32; j < logical; j += warps) {
    int r, t;  // r: the token's home rank
    long long item;
    if (!walk_step(a.tok, a.world, a.rank, j, &r, &t, &item)) continue;
    const int my_row = lane < a.top_k ? a.fan_rows[item * a.top_k + lane] : -1;
    const unsigned mask = __ballot_sync(0xffffffffu, my_row >= 0);
    if (mask == 0u) continue;
    const float my_w = (WEIGHTED && my_row >= 0) ? a.recv_weights[my_row] : 1.f;
    uint4* landing = reinterpret_cast<uint4*>(a.peers.base[r] + a.landing_off);
    if (!a.dedupe_none) {
      const size_t slot = a.by_source ? static_cast<size_t>(a.rank) * a.landing_rows + t
                                      : static_cast<size_t>(t) * a.parts + a.part_slot[item];
      push_partial<DT, WDT, WEIGHTED, U>(a.y, a.row_vecs, my_row, my_w, mask, landing + slot * a.wire_row_vecs, lane);
    } else {
      unsigned m = mask;
      while (m != 0u) {
        const int k = __ffs(m) - 1;
        m &= m - 1u;
        const size_t slot = static_cast<size_t>(t) * a.top_k + k;
        push_partial<DT, WDT, WEIGHTED, U>(a.y, a.row_vecs, my_row, my_w, 1u << k, landing + slot * a.wire_row_vecs, lane);
      }
    }
  }
  // The partials are remote stores: make them visible system-wide before the
  // barrier that tells the home ranks to read them.
  __threadfence_system();
}

struct ReduceArgs {
  const uint4* landing;  // this rank's landing area
  uint4* out;
  int tokens, parts, top_k, dedupe_none;
  int by_source, landing_rows;  // as in PushArgs
  unsigned row_vecs, wire_row_vecs;
  const unsigned* dmask;  // [T] destination ranks of each token
  const int* dest_row;    // [T*K]
  const DevStatus* st;
};

// Adds the wire partial at src (the row vector's share) to acc.
template <int DT, int WDT>
__device__ __forceinline__ void add_partial(const uint4* src, float (&acc)[Vec<DT>::kElems]) {
  constexpr int N = Vec<DT>::kElems;
  float f[N];
  Wire<WDT, N>::load(src, f);
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = __fadd_rn(acc[e], f[e]);
}

// One thread per (token, row vector): the token's partials in order.
template <int DT, int WDT, bool NONE>
__global__ void __launch_bounds__(kReduceThreads) reduce_kernel(ReduceArgs a) {
  constexpr int N = Vec<DT>::kElems;
  constexpr int kWireVecs = Wire<WDT, N>::kVecs;
  if (call_aborted(a.st)) return;
  const long long total = static_cast<long long>(a.tokens) * a.row_vecs;
  const long long stride = static_cast<long long>(gridDim.x) * kReduceThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kReduceThreads) + threadIdx.x; i < total; i += stride) {
    const int t = static_cast<int>(i / a.row_vecs);
    const unsigned v = static_cast<unsigned>(i - static_cast<long long>(t) * a.row_vecs);
    float acc[N];
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = 0.f;
    const int slots = NONE ? a.top_k : a.parts;
    const uint4* src = a.landing + static_cast<size_t>(t) * slots * a.wire_row_vecs + static_cast<size_t>(v) * kWireVecs;
    if (NONE) {
      const int* rows = a.dest_row + static_cast<size_t>(t) * a.top_k;
#pragma unroll 1
      for (int k = 0; k < a.top_k; ++k, src += a.wire_row_vecs) {
        if (__ldg(rows + k) >= 0) add_partial<DT, WDT>(src, acc);
      }
    } else if (a.by_source) {
      // Ascending destination rank, as in the [token][part] layout: the same sum.
      unsigned m = __ldg(a.dmask + t);
      const uint4* col = a.landing + static_cast<size_t>(t) * a.wire_row_vecs + static_cast<size_t>(v) * kWireVecs;
      while (m != 0u) {
        const int d = __ffs(m) - 1;
        m &= m - 1u;
        add_partial<DT, WDT>(col + static_cast<size_t>(d) * a.landing_rows * a.wire_row_vecs, acc);
      }
    } else {
      const int n = __popc(__ldg(a.dmask + t));
      for (int j = 0; j < n; ++j, src += a.wire_row_vecs) add_partial<DT, WDT>(src, acc);
    }
    a.out[static_cast<size_t>(t) * a.row_vecs + v] = Vec<DT>::pack(acc);
  }
}

template <int DT, int WDT, bool WEIGHTED>
int32_t launch_push_typed(weft_comm* c, const PushArgs& a, long long warps_wanted) {
  auto kernel = push_kernel<DT, WDT, WEIGHTED, kPushUnroll>;
  int occupancy = 0;
  WEFT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, kPushThreads, 0));
  // A persistent grid at full occupancy on every SM the comm uses.
  long long blocks = static_cast<long long>(c->num_sms) * std::max(occupancy, 1);
  blocks = std::min(blocks, (warps_wanted + kPushThreads / 32 - 1) / (kPushThreads / 32));
  kernel<<<static_cast<unsigned>(blocks), kPushThreads, 0, c->stream>>>(a);
  WEFT_LAUNCHED("combine_push", c->stream);
  return WEFT_OK;
}

template <int DT, int WDT>
int32_t launch_push_op(weft_comm* c, const PushArgs& a, long long warps, bool weighted) {
  return weighted ? launch_push_typed<DT, WDT, true>(c, a, warps) : launch_push_typed<DT, WDT, false>(c, a, warps);
}

template <int DT, int WDT, bool NONE>
int32_t launch_reduce_mode(weft_comm* c, const ReduceArgs& a) {
  int occupancy = 0;
  WEFT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, reduce_kernel<DT, WDT, NONE>, kReduceThreads, 0));
  const long long total = static_cast<long long>(a.tokens) * a.row_vecs;
  long long blocks = static_cast<long long>(c->num_sms) * std::max(occupancy, 1);
  blocks = std::min(blocks, (total + kReduceThreads - 1) / kReduceThreads);
  reduce_kernel<DT, WDT, NONE><<<static_cast<unsigned>(blocks), kReduceThreads, 0, c->stream>>>(a);
  WEFT_LAUNCHED("combine_reduce", c->stream);
  return WEFT_OK;
}

template <int DT, int WDT>
int32_t launch_reduce_typed(weft_comm* c, const ReduceArgs& a) {
  return a.dedupe_none ? launch_reduce_mode<DT, WDT, true>(c, a) : launch_reduce_mode<DT, WDT, false>(c, a);
}

}  // namespace

int32_t launch_combine_push(weft_engine* e, weft_handle* h, const void* y) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  int max_tokens_now = 0;
  for (int r = 0; r < p.world; ++r) max_tokens_now = std::max(max_tokens_now, h->tok.tokens[r]);
  if (max_tokens_now == 0 || h->recv_rows == 0) return WEFT_OK;
  PushArgs a;
  a.peers = c->peers;
  a.tok = h->tok;
  a.landing_off = e->hl.landing;
  a.row_vecs = static_cast<unsigned>(p.row_bytes() / 16);
  a.wire_row_vecs = static_cast<unsigned>(p.wire_row_bytes() / 16);
  a.parts = p.parts();
  a.top_k = p.top_k;
  a.world = p.world;
  a.rank = p.rank;
  a.max_tokens = max_tokens_now;
  a.dedupe_none = p.dedupe == WEFT_DEDUPE_NONE ? 1 : 0;
  a.by_source = p.landing_by_source() ? 1 : 0;
  a.landing_rows = p.max_tokens;
  a.fan_rows = h->fan_rows;
  a.part_slot = h->part_slot;
  a.recv_weights = h->recv_weights;
  a.y = static_cast<const uint4*>(y);
  a.st = c->d_status;
  const long long warps = static_cast<long long>(p.world) * max_tokens_now;
  const bool weighted = p.combine == WEFT_WEIGHTED;
  switch (p.dtype) {
    case WEFT_BF16:
      return p.wire_f32 ? launch_push_op<WEFT_BF16, WEFT_F32>(c, a, warps, weighted)
                        : launch_push_op<WEFT_BF16, WEFT_BF16>(c, a, warps, weighted);
    case WEFT_F16:
      return p.wire_f32 ? launch_push_op<WEFT_F16, WEFT_F32>(c, a, warps, weighted)
                        : launch_push_op<WEFT_F16, WEFT_F16>(c, a, warps, weighted);
    default:
      return launch_push_op<WEFT_F32, WEFT_F32>(c, a, warps, weighted);
  }
}

int32_t launch_combine_reduce(weft_engine* e, weft_handle* h, void* out) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  if (h->tokens == 0) return WEFT_OK;
  ReduceArgs a;
  a.landing = reinterpret_cast<const uint4*>(c->heap + e->hl.landing);
  a.out = static_cast<uint4*>(out);
  a.tokens = h->tokens;
  a.parts = p.parts();
  a.top_k = p.top_k;
  a.dedupe_none = p.dedupe == WEFT_DEDUPE_NONE ? 1 : 0;
  a.by_source = p.landing_by_source() ? 1 : 0;
  a.landing_rows = p.max_tokens;
  a.row_vecs = static_cast<unsigned>(p.row_bytes() / 16);
  a.wire_row_vecs = static_cast<unsigned>(p.wire_row_bytes() / 16);
  a.dmask = h->dmask;
  a.dest_row = h->dest_row;
  a.st = c->d_status;
  switch (p.dtype) {
    case WEFT_BF16:
      return p.wire_f32 ? launch_reduce_typed<WEFT_BF16, WEFT_F32>(c, a) : launch_reduce_typed<WEFT_BF16, WEFT_BF16>(c, a);
    case WEFT_F16:
      return p.wire_f32 ? launch_reduce_typed<WEFT_F16, WEFT_F32>(c, a) : launch_reduce_typed<WEFT_F16, WEFT_F16>(c, a);
    default:
      return launch_reduce_typed<WEFT_F32, WEFT_F32>(c, a);
  }
}

namespace {

// A device pointer the kernels of this comm may use: device (or managed)
// memory of the comm's GPU, 16-byte aligned.
bool usable_device_pointer(const void* ptr, int device, const char* name, std::string* why) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    *why = std::string(name) + " is not a CUDA pointer";
    return false;
  }
  const bool managed = attr.type == cudaMemoryTypeManaged;
  if (!managed && (attr.type != cudaMemoryTypeDevice || attr.device != device)) {
    *why = std::string(name) + " must be device memory of device " + std::to_string(device);
    return false;
  }
  if (reinterpret_cast<uintptr_t>(ptr) % 16 != 0) {
    *why = std::string(name) + " is not 16-byte aligned";
    return false;
  }
  return true;
}

// The argument checks of a combine: host work only, done before taking the
// comm's lock.
bool combine_args_ok(const weft_handle* h, int device, const void* y, const void* out, std::string* why_out) {
  std::string& why = *why_out;
  bool ok = true;
  if (h->recv_rows > 0) {
    if (y == nullptr) {
      ok = false;
      why = "y is NULL";
    } else if (h->engine->plan.fp8() && y == h->recv) {
      ok = false;
      why = "y is the handle's recv, which holds E4M3 bytes (the plan quantizes dispatch): pass the experts' outputs "
            "in the plan's dtype";
    } else {
      ok = usable_device_pointer(y, device, "y", &why);
    }
  }
  if (ok && h->tokens > 0) {
    if (out == nullptr) {
      ok = false;
      why = "out is NULL";
    } else {
      ok = usable_device_pointer(out, device, "out", &why);
    }
  }
  return ok;
}

int32_t combine_impl(weft_handle* h, const void* y, void* out, bool ok, const std::string& why) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  c->profile.host_lap("dispatch_finish -> combine");
  c->profile.begin(c->stream, e->plan.fp8() ? "combine (e4m3 plan)" : "combine");
  WEFT_TRY(comm_reset_status(c));
  if (!ok) WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
  c->profile.mark(c->stream, "checks");
  WEFT_TRY(launch_combine_push(e, h, y));
  c->profile.mark(c->stream, "push partials");
  WEFT_TRY(comm_barrier_async(c, "combine partials"));
  c->profile.mark(c->stream, "barrier: partials");
  WEFT_TRY(launch_combine_reduce(e, h, out));
  c->profile.mark(c->stream, "reduce");
  // Return while the partials move; a later call settles this one.
  WEFT_TRY(comm_end_with_barrier(c, "combine end", "weft_combine", "combine", ok));
  c->profile.host_lap("combine");
  if (!ok) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
                 "%s (rank %d: y [%d x hidden], out [%d x hidden]). Every rank failed the call", why.c_str(), c->rank,
                 h->recv_rows, h->tokens);
  }
  return WEFT_OK;
}

}  // namespace

int32_t combine_entry(weft_handle_t h, const void* y, void* out) {
  if (h == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the handle is NULL");
  weft_engine* e = h->engine;
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the handle's engine was destroyed");
  WEFT_TRY(comm_enter(e->comm, true));
  std::string why;
  const bool ok = combine_args_ok(h, e->comm->device, y, out, &why);
  CommLock lock(e->comm);
  // Queued behind the dispatch's tail without waiting for it.
  WEFT_TRY(comm_check_not_begun(e->comm));
  const int32_t rc = combine_impl(h, y, out, ok, why);
  if (rc == WEFT_ERR_CUDA) comm_mark_broken(e->comm, rc, "a CUDA call failed inside weft_combine");
  return rc;
}

}  // namespace weft
