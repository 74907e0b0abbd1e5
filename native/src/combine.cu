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
//
// Precision rule (weighted, bf16/f16 rows, wire = row dtype): a partial that
// holds one term (every partial with dedupe none; with dedupe device/node a
// device that holds exactly one of the token's pairs) crosses unrounded: d
// sends the raw y row (already in the row dtype, so exact on the wire) and
// the home forms fround(w·y) in f32 and adds it in the same place of the
// same ordered sum. Rounding w·y to the row dtype first would add a second
// rounding per term. The home finds those partials and their weights in
// part_w (one f32 per (token, part), NaN for a multi-term partial), written
// by home_weights_kernel from its own staged slots and weights during the
// dispatch's layout, so combine reads no extra bytes over NVLink and adds no
// host sync. Multi-term partials are unchanged (an f32 sum rounded once to
// the wire dtype); the "sum" op needs no weight; an f32 wire
// (combineWire "f32") keeps sending f32 partials, already exact for one
// term. So whenever no two terms are summed before the home (or the home
// gets one partial only, as in world 1), out[t] is the ordered f32 sum of
// fround(w·y) rounded once to the dtype — bitwise the Simulator's result when
// both sum in the same order (lib/sim/simulator.ts: ascending rank, each
// one-pair device's fround(w·y) added in place).
//
// Files: combine.cu (the call, its argument checks, the home's weights and
// reduce), combine_push.cu (the expert side's push).
#include <algorithm>
#include <string>

#include "combine.h"
#include "handles.h"
#include "hier.h"

namespace weft {
namespace {

constexpr int kReduceThreads = 256;

struct ReduceArgs {
  const uint4* landing;  // this rank's landing area
  uint4* out;
  int tokens, parts, top_k, dedupe_none;
  int by_source, landing_rows;  // as in PushArgs (combine_push.cu)
  unsigned row_vecs, wire_row_vecs;
  const unsigned* dmask;  // [T] destination ranks of each token
  const int* dest_row;    // [T*K]
  const float* part_w;    // [T][slots]: weight of a one-term partial, NaN for several terms (raw partials only)
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

// Adds fround(w·y) for a raw one-term partial (wire dtype = row dtype DT):
// the product of the precision rule, formed here in f32.
template <int DT>
__device__ __forceinline__ void add_term(const uint4* src, float w, float (&acc)[Vec<DT>::kElems]) {
  constexpr int N = Vec<DT>::kElems;
  float f[N];
  Vec<DT>::unpack(*src, f);
#pragma unroll
  for (int e = 0; e < N; ++e) acc[e] = __fadd_rn(acc[e], __fmul_rn(w, f[e]));
}

// Adds partial j of the token at src: raw (one term, weight w) or summed.
template <int DT, int WDT, bool RAW>
__device__ __forceinline__ void add_part(const uint4* src, const float* w_at, float (&acc)[Vec<DT>::kElems]) {
  if constexpr (RAW) {
    const float w = __ldg(w_at);
    if (!isnan(w)) {
      add_term<DT>(src, w, acc);
      return;
    }
  }
  add_partial<DT, WDT>(src, acc);
}

// One thread per (token, row vector): the token's partials in order. RAW:
// one-term partials are raw y rows, weighted here (kRawSingle).
template <int DT, int WDT, bool NONE, bool RAW>
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
    const float* pw = RAW ? a.part_w + static_cast<size_t>(t) * slots : nullptr;
    if (NONE) {
      const int* rows = a.dest_row + static_cast<size_t>(t) * a.top_k;
#pragma unroll 1
      for (int k = 0; k < a.top_k; ++k, src += a.wire_row_vecs) {
        if (__ldg(rows + k) >= 0) add_part<DT, WDT, RAW>(src, pw + k, acc);
      }
    } else if (a.by_source) {
      // Ascending destination rank, as in the [token][part] layout: the same sum.
      unsigned m = __ldg(a.dmask + t);
      const uint4* col = a.landing + static_cast<size_t>(t) * a.wire_row_vecs + static_cast<size_t>(v) * kWireVecs;
      for (int j = 0; m != 0u; ++j) {
        const int d = __ffs(m) - 1;
        m &= m - 1u;
        add_part<DT, WDT, RAW>(col + static_cast<size_t>(d) * a.landing_rows * a.wire_row_vecs, pw + j, acc);
      }
    } else {
      const int n = __popc(__ldg(a.dmask + t));
      for (int j = 0; j < n; ++j, src += a.wire_row_vecs) add_part<DT, WDT, RAW>(src, pw + j, acc);
    }
    a.out[static_cast<size_t>(t) * a.row_vecs + v] = Vec<DT>::pack(acc);
  }
}

template <int DT, int WDT, bool NONE, bool RAW>
int32_t launch_reduce_mode(weft_comm* c, const ReduceArgs& a) {
  auto kernel = reduce_kernel<DT, WDT, NONE, RAW>;
  int occupancy = 0;
  WEFT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&occupancy, kernel, kReduceThreads, 0));
  const long long total = static_cast<long long>(a.tokens) * a.row_vecs;
  long long blocks = static_cast<long long>(c->num_sms) * std::max(occupancy, 1);
  blocks = std::min(blocks, (total + kReduceThreads - 1) / kReduceThreads);
  kernel<<<static_cast<unsigned>(blocks), kReduceThreads, 0, c->stream>>>(a);
  WEFT_LAUNCHED("combine_reduce", c->stream);
  return WEFT_OK;
}

