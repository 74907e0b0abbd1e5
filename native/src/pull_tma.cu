// The pull on Hopper's bulk-copy engine (TMA, cp.async.bulk): the default on
// sm_90 for dedupe device/node and unquantized rows; WEFT_PULL=sm selects the
// SM-load pull in pull_sm.cu instead (the only one on sm_80, for dedupe
// none, and for E4M3 rows, whose bytes and scales come from two regions).
//
// Why: a bulk copy moves a whole row (or a ≤16 KiB chunk of one) per
// instruction, so one thread keeps several rows in flight with no register
// traffic. Measured on 4×H200 (bench/NOTES-nvlink.md, 2026-11-22): 16384
// tokens uniform, pull 1.96 ms against 2.01 ms for the SM-load pull; both sit
// at ~320 GB/s per GPU, the all-to-all bandwidth NCCL also reaches there.
//
// Shape: one thread per block drives a ring of kStages shared-memory stages.
// It bulk-loads the next (source rank, token, chunk) units from the source's
// heap into free stages (each completing on its own mbarrier), and retires
// the oldest: waits for its bytes, then bulk-stores the stage to every
// receive row the token feeds here and commits that as one bulk group. A
// stage is reloaded only after its group has finished reading it. Same
// units, same order and same destinations as the SM-load pull, so the
// output is the same bytes.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>

#include "pull.h"

namespace weft {
namespace {

constexpr int kStages = 4;
constexpr uint32_t kMaxChunk = 16384;
constexpr uint32_t kHeader = 128;  // the mbarriers, before the 128-byte-aligned stages

struct TmaPullArgs {
  PeerTable peers;
  TokenTable tok;
  uint64_t x_off;
  uint32_t row_bytes, chunk_bytes;
  int chunks, top_k, world, rank, max_tokens;
  const int* fan_rows;
  uint8_t* recv;
  const DevStatus* st;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void bulk_load(uint32_t dst, const void* src, uint32_t bytes, uint32_t bar) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes) : "memory");
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void wait_parity(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (done == 0);
}
__device__ __forceinline__ void bulk_store(void* dst, uint32_t src, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dst), "r"(src), "r"(bytes)
               : "memory");
}
// Waits until at most n bulk groups still read shared memory (n < kStages).
__device__ __forceinline__ void wait_groups_read(int n) {
  switch (n) {
    case 0: asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory"); break;
    case 1: asm volatile("cp.async.bulk.wait_group.read 1;" ::: "memory"); break;
    case 2: asm volatile("cp.async.bulk.wait_group.read 2;" ::: "memory"); break;
    default: asm volatile("cp.async.bulk.wait_group.read 3;" ::: "memory"); break;
  }
}
static_assert(kStages == 4, "wait_groups_read covers n < 4");

// The next unit in the SM-load pull's order (walk_step), skipping tokens with
// no row here; each (source, token) pair split into `chunks` units.
struct UnitCursor {
  long long j, stride, logical;
  int chunk;
  __device__ bool next(const TmaPullArgs& a, long long* item, int* r, int* t, int* chunk_out) {
    while (j < logical) {
      int rr, tt;
      long long it;
      if (walk_step(a.tok, a.world, a.rank, j, &rr, &tt, &it)) {
        bool any = false;
        for (int k = 0; k < a.top_k && !any; ++k) any = a.fan_rows[it * a.top_k + k] >= 0;
        if (any) {
          *item = it;
          *r = rr;
          *t = tt;
          *chunk_out = chunk;
          if (++chunk == a.chunks) {
            chunk = 0;
            j += stride;
          }
          return true;
        }
      }
      j += stride;
    }
    return false;
  }
};
#endif


