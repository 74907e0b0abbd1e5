// The fabric probe: how fast can GPUs of one host move bytes to each other,
// one way and all at once, and does the way the bytes are moved matter?
//
// Why: bench/NOTES-nvlink.md puts weft's two data kernels at ~320-340 GB/s
// per GPU and direction on 4xH200, the rate NCCL's all-to-all reaches there,
// against 394 GB/s for one copy at a time. Whether that gap is the fabric's
// (every GPU sending and receiving at once) or the way weft moves bytes
// (SM loads, SM stores, bulk copies) decides what could bring the bf16 target
// within reach. This program moves the same bytes every way weft could and
// prints the rate of each, with nothing else (no layout, no routing).
//
// Patterns: "one-way" (GPU 0 to GPU 1, nothing else), "both ways" (0 to 1
// and 1 to 0 at once), "fan-out" (GPU 0 to
// every peer), "all-to-all" (every GPU to every peer at once: what dispatch
// and combine do). Methods:
//   ce-push / ce-pull   copy engine (cudaMemcpyAsync between peers), one
//                       stream per peer, issued on the source / destination;
//   sm-push / sm-pull   one warp per 16 KiB chunk, 16-byte vector stores to /
//                       loads from the peer, 4 in flight per lane, chunks
//                       interleaved over peers (weft's walk);
//   sm-push-peer        sm-push with each block bound to one peer;
//   tma-push / tma-pull one thread per block, a 4-stage ring of 16 KiB
//                       bulk copies (cp.async.bulk) through shared memory.
// Every GPU starts from the same host flag (a spin kernel), so start skew is
// a microsecond, not the host's launch loop. Rate = the bytes one GPU sends
// to its peers / the slowest GPU's time (the figure bench's "achieved GB/s"
// is). Median of --iters runs after 2 warm-ups.
//
// Build: nvcc -O3 -std=c++17 -arch=sm_90 bench/fabric_probe.cu -o native/build/fabric_probe
// (build.ts --tests does it). Run: native/build/fabric_probe [--mb 256] [--iters 10]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#define CHECK(call)                                                                               \
  do {                                                                                            \
    cudaError_t err_ = (call);                                                                    \
    if (err_ != cudaSuccess) {                                                                    \
      fprintf(stderr, "fabric_probe: %s failed at %s:%d: %s\n", #call, __FILE__, __LINE__,      \
              cudaGetErrorString(err_));                                                          \
      exit(1);                                                                                    \
    }                                                                                             \
  } while (0)

constexpr int kMaxGpus = 8;
constexpr uint32_t kChunk = 16384;  // bytes per unit of work (about one bf16 row of hidden 7168)
constexpr int kStages = 4;

// One GPU's view: where each of its peers' landing slots are. Slot s of GPU
// d's receive buffer holds what GPU s sent it; chunk c of the bytes for peer
// p sits at send + p * bytes.
struct Peers {
  uint8_t* send[kMaxGpus];  // each GPU's send buffer (peer-mapped)
  uint8_t* recv[kMaxGpus];  // each GPU's receive buffer (peer-mapped)
  int n, me;
  int targets[kMaxGpus];  // the GPUs this one exchanges with
  int ntargets;
  uint64_t bytes;  // per (source, destination) pair
};

__global__ void spin_until(volatile int* flag) {
  while (*flag == 0) {
  }
}

// Unit u: target targets[u % ntargets], chunk u / ntargets of that pair.
__device__ __forceinline__ void unit_of(const Peers& p, uint64_t u, int* peer, uint64_t* off) {
  *peer = p.targets[u % p.ntargets];
  *off = (u / p.ntargets) * kChunk;
}

__device__ __forceinline__ void copy_chunk(uint4* dst, const uint4* src, int lane) {
  constexpr int kVecs = kChunk / 16;
  for (int v = lane; v < kVecs; v += 32 * 4) {
    uint4 r[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) r[k] = src[v + 32 * k];
#pragma unroll
    for (int k = 0; k < 4; ++k) dst[v + 32 * k] = r[k];
  }
}

