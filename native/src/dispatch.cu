// Dispatch: stage this rank's batch in its heap, route it, and pull every
// row that lands here straight from its source's heap over NVLink into its
// final receive row. No permutation pass exists: the layout says where each
// row goes and the pull writes it there.
//
// One weft_dispatch, all on the comm stream. dispatch_begin enqueues steps
// 1-4 without waiting (queued behind earlier calls' tails); dispatch_finish
// makes the one host sync, settles those tails (comm_settle), and enqueues
// 5-6, which become this call's tail:
//   1. open_call: the status reset, and what this call changes (token count,
//      where the routing is, the barrier's epoch, the index arrays: a block
//      sized for the capacity, allocated at the start of the call) written
//      where the layout kernels read it (DispatchCall);
//   2. copy x into this rank's heap staging (unless the caller wrote it in
//      place, weft_engine_input_rows), and routing that is not on this GPU;
//      with quantize E4M3, quantize the staged rows into the sent bytes and
//      scales (quantize.cu), or copy rows the caller quantized (unless
//      written in place, weft_engine_input_e4m3);
//   3. layout_source: check topk, resolve slots, ordinals, per-slot totals
//      (routing on this GPU is read where it is and copied into the heap as
//      it is read); barrier "dispatch staging" (error bits merged: one bad
//      rank fails all); layout_bases: every rank's totals → the receive-row
//      base of each (source rank, slot), R and the token counts, written
//      with the status to mapped host memory by layout_publish;
//   4. layout_build: every pair's receive row, into the index arrays, run
//      while the host waits; then, in dispatch_finish, the host sync (on the
//      counts alone). Steps 3 and 4 replay as two CUDA graphs;
//   5. allocate recv (R rows) and hand the index arrays to the handle; pull;
//   6. barrier "dispatch end" (no rank restages while a peer still reads it).
//
// The call path, in file order: api_engine.cu (the C ABI) → dispatch_entry
// (end of this file) → dispatch_begin: handles.cu (the index block),
// layout_graph.cu (open_call, the layout's launches or their graphs; the
// steps themselves in route.cu and layout.cu), quantize.cu →
// dispatch_finish: the host sync, input_check.cu (messages), handles.cu (the
// handle, recv), pull_sm.cu / pull_tma.cu (the pull), comm_barrier.cu (the end
// barrier, the queued tail).
#include <atomic>
#include <string>

#include "dispatch.h"
#include "handles.h"
#include "hier.h"
#include "input_check.h"
#include "layout.h"
#include "pull.h"
#include "quantize.h"

namespace weft {
namespace {

// Failures that leave this rank's barrier count out of step with its peers
// make the communicator unusable.
int32_t finish_collective(weft_comm* c, int32_t rc) {
  if (rc == WEFT_ERR_CUDA || rc == WEFT_ERR_NCCL) comm_mark_broken(c, rc, "a CUDA call failed inside a collective");
  return rc;
}

// The rows a dispatch or re-dispatch sends: x in the plan's dtype, or (plans
// with quantize E4M3) q and scales already quantized, sent as given.
struct Rows {
  const void* x = nullptr;
  const void* q = nullptr;
  const float* scales = nullptr;
  bool quantized = false;  // q and scales, not x
  static Rows of_x(const void* x) {
    Rows r;
    r.x = x;
    return r;
  }
  // NULL parts, or a plan that does not quantize, fail the call on every rank.
  static Rows of_e4m3(const void* q, const float* scales) {
    Rows r;
    r.q = q;
    r.scales = scales;
    r.quantized = true;
    return r;
  }
  bool given() const { return quantized ? (q != nullptr && scales != nullptr) : x != nullptr; }
  // Pre-quantized rows need a quantizing plan.
  bool usable(const PlanHost& p) const { return !quantized || p.fp8(); }
};

// Stages a batch's rows where the peers read them: x copied into the heap
// (unless written in place, weft_engine_input_rows) and quantized when the
// plan says so; pre-quantized rows copied into the send rows as they are.
int32_t stage_rows(weft_engine* e, const Rows& rows, int tokens) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  if (tokens <= 0) return WEFT_OK;
  if (rows.quantized) {
    // Written in place (weft_engine_input_e4m3) needs no copy.
    const size_t T = static_cast<size_t>(tokens);
    if (rows.q != c->heap + e->hl.xq) {
      WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.xq, rows.q, T * p.recv_row_bytes(), cudaMemcpyDefault, c->stream));
    }
    if (reinterpret_cast<const uint8_t*>(rows.scales) != c->heap + e->hl.xs) {
      WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.xs, rows.scales, T * p.scale_row_bytes(), cudaMemcpyDefault,
                                c->stream));
    }
    c->profile.mark(c->stream, "stage q, scales");
    return WEFT_OK;
  }
  if (rows.x != c->heap + e->hl.x) {
    WEFT_CUDA(cudaMemcpyAsync(c->heap + e->hl.x, rows.x, static_cast<size_t>(tokens) * p.row_bytes(),
                              cudaMemcpyDefault, c->stream));
  }
  c->profile.mark(c->stream, "stage x");
  if (p.fp8()) {
    WEFT_TRY(launch_quantize(e, tokens));
    c->profile.mark(c->stream, "quantize");
  }
  return WEFT_OK;
}

