// Hierarchical dispatch (HIER_PROTOCOL dispatch 0-2), one collective call:
//   main stream   stage routing (+ x, quantize) → route_tokens → node_list →
//                 record header → ncclAllGather of the records → host sync
//                 (the batch's tables, hier_tables.cu) → copies, dest_row;
// then steps 3-5 (pack, sliced transfer, fan-out: hier_transfer.cu) and the
// end barrier with the wait (hier_end_call). Redispatch: the same steps 3-5
// with the batch's tables.
#include <string>

#include "handles.h"
#include "hier_move.h"
#include "input_check.h"
#include "layout.h"
#include "quantize.h"

namespace weft {
namespace {

// One warp per node m (blockIdx.x): the tokens of this rank with a pair on m,
// ascending (m's send segment), and for each pair on m the token's position
// there. The own node's warp writes the token's own-node mask and -1 for
// pairs that do not cross.
__global__ void __launch_bounds__(32) node_list_kernel(const int* slot, const int* slot_rank, int T, int K, int gpn,
                                                       int my_node, int Tm, int* list, int* pos_tk, int* node_tk,
                                                       unsigned* ownmask, int* node_count) {
  const int m = blockIdx.x;
  const int lane = threadIdx.x;
  int count = 0;
  for (int t0 = 0; t0 < T; t0 += 32) {
    const int t = t0 + lane;
    bool has = false;
    unsigned own = 0u;
    if (t < T) {
      for (int k = 0; k < K; ++k) {
        const int s = slot[static_cast<long long>(t) * K + k];
        if (s < 0) continue;
        const int r = slot_rank[s];
        if (r / gpn == m) {
          has = true;
          own |= 1u << (r % gpn);
        }
      }
    }
    const unsigned b = __ballot_sync(0xffffffffu, has);
    const int pos = count + __popc(b & ((1u << lane) - 1u));
    if (t < T) {
      if (m != my_node) {
        if (has) {
          list[static_cast<long long>(m) * Tm + pos] = t;
          for (int k = 0; k < K; ++k) {
            const int s = slot[static_cast<long long>(t) * K + k];
            if (s >= 0 && slot_rank[s] / gpn == m) {
              pos_tk[static_cast<long long>(t) * K + k] = pos;
              node_tk[static_cast<long long>(t) * K + k] = m;
            }
          }
        }
      } else {
        ownmask[t] = own;
        for (int k = 0; k < K; ++k) {
          const int s = slot[static_cast<long long>(t) * K + k];
          if (s < 0 || slot_rank[s] / gpn == my_node) {
            pos_tk[static_cast<long long>(t) * K + k] = -1;
            node_tk[static_cast<long long>(t) * K + k] = -1;
          }
        }
      }
    }
    count += __popc(b);
  }
  if (lane == 0) node_count[m] = m == my_node ? 0 : count;
}

// The record's header: {T, error flag, bad_key low, bad_key high}.
__global__ void rec_header_kernel(int* rec, int T, const DevStatus* st) {
  const unsigned bad = ld_volatile_u32(&st->local_bad) | ld_volatile_u32(&st->internal);
  const unsigned long long key = *reinterpret_cast<const volatile unsigned long long*>(&st->bad_key);
  rec[0] = bad != 0u ? 0 : T;
  rec[1] = bad != 0u ? 1 : 0;
  rec[2] = static_cast<int>(key & 0xffffffffull);
  rec[3] = static_cast<int>(key >> 32);
}

// send_tok[off_m + i] = list[m][i] for every remote node m.
__global__ void compact_kernel(const int* list, const int* send_seg, int Tm, int* send_tok) {
  const int m = blockIdx.y;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int off = send_seg[m * 3], rows = send_seg[m * 3 + 1];
  if (i < rows) send_tok[off + i] = list[static_cast<long long>(m) * Tm + i];
}

// dest_row of this rank's own pairs.
__global__ void dest_row_kernel(const int* slot, const int* ord, const int* base_self, long long pairs, int* dest_row) {
  const long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  if (i >= pairs) return;
  const int s = slot[i];
  dest_row[i] = s >= 0 ? base_self[s] + ord[i] : -1;
}

// Stages the rows this rank sends: x copied (unless written in place) and
// quantized when the plan says so, or pre-quantized rows copied.
int32_t stage_rows(weft_engine* e, const void* x, const void* q, const float* scales, bool quantized, int T) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& b = e->hier->hl.base;
  if (T <= 0) return WEFT_OK;
  const size_t n = static_cast<size_t>(T);
  if (quantized) {
    if (q != c->heap + b.xq) WEFT_CUDA(cudaMemcpyAsync(c->heap + b.xq, q, n * p.recv_row_bytes(), cudaMemcpyDefault, c->stream));
    if (reinterpret_cast<const uint8_t*>(scales) != c->heap + b.xs) {
      WEFT_CUDA(cudaMemcpyAsync(c->heap + b.xs, scales, n * p.scale_row_bytes(), cudaMemcpyDefault, c->stream));
    }
    return WEFT_OK;
  }
  if (x != c->heap + b.x) WEFT_CUDA(cudaMemcpyAsync(c->heap + b.x, x, n * p.row_bytes(), cudaMemcpyDefault, c->stream));
  return p.fp8() ? launch_quantize(e, T) : WEFT_OK;
}

int32_t broken(weft_comm* c, int32_t rc) {
  if (rc == WEFT_ERR_CUDA || rc == WEFT_ERR_NCCL) comm_mark_broken(c, rc, "a CUDA or NCCL call failed inside a collective");
  return rc;
}

}  // namespace