// push: this GPU's send[peer slot] -> peer's recv[me slot]; pull: peer's
// send[me slot] -> this GPU's recv[peer slot].
__global__ void sm_copy(Peers p, int push, int bind_peer) {
  const int lane = threadIdx.x & 31;
  const uint64_t chunks = p.bytes / kChunk;
  const uint64_t units = chunks * p.ntargets;
  const uint64_t warps = static_cast<uint64_t>(gridDim.x) * (blockDim.x / 32);
  const uint64_t warp = static_cast<uint64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  if (bind_peer) {
    // Block b serves target b % ntargets alone, its chunks strided over the
    // blocks that share that target.
    const int t = blockIdx.x % p.ntargets;
    const int peer = p.targets[t];
    const uint64_t groups = gridDim.x / p.ntargets;
    const uint64_t g = blockIdx.x / p.ntargets;
    if (g >= groups) return;
    for (uint64_t c = g * (blockDim.x / 32) + threadIdx.x / 32; c < chunks; c += groups * (blockDim.x / 32)) {
      const uint64_t off = c * kChunk;
      uint8_t* dst = push ? p.recv[peer] + p.me * p.bytes + off : p.recv[p.me] + peer * p.bytes + off;
      const uint8_t* src = push ? p.send[p.me] + peer * p.bytes + off : p.send[peer] + p.me * p.bytes + off;
      copy_chunk(reinterpret_cast<uint4*>(dst), reinterpret_cast<const uint4*>(src), lane);
    }
    return;
  }
  for (uint64_t u = warp; u < units; u += warps) {
    int peer;
    uint64_t off;
    unit_of(p, u, &peer, &off);
    uint8_t* dst = push ? p.recv[peer] + p.me * p.bytes + off : p.recv[p.me] + peer * p.bytes + off;
    const uint8_t* src = push ? p.send[p.me] + peer * p.bytes + off : p.send[peer] + p.me * p.bytes + off;
    copy_chunk(reinterpret_cast<uint4*>(dst), reinterpret_cast<const uint4*>(src), lane);
  }
}

__device__ __forceinline__ uint32_t smem_u32(const void* ptr) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(ptr));
}

// One thread per block: units strided over blocks, kStages in flight. Load
// chunk into a stage (mbarrier completes it), then bulk-store the stage; a
// stage is reloaded once its store group has read it.
__global__ void __launch_bounds__(32, 1) tma_copy(Peers p, int push) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (threadIdx.x != 0) return;
  extern __shared__ __align__(128) uint8_t smem[];
  uint64_t* bars = reinterpret_cast<uint64_t*>(smem);
  uint8_t* stages = smem + 128;
  for (int s = 0; s < kStages; ++s) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" ::"r"(smem_u32(bars + s)) : "memory");
  }
  asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  const uint64_t units = (p.bytes / kChunk) * p.ntargets;
  uint8_t* dsts[kStages];
  uint32_t phase[kStages] = {0, 0, 0, 0};
  uint64_t next = blockIdx.x;
  int loaded = 0, oldest = 0;
  auto load = [&](int s, uint64_t u) {
    int peer;
    uint64_t off;
    unit_of(p, u, &peer, &off);
    dsts[s] = push ? p.recv[peer] + p.me * p.bytes + off : p.recv[p.me] + peer * p.bytes + off;
    const uint8_t* src = push ? p.send[p.me] + peer * p.bytes + off : p.send[peer] + p.me * p.bytes + off;
    const uint32_t bar = smem_u32(bars + s);
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(kChunk) : "memory");
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                     smem_u32(stages + s * kChunk)),
                 "l"(src), "r"(kChunk), "r"(bar)
                 : "memory");
  };
  // Fill the ring.
  while (loaded < kStages && next < units) {
    load(loaded, next);
    next += gridDim.x;
    ++loaded;
  }
  int in_ring = loaded;
  while (in_ring > 0) {
    const int s = oldest;
    const uint32_t bar = smem_u32(bars + s);
    uint32_t done = 0;
    do {
      asm volatile(
          "{\n .reg .pred q;\n mbarrier.try_wait.parity.shared::cta.b64 q, [%1], %2;\n selp.u32 %0, 1, 0, q;\n}\n"
          : "=r"(done)
          : "r"(bar), "r"(phase[s])
          : "memory");
    } while (done == 0);
    phase[s] ^= 1u;
    asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(dsts[s]),
                 "r"(smem_u32(stages + s * kChunk)), "r"(kChunk)
                 : "memory");
    asm volatile("cp.async.bulk.commit_group;" ::: "memory");
    oldest = (oldest + 1) % kStages;
    --in_ring;
    if (next < units) {
      // Stage s is free once its store group (the newest) has been read.
      asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");
      load(s, next);
      next += gridDim.x;
      ++in_ring;
    }
  }
  asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