// A pointer kernels of this comm may read as device memory: an allocation
// of the comm's own GPU (not managed, not another GPU's, not the host's).
bool on_this_device(const void* ptr, int device) {
  cudaPointerAttributes attr;
  if (cudaPointerGetAttributes(&attr, ptr) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeDevice && attr.device == device;
}

// `move_rows` false: the layout alone (weft_dispatch_layout); no rows are
// read and the handle's recv stays unwritten until weft_redispatch.
// The first half of a dispatch: everything up to the one host sync, all
// enqueued without waiting. dispatch_finish does the rest.
//
// What changes per call goes to the device through open_call, which copies
// it from mapped host memory; the layout's ~10 launches that read it replay
// as graphs (layout_graph.cu), nothing in them updated per call: on
// the fast path one graph launch opens the call and runs everything up to
// the host sync, a second the build, so the GPU, not the host's issue rate,
// sets the pace up to the staging barrier.
int32_t dispatch_begin(weft_engine* e, const Rows& rows, const int32_t* idx, const float* w, int32_t tokens,
                       bool move_rows) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  c->profile.host_lap("timer start or previous call -> dispatch_begin");
  const bool graphs = layout_graphs(e);
  const char* name = !move_rows        ? (graphs ? "layout" : "layout (direct)")
                     : !p.fp8()        ? (graphs ? "dispatch" : "dispatch (direct)")
                     : rows.quantized ? "dispatch e4m3, rows given"
                                       : "dispatch e4m3";
  c->profile.begin(c->stream, name);
  c->profile.host_lap("begin: profile");
  const bool index_ok = alloc_pending_index(e) == WEFT_OK;
  c->profile.host_lap("begin: index alloc");
  const bool tokens_ok = tokens >= 0 && tokens <= p.max_tokens;
  const bool args_ok = rows.usable(p) && (tokens <= 0 || ((!move_rows || rows.given()) && idx != nullptr && w != nullptr));
  const bool ok = index_ok && tokens_ok && args_ok;
  int32_t* idx_stage = reinterpret_cast<int32_t*>(c->heap + hl.idx);
  float* w_stage = reinterpret_cast<float*>(c->heap + hl.w);
  DispatchCall call;
  call.tokens = ok ? tokens : 0;
  // Routing on this GPU is read where it is (and copied into the heap as it
  // is read); anything else is copied into the heap first, below.
  const bool idx_here = ok && tokens > 0 && on_this_device(idx, c->device);
  const bool w_here = ok && tokens > 0 && on_this_device(w, c->device);
  call.idx = idx_here ? idx : idx_stage;
  call.w = w_here ? w : w_stage;
  call.epoch = ++c->epoch;
  call.ix = e->pending;
  debug_log("rank %d barrier %llu (dispatch staging)", c->rank, static_cast<unsigned long long>(c->epoch));
  // open_call copies h_call when the GPU reaches it: the previous call's
  // copy must be done before it is rewritten. After dispatch_finish (the
  // usual case) it is; after a begin that never finished, wait for the
  // stream (an error path: no event of that call may have been recorded).
  if (e->call_unread) {
    e->call_unread = false;
    WEFT_TRY(comm_waited(c, cudaStreamSynchronize(c->stream)));
  }
  *e->h_call = call;
  e->call_unread = true;
  std::atomic_thread_fence(std::memory_order_seq_cst);  // the stores, before the launch that reads them
  c->profile.host_lap("begin: call values");
  // Routing not on this GPU, then x (and its quantization): into the heap.
  auto stage_inputs = [&]() -> int32_t {
    const size_t pairs = static_cast<size_t>(tokens) * p.top_k;
    if (tokens > 0 && !idx_here) {
      WEFT_CUDA(cudaMemcpyAsync(idx_stage, idx, pairs * sizeof(int32_t), cudaMemcpyDefault, c->stream));
    }
    if (tokens > 0 && !w_here) {
      WEFT_CUDA(cudaMemcpyAsync(w_stage, w, pairs * sizeof(float), cudaMemcpyDefault, c->stream));
    }
    c->profile.mark(c->stream, "stage routing");
    return move_rows ? stage_rows(e, rows, tokens) : WEFT_OK;
  };
  if (ok && graphs && !p.fp8()) {
    // The fast path: copies (if any) first, as nothing in them reads the
    // status; then one launch opens the call and runs the front.
    WEFT_TRY(stage_inputs());
    WEFT_CUDA(cudaGraphLaunch(e->graph_front_open, c->stream));
    c->profile.mark(c->stream, "layout: open, source, barrier, bases (graph)");
  } else if (ok) {
    // Quantizing reads the status, so it follows the open.
    WEFT_TRY(open_call(e, c->stream));
    c->profile.mark(c->stream, "open call");
    WEFT_TRY(stage_inputs());
    if (graphs) {
      WEFT_CUDA(cudaGraphLaunch(e->graph_front, c->stream));
      c->profile.mark(c->stream, "layout: source, barrier, bases (graph)");
    } else {
      WEFT_TRY(enqueue_layout_front(e, c->stream, true));
    }
  } else {
    // Bad input: no routing; the barrier carries this rank's error bit.
    WEFT_TRY(open_call(e, c->stream));
    if (!index_ok) {
      WEFT_TRY(comm_report_bad(c, 0, kBadArgument));  // every rank fails at the staging barrier; finish says why
    } else if (!tokens_ok) {
      WEFT_TRY(comm_report_bad(c, tokens < 0 ? 0ull : static_cast<unsigned long long>(tokens), kBadCapacity));
    } else {
      WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
    }
    WEFT_TRY(comm_barrier_at(c, c->stream, &e->d_call->epoch));
    WEFT_TRY(layout_bases(e, c->stream));
    WEFT_TRY(layout_publish(e, c->stream));
  }
  c->profile.host_lap("begin: staging, front");
  // What the host waits for (the token counts, R and this call's status) is
  // in h_readback once this event has completed.
  WEFT_CUDA(cudaEventRecord(e->counts_ready, c->stream));
  // The rest of the layout runs while the host waits for those.
  if (ok && graphs) {
    WEFT_CUDA(cudaGraphLaunch(e->graph_build, c->stream));
    c->profile.mark(c->stream, "layout: build (graph)");
  } else if (ok) {
    WEFT_TRY(enqueue_layout_build(e, c->stream, true));
  }
  c->profile.host_lap("begin: read-backs, build");
  c->begun.tokens = tokens;
  c->begun.move_rows = move_rows;
  c->begun.call = move_rows ? "weft_dispatch" : "weft_dispatch_layout";
  return WEFT_OK;
}

