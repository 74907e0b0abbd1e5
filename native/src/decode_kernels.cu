// Decode mode's dispatch kernels (decode.h; combine's are in
// decode_combine.cu): every grid is fixed by the capacity and
// every kernel reads the step's sizes from device memory, so the same
// launches serve every step and replay from a CUDA graph. Kernels after a
// barrier return at once when the step was aborted (an error on any rank).
#include "decode_args.h"

namespace weft {
namespace {

// One block: the step's status reset, the token count check, then the
// source side of the layout (route.cu's rule: checks, replica rule, the
// ordinal of each pair among this rank's pairs of its slot in token order,
// per-slot totals). Warp w orders tokens [w·per, (w+1)·per); a scan over
// the warps' counts per slot turns those into rank-wide ordinals.
__global__ void __launch_bounds__(1024) dec_route_kernel(DecArgs a) {
  extern __shared__ int cnt[];  // [route_warps][slots]
  __shared__ int s_tokens;
  const int K = a.top_k;
  uint8_t* heap = a.peers.base[a.rank];
  int* ctl = reinterpret_cast<int*>(heap + a.hh.ctl);
  if (threadIdx.x == 0) {
    a.st->call_err = 0u;
    a.st->abort = 0u;
    int T = *reinterpret_cast<volatile int*>(ctl);
    if (T < 0 || T > a.cap) {
      dec_bad(a.st, static_cast<unsigned long long>(T < 0 ? 0 : T), kBadCapacity);
      T = 0;
    }
    a.st->tokens = T;
    ctl[1] = T;  // the checked count, read by the peers
    s_tokens = T;
  }
  for (int i = threadIdx.x; i < a.route_warps * a.slots; i += blockDim.x) cnt[i] = 0;
  __syncthreads();
  const int T = s_tokens;
  const int* idx = heap_at<int>(a, a.rank, a.hh.idx);
  const float* w = heap_at<float>(a, a.rank, a.hh.w);
  int* slot = heap_at<int>(a, a.rank, a.hh.slot);
  int* ord = heap_at<int>(a, a.rank, a.hh.ord);
  for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
    const int e = idx[i];
    int s = -1;
    if (e < -1 || e >= a.rt.experts) {
      dec_bad(a.st, static_cast<unsigned long long>(i), kBadExpertRange);
    } else if (e >= 0) {
      s = resolve_slot(a.rt, a.rank, i / K, e);
    }
    if (isnan(w[i])) dec_bad(a.st, static_cast<unsigned long long>(i), kBadNanWeight);
    slot[i] = s;
  }
  __syncthreads();
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x & 31;
  const int per = T == 0 ? 1 : (T + a.route_warps - 1) / a.route_warps;
  if (warp < a.route_warps && lane < K) {
    int* c = cnt + warp * a.slots;
    const unsigned kmask = K == 32 ? 0xffffffffu : ((1u << K) - 1u);
    const int t1 = min(T, (warp + 1) * per);
    for (int t = warp * per; t < t1; ++t) {
      const int s = slot[t * K + lane];
      const unsigned same = __match_any_sync(kmask, s);
      if (s >= 0 && (same & ((1u << lane) - 1u)) != 0u) {
        dec_bad(a.st, static_cast<unsigned long long>(t * K + lane), kBadDuplicate);
      }
      const int o = s >= 0 ? c[s] : -1;
      __syncwarp(kmask);
      if (s >= 0) c[s] = o + 1;
      __syncwarp(kmask);
      ord[t * K + lane] = o;
    }
  }
  __syncthreads();
  int* total = heap_at<int>(a, a.rank, a.hh.slot_count);
  for (int s = threadIdx.x; s < a.slots; s += blockDim.x) {
    int run = 0;
    for (int v = 0; v < a.route_warps; ++v) {
      const int n = cnt[v * a.slots + s];
      cnt[v * a.slots + s] = run;
      run += n;
    }
    total[s] = run;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < T * K; i += blockDim.x) {
    const int s = slot[i];
    if (s >= 0) ord[i] += cnt[((i / K) / per) * a.slots + s];
  }
}

// The decode barrier: comm_barrier.cu's protocol over the decode region's flags,
// with the epoch counted on the device (a replay continues the sequence)
// and two error bits (bad input, overflow) carried to every rank.
__global__ void __launch_bounds__(32) dec_barrier_kernel(DecArgs a) {
  const int lane = threadIdx.x;
  DecodeStatus* st = a.st;
  unsigned long long epoch = 0;
  if (lane == 0) {
    epoch = st->epoch + 1;
    st->epoch = epoch;
  }
  epoch = __shfl_sync(0xffffffffu, epoch, 0);
  const bool skip = ld_volatile_u32(&st->timeout) != 0u;  // a peer is already missing: do not wait again
  const unsigned err = ld_volatile_u32(&st->call_err) & 3u;
  __threadfence_system();
  const uint64_t slot_off = a.hh.flags + ((epoch & 1ull) * kMaxWorld) * sizeof(uint64_t);
  if (!skip && lane < a.world) {
    uint64_t* f = reinterpret_cast<uint64_t*>(a.peers.base[lane] + slot_off) + a.rank;
    st_release_sys_u64(f, (epoch << 2) | err);
  }
  bool arrived = true;
  unsigned bits = 0u;
  if (!skip && lane < a.world) {
    const uint64_t* f = reinterpret_cast<const uint64_t*>(a.peers.base[a.rank] + slot_off) + lane;
    const uint64_t start = globaltimer_ns();
    arrived = false;
    while (true) {
      const uint64_t v = ld_acquire_sys_u64(f);
      if ((v >> 2) >= epoch) {
        arrived = true;
        bits = static_cast<unsigned>(v & 3ull);
        break;
      }
      if (globaltimer_ns() - start > a.timeout_ns) break;
    }
  }
  const unsigned missing = __ballot_sync(0xffffffffu, !arrived);
  const unsigned bad = __ballot_sync(0xffffffffu, (bits & 1u) != 0u);
  const unsigned over = __ballot_sync(0xffffffffu, (bits & 2u) != 0u);
  if (lane == 0) {
    const unsigned others = ~(1u << a.rank);
    if (missing != 0u) atomicOr(&st->timeout, missing);
    if (bad & others) atomicOr(&st->peer_bad, bad & others);
    if (over & others) atomicOr(&st->peer_overflow, over & others);
    if (skip || (missing | bad | over | err) != 0u) atomicExch(&st->abort, 1u);
    volatile DecodeStatus* m = a.mirror;
    m->epoch = st->epoch;
    m->bad_key = st->bad_key;
    m->over_key = st->over_key;
    m->bad = st->bad;
    m->overflow = st->overflow;
    m->peer_bad = st->peer_bad;
    m->peer_overflow = st->peer_overflow;
    m->timeout = st->timeout;
    __threadfence_system();
  }
}

// One block: every rank's token count, and for each local expert l the
// base of each source rank's rows (Σ of the lower ranks' totals), the
// count, and the overflow check.
__global__ void dec_bases_kernel(DecArgs a) {
  if (dec_aborted(a.st)) return;
  int* tokens = loc_at<int>(a, a.lh.tokens);
  int* bases = loc_at<int>(a, a.lh.bases);
  int* counts = loc_at<int>(a, a.lh.counts);
  for (int r = threadIdx.x; r < a.world; r += blockDim.x) tokens[r] = heap_at<int>(a, r, a.hh.ctl)[1];
  for (int l = threadIdx.x; l < a.local; l += blockDim.x) {
    int run = 0;
    for (int r = 0; r < a.world; ++r) {
      bases[r * a.local + l] = run;
      run += heap_at<int>(a, r, a.hh.slot_count)[a.slot0 + l];
    }
    counts[l] = min(run, a.ecap);
    if (run > a.ecap) {
      atomicMin(&a.st->over_key, (static_cast<unsigned long long>(l) << 32) | static_cast<unsigned>(run));
      atomicExch(&a.st->overflow, 1u);
      atomicOr(&a.st->call_err, 2u);
    }
  }
}

// A warp per (source rank, token), sources interleaved from the next rank
// on: reads the source's slots, finds the pairs of this rank, writes their
// index entries, reads the row once over NVLink and stores it into every
// receive row it feeds. Rows past an expert's capacity are dropped. The
// whole grid also writes the padding's index entries.
__global__ void __launch_bounds__(kDecThreads) dec_pull_kernel(DecArgs a) {
  __shared__ int rows_s[kDecWarps][32];
  if (dec_aborted(a.st)) return;
  const int K = a.top_k;
  const int lane = threadIdx.x & 31;
  const int wib = threadIdx.x / 32;
  const int* tokens = loc_at<int>(a, a.lh.tokens);
  const int* bases = loc_at<int>(a, a.lh.bases);
  const int* counts = loc_at<int>(a, a.lh.counts);
  float* rw = loc_at<float>(a, a.lh.recv_weights);
  int* sr = loc_at<int>(a, a.lh.src_rank);
  int* stk = loc_at<int>(a, a.lh.src_token);
  int* sk = loc_at<int>(a, a.lh.src_k);
  int* fan = loc_at<int>(a, a.lh.fan_rows);
  uint4* recv = loc_at<uint4>(a, a.lh.recv);
  const long long threads = static_cast<long long>(gridDim.x) * kDecThreads;
  const long long tid = blockIdx.x * static_cast<long long>(kDecThreads) + threadIdx.x;
  for (long long i = tid; i < static_cast<long long>(a.local) * a.ecap; i += threads) {
    const int l = static_cast<int>(i / a.ecap);
    if (static_cast<int>(i % a.ecap) >= counts[l]) {
      rw[i] = 0.f;
      sr[i] = -1;
      stk[i] = -1;
      sk[i] = -1;
    }
  }
  const long long items = static_cast<long long>(a.world) * a.cap;
  for (long long j = tid / 32; j < items; j += threads / 32) {
    const int r = (a.rank + 1 + static_cast<int>(j % a.world)) % a.world;
    const int t = static_cast<int>(j / a.world);
    if (t >= tokens[r]) continue;
    int row = -1;
    if (lane < K) {
      const size_t p = static_cast<size_t>(t) * K + lane;
      const int s = heap_at<int>(a, r, a.hh.slot)[p];
      const int l = s - a.slot0;
      if (s >= 0 && l >= 0 && l < a.local) {
        const int pos = bases[r * a.local + l] + heap_at<int>(a, r, a.hh.ord)[p];
        if (pos < a.ecap) {
          row = l * a.ecap + pos;
          rw[row] = heap_at<float>(a, r, a.hh.w)[p];
          sr[row] = r;
          stk[row] = t;
          sk[row] = lane;
        }
      }
      fan[(static_cast<size_t>(r) * a.cap + t) * K + lane] = row;
    }
    const unsigned mask = __ballot_sync(0xffffffffu, row >= 0);
    if (mask == 0u) continue;
    rows_s[wib][lane] = row;
    __syncwarp();
    const uint4* src = heap_at<uint4>(a, r, a.hh.x) + static_cast<size_t>(t) * a.row_vecs;
    // kInFlight loads per lane before their stores: NVLink latency, not
    // bandwidth, bounds a row of a few KiB.
    for (int v0 = lane; v0 < a.row_vecs; v0 += 32 * kInFlight) {
      uint4 val[kInFlight];
#pragma unroll
      for (int u = 0; u < kInFlight; ++u) {
        if (v0 + u * 32 < a.row_vecs) val[u] = src[v0 + u * 32];
      }
      for (unsigned m = mask; m != 0u; m &= m - 1u) {
        uint4* dst = recv + static_cast<size_t>(rows_s[wib][__ffs(m) - 1]) * a.row_vecs;
#pragma unroll
        for (int u = 0; u < kInFlight; ++u) {
          if (v0 + u * 32 < a.row_vecs) dst[v0 + u * 32] = val[u];
        }
      }
    }
    __syncwarp();
  }
}

size_t route_smem(const DecodeEngine* d) { return static_cast<size_t>(d->route_warps) * d->plan.slots * sizeof(int); }

}  // namespace

