// Decode mode's combine kernels (decode.h): push (the partials of the
// pairs held here, into each home's landing) and reduce (the home's ordered
// sum), with launches fixed by the capacity.
#include "decode_args.h"

namespace weft {
namespace {

// A warp per (home rank, token): the partial of the token's pairs on this
// rank (ascending k, 0 + fround(w·y) + …, f32), stored in the wire dtype
// into the home's landing at [this rank][t]; a one-term partial goes as
// the raw y row (the home weights it).
template <int DT, int WDT>
__global__ void __launch_bounds__(kDecThreads) dec_push_kernel(DecArgs a, const uint4* y) {
  constexpr int N = Vec<DT>::kElems;
  constexpr int kWireVecs = Wire<WDT, N>::kVecs;
  __shared__ int rows_s[kDecWarps][32];
  __shared__ float w_s[kDecWarps][32];
  if (dec_aborted(a.st)) return;
  const int K = a.top_k;
  const int lane = threadIdx.x & 31;
  const int wib = threadIdx.x / 32;
  const int* tokens = loc_at<int>(a, a.lh.tokens);
  const int* fan = loc_at<int>(a, a.lh.fan_rows);
  const float* rw = loc_at<float>(a, a.lh.recv_weights);
  const long long warps = static_cast<long long>(gridDim.x) * kDecWarps;
  const long long items = static_cast<long long>(a.world) * a.cap;
  for (long long j = (blockIdx.x * static_cast<long long>(kDecThreads) + threadIdx.x) / 32; j < items; j += warps) {
    const int r = (a.rank + 1 + static_cast<int>(j % a.world)) % a.world;
    const int t = static_cast<int>(j / a.world);
    if (t >= tokens[r]) continue;
    const int row = lane < K ? fan[(static_cast<size_t>(r) * a.cap + t) * K + lane] : -1;
    const unsigned mask = __ballot_sync(0xffffffffu, row >= 0);
    if (mask == 0u) continue;
    rows_s[wib][lane] = row;
    w_s[wib][lane] = (row >= 0 && a.weighted) ? rw[row] : 1.f;
    __syncwarp();
    uint8_t* dst = a.peers.base[r] + a.hh.landing + (static_cast<size_t>(a.rank) * a.cap + t) * a.wire_row_bytes;
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    if ((mask & (mask - 1u)) == 0u) {
      const uint4* src = y + static_cast<size_t>(rows_s[wib][__ffs(mask) - 1]) * a.row_vecs;
      for (int v0 = lane; v0 < a.row_vecs; v0 += 32 * kInFlight) {
        uint4 val[kInFlight];
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
          if (v0 + u * 32 < a.row_vecs) val[u] = src[v0 + u * 32];
        }
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
          if (v0 + u * 32 < a.row_vecs) d4[v0 + u * 32] = val[u];
        }
      }
    } else {
      for (int v = lane; v < a.row_vecs; v += 32) {
        float acc[N];
#pragma unroll
        for (int e = 0; e < N; ++e) acc[e] = 0.f;
        for (unsigned m = mask; m != 0u; m &= m - 1u) {
          const int k = __ffs(m) - 1;
          float f[N];
          Vec<DT>::unpack(y[static_cast<size_t>(rows_s[wib][k]) * a.row_vecs + v], f);
          const float wk = w_s[wib][k];
#pragma unroll
          for (int e = 0; e < N; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(wk, f[e]));
        }
        Wire<WDT, N>::store(d4 + static_cast<size_t>(v) * kWireVecs, acc);
      }
    }
    __syncwarp();
  }
  // The partials are remote stores: visible system-wide before the barrier
  // that lets the homes read them (as combine_push.cu's push does).
  __threadfence_system();
}