int32_t hier_dispatch_begin(weft_engine* e, const void* x, const void* q, const float* scales, bool quantized,
                            const int32_t* idx, const float* w, int32_t tokens, bool move_rows) {
  HierEngine::Begun& b = e->hier->begun;
  b.x = x;
  b.q = q;
  b.scales = scales;
  b.quantized = quantized;
  b.idx = idx;
  b.w = w;
  b.tokens = tokens;
  b.move_rows = move_rows;
  e->comm->begun.call = move_rows ? "weft_dispatch" : "weft_dispatch_layout";
  e->comm->begun.tokens = tokens;
  e->comm->begun.move_rows = move_rows;
  return WEFT_OK;
}

int32_t hier_dispatch_finish(weft_engine* e, weft_handle** out) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  HierEngine* he = e->hier;
  const HierLayout& hl = he->hl;
  const HierEngine::Begun b = he->begun;
  he->begun = {};
  c->begun = {};
  WEFT_TRY(comm_settle(c));
  const int T = b.tokens;
  const int K = p.top_k;
  const bool tokens_ok = T >= 0 && T <= p.max_tokens;
  const bool rows_given = b.quantized ? (b.q != nullptr && b.scales != nullptr) : b.x != nullptr;
  const bool args_ok = (!b.quantized || p.fp8()) && (T <= 0 || ((!b.move_rows || rows_given) && b.idx != nullptr && b.w != nullptr));
  const bool ok = tokens_ok && args_ok;
  int* rec = reinterpret_cast<int*>(c->heap + hl.rec);
  int* idx_stage = reinterpret_cast<int*>(c->heap + hl.base.idx);
  float* w_stage = reinterpret_cast<float*>(c->heap + hl.base.w);
  int* slot = reinterpret_cast<int*>(c->heap + hl.base.slot);
  int* ord = reinterpret_cast<int*>(c->heap + hl.base.ord);
  // Up to the exchange: a failure here leaves this rank out of step with
  // peers that wait in the all-gather, so it breaks the comm.
  auto exchange = [&]() -> int32_t {
    WEFT_TRY(comm_reset_status(c));
    WEFT_CUDA(cudaMemsetAsync(rec, 0, static_cast<size_t>(hl.rec_ints) * sizeof(int), c->stream));
    if (!tokens_ok) {
      WEFT_TRY(comm_report_bad(c, T < 0 ? 0ull : static_cast<unsigned long long>(T), kBadCapacity));
    } else if (!args_ok) {
      WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
    } else if (T > 0) {
      const size_t pairs = static_cast<size_t>(T) * K;
      if (b.idx != idx_stage) WEFT_CUDA(cudaMemcpyAsync(idx_stage, b.idx, pairs * 4, cudaMemcpyDefault, c->stream));
      if (b.w != w_stage) WEFT_CUDA(cudaMemcpyAsync(w_stage, b.w, pairs * 4, cudaMemcpyDefault, c->stream));
      if (b.move_rows) WEFT_TRY(stage_rows(e, b.x, b.q, b.scales, b.quantized, T));
      RouteOut ro;
      ro.slot = slot;
      ro.ord = ord;
      ro.dmask = nullptr;
      ro.slot_count = rec + 4;
      ro.chunk_counts = he->d_chunk_counts;
      ro.chunk_stride = he->chunk_stride;
      ro.meta = nullptr;
      WEFT_TRY(route_tokens(p, e->rt, p.rank, T, idx_stage, w_stage, ro, c->d_status, c->stream));
    }
    const int Tok = ok ? T : 0;
    node_list_kernel<<<p.nodes(), 32, 0, c->stream>>>(slot, e->rt.slot_rank, Tok, K, p.gpus_per_node, c->node,
                                                      p.max_tokens, he->d_list, he->d_pos, he->d_node, he->d_own,
                                                      rec + 4 + p.slots);
    WEFT_LAUNCHED("hier node_list", c->stream);
    rec_header_kernel<<<1, 1, 0, c->stream>>>(rec, Tok, c->d_status);
    WEFT_LAUNCHED("hier rec_header", c->stream);
    // 1. The exchange, before any row moves.
    // In a group, so that a nonblocking NCCL is polled until the collective is enqueued.
    WEFT_TRY(comm_nccl_check(c, c->nccl_api->GroupStart(), "ncclGroupStart (dispatch counts)"));
    WEFT_TRY(comm_nccl_check(c, c->nccl_api->AllGather(rec, he->d_gather, hl.rec_ints, ncclInt32, c->nccl, c->stream),
                             "ncclAllGather (dispatch counts)"));
    WEFT_TRY(comm_nccl_group_end(c, "ncclAllGather (dispatch counts)"));
    WEFT_CUDA(cudaMemcpyAsync(he->h_gather, he->d_gather, static_cast<size_t>(p.world) * hl.rec_ints * sizeof(int),
                              cudaMemcpyDeviceToHost, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(c->h_status, c->d_status, sizeof(DevStatus), cudaMemcpyDeviceToHost, c->stream));
    WEFT_TRY(comm_nccl_stream_wait(c, "dispatch count exchange"));
    return WEFT_OK;
  };
  WEFT_TRY(broken(c, exchange()));
  const int* g = he->h_gather;
  int first_bad = -1, n_bad = 0;
  for (int r = 0; r < p.world; ++r) {
    if (g[static_cast<size_t>(r) * hl.rec_ints + 1] != 0) {
      if (first_bad < 0) first_bad = r;
      ++n_bad;
    }
  }
  if (c->h_status->local_bad != 0u) {
    const unsigned kind = static_cast<unsigned>(c->h_status->bad_key & 15ull);
    const std::string msg = bad_input_message(p, *c->h_status, c->rank, T, idx_stage,
                                              "x, topk_idx or topk_weights is NULL while tokens > 0, or q and scales "
                                              "are not both given, or given to a plan without quantize E4M3");
    set_error_at(c->rank, "%s", msg.c_str());
    return bad_input_code(kind);
  }
  if (first_bad >= 0) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, first_bad,
                 "rank %d%s failed during dispatch (bad topkIdx/topkWeights or arguments: see the error reported on "
                 "that rank); every rank failed the call and nothing was written to the outputs",
                 first_bad, n_bad > 1 ? " (and others)" : "");
  }
  if (g[static_cast<size_t>(p.rank) * hl.rec_ints] != T) {
    comm_mark_broken(c, WEFT_ERR_INVALID, "exchanged token counts disagree");
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank, "internal error: rank %d's exchanged token count reads %d, not %d", c->rank,
                 g[static_cast<size_t>(p.rank) * hl.rec_ints], T);
  }
  // 2. The batch's tables and the handle.
  weft_handle* h = new weft_handle();
  h->engine = e;
  engine_retain(e);
  h->hier = new HierHandle();
  h->tokens = T;
  h->hier->T = T;
  auto fail = [h, c](int32_t rc) {
    handle_free(h);
    // The peers go on with the transfers: this rank is out of step.
    comm_mark_broken(c, rc, "a dispatch failed on this rank after the count exchange");
    return rc;
  };
  int32_t rc = hier_build_handle(e, g, h);
  if (rc != WEFT_OK) return fail(rc);
  HierHandle* hh = h->hier;
  const size_t TK = static_cast<size_t>(T) * K;
  if (TK > 0) {
    WEFT_CUDA(cudaMemcpyAsync(hh->slot, slot, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(hh->ord, ord, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(hh->w, w_stage, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(hh->pos_tk, he->d_pos, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(hh->node_tk, he->d_node, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(hh->ownmask, he->d_own, static_cast<size_t>(T) * 4, cudaMemcpyDeviceToDevice, c->stream));
    dest_row_kernel<<<grid_for(static_cast<long long>(TK), 256), 256, 0, c->stream>>>(slot, ord, hh->base_self,
                                                                                      static_cast<long long>(TK),
                                                                                      h->dest_row);
    WEFT_LAUNCHED("hier dest_row", c->stream);
  }
  if (hh->send_rows > 0) {
    dim3 grid(grid_for(p.max_tokens, 256), p.nodes());
    compact_kernel<<<grid, 256, 0, c->stream>>>(he->d_list, hh->send_seg, p.max_tokens, hh->send_tok);
    WEFT_LAUNCHED("hier compact", c->stream);
  }
  // 3-5. Pack, transfer, fan-out; then the end barrier and the wait.
  rc = hier_move(e, h, b.move_rows);
  if (rc == WEFT_OK) rc = hier_end_call(e, "dispatch end");
  if (rc != WEFT_OK) {
    handle_free(h);
    return broken(c, rc);
  }
  *out = h;
  return WEFT_OK;
}

int32_t hier_redispatch(weft_handle* h, const void* x, const void* q, const float* scales, bool quantized) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HierLayout& hl = e->hier->hl;
  HierHandle* hh = h->hier;
  WEFT_TRY(comm_settle(c));
  const bool given = quantized ? (q != nullptr && scales != nullptr) : x != nullptr;
  const bool ok = (!quantized || p.fp8()) && (h->tokens <= 0 || given);
  WEFT_TRY(broken(c, comm_reset_status(c)));
  WEFT_TRY(broken(c, hier_agree(e, ok, "redispatch",
                                "x is NULL while the handle has tokens, or q and scales are not both given, or given "
                                "to a plan without quantize E4M3")));
  WEFT_TRY(broken(c, stage_rows(e, x, q, scales, quantized, h->tokens)));
  // The own node's peers read this rank's routing from its heap: the batch's, again.
  const size_t TK = static_cast<size_t>(h->tokens) * p.top_k;
  if (TK > 0) {
    WEFT_CUDA(cudaMemcpyAsync(c->heap + hl.base.slot, hh->slot, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(c->heap + hl.base.ord, hh->ord, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
    WEFT_CUDA(cudaMemcpyAsync(c->heap + hl.base.w, hh->w, TK * 4, cudaMemcpyDeviceToDevice, c->stream));
  }
  int32_t rc = hier_move(e, h, true);
  if (rc == WEFT_OK) rc = hier_end_call(e, "redispatch end");
  return broken(c, rc);
}

}  // namespace weft
