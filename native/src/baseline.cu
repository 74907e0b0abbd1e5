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
//
// Files: baseline.cu (the baseline's lifetime), baseline_pass.cu (one run,
// pass by pass), baseline_kernels.cu (the passes' kernels).
#include <string.h>

#include <algorithm>
#include <vector>

#include "baseline.h"

namespace weft {
namespace {

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
  if (p.world > kMaxWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID, "plan.world = %d; the NCCL baseline supports at most %d ranks", p.world, kMaxWorld);
  }
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
