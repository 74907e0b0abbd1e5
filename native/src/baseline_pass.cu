// One run of the NCCL baseline, pass by pass (baseline.cu lists the
// passes): the host's orchestration of baseline_kernels.cu's kernels and the
// NCCL exchanges, with the one host sync for the split sizes.
#include <string>
#include <vector>

#include "baseline.h"
#include "input_check.h"

namespace weft {
namespace {

bool on_device(const void* p, int device) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return (a.type == cudaMemoryTypeDevice && a.device == device) || a.type == cudaMemoryTypeManaged;
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

// What an all-to-all's NCCL calls are called in error messages.
struct A2aNames {
  const char* send;
  const char* recv;
  const char* group;
};

// One grouped all-to-all of rows (`rb` bytes each): to rank q the out_rows[q]
// rows from out_off[q] of out, from rank q the in_rows[q] rows into in_off[q]
// of in.
int32_t all_to_all(weft_comm* c, int W, uint64_t rb, const uint8_t* out, const std::vector<long long>& out_off,
                   const std::vector<long long>& out_rows, uint8_t* in, const std::vector<long long>& in_off,
                   const std::vector<long long>& in_rows, const A2aNames& names) {
  const NcclApi* nc = c->nccl_api;
  WEFT_TRY(comm_nccl_check(c, nc->GroupStart(), "ncclGroupStart"));
  for (int q = 0; q < W; ++q) {
    if (out_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Send(out + out_off[q] * rb, out_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), names.send));
    }
    if (in_rows[q] > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Recv(in + in_off[q] * rb, in_rows[q] * rb, ncclUint8, q, c->nccl, c->stream), names.recv));
    }
  }
  return comm_nccl_group_end(c, names.group);
}

}  // namespace

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
  WEFT_TRY(baseline_scan(c, b->d_slot_count, b->d_slot_start, p.slots));
  if (pairs > 0) {
    WEFT_TRY(baseline_sort_scatter(c, b->d_slot, b->d_ord, b->d_slot_start, pairs, b->d_perm));
  }
  Temps tmp{c, {}};
  // 2. index_select into sorted order (at most T*K rows; the true count is on the device).
  void* permuted = nullptr;
  WEFT_TRY(tmp.alloc(&permuted, static_cast<uint64_t>(pairs) * p.row_bytes()));
  const int* total = b->d_slot_start + p.slots;
  if (pairs > 0) {
    WEFT_TRY(baseline_index_select(c, permuted, x, b->d_perm, total, K, row_vecs, pairs));
  }

  // 3. Counts per (rank, local expert) to every rank; the host sync for splits.
  int* d_send = b->d_msg;
  int* d_recv = b->d_msg + static_cast<size_t>(W) * stride;
  WEFT_TRY(baseline_pack_counts(c, b->d_slot_count, b->d_slot_base, b->d_local_experts, W, stride, host_bad ? 1 : 0,
                                d_send));
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
  WEFT_TRY(all_to_all(c, W, rb, perm_b, send_off, send_rows, recv_b, recv_off, recv_rows,
                      {"ncclSend(rows)", "ncclRecv(rows)", "dispatch all-to-all"}));

  // 5. Regroup to expert-major (the experts' input), then back to rank-major.
  if (R > 0 && L > 0) {
    WEFT_TRY(baseline_regroup(c, expert_major, recvbuf, d_rank_off, d_expert_off, W, L, R, row_vecs, 1,
                              "baseline_regroup"));
    WEFT_TRY(baseline_regroup(c, recvbuf, expert_major, d_rank_off, d_expert_off, W, L, R, row_vecs, 0,
                              "baseline_regroup_back"));
  }

  // 6. All-to-all back.
  WEFT_TRY(all_to_all(c, W, rb, recv_b, recv_off, recv_rows, ret_b, send_off, send_rows,
                      {"ncclSend(rows back)", "ncclRecv(rows back)", "combine all-to-all"}));

  // 7. index_copy back to (t,k) order, then the weighted sum over k.
  if (N > 0) {
    WEFT_TRY(baseline_index_copy(c, unperm, ret, b->d_perm, total, row_vecs, N));
  }
  if (tokens > 0) {
    const int weighted = p.combine == WEFT_WEIGHTED ? 1 : 0;
    WEFT_TRY(baseline_weighted_sum(c, tmp, p.dtype, out, unperm, b->d_slot, w, tokens, K, row_vecs, weighted));
  }
  return comm_nccl_stream_wait(c, "baseline");
}

}  // namespace weft