__global__ void __launch_bounds__(32, 1) pull_tma_kernel(TmaPullArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x != 0 || call_aborted(a.st)) return;
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);
  const uint32_t stage0 = smem_u32(smem + kHeader);
  for (int s = 0; s < kStages; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bars + s)) : "memory");
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");

  UnitCursor cur{static_cast<long long>(blockIdx.x), static_cast<long long>(gridDim.x),
                 static_cast<long long>(a.world) * a.max_tokens, 0};
  long long ring_item[kStages];
  int ring_chunk[kStages];
  uint32_t ring_bytes[kStages];
  uint32_t parity = 0;  // bit s: the phase the next wait on stage s expects
  long long issued = 0, retired = 0;
  bool more = true;
  for (;;) {
    while (more && issued - retired < kStages) {
      long long item;
      int r, t, chunk;
      if (!cur.next(a, &item, &r, &t, &chunk)) {
        more = false;
        break;
      }
      const int s = static_cast<int>(issued % kStages);
      // Stage s last held unit issued-kStages, retired as group number
      // issued-kStages; groups retired..: at most retired-1-(issued-kStages)
      // of them may still be reading.
      if (issued >= kStages) wait_groups_read(static_cast<int>(retired - 1 - (issued - kStages)));
      const uint32_t off = static_cast<uint32_t>(chunk) * a.chunk_bytes;
      const uint32_t bytes = min(a.chunk_bytes, a.row_bytes - off);
      const uint8_t* src = a.peers.base[r] + a.x_off + static_cast<size_t>(t) * a.row_bytes + off;
      bulk_load(stage0 + static_cast<uint32_t>(s) * a.chunk_bytes, src, bytes, smem_u32(bars + s));
      ring_item[s] = item;
      ring_chunk[s] = chunk;
      ring_bytes[s] = bytes;
      ++issued;
    }
    if (retired == issued) break;
    const int s = static_cast<int>(retired % kStages);
    wait_parity(smem_u32(bars + s), (parity >> s) & 1u);
    parity ^= 1u << s;
    const uint32_t src = stage0 + static_cast<uint32_t>(s) * a.chunk_bytes;
    const size_t off = static_cast<size_t>(ring_chunk[s]) * a.chunk_bytes;
    for (int k = 0; k < a.top_k; ++k) {
      const int row = a.fan_rows[ring_item[s] * a.top_k + k];
      if (row >= 0) bulk_store(a.recv + static_cast<size_t>(row) * a.row_bytes + off, src, ring_bytes[s]);
    }
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    ++retired;
  }
  // Every store performed before the kernel ends (the end barrier follows).
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

}  // namespace

bool pull_tma_wanted(const weft_engine* e) {
  static const bool refused = strcmp(setting_text(Setting::kPull), "sm") == 0;
  // Quantized rows (half the bytes per row) pulled faster with SM loads:
  // 16384 tokens uniform on 4xH200, e4m3 dispatch + combine 3.58 ms with SM
  // loads against 3.77 with this ring (bench/NOTES-fp8.md).
  return !refused && e->comm->cc_major >= 9 && e->plan.dedupe != WEFT_DEDUPE_NONE && !e->plan.fp8();
}

int32_t launch_pull_tma(weft_engine* e, weft_handle* h, int max_tokens_now) {
  weft_comm* c = e->comm;
  const PlanHost& p = e->plan;
  if (p.fp8()) WEFT_FAIL(WEFT_ERR_INVALID, "internal error: the bulk-copy pull moves unquantized rows only");
  TmaPullArgs a;
  a.peers = c->peers;
  a.tok = h->tok;
  a.x_off = e->hl.x;
  a.row_bytes = static_cast<uint32_t>(p.row_bytes());
  a.chunks = static_cast<int>((a.row_bytes + kMaxChunk - 1) / kMaxChunk);
  a.chunk_bytes = ((a.row_bytes + a.chunks - 1) / a.chunks + 15u) & ~15u;
  a.top_k = p.top_k;
  a.world = p.world;
  a.rank = p.rank;
  a.max_tokens = max_tokens_now;
  a.fan_rows = h->fan_rows;
  a.recv = static_cast<uint8_t*>(h->recv);
  a.st = c->d_status;
  const size_t smem = kHeader + static_cast<size_t>(kStages) * a.chunk_bytes;
  // smem is fixed by the plan: ask once per engine (the two calls cost
  // microseconds on the host, while the GPU waits for this launch).
  if (e->pull_blocks_per_sm == 0) {
    // The kernel's limit is per process, shared by every engine: set it to
    // what any plan can need (chunk_bytes <= kMaxChunk), never lower.
    constexpr int kMostSmem = static_cast<int>(kHeader + kStages * kMaxChunk);
    WEFT_CUDA(cudaFuncSetAttribute(pull_tma_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMostSmem));
    int per_sm = 0;
    WEFT_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, pull_tma_kernel, 32, smem));
    e->pull_blocks_per_sm = std::max(1, per_sm);
  }
  const int per_sm = e->pull_blocks_per_sm;
  const long long units = static_cast<long long>(p.world) * max_tokens_now;
  const long long blocks = std::max(1ll, std::min(static_cast<long long>(c->num_sms) * per_sm, units));
  pull_tma_kernel<<<static_cast<unsigned>(blocks), 32, smem, c->stream>>>(a);
  WEFT_LAUNCHED("pull_tma", c->stream);
  return WEFT_OK;
}

}  // namespace weft