// The second half: waits for the counts, checks every rank's input, builds
// the handle and enqueues the pull; returns while the rows move.
int32_t dispatch_finish(weft_engine* e, weft_handle** out) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  const HeapLayout& hl = e->hl;
  const int tokens = c->begun.tokens;
  const bool move_rows = c->begun.move_rows;
  c->begun = {};
  // The index arrays the layout wrote: the handle takes them below; every
  // failure before that frees them.
  const IndexArrays ix = e->pending;
  e->pending = {};
  auto fail_early = [e, &ix](int32_t rc) {
    free_index(e, ix.block);
    return rc;
  };
  // The one host sync: first the queued tails of earlier calls, in order
  // (every rank reports their failures here, at the same call), then this
  // call's counts and status.
  c->profile.host_lap("dispatch_begin -> dispatch_finish");
  int32_t rc = comm_settle(c);
  if (rc != WEFT_OK) return fail_early(rc);
  c->profile.host_lap("finish: settle tails");
  e->call_unread = false;
  rc = comm_waited(c, cudaEventSynchronize(e->counts_ready));
  if (rc != WEFT_OK) return fail_early(rc);
  *c->h_status = e->h_readback->status;
  c->profile.host_lap("finish: wait for counts");
  rc = comm_check_peers(c, "dispatch");
  if (rc != WEFT_OK) return fail_early(rc);
  if (c->h_status->local_bad != 0u) {
    if (ix.block == nullptr) {
      set_error_at(c->rank, "cannot allocate %llu bytes for the dispatch's index arrays on rank %d (max_tokens %d on %d ranks): "
                "free device memory or lower max_tokens. Every rank failed the call",
                static_cast<unsigned long long>(index_block_bytes(p)), c->rank, p.max_tokens, p.world);
      return fail_early(WEFT_ERR_CAPACITY);
    }
    const unsigned kind = static_cast<unsigned>(c->h_status->bad_key & 15ull);
    const std::string msg =
        bad_input_message(p, *c->h_status, c->rank, tokens, reinterpret_cast<const int*>(c->heap + hl.idx),
                          "x, topk_idx or topk_weights is NULL while tokens > 0, or q and scales are not both "
                          "given, or given to a plan without quantize E4M3");
    set_error_at(c->rank, "%s", msg.c_str());
    return fail_early(bad_input_code(kind));
  }

  const int W = p.world;
  const int* tokens_of = e->h_readback->counts;
  weft_handle* h = new weft_handle();
  h->engine = e;
  engine_retain(e);
  handle_take_index(h, ix);
  h->tokens = tokens;
  h->local_experts = p.local_experts[p.rank];
  h->tok.base[0] = 0;
  for (int r = 0; r < W; ++r) {
    const int n = tokens_of[r];
    if (n < 0 || n > p.max_tokens || (r == p.rank && n != tokens)) {
      handle_free(h);
      comm_mark_broken(c, WEFT_ERR_INVALID, "staged token counts disagree");
      WEFT_FAIL_AT(WEFT_ERR_INVALID, r, "internal error: rank %d's staged token count reads %d (do all ranks use the same plan?)", r, n);
    }
    h->tok.tokens[r] = n;
    h->tok.base[r + 1] = h->tok.base[r] + n;
  }
  h->items = h->tok.base[W];
  h->recv_rows = tokens_of[W];
  if (h->recv_rows < 0 || h->recv_rows > e->recv_cap) {
    const int R = h->recv_rows;
    handle_free(h);
    comm_mark_broken(c, WEFT_ERR_INVALID, "receive row count out of range");
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank, "internal error: rank %d's receive row count reads %d, capacity %d (a weft bug)", c->rank,
              R, e->recv_cap);
  }

  // From here on every failure frees the handle.
  auto fail = [h](int32_t rc) {
    handle_free(h);
    return rc;
  };
  c->profile.host_lap("finish: checks, handle");
  rc = handle_alloc(e, h);
  c->profile.host_lap("finish: recv alloc");
  const int32_t alloc_rc = rc;
  if (alloc_rc != WEFT_OK) {
    // Keep in step with the peers: raise this rank's error bit at the end
    // barrier so every rank fails the call together. The allocation's
    // message stays the last error unless something worse happens.
    rc = comm_report_bad(c, 0, kBadArgument);
    if (rc != WEFT_OK) return fail(rc);
  } else {
    c->profile.mark(c->stream, "host: alloc");
    if (move_rows) rc = launch_pull(e, h);
    c->profile.host_lap("finish: pull launch");
    c->profile.mark(c->stream, "pull");
    if (rc != WEFT_OK) return fail(rc);
  }
  // Every host decision is made: return while the rows move; a peer that
  // fails from here on is reported by a later call (comm_settle). A rank that
  // failed to allocate waits instead, so every rank's error is in view.
  rc = comm_end_with_barrier(c, "dispatch end", move_rows ? "weft_dispatch" : "weft_dispatch_layout", "dispatch",
                             alloc_rc == WEFT_OK);
  if (rc == WEFT_OK) rc = alloc_rc;
  if (rc != WEFT_OK) return fail(rc);
  c->profile.host_lap("finish: end barrier, tail");
  *out = h;
  return WEFT_OK;
}