template <int DT, int WDT, bool RAW>
int32_t launch_reduce_raw(weft_comm* c, const ReduceArgs& a) {
  return a.dedupe_none ? launch_reduce_mode<DT, WDT, true, RAW>(c, a) : launch_reduce_mode<DT, WDT, false, RAW>(c, a);
}

template <int DT, int WDT>
int32_t launch_reduce_typed(weft_comm* c, const ReduceArgs& a, bool weighted) {
  if constexpr (kRawSingle<DT, WDT, true>) {
    if (weighted) return launch_reduce_raw<DT, WDT, true>(c, a);
  }
  return launch_reduce_raw<DT, WDT, false>(c, a);
}

struct HomeWeightsArgs {
  const int* slot;       // this rank's heap: [T*K] resolved global slot, -1 none
  const float* w;        // this rank's heap: [T*K] staged topk_weights
  const int* slot_rank;  // [slots]
  int top_k, parts, dedupe_none;
  const DispatchCall* call;  // tokens, and ix.part_w to write
  const DevStatus* st;
};

// One thread per token of this rank: part_w[t][j] for partial j of t in the
// home's sum order (k with dedupe none; the j-th destination rank ascending
// otherwise): the pair's weight when the partial holds one term, else NaN
// (topk_weights are never NaN: routing rejects them). Launched for the
// capacity, like the other layout kernels.
__global__ void home_weights_kernel(HomeWeightsArgs a) {
  if (call_aborted(a.st)) return;
  const long long t = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (t >= a.call->tokens) return;
  const int K = a.top_k;
  const int* s = a.slot + t * K;
  const float* w = a.w + t * K;
  float* pw = a.call->ix.part_w + t * a.parts;
  if (a.dedupe_none) {
    for (int k = 0; k < K; ++k) pw[k] = w[k];  // read only where the pair exists (dest_row >= 0)
    return;
  }
  unsigned mask = 0u;
  for (int k = 0; k < K; ++k) {
    if (s[k] >= 0) mask |= 1u << a.slot_rank[s[k]];
  }
  for (int j = 0; mask != 0u; ++j, mask &= mask - 1u) {
    const int d = __ffs(mask) - 1;
    int n = 0;
    float wd = 0.f;
    for (int k = 0; k < K; ++k) {
      if (s[k] >= 0 && a.slot_rank[s[k]] == d) {
        ++n;
        wd = w[k];
      }
    }
    pw[j] = n == 1 ? wd : __int_as_float(0x7fffffff);
  }
}

}  // namespace

int32_t launch_combine_home_weights(weft_engine* e, cudaStream_t s) {
  const PlanHost& p = e->plan;
  // Only plans whose one-term partials cross raw read part_w (kRawSingle).
  if (p.combine != WEFT_WEIGHTED || p.wire_f32 || p.dtype == WEFT_F32 || p.max_tokens == 0) return WEFT_OK;
  weft_comm* c = e->comm;
  HomeWeightsArgs a;
  a.slot = reinterpret_cast<const int*>(c->heap + e->hl.slot);
  a.w = reinterpret_cast<const float*>(c->heap + e->hl.w);
  a.slot_rank = e->rt.slot_rank;
  a.top_k = p.top_k;
  a.parts = p.parts();
  a.dedupe_none = p.dedupe == WEFT_DEDUPE_NONE ? 1 : 0;
  a.call = e->d_call;
  a.st = c->d_status;
  home_weights_kernel<<<grid_for(p.max_tokens, 128), 128, 0, s>>>(a);
  WEFT_LAUNCHED("combine_home_weights", s);
  return WEFT_OK;
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
  a.part_w = index_arrays(p, h->index_block).part_w;
  a.st = c->d_status;
  const bool w = p.combine == WEFT_WEIGHTED;
  switch (p.dtype) {
    case WEFT_BF16:
      return p.wire_f32 ? launch_reduce_typed<WEFT_BF16, WEFT_F32>(c, a, w)
                        : launch_reduce_typed<WEFT_BF16, WEFT_BF16>(c, a, w);
    case WEFT_F16:
      return p.wire_f32 ? launch_reduce_typed<WEFT_F16, WEFT_F32>(c, a, w)
                        : launch_reduce_typed<WEFT_F16, WEFT_F16>(c, a, w);
    default:
      return launch_reduce_typed<WEFT_F32, WEFT_F32>(c, a, w);
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
  if (h->hier != nullptr) return hier_combine(h, y, out);
  const int32_t rc = combine_impl(h, y, out, ok, why);
  if (rc == WEFT_ERR_CUDA) comm_mark_broken(e->comm, rc, "a CUDA call failed inside weft_combine");
  return rc;
}

}  // namespace weft