DecArgs decode_args(DecodeEngine* d) {
  const weft_comm* c = d->comm;
  const PlanHost& p = d->plan;
  DecArgs a{};
  a.peers = c->peers;
  a.rt = d->rt;
  a.rank = p.rank;
  a.world = p.world;
  a.cap = d->cap;
  a.ecap = d->ecap;
  a.local = d->local;
  a.slot0 = d->slot0;
  a.top_k = p.top_k;
  a.slots = p.slots;
  a.route_warps = d->route_warps;
  a.row_vecs = static_cast<int>(p.row_bytes() / 16);
  a.wire_row_bytes = p.wire_row_bytes();
  a.hh = d->hh;
  a.loc = d->block;
  a.lh = d->lh;
  a.st = d->d_status;
  a.mirror = d->d_mirror;
  a.timeout_ns = static_cast<uint64_t>(c->timeout_ms) * 1000000ull;
  a.weighted = p.combine == WEFT_WEIGHTED ? 1 : 0;
  return a;
}

unsigned decode_item_blocks(const DecodeEngine* d) {
  const long long items = static_cast<long long>(d->plan.world) * d->cap;
  const unsigned want = grid_for(items, kDecWarps);
  const unsigned most = static_cast<unsigned>(d->comm->num_sms > 0 ? d->comm->num_sms * 4 : 512);
  return want < most ? (want > 0 ? want : 1u) : most;
}

