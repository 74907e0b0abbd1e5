// The NCCL baseline's kernels (baseline.cu says what each pass does), each a
// separate pass as a torch op would be, and their launches.
#include <algorithm>

#include "baseline.h"

namespace weft {
namespace {

constexpr int kRowThreads = 256;

__global__ void exclusive_scan_kernel(const int* in, int* out, int n) {
  __shared__ int warp_sums[32];
  const int tid = threadIdx.x;
  const int lane = tid & 31;
  const int warp = tid >> 5;
  const int nthreads = blockDim.x;
  const int per = (n + nthreads - 1) / nthreads;
  const int begin = min(tid * per, n);
  const int end = min(begin + per, n);
  int sum = 0;
  for (int i = begin; i < end; ++i) sum += in[i];
  int incl = sum;
#pragma unroll
  for (int d = 1; d < 32; d <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, d);
    if (lane >= d) incl += v;
  }
  if (lane == 31) warp_sums[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = nthreads / 32;
    const int v = lane < nwarps ? warp_sums[lane] : 0;
    int w_incl = v;
#pragma unroll
    for (int d = 1; d < 32; d <<= 1) {
      const int u = __shfl_up_sync(0xffffffffu, w_incl, d);
      if (lane >= d) w_incl += u;
    }
    if (lane < nwarps) warp_sums[lane] = w_incl - v;
  }
  __syncthreads();
  int run = warp_sums[warp] + incl - sum;
  for (int i = begin; i < end; ++i) {
    const int v = in[i];
    out[i] = run;
    run += v;
  }
  if (tid == nthreads - 1) out[n] = run;
}

// perm[sorted position] = pair index (t*K + k): a stable sort by slot.
__global__ void sort_scatter_kernel(const int* slot, const int* ord, const int* slot_start, long long pairs, int* perm,
                                    const DevStatus* st) {
  if (call_aborted(st)) return;
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= pairs) return;
  const int s = slot[i];
  if (s >= 0) perm[slot_start[s] + ord[i]] = static_cast<int>(i);
}

// Per destination rank: [bad flag, counts of its local experts..., 0 padding].
__global__ void pack_counts_kernel(const int* slot_count, const int* slot_base, const int* local_experts, int world,
                                   int stride, int host_bad, int* msg, const DevStatus* st) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= world * stride) return;
  const int d = i / stride;
  const int j = i - d * stride;
  if (j == 0) {
    msg[i] = (host_bad != 0 || ld_volatile_u32(&st->local_bad) != 0u) ? 1 : 0;
  } else {
    const int l = j - 1;
    msg[i] = (host_bad == 0 && l < local_experts[d]) ? slot_count[slot_base[d] + l] : 0;
  }
}

__device__ __forceinline__ void copy_row_warp(uint4* __restrict__ dst, const uint4* __restrict__ src, unsigned row_vecs,
                                              int lane) {
  for (unsigned v = lane; v < row_vecs; v += 32) dst[v] = __ldg(src + v);
}

// index_select: permuted[pos] = x[perm[pos] / K] for pos < *total.
__global__ void __launch_bounds__(kRowThreads) index_select_kernel(uint4* permuted, const uint4* x, const int* perm,
                                                                   const int* total, int top_k, unsigned row_vecs,
                                                                   const DevStatus* st) {
  if (call_aborted(st)) return;
  const int n = *total;
  const long long warps = static_cast<long long>(gridDim.x) * (kRowThreads / 32);
  const int lane = threadIdx.x & 31;
  for (long long pos = (blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x) / 32; pos < n; pos += warps) {
    const int t = perm[pos] / top_k;
    copy_row_warp(permuted + pos * row_vecs, x + static_cast<size_t>(t) * row_vecs, row_vecs, lane);
  }
}

