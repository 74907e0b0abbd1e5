// Index generation on the GPU: routing (route.cu), the destination side
// (layout.cu), and their launches around dispatch's host sync
// (layout_graph.cu).
#pragma once

#include "engine.h"

namespace weft {

// Source-side routing of one rank's tokens, shared by the engine and the
// NCCL baseline (route.cu). Validates topk (range, duplicates, NaN weights),
// resolves every (t,k) to a slot, and gives each pair its ordinal among this
// rank's pairs of the same slot in (t,k) order, plus per-slot totals.
struct RouteOut {
  int* slot;             // [T*K]
  int* ord;              // [T*K] final ordinal
  unsigned* dmask;       // [T] destination-rank mask (may be null)
  int* slot_count;       // [slots]
  int* chunk_counts;     // scratch [slots][chunk_stride]
  int chunk_stride;      // >= chunks of max_tokens
  int* meta = nullptr;   // where to publish the token count (the engine's heap), or null
};
constexpr int kRouteChunk = 64;  // tokens per routing block
int route_chunks(int tokens);
size_t route_smem_bytes(const PlanHost& p);
// Raises the routing kernel's dynamic shared memory limit when the plan needs it.
int32_t route_prepare(const PlanHost& p, size_t smem_optin);
int32_t route_tokens(const PlanHost& p, const RouteTables& rt, int src_rank, int tokens, const int* idx,
                     const float* weights, const RouteOut& out, DevStatus* st, cudaStream_t stream);

// The engine's layout steps of one dispatch (route.cu: layout_source;
// layout.cu: the rest), all enqueued before the host's sync, writing the
// index arrays of e->d_call. Each reads what the call changes from e->d_call
// and launches for the plan's capacity, so the same launches serve every
// call (and replay as a graph).
int32_t layout_source(weft_engine* e, cudaStream_t s);        // before the staging barrier
int32_t layout_bases(weft_engine* e, cudaStream_t s);         // after it: bases, R, token counts → d_counts
int32_t layout_publish(weft_engine* e, cudaStream_t s);       // d_counts and the status → h_readback
int32_t layout_build(weft_engine* e, cudaStream_t s);         // receive rows of every pair

// layout_graph.cu: a dispatch's first kernel, and the steps above as
// dispatch enqueues them, directly (`marks`: with profile marks) or
// replayed from graphs.
int32_t open_call(weft_engine* e, cudaStream_t s);            // status reset, h_call → d_call
int32_t enqueue_layout_front(weft_engine* e, cudaStream_t s, bool marks);  // source, staging barrier, bases
int32_t enqueue_layout_build(weft_engine* e, cudaStream_t s, bool marks);  // build
// Whether dispatch replays them as graphs (graph_front, graph_build and
// graph_front_open, captured on first use); false with WEFT_GRAPH=0, with
// WEFT_DEBUG, or after a failed capture.
bool layout_graphs(weft_engine* e);

}  // namespace weft
