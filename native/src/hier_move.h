// What the hierarchical engine's files share to move rows: the warp copies
// (hier_transfer.cu's pack, hier_fanout.cu's fan-out), the fan-out, and the
// sliced NCCL transfer both directions run (hier_engine.cu).
#pragma once

#include <vector>

#include "hier.h"

namespace weft {

constexpr int kWarps = 4;  // warps per block of the row kernels

__device__ __forceinline__ void warp_copy16(uint8_t* dst, const uint8_t* src, uint64_t bytes, int lane) {
  const uint64_t n = bytes / 16;
  for (uint64_t v = lane; v < n; v += 32) {
    reinterpret_cast<uint4*>(dst)[v] = reinterpret_cast<const uint4*>(src)[v];
  }
}
__device__ __forceinline__ void warp_copy4(uint8_t* dst, const uint8_t* src, uint64_t bytes, int lane) {
  const uint64_t n = bytes / 4;
  for (uint64_t v = lane; v < n; v += 32) {
    reinterpret_cast<uint32_t*>(dst)[v] = reinterpret_cast<const uint32_t*>(src)[v];
  }
}

// hier_transfer.cu: dispatch steps 3-5 of a batch whose tables are built
// (dispatch and redispatch): pack, the sliced transfer, the fan-out (per
// slice as each lands, or after the last one: WEFT_HIER_FANOUT).
int32_t hier_move(weft_engine* e, weft_handle* h, bool move_rows);

// hier_fanout.cu: every destination writes its receive rows, the index
// arrays and the combine links, over CUDA IPC. Launches on stream s, at most
// max_grid blocks (a grid-stride loop covers the rest).
// Own-node sources' tokens, from their staged x: after a node barrier that
// follows every source's staging.
int32_t hier_fan_local(weft_engine* e, weft_handle* h, bool move_rows, cudaStream_t s, unsigned max_grid);
// The rows of the pieces `sl` names (hier_slices.h), staged at the node's
// forwarders. target != 0: each block first waits, bounded by the comm's
// timeout, until the landed flag of every forwarder in sl.need reads at
// least target; a forwarder that does not is reported as timed out (the
// call fails with WEFT_ERR_TIMEOUT naming it). target 0: no wait (after the
// node barrier that ends the transfer).
int32_t hier_fan_remote(weft_engine* e, weft_handle* h, bool move_rows, const FanSlice& sl, uint64_t target,
                        cudaStream_t s, unsigned max_grid);

// hier_engine.cu. Event i of the engine's pool recorded on `done` and waited
// for by `waits` (the main and side streams' hand-offs).
int32_t hier_stream_wait(weft_engine* e, int i, cudaStream_t done, cudaStream_t waits);
// Slices of a sliced transfer: those of the longest send or stage segment.
int hier_slice_count(const HierHandle* hh, int slice);
// What a sliced transfer's NCCL calls are called in error messages.
struct HierSliceNames {
  const char* group_start;
  const char* send;
  const char* recv;
  const char* group_end;
};
// Slice j of a transfer, one NCCL group on the comm stream s: rows [j*C,
// (j+1)*C) of every segment of `out` sent from out_base, of every segment of
// `in` received into in_base; `row` bytes a row.
int32_t hier_slice_transfer(weft_comm* c, cudaStream_t s, const std::vector<HierSeg>& out, const uint8_t* out_base,
                            const std::vector<HierSeg>& in, uint8_t* in_base, uint64_t row, int C, int j,
                            const HierSliceNames& names);

}  // namespace weft