int32_t redispatch_impl(weft_handle* h, const Rows& rows) {
  weft_engine* e = h->engine;
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  c->profile.begin(c->stream, p.fp8() ? "redispatch e4m3" : "redispatch");
  WEFT_TRY(comm_reset_status(c));
  const bool bad = !rows.usable(p) || (h->tokens > 0 && !rows.given());
  if (bad) {
    WEFT_TRY(comm_report_bad(c, 0, kBadArgument));
  } else {
    WEFT_TRY(stage_rows(e, rows, h->tokens));
  }
  WEFT_TRY(comm_barrier_async(c, "redispatch staging"));
  c->profile.mark(c->stream, "barrier: staged");
  WEFT_TRY(launch_pull(e, h));
  c->profile.mark(c->stream, "pull");
  // x was staged in stream order; a peer's failure surfaces at a later call.
  WEFT_TRY(comm_end_with_barrier(c, "redispatch end", "weft_redispatch", "redispatch", !bad));
  if (bad) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
              "x is NULL while the handle has %d tokens on rank %d, or q and scales are not both given, or given to "
              "a plan without quantize E4M3. Every rank failed the call",
              h->tokens, c->rank);
  }
  return WEFT_OK;
}

// weft_dispatch_begin and weft_dispatch_begin_e4m3.
int32_t begin_entry(weft_engine* e, const Rows& rows, const int32_t* idx, const float* w, int32_t tokens) {
  WEFT_TRY(engine_enter(e));
  CommLock lock(e->comm);
  weft_comm* c = e->comm;
  WEFT_TRY(comm_check_not_begun(c));
  if (e->hier != nullptr) return hier_dispatch_begin(e, rows.x, rows.q, rows.scales, rows.quantized, idx, w, tokens, true);
  const int32_t rc = dispatch_begin(e, rows, idx, w, tokens, true);
  if (rc != WEFT_OK) {
    c->begun = {};
    drop_pending_index(e);
  }
  return finish_collective(c, rc);
}

