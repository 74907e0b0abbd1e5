// The hierarchical engine: a plan over more than one node (weft_comm_create2
// with nodes > 1, dedupe node). native/HIER_PROTOCOL.md is normative; in short:
//   dispatch  route (route.cu's route_tokens) → one NCCL all-gather of every
//             rank's record {T, error, per-slot totals, tokens per remote node}
//             → bases on the host (exactly computeLayout's) → pack one row per
//             (token, remote node) into the send region → NCCL send/recv to the
//             node's forwarder (the plan's balance table, hier_balance.h),
//             sliced: packing slice j+1 while slice j is on the wire, and (the
//             default, WEFT_HIER_FANOUT=slice) each forwarder publishing "slice
//             j landed" in its heap after its step j, on which every
//             destination of its node fans slice j out over CUDA IPC while
//             slice j+1 moves; own-node sources' rows are fanned out from
//             their staged x after a node barrier, while the transfer runs.
//             (WEFT_HIER_FANOUT=after: one node barrier after the last slice,
//             then the whole fan-out.)
//   combine   partials per (source, token) on each destination, pushed over
//             IPC to the home (own node) or to the forwarder (remote node) →
//             node barrier → the forwarder's reduce in ascending rank, NCCL
//             back (sliced) → the home's sum in ascending contributor rank.
// Files: hier_engine.cu (regions, engine and handle memory, the sliced
// transfer), hier_tables.cu (the host's batch tables; the fan-out table cut
// by slice: hier_slices.h), hier_dispatch.cu (route, exchange, handle),
// hier_transfer.cu (pack, transfer, landing flags, the fan-out's schedule),
// hier_fanout.cu (fan-out kernels), hier_combine.cu (partials, forwarder
// reduce, return, home sum); hier_move.h between them.
#pragma once

#include <vector>

#include "engine.h"
#include "hier_slices.h"