// Segment of row i in a table of starts (n_seg+1 entries, nondecreasing): the
// last s with start[s] <= i and start[s+1] > i.
__device__ __forceinline__ int find_segment(const int* start, int n_seg, int i) {
  int lo = 0;
  int hi = n_seg - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (start[mid] <= i) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// rank_off[r*L + l] and expert_off[l*W + r] are the starts of segment (r, l)
// in rank-major and expert-major order. to_expert: dst is expert-major.
__global__ void __launch_bounds__(kRowThreads) regroup_kernel(uint4* dst, const uint4* src, const int* rank_off,
                                                              const int* expert_off, int world, int local, int rows,
                                                              unsigned row_vecs, int to_expert) {
  const long long warps = static_cast<long long>(gridDim.x) * (kRowThreads / 32);
  const int lane = threadIdx.x & 31;
  const int n_seg = world * local;
  for (long long i = (blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x) / 32; i < rows; i += warps) {
    int from;
    if (to_expert) {
      const int e = find_segment(expert_off, n_seg, static_cast<int>(i));
      const int l = e / world;
      const int r = e - l * world;
      from = rank_off[r * local + l] + static_cast<int>(i - expert_off[e]);
    } else {
      const int q = find_segment(rank_off, n_seg, static_cast<int>(i));
      const int r = q / local;
      const int l = q - r * local;
      from = expert_off[l * world + r] + static_cast<int>(i - rank_off[q]);
    }
    copy_row_warp(dst + i * row_vecs, src + static_cast<size_t>(from) * row_vecs, row_vecs, lane);
  }
}

// index_copy: unperm[perm[pos]] = ret[pos] for pos < *total.
__global__ void __launch_bounds__(kRowThreads) index_copy_kernel(uint4* unperm, const uint4* ret, const int* perm,
                                                                 const int* total, unsigned row_vecs) {
  const int n = *total;
  const long long warps = static_cast<long long>(gridDim.x) * (kRowThreads / 32);
  const int lane = threadIdx.x & 31;
  for (long long pos = (blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x) / 32; pos < n; pos += warps) {
    copy_row_warp(unperm + static_cast<size_t>(perm[pos]) * row_vecs, ret + pos * row_vecs, row_vecs, lane);
  }
}

unsigned row_blocks(const weft_comm* c, long long rows) {
  const long long warps_per_block = kRowThreads / 32;
  const long long cap = static_cast<long long>(c->num_sms) * 8;
  return static_cast<unsigned>(std::max(1ll, std::min(cap, (rows + warps_per_block - 1) / warps_per_block)));
}

// The weighted sum as PyTorch users write it,
//   (unperm.view(T, K, H).float() * w.unsqueeze(-1)).sum(1).to(dtype),
// is four ops, each a pass over HBM with its own materialized result. The
// baseline keeps them apart on purpose: that is the cost users pay today.

// .float(): [pairs × H] dtype → f32.
template <int DT>
__global__ void __launch_bounds__(kRowThreads) upcast_kernel(float4* dst, const uint4* src, long long vecs) {
  constexpr int N = Vec<DT>::kElems;
  const long long stride = static_cast<long long>(gridDim.x) * kRowThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x; i < vecs; i += stride) {
    float f[N];
    Vec<DT>::unpack(src[i], f);
#pragma unroll
    for (int q = 0; q < N / 4; ++q) dst[i * (N / 4) + q] = make_float4(f[4 * q], f[4 * q + 1], f[4 * q + 2], f[4 * q + 3]);
  }
}

// * w.unsqueeze(-1): one weight per (t,k) row. Pairs with no expert were
// never sent, so their rows hold no data: they become zeros (a masked_fill).
__global__ void __launch_bounds__(kRowThreads) scale_kernel(float4* dst, const float4* src, const int* slot,
                                                            const float* w, long long pairs, unsigned row_f4,
                                                            int weighted) {
  const long long total = pairs * row_f4;
  const long long stride = static_cast<long long>(gridDim.x) * kRowThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x; i < total; i += stride) {
    const long long pair = i / row_f4;
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (slot[pair] >= 0) {
      const float wk = weighted ? w[pair] : 1.f;
      const float4 a = src[i];
      v = make_float4(__fmul_rn(wk, a.x), __fmul_rn(wk, a.y), __fmul_rn(wk, a.z), __fmul_rn(wk, a.w));
    }
    dst[i] = v;
  }
}

