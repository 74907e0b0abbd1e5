// The NCCL baseline: how PyTorch/Megatron users shuffle today, pass by pass,
// each pass a separate kernel as a torch op would be (no fusion, no dedup):
//   1. stable sort of the (t,k) pairs by destination slot (counting sort:
//      route + chunk scan as in layout.cu, an exclusive scan, a scatter);
//   2. index_select: gather x rows into that order;
//   3. exchange per-(rank, local expert) counts with NCCL send/recv;
//      the host sync for the split sizes;
//   4. NCCL grouped send/recv all-to-all of the rows;
//   5. regroup on the receiver [source rank][local expert] →
//      [local expert][source rank] (a gather pass) — the expert-major input;
//   then the reverse: regroup back (gather), all-to-all back, index_copy to
//   (t,k) order, and the weighted sum as PyTorch's four ops (.float(), * w,
//   .sum(1), .to(dtype)), each its own pass with its own f32 temporary. The "experts" are the identity, so out[t] = Σ_k w·x[t].
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "bench.h"
#include "input_check.h"
#include "layout.h"

struct weft_baseline {
  weft_comm* comm = nullptr;
  weft::PlanHost plan;
  weft::RouteTables rt{};
  int* d_tables = nullptr;       // backing store of rt, d_slot_base, d_local_experts
  const int* d_slot_base = nullptr;
  const int* d_local_experts = nullptr;
  int* d_chunk_counts = nullptr;
  int chunk_stride = 0;
  int* d_slot = nullptr;        // [max_tokens*K]
  int* d_ord = nullptr;         // [max_tokens*K]
  int* d_perm = nullptr;        // [max_tokens*K] pair index of each sorted position
  int* d_slot_count = nullptr;  // [slots]
  int* d_slot_start = nullptr;  // [slots+1]
  int* d_msg = nullptr;         // [2][world][max_local+1]: counts sent, counts received
  int* h_msg = nullptr;         // pinned mirror
  int* d_seg = nullptr;         // [2][world*max_local+1]: rank-major and expert-major segment starts
  int* h_seg = nullptr;         // pinned
  void* d_in = nullptr;         // staging for host inputs: x, idx, w
  uint64_t in_bytes = 0;
};

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

bool on_device(const void* p, int device) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return (a.type == cudaMemoryTypeDevice && a.device == device) || a.type == cudaMemoryTypeManaged;
}

void release_baseline(weft_baseline* b) {
  weft_comm* c = b->comm;
  cudaSetDevice(c->device);
  cudaStreamSynchronize(c->stream);
  void* dev[] = {b->d_tables, b->d_chunk_counts, b->d_slot, b->d_ord, b->d_perm, b->d_slot_count,
                 b->d_slot_start, b->d_msg, b->d_seg, b->d_in};
  for (void* p : dev) {
    if (p != nullptr) cudaFree(p);
  }
  if (b->h_msg != nullptr) cudaFreeHost(b->h_msg);
  if (b->h_seg != nullptr) cudaFreeHost(b->h_seg);
  (void)cudaGetLastError();
  delete b;
  comm_release(c);
}

int32_t baseline_init(weft_baseline* b) {
  const PlanHost& p = b->plan;
  WEFT_TRY(route_prepare(p, b->comm->smem_optin));
  std::vector<int> extra(p.slot_base.begin(), p.slot_base.end());
  extra.insert(extra.end(), p.local_experts.begin(), p.local_experts.end());
  WEFT_TRY(upload_route_tables(p, extra, &b->d_tables, &b->rt, &b->d_slot_base));
  b->d_local_experts = b->d_slot_base + p.slot_base.size();
  void* d = nullptr;
  b->chunk_stride = std::max(route_chunks(p.max_tokens), 1);
  const size_t pairs = std::max<size_t>(static_cast<size_t>(p.max_tokens) * p.top_k, 1);
  const size_t msg = 2ull * p.world * (p.max_local + 1);
  const size_t seg = 2ull * (static_cast<size_t>(p.world) * p.max_local + 1);
  WEFT_CUDA(cudaMalloc(&d, static_cast<size_t>(p.slots) * b->chunk_stride * sizeof(int)));
  b->d_chunk_counts = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, pairs * sizeof(int)));
  b->d_slot = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, pairs * sizeof(int)));
  b->d_ord = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, pairs * sizeof(int)));
  b->d_perm = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, static_cast<size_t>(p.slots) * sizeof(int)));
  b->d_slot_count = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, (static_cast<size_t>(p.slots) + 1) * sizeof(int)));
  b->d_slot_start = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, msg * sizeof(int)));
  b->d_msg = static_cast<int*>(d);
  WEFT_CUDA(cudaMallocHost(&d, msg * sizeof(int)));
  b->h_msg = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, seg * sizeof(int)));
  b->d_seg = static_cast<int*>(d);
  WEFT_CUDA(cudaMallocHost(&d, seg * sizeof(int)));
  b->h_seg = static_cast<int*>(d);
  return WEFT_OK;
}

