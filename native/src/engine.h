// The NVLink engine's types: a validated plan (plan.cpp), the heap regions
// it carves, the engine of one rank (engine.cu) and the per-batch handle
// (handles.cu). Functions are declared per concern: layout.h, handles.h,
// pull.h, combine.h, quantize.h, dispatch.h, input_check.h; the engine's
// lifetime at the end of this file.
#pragma once

#include <atomic>
#include <string>
#include <vector>

#include "comm.h"

namespace weft {

struct HierEngine;  // hier.h: the engine over several nodes
struct HierHandle;

// A weft_plan_desc copied to host memory and checked (plan.cpp).
struct PlanHost {
  int world = 0, rank = 0, gpus_per_node = 0;
  int experts = 0, top_k = 0, hidden = 0;
  int dtype = 0, dedupe = 0, receive = 0, combine = 0;
  int max_tokens = 0;
  int wire_f32 = 0;
  int quantize = 0;                // WEFT_QUANTIZE_*
  int balance = 0;                 // WEFT_BALANCE_* (the hier engine's forwarder table)
  int slots = 0;                   // slot_base[world]
  int max_local = 0;               // max over ranks of local_experts
  std::vector<int> local_experts;  // [world]
  std::vector<int> slot_base;      // [world+1]
  std::vector<int> slot_expert;    // [slots]
  std::vector<int> replica_start;  // [experts+1]
  std::vector<int> replica_slots;  // [replica_start[experts]]
  std::vector<int> slot_rank;      // [slots] derived: the rank holding each slot