// weft_redispatch and weft_redispatch_e4m3.
int32_t redispatch_entry(weft_handle* h, const Rows& rows) {
  if (h == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the handle is NULL");
  WEFT_TRY(engine_enter(h->engine));
  CommLock lock(h->engine->comm);
  WEFT_TRY(comm_check_not_begun(h->engine->comm));
  if (h->hier != nullptr) return hier_redispatch(h, rows.x, rows.q, rows.scales, rows.quantized);
  return finish_collective(h->engine->comm, redispatch_impl(h, rows));
}

// Both halves in one call (weft_dispatch, weft_dispatch_layout).
int32_t dispatch_whole(weft_engine* e, const void* x, const int32_t* idx, const float* w, int32_t tokens,
                       bool move_rows, weft_handle** out) {
  WEFT_TRY(engine_enter(e));
  CommLock lock(e->comm);
  WEFT_TRY(comm_check_not_begun(e->comm));
  if (e->hier != nullptr) {
    WEFT_TRY(hier_dispatch_begin(e, x, nullptr, nullptr, false, idx, w, tokens, move_rows));
    return hier_dispatch_finish(e, out);
  }
  int32_t rc = dispatch_begin(e, Rows::of_x(x), idx, w, tokens, move_rows);
  if (rc == WEFT_OK) {
    rc = dispatch_finish(e, out);  // takes the index arrays, or frees them
  } else {
    drop_pending_index(e);
  }
  e->comm->begun = {};
  return finish_collective(e->comm, rc);
}

}  // namespace

int32_t dispatch_entry(weft_engine* e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                       int32_t tokens, int32_t inputs_on_device, weft_handle** out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  // Host and device inputs are both copied with cudaMemcpyDefault (unified
  // addressing tells them apart); the flag is kept for the ABI.
  (void)inputs_on_device;
  return dispatch_whole(e, x, topk_idx, topk_weights, tokens, true, out);
}

int32_t dispatch_begin_entry(weft_engine* e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                             int32_t tokens) {
  return begin_entry(e, Rows::of_x(x), topk_idx, topk_weights, tokens);
}

int32_t dispatch_begin_e4m3_entry(weft_engine* e, const void* q, const float* scales, const int32_t* topk_idx,
                                  const float* topk_weights, int32_t tokens) {
  return begin_entry(e, Rows::of_e4m3(q, scales), topk_idx, topk_weights, tokens);
}

int32_t dispatch_finish_entry(weft_engine* e, weft_handle** out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(engine_enter(e));
  CommLock lock(e->comm);
  if (e->comm->begun.call == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "no weft_dispatch_begin precedes this call");
  if (e->hier != nullptr) return hier_dispatch_finish(e, out);
  return finish_collective(e->comm, dispatch_finish(e, out));
}

int32_t dispatch_layout_entry(weft_engine* e, const int32_t* topk_idx, const float* topk_weights, int32_t tokens,
                              weft_handle** out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  return dispatch_whole(e, nullptr, topk_idx, topk_weights, tokens, false, out);
}

int32_t redispatch_x_entry(weft_handle* h, const void* x, int32_t inputs_on_device) {
  (void)inputs_on_device;
  return redispatch_entry(h, Rows::of_x(x));
}

int32_t redispatch_e4m3_entry(weft_handle* h, const void* q, const float* scales) {
  return redispatch_entry(h, Rows::of_e4m3(q, scales));
}

}  // namespace weft