#endif
}

enum Method { kCePush, kCePull, kSmPush, kSmPull, kSmPushPeer, kTmaPush, kTmaPull, kMethods };
const char* kMethodName[kMethods] = {"ce-push", "ce-pull", "sm-push", "sm-pull", "sm-push-peer", "tma-push", "tma-pull"};

struct Gpu {
  uint8_t* send = nullptr;
  uint8_t* recv = nullptr;
  cudaStream_t main = nullptr;
  cudaStream_t side[kMaxGpus] = {};
  cudaEvent_t start = nullptr, stop = nullptr, fork = nullptr, join[kMaxGpus] = {};
  int sms = 0;
};

struct Probe {
  int n = 0;
  uint64_t bytes = 0;
  std::vector<Gpu> gpus;
  int* flag_host = nullptr;
  int* flag_dev = nullptr;
};

// senders[g]: the GPUs g sends to (empty: g sends nothing).
static double run_once(Probe& pr, Method m, const std::vector<std::vector<int>>& senders) {
  *reinterpret_cast<volatile int*>(pr.flag_host) = 0;
  for (int g = 0; g < pr.n; ++g) {
    CHECK(cudaSetDevice(g));
    CHECK(cudaDeviceSynchronize());
  }
  // Which GPUs run something: for pulls the receivers issue the work.
  const bool pull = m == kCePull || m == kSmPull || m == kTmaPull;
  std::vector<std::vector<int>> issue(pr.n);
  for (int g = 0; g < pr.n; ++g) {
    for (int d : senders[g]) {
      if (pull) issue[d].push_back(g);
      else issue[g].push_back(d);
    }
  }
  for (int g = 0; g < pr.n; ++g) {
    Gpu& G = pr.gpus[g];
    CHECK(cudaSetDevice(g));
    spin_until<<<1, 1, 0, G.main>>>(pr.flag_dev);
    CHECK(cudaGetLastError());
    CHECK(cudaEventRecord(G.start, G.main));
    if (issue[g].empty()) {
      CHECK(cudaEventRecord(G.stop, G.main));
      continue;
    }
    Peers p{};
    p.n = pr.n;
    p.me = g;
    p.bytes = pr.bytes;
    for (int k = 0; k < pr.n; ++k) {
      p.send[k] = pr.gpus[k].send;
      p.recv[k] = pr.gpus[k].recv;
    }
    p.ntargets = static_cast<int>(issue[g].size());
    for (int k = 0; k < p.ntargets; ++k) p.targets[k] = issue[g][k];
    switch (m) {
      case kCePush:
      case kCePull: {
        CHECK(cudaEventRecord(G.fork, G.main));
        for (int k = 0; k < p.ntargets; ++k) {
          const int peer = p.targets[k];
          CHECK(cudaStreamWaitEvent(G.side[k], G.fork, 0));
          uint8_t* dst = m == kCePush ? pr.gpus[peer].recv + g * pr.bytes : G.recv + peer * pr.bytes;
          const uint8_t* src = m == kCePush ? G.send + peer * pr.bytes : pr.gpus[peer].send + g * pr.bytes;
          CHECK(cudaMemcpyAsync(dst, src, pr.bytes, cudaMemcpyDeviceToDevice, G.side[k]));
          CHECK(cudaEventRecord(G.join[k], G.side[k]));
          CHECK(cudaStreamWaitEvent(G.main, G.join[k], 0));
        }
        break;
      }
      case kSmPush:
      case kSmPull:
      case kSmPushPeer:
        sm_copy<<<G.sms * 2, 512, 0, G.main>>>(p, m != kSmPull, m == kSmPushPeer);
        CHECK(cudaGetLastError());
        break;
      case kTmaPush:
      case kTmaPull:
        tma_copy<<<G.sms * 2, 32, 128 + kStages * kChunk, G.main>>>(p, m == kTmaPush);
        CHECK(cudaGetLastError());
        break;
      default:
        break;
    }
    CHECK(cudaEventRecord(G.stop, G.main));
  }
  __atomic_store_n(pr.flag_host, 1, __ATOMIC_SEQ_CST);
  double worst = 0;
  for (int g = 0; g < pr.n; ++g) {
    CHECK(cudaSetDevice(g));
    CHECK(cudaEventSynchronize(pr.gpus[g].stop));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, pr.gpus[g].start, pr.gpus[g].stop));
    worst = std::max(worst, static_cast<double>(ms));
  }
  return worst;
}