int32_t decode_barrier(const DecArgs& a, cudaStream_t s) {
  dec_barrier_kernel<<<1, 32, 0, s>>>(a);
  DEC_LAUNCHED("decode barrier");
  return WEFT_OK;
}

int32_t decode_prepare(DecodeEngine* d) {
  // The route block's per-warp slot counts must fit in 48 KiB of shared memory,
  // less the kernel's static shared int (s_tokens): dynamic + static > 48 KiB
  // fails the launch (e.g. 512 slots gave 24 warps x 2 KiB = exactly 48 KiB).
  const long long per_warp = static_cast<long long>(d->plan.slots) * sizeof(int);
  long long warps = (48 * 1024 - 64) / (per_warp > 0 ? per_warp : 1);
  if (warps > 32) warps = 32;
  if (warps < 1) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, d->plan.rank,
                 "decode mode supports at most 12272 expert slots (the plan has %d): use fewer experts or replicas",
                 d->plan.slots);
  }
  d->route_warps = static_cast<int>(warps);
  return WEFT_OK;
}

int32_t decode_enqueue_dispatch(DecodeEngine* d, cudaStream_t s) {
  const DecArgs a = decode_args(d);
  dec_route_kernel<<<1, d->route_warps * 32, route_smem(d), s>>>(a);
  DEC_LAUNCHED("decode route");
  WEFT_TRY(decode_barrier(a, s));
  dec_bases_kernel<<<1, 256, 0, s>>>(a);
  DEC_LAUNCHED("decode bases");
  dec_pull_kernel<<<decode_item_blocks(d), kDecThreads, 0, s>>>(a);
  DEC_LAUNCHED("decode pull");
  return decode_barrier(a, s);
}

}  // namespace weft