// .sum(1): [T × K × H] f32 → [T × H] f32, k ascending.
__global__ void __launch_bounds__(kRowThreads) sum_k_kernel(float4* dst, const float4* src, int tokens, int top_k,
                                                            unsigned row_f4) {
  const long long total = static_cast<long long>(tokens) * row_f4;
  const long long stride = static_cast<long long>(gridDim.x) * kRowThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x; i < total; i += stride) {
    const long long t = i / row_f4;
    const long long v = i - t * row_f4;
    float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
    for (int k = 0; k < top_k; ++k) {
      const float4 a = src[(t * top_k + k) * row_f4 + v];
      acc = make_float4(__fadd_rn(acc.x, a.x), __fadd_rn(acc.y, a.y), __fadd_rn(acc.z, a.z), __fadd_rn(acc.w, a.w));
    }
    dst[i] = acc;
  }
}

// .to(dtype): [T × H] f32 → dtype.
template <int DT>
__global__ void __launch_bounds__(kRowThreads) downcast_kernel(uint4* dst, const float4* src, long long vecs) {
  constexpr int N = Vec<DT>::kElems;
  const long long stride = static_cast<long long>(gridDim.x) * kRowThreads;
  for (long long i = blockIdx.x * static_cast<long long>(kRowThreads) + threadIdx.x; i < vecs; i += stride) {
    float f[N];
#pragma unroll
    for (int q = 0; q < N / 4; ++q) {
      const float4 a = src[i * (N / 4) + q];
      f[4 * q] = a.x;
      f[4 * q + 1] = a.y;
      f[4 * q + 2] = a.z;
      f[4 * q + 3] = a.w;
    }
    dst[i] = Vec<DT>::pack(f);
  }
}

unsigned elem_blocks(const weft_comm* c, long long n) {
  return static_cast<unsigned>(std::max(1ll, std::min<long long>(grid_for(n, kRowThreads), static_cast<long long>(c->num_sms) * 8)));
}

template <int DT>
int32_t launch_weighted_sum(weft_comm* c, Temps& tmp, void* out, const void* unperm, const int* slot, const float* w,
                            int tokens, int top_k, unsigned row_vecs, int weighted) {
  constexpr int N = Vec<DT>::kElems;
  const long long pairs = static_cast<long long>(tokens) * top_k;
  const unsigned row_f4 = row_vecs * (N / 4);
  const float4* f32 = static_cast<const float4*>(unperm);
  if (DT != WEFT_F32) {  // .float() of an f32 tensor is the tensor itself
    void* up = nullptr;
    WEFT_TRY(tmp.alloc(&up, static_cast<uint64_t>(pairs) * row_f4 * 16));
    upcast_kernel<DT><<<elem_blocks(c, pairs * row_vecs), kRowThreads, 0, c->stream>>>(
        static_cast<float4*>(up), static_cast<const uint4*>(unperm), pairs * row_vecs);
    WEFT_LAUNCHED("baseline_float", c->stream);
    f32 = static_cast<const float4*>(up);
  }
  void* scaled = nullptr;
  WEFT_TRY(tmp.alloc(&scaled, static_cast<uint64_t>(pairs) * row_f4 * 16));
  scale_kernel<<<elem_blocks(c, pairs * row_f4), kRowThreads, 0, c->stream>>>(static_cast<float4*>(scaled), f32, slot,
                                                                               w, pairs, row_f4, weighted);
  WEFT_LAUNCHED("baseline_mul", c->stream);
  void* summed = nullptr;
  WEFT_TRY(tmp.alloc(&summed, static_cast<uint64_t>(tokens) * row_f4 * 16));
  sum_k_kernel<<<elem_blocks(c, static_cast<long long>(tokens) * row_f4), kRowThreads, 0, c->stream>>>(
      static_cast<float4*>(summed), static_cast<const float4*>(scaled), tokens, top_k, row_f4);
  WEFT_LAUNCHED("baseline_sum", c->stream);
  const long long out_vecs = static_cast<long long>(tokens) * row_vecs;
  downcast_kernel<DT><<<elem_blocks(c, out_vecs), kRowThreads, 0, c->stream>>>(
      static_cast<uint4*>(out), static_cast<const float4*>(summed), out_vecs);
  WEFT_LAUNCHED("baseline_to_dtype", c->stream);
  return WEFT_OK;
}

}  // namespace