// Checks that the last run delivered every byte (the send buffers hold a
// pattern keyed by source, destination and offset).
static bool verify(Probe& pr, const std::vector<std::vector<int>>& senders) {
  std::vector<uint32_t> host(pr.bytes / 4);
  for (int s = 0; s < pr.n; ++s) {
    for (int d : senders[s]) {
      CHECK(cudaSetDevice(d));
      CHECK(cudaMemcpy(host.data(), pr.gpus[d].recv + s * pr.bytes, pr.bytes, cudaMemcpyDeviceToHost));
      for (size_t i = 0; i < host.size(); i += 4093) {
        const uint32_t want = static_cast<uint32_t>(s * 1000003u + d * 7919u + i);
        if (host[i] != want) {
          fprintf(stderr, "fabric_probe: %d->%d word %zu reads %u, want %u\n", s, d, i, host[i], want);
          return false;
        }
      }
    }
  }
  return true;
}

__global__ void fill_pattern(uint32_t* send, int me, int n, uint64_t words_per_peer) {
  const uint64_t total = words_per_peer * n;
  for (uint64_t i = blockIdx.x * 256ull + threadIdx.x; i < total; i += gridDim.x * 256ull) {
    const uint64_t d = i / words_per_peer;
    const uint64_t w = i % words_per_peer;
    send[i] = static_cast<uint32_t>(me * 1000003u + d * 7919u + w);
  }
}

