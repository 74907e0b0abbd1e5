// Decode mode (weft.h "decode mode"): dispatch and combine of the NVLink
// engine with every size fixed by a stated capacity, no host read between
// the routing and combine's output, capturable in a CUDA graph.
//
// Per call, on the comm stream (decode_kernels.cu):
//   dispatch: route (one block: checks, slots, ordinals, per-slot totals)
//             → barrier → bases (prefix over ranks per local expert, counts,
//             overflow) → pull (a warp per (source rank, token)) → barrier
//   combine:  push (a warp per (home rank, token): the partial of its pairs
//             here) → barrier → reduce (home: partials in ascending rank)
// Barriers use the decode region's own flags and an epoch counter kept on
// the device (each barrier kernel increments it), so a replayed graph never
// meets an old flag. Errors are sticky in DecodeStatus (device memory),
// mirrored into mapped host memory by every barrier, and reported and
// cleared by weft_decode_check.
#pragma once

#include "engine.h"

namespace weft {

constexpr int kDecodeMaxGraphs = 8;

// Heap regions of a decode engine (same offsets on every rank).
struct DecodeHeap {
  uint64_t ctl;         // int32 tokens of this step (written by the caller, read by every rank)
  uint64_t flags;       // uint64 [2][kMaxWorld]: the decode barrier's flags
  uint64_t x;           // [cap][row_bytes]
  uint64_t idx;         // [cap][K] int32
  uint64_t w;           // [cap][K] f32
  uint64_t slot;        // [cap][K] int32 resolved slot, -1 none
  uint64_t ord;         // [cap][K] int32 ordinal among this rank's pairs of the slot
  uint64_t slot_count;  // [slots] int32
  uint64_t landing;     // [world][cap] rows of wire_row_bytes: combine partials by source rank
  uint64_t end;
};

// Private device memory of a decode engine (one allocation), offsets.
struct DecodeLocal {
  uint64_t recv;          // [L][C][row_bytes]
  uint64_t out;           // [cap][row_bytes]
  uint64_t recv_weights;  // [L*C] f32
  uint64_t src_rank;      // [L*C] int32
  uint64_t src_token;     // [L*C]
  uint64_t src_k;         // [L*C]
  uint64_t counts;        // [L] int32
  uint64_t bases;         // [world][L] int32
  uint64_t tokens;        // [world] int32 tokens of every rank this step
  uint64_t fan_rows;      // [world][cap][K] int32 receive row of each (r,t,k) here, -1 none
  uint64_t status;        // DecodeStatus
  uint64_t end;
};

// Sticky (until weft_decode_check clears it) and per-call error state.
struct DecodeStatus {
  unsigned long long epoch;     // barriers run so far (same sequence on every rank)
  unsigned long long bad_key;   // min over this rank's bad inputs of (t*K+k) << 4 | kind; ~0 none
  unsigned long long over_key;  // min over overflowing local experts of l << 32 | rows; ~0 none
  unsigned bad;                 // this rank's input failed a check (sticky)
  unsigned overflow;            // a local expert got more rows than its capacity (sticky)
  unsigned peer_bad;            // ranks whose input failed (sticky mask)
  unsigned peer_overflow;       // ranks that overflowed (sticky mask)
  unsigned timeout;             // ranks that missed a barrier (sticky mask; the comm is then broken)
  unsigned call_err;            // this call: bit 0 bad input here, bit 1 overflow here
  unsigned abort;               // this call: skip the remaining data kernels
  int tokens;                   // this rank's tokens this step (0 when out of range)
};

}  // namespace weft

struct weft_decode {
  weft_comm* comm = nullptr;
  weft::PlanHost plan;
  int cap = 0;          // max tokens per rank (plan.max_tokens)
  int ecap = 0;         // rows per local expert (C)
  int local = 0;        // this rank's local experts (L)
  int slot0 = 0;        // this rank's first slot
  int route_warps = 0;  // warps of the route block (shared counts fit)
  weft::DecodeHeap hh{};
  weft::DecodeLocal lh{};
  weft::RouteTables rt{};
  int* d_tables = nullptr;
  uint8_t* block = nullptr;          // the DecodeLocal allocation
  weft::DecodeStatus* d_status = nullptr;  // in block
  weft::DecodeStatus* h_mirror = nullptr;  // mapped host memory: the status as of the last barrier
  weft::DecodeStatus* d_mirror = nullptr;
  cudaGraphExec_t graphs[weft::kDecodeMaxGraphs] = {};
  int n_graphs = 0;
  // Parts enqueued, for the rule "a combine needs a dispatch after the
  // previous combine" (two combines in a row race: a peer's second push can
  // overwrite this rank's landing while its first reduce still reads it).
  // 0 none or unknown, 1 dispatch, 2 combine.
  int last_part = 0;
  int saved_part = 0;  // last_part when the running capture began
  int cap_first = 0;   // the first part of the running capture
  int graph_first[weft::kDecodeMaxGraphs] = {};
  int graph_last[weft::kDecodeMaxGraphs] = {};
  bool capturing = false;
  bool closed = false;
};

namespace weft {

using DecodeEngine = weft_decode;

DecodeHeap decode_heap_layout(const PlanHost& p);
DecodeLocal decode_local_layout(const PlanHost& p, int ecap);

// The kernels' launches (decode_kernels.cu), all on stream s, none reading the host.
int32_t decode_enqueue_dispatch(DecodeEngine* d, cudaStream_t s);
int32_t decode_enqueue_combine(DecodeEngine* d, cudaStream_t s, const void* y, void* out);
int32_t decode_prepare(DecodeEngine* d);  // kernel attributes, route block size

// The C ABI (decode_engine.cu).
int32_t decode_heap_bytes(const weft_plan_desc* plan, int32_t expert_capacity, uint64_t* heap, uint64_t* device);
int32_t decode_create(weft_comm_t c, const weft_plan_desc* plan, int32_t expert_capacity, DecodeEngine** out);
int32_t decode_info(DecodeEngine* d, weft_decode_info* out);
int32_t decode_dispatch(DecodeEngine* d);
int32_t decode_combine(DecodeEngine* d, const void* y, void* out);
int32_t decode_capture_begin(DecodeEngine* d);
int32_t decode_capture_end(DecodeEngine* d, int32_t* graph);
int32_t decode_replay(DecodeEngine* d, int32_t graph);
int32_t decode_check(DecodeEngine* d);
int32_t decode_destroy(DecodeEngine* d);

}  // namespace weft