int32_t baseline_scan(weft_comm* c, const int* counts, int* starts, int n) {
  exclusive_scan_kernel<<<1, 1024, 0, c->stream>>>(counts, starts, n);
  WEFT_LAUNCHED("baseline_scan", c->stream);
  return WEFT_OK;
}

int32_t baseline_sort_scatter(weft_comm* c, const int* slot, const int* ord, const int* slot_start, long long pairs,
                              int* perm) {
  sort_scatter_kernel<<<grid_for(pairs, 256), 256, 0, c->stream>>>(slot, ord, slot_start, pairs, perm, c->d_status);
  WEFT_LAUNCHED("baseline_sort_scatter", c->stream);
  return WEFT_OK;
}

int32_t baseline_index_select(weft_comm* c, void* permuted, const void* x, const int* perm, const int* total,
                              int top_k, unsigned row_vecs, long long pairs) {
  index_select_kernel<<<row_blocks(c, pairs), kRowThreads, 0, c->stream>>>(
      static_cast<uint4*>(permuted), static_cast<const uint4*>(x), perm, total, top_k, row_vecs, c->d_status);
  WEFT_LAUNCHED("baseline_index_select", c->stream);
  return WEFT_OK;
}

int32_t baseline_pack_counts(weft_comm* c, const int* slot_count, const int* slot_base, const int* local_experts,
                             int world, int stride, int host_bad, int* msg) {
  pack_counts_kernel<<<grid_for(static_cast<long long>(world) * stride, 256), 256, 0, c->stream>>>(
      slot_count, slot_base, local_experts, world, stride, host_bad, msg, c->d_status);
  WEFT_LAUNCHED("baseline_pack_counts", c->stream);
  return WEFT_OK;
}

int32_t baseline_regroup(weft_comm* c, void* dst, const void* src, const int* rank_off, const int* expert_off,
                         int world, int local, long long rows, unsigned row_vecs, int to_expert, const char* name) {
  regroup_kernel<<<row_blocks(c, rows), kRowThreads, 0, c->stream>>>(static_cast<uint4*>(dst),
                                                                     static_cast<const uint4*>(src), rank_off,
                                                                     expert_off, world, local, static_cast<int>(rows),
                                                                     row_vecs, to_expert);
  WEFT_LAUNCHED(name, c->stream);
  return WEFT_OK;
}

int32_t baseline_index_copy(weft_comm* c, void* unperm, const void* ret, const int* perm, const int* total,
                            unsigned row_vecs, long long rows) {
  index_copy_kernel<<<row_blocks(c, rows), kRowThreads, 0, c->stream>>>(static_cast<uint4*>(unperm),
                                                                        static_cast<const uint4*>(ret), perm, total,
                                                                        row_vecs);
  WEFT_LAUNCHED("baseline_index_copy", c->stream);
  return WEFT_OK;
}

int32_t baseline_weighted_sum(weft_comm* c, Temps& tmp, int dtype, void* out, const void* unperm, const int* slot,
                              const float* w, int tokens, int top_k, unsigned row_vecs, int weighted) {
  switch (dtype) {
    case WEFT_BF16:
      return launch_weighted_sum<WEFT_BF16>(c, tmp, out, unperm, slot, w, tokens, top_k, row_vecs, weighted);
    case WEFT_F16:
      return launch_weighted_sum<WEFT_F16>(c, tmp, out, unperm, slot, w, tokens, top_k, row_vecs, weighted);
    default:
      return launch_weighted_sum<WEFT_F32>(c, tmp, out, unperm, slot, w, tokens, top_k, row_vecs, weighted);
  }
}

}  // namespace weft
