// Combine, expert side (combine.cu describes the whole call and the
// precision rule): one warp per (home rank, token) with pairs here sums its
// pairs' rows of y in ascending k and pushes the partial over NVLink into the
// home's landing area.
#include <algorithm>

#include "combine.h"
#include "handles.h"

namespace weft {
namespace {

constexpr int kPushThreads = 256;
constexpr int kPushUnroll = 4;  // 2 measured no faster on 4xH200

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
    // A one-term partial goes as the raw y row (1·y is y, exact): the home
    // applies its weight. Its weight is not even read here.
    const bool raw = kRawSingle<DT, WDT, WEIGHTED> && (a.dedupe_none || (mask & (mask - 1u)) == 0u);
    const float my_w = (WEIGHTED && !raw && my_row >= 0) ? a.recv_weights[my_row] : 1.f;
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

}  // namespace weft