int main(int argc, char** argv) {
  uint64_t mb = 256;
  int iters = 10;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--mb") && i + 1 < argc) mb = strtoull(argv[++i], nullptr, 10);
    else if (!strcmp(argv[i], "--iters") && i + 1 < argc) iters = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: fabric_probe [--mb MiB per pair] [--iters N]\n");
      return 2;
    }
  }
  Probe pr;
  CHECK(cudaGetDeviceCount(&pr.n));
  if (pr.n < 2) {
    fprintf(stderr, "fabric_probe: needs 2 or more GPUs, found %d\n", pr.n);
    return 1;
  }
  pr.n = std::min(pr.n, kMaxGpus);
  pr.bytes = (mb << 20) / kChunk * kChunk;
  pr.gpus.resize(pr.n);
  CHECK(cudaHostAlloc(&pr.flag_host, sizeof(int), cudaHostAllocMapped | cudaHostAllocPortable));
  CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&pr.flag_dev), pr.flag_host, 0));
  for (int g = 0; g < pr.n; ++g) {
    Gpu& G = pr.gpus[g];
    CHECK(cudaSetDevice(g));
    for (int k = 0; k < pr.n; ++k) {
      if (k == g) continue;
      int ok = 0;
      CHECK(cudaDeviceCanAccessPeer(&ok, g, k));
      if (!ok) {
        fprintf(stderr, "fabric_probe: GPU %d cannot reach GPU %d as a peer\n", g, k);
        return 1;
      }
      CHECK(cudaDeviceEnablePeerAccess(k, 0));
    }
    CHECK(cudaDeviceGetAttribute(&G.sms, cudaDevAttrMultiProcessorCount, g));
    CHECK(cudaMalloc(&G.send, pr.bytes * pr.n));
    CHECK(cudaMalloc(&G.recv, pr.bytes * pr.n));
    CHECK(cudaStreamCreateWithFlags(&G.main, cudaStreamNonBlocking));
    for (int k = 0; k < kMaxGpus; ++k) {
      CHECK(cudaStreamCreateWithFlags(&G.side[k], cudaStreamNonBlocking));
      CHECK(cudaEventCreateWithFlags(&G.join[k], cudaEventDisableTiming));
    }
    CHECK(cudaEventCreate(&G.start));
    CHECK(cudaEventCreate(&G.stop));
    CHECK(cudaEventCreateWithFlags(&G.fork, cudaEventDisableTiming));
    CHECK(cudaFuncSetAttribute(tma_copy, cudaFuncAttributeMaxDynamicSharedMemorySize, 128 + kStages * kChunk));
    fill_pattern<<<1024, 256>>>(reinterpret_cast<uint32_t*>(G.send), g, pr.n, pr.bytes / 4);
    CHECK(cudaGetLastError());
    CHECK(cudaDeviceSynchronize());
  }

  struct Pattern {
    const char* name;
    std::vector<std::vector<int>> senders;
  };
  std::vector<Pattern> patterns;
  {
    Pattern one{"one-way 0->1", std::vector<std::vector<int>>(pr.n)};
    one.senders[0] = {1};
    Pattern pair{"both ways 0<->1", std::vector<std::vector<int>>(pr.n)};
    pair.senders[0] = {1};
    pair.senders[1] = {0};
    Pattern fan{"fan-out 0->all", std::vector<std::vector<int>>(pr.n)};
    for (int d = 1; d < pr.n; ++d) fan.senders[0].push_back(d);
    Pattern a2a{"all-to-all", std::vector<std::vector<int>>(pr.n)};
    for (int s = 0; s < pr.n; ++s) {
      // Each GPU starts at a different peer, so no destination is everyone's first.
      for (int k = 1; k < pr.n; ++k) a2a.senders[s].push_back((s + k) % pr.n);
    }
    patterns = {one, pair, fan, a2a};
  }
  printf("fabric_probe: %d GPUs, %llu MiB per (source, destination) pair, median of %d\n", pr.n,
         static_cast<unsigned long long>(pr.bytes >> 20), iters);
  printf("| pattern | method | ms | GB/s per sending GPU | verified |\n|---|---|---:|---:|---|\n");
  for (const Pattern& pat : patterns) {
    size_t pairs_max = 0;
    for (const auto& s : pat.senders) pairs_max = std::max(pairs_max, s.size());
    for (int m = 0; m < kMethods; ++m) {
      for (int g = 0; g < pr.n; ++g) {
        CHECK(cudaSetDevice(g));
        CHECK(cudaMemset(pr.gpus[g].recv, 0xA5, pr.bytes * pr.n));
      }
      std::vector<double> t;
      for (int i = 0; i < iters + 2; ++i) {
        const double ms = run_once(pr, static_cast<Method>(m), pat.senders);
        if (i >= 2) t.push_back(ms);
      }
      std::sort(t.begin(), t.end());
      const double med = t[t.size() / 2];
      const double gbps = static_cast<double>(pr.bytes) * pairs_max / (med * 1e-3) / 1e9;
      const bool ok = verify(pr, pat.senders);
      printf("| %s | %s | %.3f | %.1f | %s |\n", pat.name, kMethodName[m], med, gbps, ok ? "yes" : "NO");
      fflush(stdout);
      if (!ok) return 1;
    }
  }
  return 0;
}
