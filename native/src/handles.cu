// Handle lifetime: the index arrays' block (carved for the plan's
// capacity), the receive block, the spare blocks an engine keeps from a
// closed handle for the next dispatch, and the handle's accessors.
#include "carve.h"
#include "handles.h"
#include "hier.h"

namespace weft {

long long recv_capacity(const PlanHost& p) {
  const int local = p.local_experts[p.rank];
  return static_cast<long long>(p.world) * p.max_tokens * (p.top_k < local ? p.top_k : local);
}

namespace {

// Offsets of the index arrays inside their block; `take` is called in one order.
template <typename Take>
IndexArrays carve_index(const PlanHost& p, uintptr_t b, Take& take) {
  const uint64_t R = static_cast<uint64_t>(recv_capacity(p));
  const uint64_t pairs = static_cast<uint64_t>(p.max_tokens) * p.top_k;
  const uint64_t items = static_cast<uint64_t>(p.world) * p.max_tokens;
  IndexArrays ix;
  ix.block = reinterpret_cast<void*>(b);
  ix.recv_weights = reinterpret_cast<float*>(b + take(R * 4));
  ix.expert_counts = reinterpret_cast<int*>(b + take(static_cast<uint64_t>(p.local_experts[p.rank]) * 4));
  ix.src_rank = reinterpret_cast<int*>(b + take(R * 4));
  ix.src_token = reinterpret_cast<int*>(b + take(R * 4));
  ix.src_k = reinterpret_cast<int*>(b + take(R * 4));
  ix.dest_row = reinterpret_cast<int*>(b + take(pairs * 4));
  ix.dmask = reinterpret_cast<unsigned*>(b + take(static_cast<uint64_t>(p.max_tokens) * 4));
  ix.fan_rows = reinterpret_cast<int*>(b + take(items * p.top_k * 4));
  ix.part_slot = reinterpret_cast<int*>(b + take(items * 4));
  ix.part_w = reinterpret_cast<float*>(b + take(static_cast<uint64_t>(p.max_tokens) * p.parts() * 4));
  return ix;
}

}  // namespace

uint64_t index_block_bytes(const PlanHost& p) {
  Bump bump;
  (void)carve_index(p, 0, bump);
  return bump.off;
}

IndexArrays index_arrays(const PlanHost& p, void* block) {
  Bump bump;
  return carve_index(p, reinterpret_cast<uintptr_t>(block), bump);
}

namespace {

void free_block(weft_engine* e, void* block) {
  if (block == nullptr) return;
  cudaSetDevice(e->comm->device);
  cudaFreeAsync(block, e->comm->stream);
  (void)cudaGetLastError();
}

}  // namespace


// An index block goes back to the engine's spare slot if it is free (and
// the engine open), else to the pool.
void free_index(weft_engine* e, void* block) {
  if (block == nullptr) return;
  if (e->spare_index == nullptr && !e->closed) {
    e->spare_index = block;
    return;
  }
  free_block(e, block);
}

// Frees the index arrays of a dispatch that did not reach its handle.
void drop_pending_index(weft_engine* e) {
  free_index(e, e->pending.block);
  e->pending = {};
}

// The begun dispatch's index arrays, stream-ordered on the comm stream.
int32_t alloc_pending_index(weft_engine* e) {
  drop_pending_index(e);
  void* block = e->spare_index;
  e->spare_index = nullptr;
  const uint64_t bytes = index_block_bytes(e->plan);
  if (block == nullptr && cudaMallocAsync(&block, bytes, e->comm->stream) != cudaSuccess) {
    // Out of memory keeps the ranks in step (see dispatch_finish): not a broken comm.
    (void)cudaGetLastError();
    return WEFT_ERR_CAPACITY;
  }
  e->pending = index_arrays(e->plan, block);
  return WEFT_OK;
}

// recv (and its scales) of one handle in one stream-ordered allocation: the
// engine's spare recv block when it is large enough, else a new one with
// 1/16 to spare, so that the next batch's R (which varies a little from
// batch to batch) fits in it once this handle closes.
int32_t handle_alloc(weft_engine* e, weft_handle* h) {
  const PlanHost& p = e->plan;
  const uint64_t R = static_cast<uint64_t>(h->recv_rows);
  Bump take;
  const uint64_t o_recv = take(R * p.recv_row_bytes());
  const uint64_t o_scales = take(R * p.scale_row_bytes());
  if (e->spare_recv != nullptr && e->spare_recv_bytes >= take.off) {
    uint8_t* b = static_cast<uint8_t*>(e->spare_recv);
    h->recv_block_bytes = e->spare_recv_bytes;
    e->spare_recv = nullptr;
    e->spare_recv_bytes = 0;
    h->recv = b + o_recv;
    h->recv_scales = p.fp8() ? reinterpret_cast<float*>(b + o_scales) : nullptr;
    return WEFT_OK;
  }
  free_block(e, e->spare_recv);
  e->spare_recv = nullptr;
  e->spare_recv_bytes = 0;
  const uint64_t bytes = align256(take.off + take.off / 16);
  void* block = nullptr;
  cudaError_t err = cudaMallocAsync(&block, bytes, e->comm->stream);
  if (err == cudaSuccess) h->recv_block_bytes = bytes;
  if (err != cudaSuccess) {
    // Out of memory keeps the ranks in step (see dispatch_finish): not a broken comm.
    (void)cudaGetLastError();
    WEFT_FAIL_AT(WEFT_ERR_CAPACITY, e->comm->rank, "cannot allocate %llu bytes for the dispatch outputs on rank %d (%d receive rows): %s",
              static_cast<unsigned long long>(take.off), e->comm->rank, h->recv_rows, cudaGetErrorString(err));
  }
  uint8_t* b = static_cast<uint8_t*>(block);
  h->recv = b + o_recv;
  h->recv_scales = p.fp8() ? reinterpret_cast<float*>(b + o_scales) : nullptr;
  return WEFT_OK;
}

// The handle takes the index arrays the layout wrote.
void handle_take_index(weft_handle* h, const IndexArrays& ix) {
  h->index_block = ix.block;
  h->recv_weights = ix.recv_weights;
  h->expert_counts = ix.expert_counts;
  h->src_rank = ix.src_rank;
  h->src_token = ix.src_token;
  h->src_k = ix.src_k;
  h->dest_row = ix.dest_row;
  h->dmask = ix.dmask;
  h->fan_rows = ix.fan_rows;
  h->part_slot = ix.part_slot;
}


void handle_free(weft_handle* h) {
  if (h == nullptr) return;
  weft_engine* e = h->engine;
  hier_handle_free(h);  // a hierarchical batch frees its own arrays and recv
  if (h->recv != nullptr) {
    if (e->spare_recv == nullptr && !e->closed) {
      e->spare_recv = h->recv;  // recv sits at the block's start
      e->spare_recv_bytes = h->recv_block_bytes;
    } else {
      free_block(e, h->recv);
    }
  }
  free_index(e, h->index_block);
  delete h;
  engine_release(e);
}

int32_t handle_info(weft_handle_t h, weft_dispatch_info* out) {
  if (h == nullptr || out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "handle or out is NULL");
  out->tokens = h->tokens;
  out->recv_rows = h->recv_rows;
  out->local_experts = h->local_experts;
  out->pad_ = 0;
  out->recv = h->recv;
  out->recv_weights = h->recv_weights;
  out->expert_counts = h->expert_counts;
  out->src_rank = h->src_rank;
  out->src_token = h->src_token;
  out->src_k = h->src_k;
  out->dest_row = h->dest_row;
  out->recv_scales = h->recv_scales;
  return WEFT_OK;
}

int32_t handle_destroy(weft_handle_t h) {
  handle_free(h);
  return WEFT_OK;
}

}  // namespace weft
