// Decode mode's kernel arguments and device helpers, shared by
// decode_kernels.cu (dispatch) and decode_combine.cu (combine).
#pragma once

#include "decode.h"

namespace weft {

constexpr int kDecThreads = 256;  // 8 warps a block for the per-item kernels
constexpr int kDecWarps = kDecThreads / 32;
constexpr int kInFlight = 4;      // 16-byte loads per lane in flight in the row copies

struct DecArgs {
  PeerTable peers;
  RouteTables rt;
  int rank, world, cap, ecap, local, slot0, top_k, slots, route_warps;
  int row_vecs;             // 16-byte vectors per row in the dtype
  uint64_t wire_row_bytes;  // a landing row
  DecodeHeap hh;
  uint8_t* loc;             // the DecodeLocal block
  DecodeLocal lh;
  DecodeStatus* st;
  DecodeStatus* mirror;     // mapped host memory
  uint64_t timeout_ns;
  int weighted;
};

template <typename T>
__device__ __forceinline__ T* heap_at(const DecArgs& a, int r, uint64_t off) {
  return reinterpret_cast<T*>(a.peers.base[r] + off);
}
template <typename T>
__device__ __forceinline__ T* loc_at(const DecArgs& a, uint64_t off) {
  return reinterpret_cast<T*>(a.loc + off);
}
__device__ __forceinline__ bool dec_aborted(const DecodeStatus* st) {
  return ld_volatile_u32(&st->abort) != 0u;
}
__device__ __forceinline__ void dec_bad(DecodeStatus* st, unsigned long long pos, unsigned kind) {
  atomicMin(&st->bad_key, (pos << 4) | kind);
  atomicExch(&st->bad, 1u);
  atomicOr(&st->call_err, 1u);
}

// The arguments of every decode kernel for engine d.
DecArgs decode_args(DecodeEngine* d);
// Blocks of the per-(rank, token) kernels: fixed by the capacity.
unsigned decode_item_blocks(const DecodeEngine* d);
// One decode barrier on stream s.
int32_t decode_barrier(const DecArgs& a, cudaStream_t s);

// A launch check that never synchronizes (the stream may be capturing).
#define DEC_LAUNCHED(name)                                                                   \
  do {                                                                                       \
    cudaError_t e_ = cudaGetLastError();                                                     \
    if (e_ != cudaSuccess) {                                                                 \
      weft::set_error("%s:%d: kernel %s failed to launch: %s (%s)", __FILE__, __LINE__, name, \
                      cudaGetErrorName(e_), cudaGetErrorString(e_));                         \
      return WEFT_ERR_CUDA;                                                                  \
    }                                                                                        \
  } while (0)

}  // namespace weft