namespace weft {

// Heap regions of the hierarchical engine (same offsets on every rank).
// Tm = max_tokens, N = nodes, U = min(K, N-1) remote nodes a token can reach,
// Pn = min(K, gpn) node devices that can hold one token's pairs, RS = packed
// row stride, WB = combine wire row bytes.
struct HierLayout {
  HeapLayout base;      // meta, x, xq, xs, idx, w, slot, ord as the NVLink engine's; the rest unused (0)
  uint64_t rec;         // [rec_ints] int32: this rank's record for the exchange
  uint64_t send;        // [Tm*U][RS] packed rows, segments by remote node ascending
  uint64_t stage;       // [(N-1)*Tm][RS] forwarder staging, segments by source ascending
  uint64_t fwd_land;    // [(N-1)*Tm][Pn][WB] node devices' partials of the staged rows
  uint64_t fwd_ret;     // [(N-1)*Tm][WB] reduced partials going back to the sources
  uint64_t home_ret;    // [Tm*U][WB] reduced partials back from remote nodes (send order)
  uint64_t home_land;   // [Tm][Pn][WB] own-node devices' partials of this rank's tokens
  uint64_t landed;      // uint64: (call << 32) | (j + 1) once this rank's dispatch step j has landed (monotone)
  uint64_t end;
  uint64_t payload;     // bytes of a packed row's payload (16-aligned): row or E4M3 bytes + scales
  uint64_t row_stride;  // RS = payload + meta (16-aligned): meta = {t, K x {slot, ord, w}}
  int rec_ints;         // 4 + slots + nodes
  int parts;            // Pn
  int reach;            // U
};
HierLayout hier_heap_layout(const PlanHost& p);

// One contiguous run of packed rows between this rank and a peer.
struct HierSeg {
  int peer;   // the global rank at the other end
  int node;   // the node the rows are for (send side) or come from
  int off;    // first row in the region
  int rows;
};

// A dispatched batch of the hierarchical engine (weft_handle::hier).
struct HierHandle {
  void* block = nullptr;   // one device allocation holding every array below
  int T = 0, R = 0;
  int send_rows = 0, stage_rows = 0, fan_rows = 0;
  std::vector<HierSeg> send;   // to forwarders, by remote node ascending (home_ret mirrors it)
  std::vector<HierSeg> stage;  // from sources, ascending (fwd_ret mirrors it)
  int node_tokens[kMaxWorld + 1] = {};  // prefix of the node's ranks' token counts
  // Device arrays (in block).
  int* slot = nullptr;       // [T*K] this rank's routing, kept for redispatch and the pack
  int* ord = nullptr;        // [T*K]
  float* w = nullptr;        // [T*K]
  int* send_tok = nullptr;   // [send_rows] token of each packed row
  int* send_seg = nullptr;   // [N][3] per remote node: off, rows, node (rows 0 for the own node)
  int* stage_seg = nullptr;  // [n_stage][2]: off, rows (reverse path)
  int* pos_tk = nullptr;     // [T*K] position of token t in its segment for node(slot) (remote), -1
  int* node_tk = nullptr;    // [T*K] node of the pair when remote, -1
  unsigned* ownmask = nullptr;  // [T] local ranks of the own node holding pairs of t
  int* base_mine = nullptr;  // [world][L] receive-row base of (source, local expert) here
  int* base_self = nullptr;  // [slots] receive-row base of this rank's pairs on each slot's rank
  int* fan_ent = nullptr;    // [n_fan][4]: forwarder local rank, source, first staged row, rows (slice-major)
  int* fan_prefix = nullptr; // [n_fan+1]
  int n_fan = 0;
  std::vector<FanSlice> fan_slices;  // the pieces and rows of each slice (hier_slices.h)
  FanSlice fan_all;                  // every piece (WEFT_HIER_FANOUT=after)
  int* comb_next = nullptr;  // [R] next receive row of the same (source, token) here, ascending k; -1
  int* comb_tgt = nullptr;   // [R] lead rows: local rank of the partial's target (+32: home landing); -1
  int* comb_idx = nullptr;   // [R] lead rows: landing row at the target
  int* fwd_nparts = nullptr; // [stage_rows] node devices holding pairs of each staged row
};

// The engine's hierarchical state (weft_engine::hier).
struct HierEngine {
  HierLayout hl{};
  int slice = 512;                 // C, rows per slice
  cudaStream_t side = nullptr;     // pack (dispatch) and forwarder reduce (combine)
  cudaStream_t fan = nullptr;      // the per-slice fan-out (dispatch, WEFT_HIER_FANOUT=slice)
  bool fan_per_slice = true;       // WEFT_HIER_FANOUT: slice (true) or after
  int fan_grid = 1;                // blocks of a per-slice fan-out launch (half the data kernels' SMs' worth)
  std::vector<cudaEvent_t> events; // slice events, grown on demand
  int* d_chunk_counts = nullptr;   // routing scratch
  int chunk_stride = 1;
  int* d_list = nullptr;           // [N][Tm] tokens of each remote node's segment
  int* d_pos = nullptr;            // [Tm*K] (copied to the handle)
  int* d_node = nullptr;           // [Tm*K]
  unsigned* d_own = nullptr;       // [Tm]
  int* d_gather = nullptr;         // [world][rec_ints] all-gathered records
  int* h_gather = nullptr;         // pinned host copy
  int* d_flag = nullptr;           // [1 + world] agreement flags (combine, redispatch)
  int* h_flag = nullptr;           // pinned [world]
  // A begun dispatch (weft_dispatch_begin): the inputs, kept until finish.
  struct Begun {
    const void* x = nullptr;
    const void* q = nullptr;
    const float* scales = nullptr;
    bool quantized = false;
    const int32_t* idx = nullptr;
    const float* w = nullptr;
    int tokens = 0;
    bool move_rows = true;
  } begun;
};

// hier_engine.cu (hier_build_handle: hier_tables.cu)
int32_t hier_engine_init(weft_engine* e);
void hier_engine_free(weft_engine* e);
void hier_handle_free(weft_handle* h);
// cudaEvent number i of the engine's pool (created on first use).
int32_t hier_event(weft_engine* e, int i, cudaEvent_t* out);
// The batch's tables from the gathered records (host work), the handle's
// memory, and their upload. g: [world][rec_ints].
int32_t hier_build_handle(weft_engine* e, const int* g, weft_handle* h);
// Every rank says whether its arguments are usable (NCCL all-gather); a bad
// rank anywhere fails every rank (naming it) before anything is written.
int32_t hier_agree(weft_engine* e, bool ok, const char* stage, const char* why);
// Ends a call: end barrier, the wait (watching NCCL, bounded), the status.
int32_t hier_end_call(weft_engine* e, const char* stage);
// Slices a transfer of `rows` rows takes.
inline int hier_slices(int rows, int slice) { return rows <= 0 ? 0 : (rows + slice - 1) / slice; }

// hier_dispatch.cu: the entry points dispatch.cu forwards to (lock held).
int32_t hier_dispatch_begin(weft_engine* e, const void* x, const void* q, const float* scales, bool quantized,
                            const int32_t* idx, const float* w, int32_t tokens, bool move_rows);
int32_t hier_dispatch_finish(weft_engine* e, weft_handle** out);
int32_t hier_redispatch(weft_handle* h, const void* x, const void* q, const float* scales, bool quantized);
// hier_combine.cu (lock held).
int32_t hier_combine(weft_handle* h, const void* y, void* out);

}  // namespace weft