// Inputs that are not device memory of this GPU are copied to a staging buffer first.
int32_t stage_inputs(weft_baseline* b, const void** x, const int32_t** idx, const float** w, int tokens) {
  weft_comm* c = b->comm;
  const PlanHost& p = b->plan;
  const uint64_t xb = static_cast<uint64_t>(tokens) * p.row_bytes();
  const uint64_t pb = static_cast<uint64_t>(tokens) * p.top_k * 4;
  const bool dx = on_device(*x, c->device);
  const bool di = on_device(*idx, c->device);
  const bool dw = on_device(*w, c->device);
  if (dx && di && dw) return WEFT_OK;
  const uint64_t need = ((xb + 255) & ~255ull) + 2 * ((pb + 255) & ~255ull);
  if (b->in_bytes < need) {
    if (b->d_in != nullptr) WEFT_CUDA(cudaFree(b->d_in));
    b->d_in = nullptr;
    b->in_bytes = 0;
    WEFT_CUDA(cudaMalloc(&b->d_in, need));
    b->in_bytes = need;
  }
  uint8_t* base = static_cast<uint8_t*>(b->d_in);
  uint8_t* sx = base;
  uint8_t* si = base + ((xb + 255) & ~255ull);
  uint8_t* sw = si + ((pb + 255) & ~255ull);
  if (!dx) {
    WEFT_CUDA(cudaMemcpyAsync(sx, *x, xb, cudaMemcpyDefault, c->stream));
    *x = sx;
  }
  if (!di) {
    WEFT_CUDA(cudaMemcpyAsync(si, *idx, pb, cudaMemcpyDefault, c->stream));
    *idx = reinterpret_cast<const int32_t*>(si);
  }
  if (!dw) {
    WEFT_CUDA(cudaMemcpyAsync(sw, *w, pb, cudaMemcpyDefault, c->stream));
    *w = reinterpret_cast<const float*>(sw);
  }
  return WEFT_OK;
}

struct Temps {
  weft_comm* c;
  std::vector<void*> ptrs;
  int32_t alloc(void** out, uint64_t bytes) {
    *out = nullptr;
    cudaError_t e = cudaMallocAsync(out, bytes > 0 ? bytes : 16, c->stream);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "cannot allocate %llu bytes on rank %d: %s",
                   static_cast<unsigned long long>(bytes), c->rank, cudaGetErrorString(e));
    }
    ptrs.push_back(*out);
    return WEFT_OK;
  }
  ~Temps() {
    for (void* p : ptrs) cudaFreeAsync(p, c->stream);
  }
};

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

