// weft_engine: a checked plan bound to a communicator, with its device
// tables, routing scratch and the heap regions it uses.
#include <string.h>

#include <vector>

#include "engine.h"
#include "handles.h"
#include "hier.h"
#include "layout.h"

namespace weft {

void engine_retain(weft_engine* e) { e->refs.fetch_add(1); }

void engine_release(weft_engine* e) {
  if (e == nullptr || e->refs.fetch_sub(1) != 1) return;
  weft_comm* c = e->comm;
  cudaSetDevice(c->device);
  cudaStreamSynchronize(c->stream);
  if (e->pinned_host != nullptr) cudaHostUnregister(e->pinned_host);
  hier_engine_free(e);
  if (e->d_tables != nullptr) cudaFree(e->d_tables);
  if (e->d_chunk_counts != nullptr) cudaFree(e->d_chunk_counts);
  if (e->pending.block != nullptr) cudaFree(e->pending.block);
  if (e->spare_index != nullptr) cudaFree(e->spare_index);
  if (e->spare_recv != nullptr) cudaFree(e->spare_recv);
  if (e->d_counts != nullptr) cudaFree(e->d_counts);
  if (e->d_base != nullptr) cudaFree(e->d_base);
  if (e->h_readback != nullptr) cudaFreeHost(e->h_readback);
  if (e->counts_ready != nullptr) cudaEventDestroy(e->counts_ready);
  if (e->d_call != nullptr) cudaFree(e->d_call);
  if (e->h_call != nullptr) cudaFreeHost(e->h_call);
  if (e->graph_front != nullptr) cudaGraphExecDestroy(e->graph_front);
  if (e->graph_build != nullptr) cudaGraphExecDestroy(e->graph_build);
  if (e->graph_front_open != nullptr) cudaGraphExecDestroy(e->graph_front_open);
  if (e->capture != nullptr) cudaStreamDestroy(e->capture);
  (void)cudaGetLastError();
  delete e;
  comm_release(c);
}

int32_t engine_enter(weft_engine* e) {
  if (e == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the engine is NULL");
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was destroyed");
  return comm_enter(e->comm, true);
}

namespace {

// The one message for a heap smaller than the plan needs (both engines).
int32_t heap_too_small(uint64_t needed, uint64_t have) {
  WEFT_FAIL(WEFT_ERR_CAPACITY,
            "the plan needs a symmetric heap of %llu bytes (weft_engine_heap_bytes) and the communicator has "
            "%llu: create the communicator with heap_bytes >= %llu, or lower max_tokens",
            static_cast<unsigned long long>(needed), static_cast<unsigned long long>(have),
            static_cast<unsigned long long>(needed));
}

// An engine that holds its comm (released with the engine) and owns its plan.
weft_engine* new_engine(weft_comm_t c, PlanHost p) {
  weft_engine* e = new weft_engine();
  e->comm = c;
  comm_retain(c);
  e->plan = std::move(p);
  return e;
}


int32_t engine_init(weft_engine* e) {
  const PlanHost& p = e->plan;
  WEFT_TRY(route_prepare(p, e->comm->smem_optin));
  WEFT_TRY(upload_route_tables(p, {}, &e->d_tables, &e->rt, nullptr));
  e->chunk_stride = route_chunks(p.max_tokens) > 0 ? route_chunks(p.max_tokens) : 1;
  const size_t ws = static_cast<size_t>(p.world) * p.slots;
  void* d = nullptr;
  WEFT_CUDA(cudaMalloc(&d, static_cast<size_t>(p.slots) * e->chunk_stride * sizeof(int)));
  e->d_chunk_counts = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, (p.world + 1) * sizeof(int)));
  e->d_counts = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, ws * sizeof(int)));
  e->d_base = static_cast<int*>(d);
  void* h = nullptr;
  WEFT_TRY(alloc_mapped(sizeof(LayoutReadback), &h, &d));
  e->h_readback = static_cast<LayoutReadback*>(h);
  e->d_readback = static_cast<LayoutReadback*>(d);
  WEFT_CUDA(cudaEventCreateWithFlags(&e->counts_ready, cudaEventDisableTiming));
  WEFT_CUDA(cudaMalloc(&d, sizeof(DispatchCall)));
  e->d_call = static_cast<DispatchCall*>(d);
  WEFT_TRY(alloc_mapped(sizeof(DispatchCall), &h, &d));
  e->h_call = static_cast<DispatchCall*>(h);
  e->d_call_src = static_cast<DispatchCall*>(d);
  const long long cap = recv_capacity(p);
  if (cap > 0x7fffffffLL) {
    WEFT_FAIL(WEFT_ERR_CAPACITY,
              "world %d x max_tokens %d x min(top_k, local experts) = %lld receive rows exceeds 2^31-1: lower "
              "max_tokens",
              p.world, p.max_tokens, cap);
  }
  e->recv_cap = static_cast<int>(cap);
  return WEFT_OK;
}

