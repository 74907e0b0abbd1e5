// The NVLink pull with SM loads: every row that lands on this rank is read
// straight from its source's heap staging into its final receive row (no
// permutation pass: the layout said where each row goes). The Hopper
// bulk-copy variant is pull_tma.cu; launch_pull picks between them.
//
// One warp per (source rank r, token t) that has a pair here. It reads the
// row once (16-byte loads, 4 per lane in flight) and stores it to every
// receive row it feeds (dedupe device/node), or reads it once per pair
// (dedupe none). The (r, t) are visited interleaved over sources, starting
// at a different source on every rank, so all links carry traffic at once.
#include <algorithm>

#include "pull.h"

namespace weft {
namespace {

constexpr int kPullThreads = 256;
constexpr int kPullUnroll = 4;  // 2 and 8 measured no faster on 4xH200
// Two 8-warp blocks per SM: on 4xH200 this read over NVLink a few percent
// faster than full occupancy, and one block starved the local copies.
constexpr int kPullBlocksPerSm = 2;

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
  const int per_sm = std::min(std::max(occupancy, 1), kPullBlocksPerSm);
  long long blocks = static_cast<long long>(c->num_sms) * std::max(per_sm, 1);
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