  int nodes() const { return gpus_per_node > 0 ? world / gpus_per_node : 1; }
  int elem_bytes() const { return dtype_bytes(dtype); }
  int wire_dtype() const { return wire_f32 ? WEFT_F32 : dtype; }
  uint64_t row_bytes() const { return static_cast<uint64_t>(hidden) * elem_bytes(); }
  uint64_t wire_row_bytes() const { return static_cast<uint64_t>(hidden) * dtype_bytes(wire_dtype()); }
  // Dispatch's row format. Quantized, a row is sent as hidden E4M3 bytes
  // (the "head", from hl.xq) plus hidden/128 f32 scales (the "tail", from
  // hl.xs), and lands the same way split: bytes in recv, scales in
  // recv_scales. Otherwise it is the x row itself, with no tail.
  bool fp8() const { return quantize == WEFT_QUANTIZE_E4M3; }
  uint64_t recv_row_bytes() const { return fp8() ? static_cast<uint64_t>(hidden) : row_bytes(); }
  uint64_t scale_row_bytes() const { return fp8() ? static_cast<uint64_t>(hidden / WEFT_QUANT_BLOCK) * 4 : 0; }
  uint64_t send_row_bytes() const { return recv_row_bytes() + scale_row_bytes(); }
  // Partials a token can receive back in combine: one per destination device
  // (dedupe device/node), or one per k (dedupe none).
  int parts() const { return dedupe == WEFT_DEDUPE_NONE ? top_k : (top_k < world ? top_k : world); }
  // Where a partial lands on its home: with dedupe device/node and world <=
  // top_k, in its source rank's own region ([world][max_tokens] rows, the
  // same bytes as [max_tokens][parts]), so each source writes a home's
  // landing area in token order instead of striding over every token's
  // slots; otherwise at [token][part] (world > top_k would need more rows,
  // and dedupe none lands one row per k).
  bool landing_by_source() const { return dedupe != WEFT_DEDUPE_NONE && world <= top_k; }
};

// Checks and copies a plan.
int32_t plan_from_desc(const weft_plan_desc* d, PlanHost* out);
// plan_from_desc, and the plan must be for the comm's rank and world.
int32_t plan_for_comm(const weft_plan_desc* d, const weft_comm* c, PlanHost* out);

// Offsets inside every rank's heap (identical on all ranks of one plan).
struct HeapLayout {
  uint64_t meta;        // int32 tokens of this batch
  uint64_t x;           // [max_tokens][row_bytes] staged rows
  uint64_t xq;          // [max_tokens][hidden] E4M3 bytes of the rows sent (quantize E4M3 only; else = x)
  uint64_t xs;          // [max_tokens][hidden/128] f32 scales of those rows (quantize E4M3 only)
  uint64_t idx;         // [max_tokens][K] int32 staged topk_idx
  uint64_t w;           // [max_tokens][K] f32 staged topk_weights
  uint64_t slot;        // [max_tokens][K] int32 resolved global slot, -1 none
  uint64_t ord;         // [max_tokens][K] int32 ordinal among this rank's pairs of that slot
  uint64_t dmask;       // [max_tokens] uint32 destination ranks of each token
  uint64_t slot_count;  // [slots] int32 pairs of this rank per global slot
  uint64_t landing;     // combine partials: [world][max_tokens] or [max_tokens][parts] rows of wire_row_bytes (landing_by_source)
  uint64_t end;         // bytes of heap needed, comm reserve included
};
HeapLayout heap_layout(const PlanHost& p);

// Route tables on the device (upload_route_tables), passed to kernels by value.
struct RouteTables {
  const int* slot_rank;      // [slots]
  const int* replica_start;  // [experts+1]
  const int* replica_slots;
  int experts, top_k, gpus_per_node;
};

// Copies the plan's routing tables to the device in one allocation
// (*block, freed with cudaFree), followed by `extra` ints when given
// (*extra_at then points at them), and points *rt into it (plan.cpp).
int32_t upload_route_tables(const PlanHost& p, const std::vector<int>& extra, int** block, RouteTables* rt,
                            const int** extra_at);

#ifdef __CUDACC__
// Resolves expert e of token t on rank src to a global slot (DESIGN replica
// rule): the replica on src; else those on src's node, t mod their count;
// else all replicas, t mod their count. e must be in [0, experts).
__device__ __forceinline__ int resolve_slot(const RouteTables& rt, int src, int t, int e) {
  const int b = rt.replica_start[e];
  const int n = rt.replica_start[e + 1] - b;
  const int node = src / rt.gpus_per_node;
  int on_node = 0;
  for (int i = 0; i < n; ++i) {
    const int s = rt.replica_slots[b + i];
    const int r = rt.slot_rank[s];
    if (r == src) return s;
    if (r / rt.gpus_per_node == node) ++on_node;
  }
  if (on_node > 0) {
    int pick = t % on_node;
    for (int i = 0; i < n; ++i) {
      const int s = rt.replica_slots[b + i];
      if (rt.slot_rank[s] / rt.gpus_per_node == node) {
        if (pick == 0) return s;
        --pick;
      }
    }
  }
  return rt.replica_slots[b + t % n];
}

// Step j of the (source rank, token) walk that the pull, the TMA pull and
// the combine push share: sources interleaved, starting after this rank, so
// every link carries traffic from the first step on. Returns false when the
// step falls past that source's tokens; otherwise sets the source rank, the
// token and the pair's index into the handle's per-(rank, token) arrays.
__device__ __forceinline__ bool walk_step(const TokenTable& tok, int world, int rank, long long j, int* r, int* t,
                                          long long* item) {
  const int p = static_cast<int>(j % world);
  *t = static_cast<int>(j / world);
  *r = (rank + 1 + p) % world;
  if (*t >= tok.tokens[*r]) return false;
  *item = static_cast<long long>(tok.base[*r]) + *t;
  return true;
}
#endif  // __CUDACC__

// A batch's index arrays, all in one block sized for the plan's capacity
// (index_block_bytes): the layout writes them before the host knows R.
struct IndexArrays {
  void* block = nullptr;         // the allocation (null: none)
  float* recv_weights = nullptr; // [recv_cap]
  int* expert_counts = nullptr;  // [local experts]
  int* src_rank = nullptr;       // [recv_cap]
  int* src_token = nullptr;      // [recv_cap]
  int* src_k = nullptr;          // [recv_cap]
  int* dest_row = nullptr;       // [max_tokens*K]
  unsigned* dmask = nullptr;     // [max_tokens]
  int* fan_rows = nullptr;       // [world*max_tokens][K]
  int* part_slot = nullptr;      // [world*max_tokens]
  float* part_w = nullptr;       // [max_tokens][parts] weight of each one-term partial, applied at home (combine.cu)
};
// What differs from one dispatch to the next, in device memory (e->d_call):
// the layout kernels read it there, so one set of launches serves every
// call and can be captured once as a CUDA graph (layout_graph.cu). The host
// writes it into mapped host memory (e->h_call); the call's first kernel
// (open_call) copies it to the device, so nothing in the graph changes per
// call.
struct DispatchCall {
  int tokens = 0;
  int pad_ = 0;
  const int* idx = nullptr;  // topk_idx: the caller's device tensor, or the heap staging
  const float* w = nullptr;  // topk_weights, likewise
  uint64_t epoch = 0;        // the staging barrier's epoch
  IndexArrays ix;            // where this call's index arrays go
};

// What dispatch's one host sync reads: written by the layout's last kernel
// (layout_publish) into mapped host memory, so no copy-engine transfer sits
// on the stream between the layout's kernels.
struct LayoutReadback {
  DevStatus status;            // the call's status after the staging barrier
  int counts[kMaxWorld + 1];   // tokens of each rank, then R of this rank
};

}  // namespace weft