// A comm over several nodes: the hierarchical engine (hier.h).
int32_t engine_create_hier(weft_comm_t c, PlanHost p, weft_engine_t* out) {
  if (p.gpus_per_node != c->local_world) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
                 "plan.gpus_per_node = %d, but the communicator's nodes have %d ranks each (%d nodes): build the plan "
                 "with gpusPerNode = %d (the launcher's LOCAL_WORLD_SIZE)",
                 p.gpus_per_node, c->local_world, c->nodes, c->local_world);
  }
  if (p.dedupe != WEFT_DEDUPE_NODE) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
                 "plan.dedupe = %s with %d nodes: the engine across nodes sends one row per (token, destination "
                 "node) and fans it out inside the node; build the pattern with .dedupe(\"node\")",
                 p.dedupe == WEFT_DEDUPE_NONE ? "none" : "device", c->nodes);
  }
  const HierLayout hl = hier_heap_layout(p);
  if (hl.end > c->heap_bytes) {
    return heap_too_small(hl.end, c->heap_bytes);
  }
  weft_engine* e = new_engine(c, std::move(p));
  e->hl = hl.base;
  const int32_t rc = hier_engine_init(e);
  if (rc != WEFT_OK) {
    engine_release(e);
    return rc;
  }
  debug_log("hierarchical engine rank %d (node %d of %d): E=%d K=%d H=%d slots=%d max_tokens=%d heap=%llu",
            e->plan.rank, c->node, c->nodes, e->plan.experts, e->plan.top_k, e->plan.hidden, e->plan.slots,
            e->plan.max_tokens, static_cast<unsigned long long>(hl.end));
  *out = e;
  return WEFT_OK;
}

}  // namespace

int32_t engine_create(weft_comm_t c, const weft_plan_desc* plan, weft_engine_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(comm_enter(c, false));
  PlanHost p;
  WEFT_TRY(plan_for_comm(plan, c, &p));
  if (c->nodes > 1) return engine_create_hier(c, std::move(p), out);
  const HeapLayout hl = heap_layout(p);
  if (hl.end > c->heap_bytes) {
    return heap_too_small(hl.end, c->heap_bytes);
  }
  weft_engine* e = new_engine(c, std::move(p));
  e->hl = hl;
  const int32_t rc = engine_init(e);
  if (rc != WEFT_OK) {
    engine_release(e);
    return rc;
  }
  debug_log("engine rank %d: E=%d K=%d H=%d dtype=%d dedupe=%d receive=%d combine=%d wire_f32=%d slots=%d "
                  "max_tokens=%d heap=%llu",
                  e->plan.rank, e->plan.experts, e->plan.top_k, e->plan.hidden, e->plan.dtype, e->plan.dedupe,
                  e->plan.receive, e->plan.combine, e->plan.wire_f32, e->plan.slots, e->plan.max_tokens,
                  static_cast<unsigned long long>(hl.end));
  *out = e;
  return WEFT_OK;
}

int32_t engine_input_rows(weft_engine_t e, void** out) {
  if (e == nullptr || out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "engine or out is NULL");
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was destroyed");
  *out = e->comm->heap + e->hl.x;
  return WEFT_OK;
}

int32_t engine_input_e4m3(weft_engine_t e, void** q, float** scales) {
  if (e == nullptr || q == nullptr || scales == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "engine, q or scales is NULL");
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was destroyed");
  if (!e->plan.fp8()) {
    WEFT_FAIL(WEFT_ERR_INVALID, "the plan does not quantize dispatch (quantize = %d): use weft_engine_input_rows",
              e->plan.quantize);
  }
  *q = e->comm->heap + e->hl.xq;
  *scales = reinterpret_cast<float*>(e->comm->heap + e->hl.xs);
  return WEFT_OK;
}

int32_t engine_pin_host(weft_engine_t e, void* ptr, uint64_t bytes) {
  if (e == nullptr || ptr == nullptr || bytes == 0) WEFT_FAIL(WEFT_ERR_INVALID, "engine or ptr is NULL, or bytes is 0");
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was destroyed");
  if (e->pinned_host != nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the engine already pins a host range");
  WEFT_CUDA(cudaSetDevice(e->comm->device));
  WEFT_CUDA(cudaHostRegister(ptr, bytes, cudaHostRegisterDefault));
  e->pinned_host = ptr;
  return WEFT_OK;
}

int32_t engine_destroy(weft_engine_t e) {
  if (e == nullptr) return WEFT_OK;
  if (e->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the engine was already destroyed");
  e->closed = true;
  if (e->pinned_host != nullptr) {
    // The caller may free the range once destroy returns; the copies that
    // read it finished before the dispatch that issued them returned.
    cudaSetDevice(e->comm->device);
    cudaHostUnregister(e->pinned_host);
    e->pinned_host = nullptr;
    (void)cudaGetLastError();
  }
  engine_release(e);
  return WEFT_OK;
}

}  // namespace weft