// A thread per (token, row vector) at the home: the partials of the
// token's destination ranks in ascending rank, from 0, one rounding.
template <int DT, int WDT>
__global__ void __launch_bounds__(kDecThreads) dec_reduce_kernel(DecArgs a, uint4* out) {
  constexpr int N = Vec<DT>::kElems;
  constexpr int kWireVecs = Wire<WDT, N>::kVecs;
  if (dec_aborted(a.st)) return;
  const int K = a.top_k;
  const int T = a.st->tokens;
  const int* slot = heap_at<int>(a, a.rank, a.hh.slot);
  const float* w = heap_at<float>(a, a.rank, a.hh.w);
  const uint8_t* landing = a.peers.base[a.rank] + a.hh.landing;
  const long long total = static_cast<long long>(T) * a.row_vecs;
  const long long stride = static_cast<long long>(gridDim.x) * kDecThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kDecThreads) + threadIdx.x; i < total; i += stride) {
    const int t = static_cast<int>(i / a.row_vecs);
    const int v = static_cast<int>(i - static_cast<long long>(t) * a.row_vecs);
    float acc[N];
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = 0.f;
    int prev = -1;
    while (true) {
      int d = a.world;
      for (int k = 0; k < K; ++k) {
        const int s = slot[t * K + k];
        const int r = s >= 0 ? a.rt.slot_rank[s] : -1;
        if (r > prev && r < d) d = r;
      }
      if (d == a.world) break;
      int n = 0;
      float wd = 1.f;
      for (int k = 0; k < K; ++k) {
        const int s = slot[t * K + k];
        if (s >= 0 && a.rt.slot_rank[s] == d) {
          ++n;
          wd = w[t * K + k];
        }
      }
      const uint4* src = reinterpret_cast<const uint4*>(landing + (static_cast<size_t>(d) * a.cap + t) * a.wire_row_bytes);
      float f[N];
      if (n == 1) {
        Vec<DT>::unpack(src[v], f);
        const float wk = a.weighted ? wd : 1.f;
#pragma unroll
        for (int e = 0; e < N; ++e) f[e] = __fmul_rn(wk, f[e]);
      } else {
        Wire<WDT, N>::load(src + static_cast<size_t>(v) * kWireVecs, f);
      }
#pragma unroll
      for (int e = 0; e < N; ++e) acc[e] = __fadd_rn(acc[e], f[e]);
      prev = d;
    }
    out[static_cast<size_t>(t) * a.row_vecs + v] = Vec<DT>::pack(acc);
  }
}

template <int DT, int WDT>
int32_t launch_combine(DecodeEngine* d, const DecArgs& a, cudaStream_t s, const void* y, void* out) {
  dec_push_kernel<DT, WDT><<<decode_item_blocks(d), kDecThreads, 0, s>>>(a, static_cast<const uint4*>(y));
  DEC_LAUNCHED("decode push");
  WEFT_TRY(decode_barrier(a, s));
  const long long n = static_cast<long long>(d->cap) * a.row_vecs;
  const unsigned most = static_cast<unsigned>(d->comm->num_sms > 0 ? d->comm->num_sms * 8 : 1024);
  unsigned blocks = grid_for(n, kDecThreads);
  if (blocks > most) blocks = most;
  if (blocks == 0) blocks = 1;
  dec_reduce_kernel<DT, WDT><<<blocks, kDecThreads, 0, s>>>(a, static_cast<uint4*>(out));
  DEC_LAUNCHED("decode reduce");
  return WEFT_OK;
}

}  // namespace

int32_t decode_enqueue_combine(DecodeEngine* d, cudaStream_t s, const void* y, void* out) {
  const DecArgs a = decode_args(d);
  const int dt = d->plan.dtype;
  const bool f32w = d->plan.wire_f32 != 0;
  if (dt == WEFT_BF16) return f32w ? launch_combine<WEFT_BF16, WEFT_F32>(d, a, s, y, out)
                                   : launch_combine<WEFT_BF16, WEFT_BF16>(d, a, s, y, out);
  if (dt == WEFT_F16) return f32w ? launch_combine<WEFT_F16, WEFT_F32>(d, a, s, y, out)
                                  : launch_combine<WEFT_F16, WEFT_F16>(d, a, s, y, out);
  return launch_combine<WEFT_F32, WEFT_F32>(d, a, s, y, out);
}

}  // namespace weft
