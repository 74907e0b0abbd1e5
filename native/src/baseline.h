// The NCCL baseline's state and what crosses its files: baseline.cu (its
// lifetime), baseline_pass.cu (one run, pass by pass), baseline_kernels.cu
// (the passes' kernels and their launches).
#pragma once

#include <vector>

#include "bench.h"
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

// Stream-ordered temporaries of one run, freed (stream-ordered) when it ends.
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

// baseline_pass.cu: one run (the lock held).
int32_t baseline_impl(weft_baseline* b, const void* x, const int32_t* idx, const float* w, int tokens, void* out,
                      int32_t* recv_rows_out);

// baseline_kernels.cu: each pass's kernel launched on the comm stream.
// 1. The exclusive scan of the slot counts (starts[n] = the total), then perm
// (sorted position → pair index) by a stable scatter.
int32_t baseline_scan(weft_comm* c, const int* counts, int* starts, int n);
int32_t baseline_sort_scatter(weft_comm* c, const int* slot, const int* ord, const int* slot_start, long long pairs,
                              int* perm);
// 2. index_select of x into sorted order (pairs: the grid's bound; *total rows).
int32_t baseline_index_select(weft_comm* c, void* permuted, const void* x, const int* perm, const int* total,
                              int top_k, unsigned row_vecs, long long pairs);
// 3. The per-(rank, local expert) counts message of every destination rank.
int32_t baseline_pack_counts(weft_comm* c, const int* slot_count, const int* slot_base, const int* local_experts,
                             int world, int stride, int host_bad, int* msg);
// 5. Regroup rank-major ↔ expert-major (to_expert: dst is expert-major).
int32_t baseline_regroup(weft_comm* c, void* dst, const void* src, const int* rank_off, const int* expert_off,
                         int world, int local, long long rows, unsigned row_vecs, int to_expert, const char* name);
// 7. index_copy back to (t,k) order (rows: the grid's bound; *total rows),
// then the weighted sum as PyTorch's four ops, in the plan's dtype.
int32_t baseline_index_copy(weft_comm* c, void* unperm, const void* ret, const int* perm, const int* total,
                            unsigned row_vecs, long long rows);
int32_t baseline_weighted_sum(weft_comm* c, Temps& tmp, int dtype, void* out, const void* unperm, const int* slot,
                              const float* w, int tokens, int top_k, unsigned row_vecs, int weighted);

}  // namespace weft