// The engine of one rank (one plan on one comm).
struct weft_engine {
  weft_comm* comm = nullptr;
  weft::PlanHost plan;
  weft::HeapLayout hl{};
  weft::RouteTables rt{};
  int* d_tables = nullptr;        // backing store of rt (slot_rank, replica_start, replica_slots)
  int* d_chunk_counts = nullptr;  // [slots][chunk_stride]
  int chunk_stride = 0;
  int* d_counts = nullptr;        // [world] tokens of each rank, then R of this rank (layout_bases)
  int* d_base = nullptr;          // [world][slots] receive-row base of each (source rank, slot)
  int recv_cap = 0;               // recv_capacity(plan)
  weft::LayoutReadback* h_readback = nullptr;  // mapped host memory, read at the host sync
  weft::LayoutReadback* d_readback = nullptr;  // the same, as kernels address it
  cudaEvent_t counts_ready = nullptr;  // h_readback holds this call's values
  bool call_unread = false;   // a begun dispatch's h_call may be unread (not yet finished)
  weft::IndexArrays pending;      // the begun dispatch's index arrays, until a handle takes them
  weft::DispatchCall* d_call = nullptr;  // the current dispatch's DispatchCall (device)
  // The next call's values, written by the host (mapped host memory) and
  // copied to d_call by open_call: rewritten only once the previous
  // open_call has run (counts_ready is recorded after it).
  weft::DispatchCall* h_call = nullptr;
  weft::DispatchCall* d_call_src = nullptr;  // h_call as kernels address it
  // The layout's launches as CUDA graphs (layout_graph.cu), captured on first use
  // on a stream of their own: before the host sync (source side, staging
  // barrier, bases) and after it (build). graphs: -1 not tried yet, 0 off
  // (WEFT_GRAPH=0, or the capture failed), 1 on.
  cudaStream_t capture = nullptr;
  cudaGraphExec_t graph_front = nullptr;
  cudaGraphExec_t graph_build = nullptr;
  // open_call followed by the front, for calls that stage nothing after the
  // status reset (no quantize).
  cudaGraphExec_t graph_front_open = nullptr;
  int graphs = -1;
  // One block of each kind kept from a closed handle for the next dispatch
  // (stream-ordered on the comm stream, like the pool it came from): taking
  // it costs nothing, where a pool allocation costs ~10 µs of host time on
  // the path to the GPU's next launch.
  void* spare_index = nullptr;      // index_block_bytes(plan)
  void* spare_recv = nullptr;       // a recv block of spare_recv_bytes
  uint64_t spare_recv_bytes = 0;
  int pull_blocks_per_sm = 0;       // the bulk-copy pull's occupancy (0: not yet asked)
  void* pinned_host = nullptr;    // caller memory page-locked by weft_engine_pin_host
  // Set when the comm spans several nodes: the hierarchical engine (hier.h)
  // runs every call instead of the NVLink path.
  weft::HierEngine* hier = nullptr;
  std::atomic<int> refs{1};       // the engine plus every live handle
  bool closed = false;
};

// One dispatched batch on this rank: the layout (kept for combine and
// redispatch) and the outputs. All arrays are device memory of the comm's
// device, allocated stream-ordered on the comm stream.
struct weft_handle {
  weft_engine* engine = nullptr;
  int tokens = 0;        // T of this rank
  int recv_rows = 0;     // R of this rank
  int local_experts = 0; // L of this rank
  int items = 0;         // sum of tokens over ranks: (source rank, token) pairs
  weft::TokenTable tok{};
  void* index_block = nullptr;     // the index arrays' allocation (weft::IndexArrays)
  void* recv = nullptr;            // [R][recv_row_bytes], then recv_scales: one allocation
  uint64_t recv_block_bytes = 0;   // that allocation's size
  float* recv_scales = nullptr;    // [R][hidden/128] when quantized
  float* recv_weights = nullptr;   // [R]
  int* expert_counts = nullptr;    // [L]
  int* src_rank = nullptr;         // [R]
  int* src_token = nullptr;        // [R]
  int* src_k = nullptr;            // [R]
  int* dest_row = nullptr;         // [T*K]
  unsigned* dmask = nullptr;       // [T] destination ranks of this rank's tokens
  int* fan_rows = nullptr;         // [items][K] receive row on this rank of each (r,t,k), -1 none
  int* part_slot = nullptr;        // [items] index of this rank among token (r,t)'s destinations
  weft::HierHandle* hier = nullptr;  // a batch of the hierarchical engine (owns its arrays and recv)
};

namespace weft {

// Engine lifetime (engine.cu). Handles keep their engine alive.
void engine_retain(weft_engine* e);
void engine_release(weft_engine* e);
// Entry checks of an engine call: not NULL, not destroyed, comm usable.
int32_t engine_enter(weft_engine* e);
int32_t engine_create(weft_comm_t c, const weft_plan_desc* plan, weft_engine_t* out);
int32_t engine_input_rows(weft_engine_t e, void** out);
int32_t engine_input_e4m3(weft_engine_t e, void** q, float** scales);
int32_t engine_pin_host(weft_engine_t e, void* ptr, uint64_t bytes);
int32_t engine_destroy(weft_engine_t e);
// plan.cpp: the heap a plan needs.
int32_t engine_heap_bytes(const weft_plan_desc* plan, uint64_t* out);

}  // namespace weft