int32_t baseline_impl(weft_baseline* b, const void* x, const int32_t* idx, const float* w, int tokens, void* out,
                      int32_t* recv_rows_out) {
  weft_comm* c = b->comm;
  const PlanHost& p = b->plan;
  const int W = p.world;
  const int K = p.top_k;
  const int L = p.local_experts[p.rank];
  const int stride = p.max_local + 1;
  const unsigned row_vecs = static_cast<unsigned>(p.row_bytes() / 16);
  const ncclDataType_t i32 = ncclInt32;
  WEFT_TRY(comm_reset_status(c));

  std::string host_msg;
  if (tokens < 0 || tokens > p.max_tokens) {
    host_msg = "tokens = " + std::to_string(tokens) + " is outside [0, max_tokens = " + std::to_string(p.max_tokens) + "]";
  } else if (tokens > 0 && (x == nullptr || idx == nullptr || w == nullptr || out == nullptr)) {
    host_msg = "x, topk_idx, topk_weights or out is NULL while tokens > 0";
  }
  const bool host_bad = !host_msg.empty();
  const long long pairs = host_bad ? 0 : static_cast<long long>(tokens) * K;

  // 1. Stable counting sort of the (t,k) pairs by slot.
  if (!host_bad && tokens > 0) {
    WEFT_TRY(stage_inputs(b, &x, &idx, &w, tokens));
    RouteOut ro;
    ro.slot = b->d_slot;
    ro.ord = b->d_ord;
    ro.dmask = nullptr;
    ro.slot_count = b->d_slot_count;
    ro.chunk_counts = b->d_chunk_counts;
    ro.chunk_stride = b->chunk_stride;
    WEFT_TRY(route_tokens(p, b->rt, p.rank, tokens, idx, w, ro, c->d_status, c->stream));
  } else {
    WEFT_CUDA(cudaMemsetAsync(b->d_slot_count, 0, static_cast<size_t>(p.slots) * sizeof(int), c->stream));
  }
  exclusive_scan_kernel<<<1, 1024, 0, c->stream>>>(b->d_slot_count, b->d_slot_start, p.slots);
  WEFT_LAUNCHED("baseline_scan", c->stream);
  if (pairs > 0) {
    sort_scatter_kernel<<<grid_for(pairs, 256), 256, 0, c->stream>>>(b->d_slot, b->d_ord, b->d_slot_start, pairs,
                                                                     b->d_perm, c->d_status);
    WEFT_LAUNCHED("baseline_sort_scatter", c->stream);
  }
  Temps tmp{c, {}};
  // 2. index_select into sorted order (at most T*K rows; the true count is on the device).
  void* permuted = nullptr;
  WEFT_TRY(tmp.alloc(&permuted, static_cast<uint64_t>(pairs) * p.row_bytes()));
  const int* total = b->d_slot_start + p.slots;
  if (pairs > 0) {
    index_select_kernel<<<row_blocks(c, pairs), kRowThreads, 0, c->stream>>>(
        static_cast<uint4*>(permuted), static_cast<const uint4*>(x), b->d_perm, total, K, row_vecs, c->d_status);
    WEFT_LAUNCHED("baseline_index_select", c->stream);
  }

  // 3. Counts per (rank, local expert) to every rank; the host sync for splits.
  int* d_send = b->d_msg;
  int* d_recv = b->d_msg + static_cast<size_t>(W) * stride;
  pack_counts_kernel<<<grid_for(static_cast<long long>(W) * stride, 256), 256, 0, c->stream>>>(
      b->d_slot_count, b->d_slot_base, b->d_local_experts, W, stride, host_bad ? 1 : 0, d_send, c->d_status);
  WEFT_LAUNCHED("baseline_pack_counts", c->stream);
  const NcclApi* nc = c->nccl_api;
  WEFT_TRY(comm_nccl_check(c, nc->GroupStart(), "ncclGroupStart"));
  for (int d = 0; d < W; ++d) {
    WEFT_TRY(comm_nccl_check(c, nc->Send(d_send + static_cast<size_t>(d) * stride, stride, i32, d, c->nccl, c->stream), "ncclSend(counts)"));
    WEFT_TRY(comm_nccl_check(c, nc->Recv(d_recv + static_cast<size_t>(d) * stride, stride, i32, d, c->nccl, c->stream), "ncclRecv(counts)"));
  }
  WEFT_TRY(comm_nccl_group_end(c, "count exchange"));
  WEFT_CUDA(cudaMemcpyAsync(b->h_msg, b->d_msg, 2ull * W * stride * sizeof(int), cudaMemcpyDeviceToHost, c->stream));
  WEFT_CUDA(cudaMemcpyAsync(c->h_status, c->d_status, sizeof(DevStatus), cudaMemcpyDeviceToHost, c->stream));
  WEFT_TRY(comm_nccl_stream_wait(c, "count exchange"));
  const int* h_send = b->h_msg;
  const int* h_recv = b->h_msg + static_cast<size_t>(W) * stride;
  unsigned bad_ranks = 0;
  for (int r = 0; r < W; ++r) {
    if (h_recv[static_cast<size_t>(r) * stride] != 0) bad_ranks |= 1u << r;
  }
  if (host_bad) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank, "%s on rank %d. Every rank failed the call", host_msg.c_str(), c->rank);
  }
  if (c->h_status->local_bad != 0u) {
    const unsigned kind = static_cast<unsigned>(c->h_status->bad_key & 15ull);
    WEFT_FAIL_AT(bad_input_code(kind), c->rank, "%s",
                 bad_input_message(p, *c->h_status, c->rank, tokens, idx, "").c_str());
  }
  if (bad_ranks != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, first_rank(bad_ranks),
                 "rank(s) %s rejected their input (see the error on those ranks); every rank failed the call",
                 rank_list(bad_ranks).c_str());
  }

  // Split sizes and the two segment tables of the received rows.
  std::vector<long long> send_rows(W), recv_rows(W), send_off(W + 1, 0), recv_off(W + 1, 0);
  for (int d = 0; d < W; ++d) {
    long long n = 0;
    for (int l = 0; l < p.local_experts[d]; ++l) n += h_send[static_cast<size_t>(d) * stride + 1 + l];
    send_rows[d] = n;
    send_off[d + 1] = send_off[d] + n;
  }
  int* rank_off = b->h_seg;
  int* expert_off = b->h_seg + static_cast<size_t>(W) * p.max_local + 1;
  {
    long long off = 0;
    for (int r = 0; r < W; ++r) {
      long long n = 0;
      for (int l = 0; l < L; ++l) {
        rank_off[r * L + l] = static_cast<int>(off);
        const int cnt = h_recv[static_cast<size_t>(r) * stride + 1 + l];
        off += cnt;
        n += cnt;
      }
      recv_rows[r] = n;
      recv_off[r + 1] = recv_off[r] + n;
    }
    rank_off[W * L] = static_cast<int>(off);
    off = 0;
    for (int l = 0; l < L; ++l) {
      for (int r = 0; r < W; ++r) {
        expert_off[l * W + r] = static_cast<int>(off);
        off += h_recv[static_cast<size_t>(r) * stride + 1 + l];
      }
    }
    expert_off[W * L] = static_cast<int>(off);
  }
  const long long N = send_off[W];
  const long long R = recv_off[W];
  *recv_rows_out = static_cast<int32_t>(R);
  int* d_rank_off = b->d_seg;
  int* d_expert_off = b->d_seg + static_cast<size_t>(W) * p.max_local + 1;
  WEFT_CUDA(cudaMemcpyAsync(b->d_seg, b->h_seg, 2ull * (static_cast<size_t>(W) * p.max_local + 1) * sizeof(int),
                            cudaMemcpyHostToDevice, c->stream));

  void* recvbuf = nullptr;
  void* expert_major = nullptr;
  void* ret = nullptr;
  void* unperm = nullptr;
  const uint64_t rb = p.row_bytes();
  WEFT_TRY(tmp.alloc(&recvbuf, static_cast<uint64_t>(R) * rb));
  WEFT_TRY(tmp.alloc(&expert_major, static_cast<uint64_t>(R) * rb));
  WEFT_TRY(tmp.alloc(&ret, static_cast<uint64_t>(N) * rb));
  WEFT_TRY(tmp.alloc(&unperm, static_cast<uint64_t>(pairs) * rb));
  uint8_t* perm_b = static_cast<uint8_t*>(permuted);
  uint8_t* recv_b = static_cast<uint8_t*>(recvbuf);
  uint8_t* ret_b = static_cast<uint8_t*>(ret);

  // 4. All-to-all of the rows.
  WEFT_TRY(comm_nccl_check(c, nc->GroupStart(), "ncclGroupStart"));
  for (int q = 0; q < W; ++q) {
    if (send_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Send(perm_b + send_off[q] * rb, send_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), "ncclSend(rows)"));
    }
    if (recv_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Recv(recv_b + recv_off[q] * rb, recv_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), "ncclRecv(rows)"));
    }
  }
  WEFT_TRY(comm_nccl_group_end(c, "dispatch all-to-all"));

  // 5. Regroup to expert-major (the experts' input), then back to rank-major.
  if (R > 0 && L > 0) {
    regroup_kernel<<<row_blocks(c, R), kRowThreads, 0, c->stream>>>(static_cast<uint4*>(expert_major),
                                                                    static_cast<const uint4*>(recvbuf), d_rank_off,
                                                                    d_expert_off, W, L, static_cast<int>(R), row_vecs, 1);
    WEFT_LAUNCHED("baseline_regroup", c->stream);
    regroup_kernel<<<row_blocks(c, R), kRowThreads, 0, c->stream>>>(static_cast<uint4*>(recvbuf),
                                                                    static_cast<const uint4*>(expert_major), d_rank_off,
                                                                    d_expert_off, W, L, static_cast<int>(R), row_vecs, 0);
    WEFT_LAUNCHED("baseline_regroup_back", c->stream);
  }

  // 6. All-to-all back.
  WEFT_TRY(comm_nccl_check(c, nc->GroupStart(), "ncclGroupStart"));
  for (int q = 0; q < W; ++q) {
    if (recv_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Send(recv_b + recv_off[q] * rb, recv_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), "ncclSend(rows back)"));
    }
    if (send_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Recv(ret_b + send_off[q] * rb, send_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), "ncclRecv(rows back)"));
    }
  }
  WEFT_TRY(comm_nccl_group_end(c, "combine all-to-all"));

  // 7. index_copy back to (t,k) order, then the weighted sum over k.
  if (N > 0) {
    index_copy_kernel<<<row_blocks(c, N), kRowThreads, 0, c->stream>>>(static_cast<uint4*>(unperm),
                                                                       static_cast<const uint4*>(ret), b->d_perm, total,
                                                                       row_vecs);
    WEFT_LAUNCHED("baseline_index_copy", c->stream);
  }
  if (tokens > 0) {
    const int weighted = p.combine == WEFT_WEIGHTED ? 1 : 0;
    switch (p.dtype) {
      case WEFT_BF16:
        WEFT_TRY(launch_weighted_sum<WEFT_BF16>(c, tmp, out, unperm, b->d_slot, w, tokens, K, row_vecs, weighted));
        break;
      case WEFT_F16:
        WEFT_TRY(launch_weighted_sum<WEFT_F16>(c, tmp, out, unperm, b->d_slot, w, tokens, K, row_vecs, weighted));
        break;
      default:
        WEFT_TRY(launch_weighted_sum<WEFT_F32>(c, tmp, out, unperm, b->d_slot, w, tokens, K, row_vecs, weighted));
        break;
    }
  }
  return comm_nccl_stream_wait(c, "baseline");
}

}  // namespace

