// Quantize E4M3: this rank's staged x rows → the rows dispatch sends: the
// E4M3 bytes in the heap at hl.xq ([tokens × hidden]) and the f32 scales at
// hl.xs ([tokens × hidden/128]), where the peers pull them. It runs at the source, before the staging
// barrier, so about half the bytes of bf16 cross NVLink.
//
// The bits follow lib/core/fp8.ts exactly (the Simulator is the oracle): per
// block of 128 elements, amax = max |x| (NaN ignored); e = the smallest
// integer with amax <= 448 * 2^e, at least -126 (0 for amax 0 or Inf);
// q = e4m3(x * 2^-e), round to nearest even, saturating. The scale is a
// power of two, so x * 2^-e is exact and no implementation can differ.
//
// Shape: 16 threads per block of 128 elements, 8 elements each (one 16-byte
// load for bf16/f16, two for f32); amax by shuffles inside the 16 lanes; a
// team of 16 lanes takes 4 consecutive blocks of a row.
#include <cuda_fp8.h>

#include "quantize.h"

namespace weft {
namespace {

constexpr int kThreads = 256;
constexpr int kLanesPerBlock = WEFT_QUANT_BLOCK / 8;  // 16
static_assert(32 % kLanesPerBlock == 0, "a scale block's lanes stay inside one warp");
constexpr int kBlocksPerTeam = 4;

// lib/core/fp8.ts scaleExponent, on the f32 bits.
__device__ __forceinline__ int scale_exponent(float amax) {
  if (!(amax > 0.0f) || isinf(amax)) return 0;
  const unsigned bits = __float_as_uint(amax);
  const int biased = static_cast<int>(bits >> 23);
  if (biased == 0) return -126;  // subnormal amax: the floor applies
  const int e = biased - 127;
  // amax = (1 + m / 2^23) * 2^e; 448 = 1.75 * 2^8.
  const int need = (bits & 0x7fffffu) <= 0x600000u ? e - 8 : e - 7;
  return need < -126 ? -126 : need;
}

// One team of 16 lanes quantizes kBlocksPerTeam consecutive blocks of one
// row: each lane first loads its 8 elements of every block (several 16-byte
// loads in flight: one per block was latency-bound at ~1.1 TB/s on H200),
// then reduces and converts block by block.
template <int DT>
__global__ void __launch_bounds__(kThreads) quantize_kernel(const uint8_t* __restrict__ x, uint8_t* __restrict__ xq,
                                                            float* __restrict__ xs, long long teams, int teams_per_row,
                                                            int blocks_per_row, uint32_t row_bytes, int hidden,
                                                            const DevStatus* st) {
  if (call_aborted(st)) return;
  const long long team = (static_cast<long long>(blockIdx.x) * kThreads + threadIdx.x) / kLanesPerBlock;
  const int lane = static_cast<int>(threadIdx.x % kLanesPerBlock);
  const bool live_team = team < teams;  // dead lanes still shuffle (with amax 0), never store
  const long long token = live_team ? team / teams_per_row : 0;
  const int blk0 = live_team ? static_cast<int>(team % teams_per_row) * kBlocksPerTeam : 0;
  constexpr int kElemBytes = DT == WEFT_F32 ? 4 : 2;
  float f[kBlocksPerTeam][8];
#pragma unroll
  for (int u = 0; u < kBlocksPerTeam; ++u) {
    if (live_team && blk0 + u < blocks_per_row) {
      const size_t first = static_cast<size_t>(blk0 + u) * WEFT_QUANT_BLOCK + lane * 8;
      Wire<DT, 8>::load(reinterpret_cast<const uint4*>(x + token * row_bytes + first * kElemBytes), f[u]);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) f[u][i] = 0.0f;
    }
  }
  uint8_t* row = xq + token * hidden;
  float* scales = xs + token * blocks_per_row;
#pragma unroll
  for (int u = 0; u < kBlocksPerTeam; ++u) {
    float amax = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[u][i]));  // fmaxf drops a NaN operand
#pragma unroll
    for (int d = kLanesPerBlock / 2; d > 0; d >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, d));
    const int blk = blk0 + u;
    if (!live_team || blk >= blocks_per_row) continue;
    const int e = scale_exponent(amax);
    const float inv = __uint_as_float(static_cast<unsigned>(127 - e) << 23);  // 2^-e, e in [-126, 120]
    unsigned short q[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      q[i] = __nv_cvt_float2_to_fp8x2(make_float2(f[u][2 * i] * inv, f[u][2 * i + 1] * inv), __NV_SATFINITE,
                                      __NV_E4M3);
    }
    *reinterpret_cast<uint2*>(row + static_cast<size_t>(blk) * WEFT_QUANT_BLOCK + lane * 8) =
        make_uint2(q[0] | (static_cast<unsigned>(q[1]) << 16), q[2] | (static_cast<unsigned>(q[3]) << 16));
    if (lane == 0) scales[blk] = __uint_as_float(static_cast<unsigned>(127 + e) << 23);
  }
}

}  // namespace

int32_t launch_quantize(weft_engine* e, int tokens) {
  const PlanHost& p = e->plan;
  weft_comm* c = e->comm;
  if (!p.fp8() || tokens <= 0) return WEFT_OK;
  const int blocks_per_row = p.hidden / WEFT_QUANT_BLOCK;
  const int teams_per_row = (blocks_per_row + kBlocksPerTeam - 1) / kBlocksPerTeam;
  const long long teams = static_cast<long long>(tokens) * teams_per_row;
  const unsigned blocks = grid_for(teams * kLanesPerBlock, kThreads);
  const uint8_t* x = c->heap + e->hl.x;
  uint8_t* xq = c->heap + e->hl.xq;
  float* xs = reinterpret_cast<float*>(c->heap + e->hl.xs);
  const uint32_t rb = static_cast<uint32_t>(p.row_bytes());
  switch (p.dtype) {
    case WEFT_BF16:
      quantize_kernel<WEFT_BF16><<<blocks, kThreads, 0, c->stream>>>(x, xq, xs, teams, teams_per_row, blocks_per_row,
                                                                     rb, p.hidden, c->d_status);
      break;
    case WEFT_F16:
      quantize_kernel<WEFT_F16><<<blocks, kThreads, 0, c->stream>>>(x, xq, xs, teams, teams_per_row, blocks_per_row,
                                                                    rb, p.hidden, c->d_status);
      break;
    default:
      quantize_kernel<WEFT_F32><<<blocks, kThreads, 0, c->stream>>>(x, xq, xs, teams, teams_per_row, blocks_per_row,
                                                                    rb, p.hidden, c->d_status);
      break;
  }
  WEFT_LAUNCHED("quantize", c->stream);
  return WEFT_OK;
}

}  // namespace weft