int32_t baseline_create(weft_comm_t c, const weft_plan_desc* plan, weft_baseline_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(comm_enter(c, false));
  if (c->nccl == nullptr) {
    WEFT_FAIL(WEFT_ERR_INVALID, "the communicator has no NCCL: create it with an NCCL unique id (weft_nccl_unique_id on rank 0)");
  }
  PlanHost p;
  WEFT_TRY(plan_for_comm(plan, c, &p));
  if (p.quantize != WEFT_QUANTIZE_NONE) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.quantize = %d; the NCCL baseline moves rows in the plan's dtype: pass "
              "WEFT_QUANTIZE_NONE", p.quantize);
  }
  weft_baseline* b = new weft_baseline();
  b->comm = c;
  comm_retain(c);
  b->plan = std::move(p);
  const int32_t rc = baseline_init(b);
  if (rc != WEFT_OK) {
    release_baseline(b);
    return rc;
  }
  *out = b;
  return WEFT_OK;
}

int32_t baseline_run(weft_baseline_t b, const void* x, const int32_t* topk_idx, const float* topk_weights, int32_t tokens, void* out, int32_t* recv_rows_out) {
  if (b == nullptr || recv_rows_out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "baseline or recv_rows_out is NULL");
  *recv_rows_out = 0;
  WEFT_TRY(comm_enter(b->comm, false));
  if (b->comm->nccl == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the communicator's NCCL was aborted or destroyed");
  CommLock lock(b->comm);
  WEFT_TRY(comm_settle(b->comm));
  const int32_t rc = baseline_impl(b, x, topk_idx, topk_weights, tokens, out, recv_rows_out);
  if (rc == WEFT_ERR_CUDA) comm_mark_broken(b->comm, rc, "a CUDA call failed inside weft_baseline_run");
  return rc;
}

int32_t baseline_destroy(weft_baseline_t b) {
  if (b == nullptr) return WEFT_OK;
  release_baseline(b);
  return WEFT_OK;
}

}  // namespace weft
