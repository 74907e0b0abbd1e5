// weft_comm's lifetime: the symmetric heap shared over CUDA IPC, the peers'
// heaps mapped here, creation and destruction. The bounded barrier, the call
// status and the queued tails: comm_barrier.cu; the optional NCCL
// communicator: comm_nccl.cu.
#include <string.h>

#include <string>

#include "comm.h"

namespace weft {
namespace {

void close_peers(weft_comm* c) {
  for (int p = 0; p < c->local_world; ++p) {
    if (p != c->local_rank && c->peers.base[p] != nullptr) {
      cudaIpcCloseMemHandle(c->peers.base[p]);
      c->peers.base[p] = nullptr;
    }
  }
  c->peers_open = false;
  (void)cudaGetLastError();
}

int32_t comm_init(weft_comm* c, const uint8_t* nccl_id) {
  WEFT_CUDA(cudaSetDevice(c->device));
  cudaDeviceProp prop;
  WEFT_CUDA(cudaGetDeviceProperties(&prop, c->device));
  c->num_sms = prop.multiProcessorCount;
  c->cc_major = prop.major;
  if (const int n = setting_int(Setting::kSms); n >= 1 && n < c->num_sms) c->num_sms = n;
  c->smem_optin = prop.sharedMemPerBlockOptin;
  WEFT_CUDA(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
  for (weft_comm::Tail& t : c->tails) WEFT_CUDA(cudaEventCreateWithFlags(&t.done, cudaEventDisableTiming));

  // Outputs are allocated stream-ordered from the device's default pool; keep
  // freed blocks cached instead of returning them to the driver at each sync.
  cudaMemPool_t pool;
  WEFT_CUDA(cudaDeviceGetDefaultMemPool(&pool, c->device));
  uint64_t threshold = UINT64_MAX;
  WEFT_CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold));

  void* heap = nullptr;
  cudaError_t e = cudaMalloc(&heap, c->heap_bytes);
  if (e != cudaSuccess) {
    WEFT_FAIL(WEFT_ERR_CUDA, "cannot allocate the %llu-byte symmetric heap on device %d: %s",
              static_cast<unsigned long long>(c->heap_bytes), c->device, cudaGetErrorString(e));
  }
  c->heap = static_cast<uint8_t*>(heap);
  c->peers.base[c->local_rank] = c->heap;
  WEFT_CUDA(cudaMemset(c->heap, 0, kCommReserved));
  HeapHeader hdr;
  hdr.magic = kHeapMagic;
  hdr.heap_bytes = c->heap_bytes;
  hdr.world = c->local_world;
  hdr.rank = c->local_rank;
  WEFT_CUDA(cudaMemcpy(c->heap + kHeaderOffset, &hdr, sizeof hdr, cudaMemcpyHostToDevice));

  void* st = nullptr;
  WEFT_CUDA(cudaMalloc(&st, sizeof(DevStatus)));
  c->d_status = static_cast<DevStatus*>(st);
  void* hst = nullptr;
  WEFT_CUDA(cudaMallocHost(&hst, sizeof(DevStatus)));
  c->h_status = static_cast<DevStatus*>(hst);
  memset(c->h_status, 0, sizeof(DevStatus));
  void* dst = nullptr;
  WEFT_TRY(alloc_mapped(sizeof(DevStatus) * weft_comm::kMaxTails, &hst, &dst));
  c->h_tail_status = static_cast<DevStatus*>(hst);
  c->d_tail_status = static_cast<DevStatus*>(dst);
  // The flags must be zero before any peer can see this heap's IPC handle.
  WEFT_CUDA(cudaDeviceSynchronize());

  if (nccl_id != nullptr) WEFT_TRY(nccl_init(c, nccl_id));
  if (c->nodes > 1 && c->nccl == nullptr) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "a communicator over %d nodes needs NCCL between them: pass an NCCL unique id (nccl_id) from rank 0",
              c->nodes);
  }
  return WEFT_OK;
}

}  // namespace

std::string rank_list(unsigned mask) {
  std::string s;
  for (int r = 0; r < kMaxWorld; ++r) {
    if ((mask >> r) & 1u) {
      if (!s.empty()) s += ", ";
      s += std::to_string(r);
    }
  }
  return s;
}

int first_rank(unsigned mask) { return mask == 0u ? -1 : __builtin_ctz(mask); }

std::string node_rank_list(const weft_comm* c, unsigned mask) {
  std::string s;
  for (int r = 0; r < kMaxWorld; ++r) {
    if ((mask >> r) & 1u) {
      if (!s.empty()) s += ", ";
      s += std::to_string(c->node * c->local_world + r);
    }
  }
  return s;
}

int node_first_rank(const weft_comm* c, unsigned mask) {
  return mask == 0u ? -1 : c->node * c->local_world + __builtin_ctz(mask);
}

void comm_retain(weft_comm* c) { c->refs.fetch_add(1); }

void comm_release(weft_comm* c) {
  if (c == nullptr || c->refs.fetch_sub(1) != 1) return;
  if (c->device >= 0) cudaSetDevice(c->device);
  if (c->peers_open) close_peers(c);
  if (c->nccl != nullptr) nccl_finish(c);
  if (c->stream != nullptr) cudaStreamSynchronize(c->stream);
  if (PhaseProfile::enabled()) c->profile.print(c->rank);
  if (c->heap != nullptr) cudaFree(c->heap);
  if (c->d_status != nullptr) cudaFree(c->d_status);
  if (c->h_status != nullptr) cudaFreeHost(c->h_status);
  if (c->h_tail_status != nullptr) cudaFreeHost(c->h_tail_status);
  for (weft_comm::Tail& t : c->tails) {
    if (t.done != nullptr) cudaEventDestroy(t.done);
  }
  if (c->stream != nullptr) cudaStreamDestroy(c->stream);
  (void)cudaGetLastError();
  delete c;
}

int32_t comm_enter(weft_comm* c, bool need_peers) {
  if (c == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the communicator is NULL");
  if (c->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the communicator was destroyed");
  if (c->broken != WEFT_OK) {
    set_error("the communicator is unusable after an earlier failure (%s); destroy it and create a new one",
              c->broken_why.c_str());
    return c->broken;
  }
  if (need_peers && !c->peers_open) {
    WEFT_FAIL(WEFT_ERR_INVALID, "peers are not mapped yet: call weft_comm_open_peers first");
  }
  WEFT_CUDA(cudaSetDevice(c->device));
  return WEFT_OK;
}

void comm_mark_broken(weft_comm* c, int32_t code, const char* why) {
  if (c->broken == WEFT_OK) {
    c->broken = code;
    c->broken_why = why;
  }
}

int32_t alloc_mapped(size_t bytes, void** host, void** device) {
  *host = nullptr;
  *device = nullptr;
  WEFT_CUDA(cudaHostAlloc(host, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
  memset(*host, 0, bytes);
  const cudaError_t e = cudaHostGetDevicePointer(device, *host, 0);
  if (e != cudaSuccess) {
    cudaFreeHost(*host);
    *host = nullptr;
    WEFT_FAIL(WEFT_ERR_CUDA, "cudaHostGetDevicePointer: %s (this GPU cannot write mapped host memory)",
              cudaGetErrorString(e));
  }
  return WEFT_OK;
}

int32_t comm_create(int32_t device, int32_t rank, int32_t world, const uint8_t* nccl_id, uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  if (world < 1 || world > kMaxWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "world = %d; it must be in [1, %d] for one node (more ranks: weft_comm_create2 with the node size)",
              world, kMaxWorld);
  }
  return comm_create2(device, rank, world, rank, world, nccl_id, heap_bytes, timeout_ms, out);
}

int32_t comm_create2(int32_t device, int32_t rank, int32_t world, int32_t local_rank, int32_t local_world,
                     const uint8_t* nccl_id, uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  if (world < 1 || world > kMaxHierWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID, "world = %d; it must be in [1, %d]", world, kMaxHierWorld);
  }
  if (rank < 0 || rank >= world) WEFT_FAIL(WEFT_ERR_INVALID, "rank = %d; it must be in [0, world = %d)", rank, world);
  if (local_world < 1 || local_world > kMaxWorld || world % local_world != 0) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "local_world = %d; ranks per node must be in [1, %d] and divide world = %d (every node the same size)",
              local_world, kMaxWorld, world);
  }
  if (local_rank < 0 || local_rank >= local_world || rank % local_world != local_rank) {
    WEFT_FAIL(WEFT_ERR_INVALID,
              "local_rank = %d for rank %d with %d ranks per node; nodes are consecutive ranks, so it must be "
              "rank %% local_world = %d",
              local_rank, rank, local_world, rank % local_world);
  }
  WEFT_TRY(set_device(device));
  weft_comm* c = new weft_comm();
  c->device = device;
  c->rank = rank;
  c->world = world;
  c->local_rank = local_rank;
  c->local_world = local_world;
  c->node = rank / local_world;
  c->nodes = world / local_world;
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
  const uint64_t granule = 4096;
  uint64_t bytes = heap_bytes < kCommReserved ? kCommReserved : heap_bytes;
  c->heap_bytes = (bytes + granule - 1) / granule * granule;
  int32_t rc = comm_init(c, nccl_id);
  if (rc != WEFT_OK) {
    comm_release(c);
    return rc;
  }
  debug_log("rank %d of %d (node %d of %d, local %d of %d) on device %d: heap %llu bytes, %d SMs, nccl %s", rank,
            world, c->node, c->nodes, local_rank, local_world, device,
            static_cast<unsigned long long>(c->heap_bytes), c->num_sms, c->nccl ? "yes" : "no");
  *out = c;
  return WEFT_OK;
}

int32_t comm_ipc_handle(weft_comm_t c, uint8_t* out) {
  static_assert(sizeof(cudaIpcMemHandle_t) == WEFT_IPC_HANDLE_BYTES, "IPC handle size");
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL (needs %d bytes)", WEFT_IPC_HANDLE_BYTES);
  WEFT_TRY(comm_enter(c, false));
  cudaIpcMemHandle_t h;
  WEFT_CUDA(cudaIpcGetMemHandle(&h, c->heap));
  memcpy(out, &h, sizeof h);
  return WEFT_OK;
}

int32_t comm_open_peers(weft_comm_t c, const uint8_t* handles) {
  if (handles == nullptr) {
    WEFT_FAIL(WEFT_ERR_INVALID, "handles is NULL (needs local_world x %d bytes: the node's ranks)", WEFT_IPC_HANDLE_BYTES);
  }
  WEFT_TRY(comm_enter(c, false));
  CommLock lock(c);
  if (c->peers_open) WEFT_FAIL(WEFT_ERR_INVALID, "peers are already mapped");

  // Direct peer access lets kernels load and store over NVLink; the IPC flag
  // below would enable it lazily, this makes it explicit where allowed.
  int count = 0;
  WEFT_CUDA(cudaGetDeviceCount(&count));
  for (int d = 0; d < count; ++d) {
    if (d == c->device) continue;
    int can = 0;
    if (cudaDeviceCanAccessPeer(&can, c->device, d) == cudaSuccess && can) {
      cudaError_t e = cudaDeviceEnablePeerAccess(d, 0);
      if (e != cudaSuccess && e != cudaErrorPeerAccessAlreadyEnabled) {
        debug_log("cudaDeviceEnablePeerAccess(%d): %s", d, cudaGetErrorString(e));
      }
    }
  }
  (void)cudaGetLastError();

  // Handles of this node's ranks, by local rank (all ranks on one node).
  const int first = c->node * c->local_world;
  for (int p = 0; p < c->local_world; ++p) {
    if (p == c->local_rank) continue;
    const int gp = first + p;  // the peer's global rank, for messages
    cudaIpcMemHandle_t h;
    memcpy(&h, handles + static_cast<size_t>(p) * WEFT_IPC_HANDLE_BYTES, sizeof h);
    void* ptr = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_CUDA, gp,
                "cannot map rank %d's heap on rank %d: %s (%s). Ranks of one node need peer access between "
                "their GPUs, and the node's handles in local rank order",
                gp, c->rank, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    c->peers.base[p] = static_cast<uint8_t*>(ptr);
    HeapHeader hdr;
    e = cudaMemcpy(&hdr, c->peers.base[p] + kHeaderOffset, sizeof hdr, cudaMemcpyDefault);
    if (e != cudaSuccess) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_CUDA, gp, "cannot read rank %d's heap header: %s", gp, cudaGetErrorString(e));
    }
    if (hdr.magic != kHeapMagic || hdr.rank != p || hdr.world != c->local_world) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_INVALID, gp,
                "handle %d is not local rank %d's heap of a node of %d (it says local rank %d of %d): pass the "
                "handles of the node's ranks in rank order",
                p, p, c->local_world, hdr.rank, hdr.world);
    }
    if (hdr.heap_bytes != c->heap_bytes) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_INVALID, gp,
                "rank %d's heap has %llu bytes and rank %d's has %llu: every rank must pass the same heap_bytes",
                gp, static_cast<unsigned long long>(hdr.heap_bytes), c->rank,
                static_cast<unsigned long long>(c->heap_bytes));
    }
  }
  c->peers_open = true;
  return comm_barrier_now(c, "open_peers");
}

int32_t comm_barrier(weft_comm_t c) {
  WEFT_TRY(comm_enter(c, true));
  CommLock lock(c);
  WEFT_TRY(comm_settle(c));
  return comm_barrier_now(c, "weft_comm_barrier");
}

int32_t comm_sync(weft_comm_t c) {
  WEFT_TRY(comm_enter(c, false));
  CommLock lock(c);
  return comm_settle(c);
}

int32_t comm_destroy(weft_comm_t c) {
  if (c == nullptr) return WEFT_OK;
  {
    CommLock lock(c);
    if (c->closed) WEFT_FAIL(WEFT_ERR_INVALID, "the communicator was already destroyed");
    cudaSetDevice(c->device);
    // Queued tails finish first; their errors no longer matter.
    cudaStreamSynchronize(c->stream);
    c->tail_count = 0;
    // Best effort: wait until every peer stops reading this heap before it is
    // unmapped; bounded by the timeout when a peer is gone.
    if (c->peers_open && c->broken == WEFT_OK) {
      if (comm_reset_status(c) == WEFT_OK && comm_barrier_async(c, "weft_comm_destroy") == WEFT_OK) {
        cudaStreamSynchronize(c->stream);
      }
    }
    if (c->peers_open) close_peers(c);
    nccl_finish(c);
    c->closed = true;
    (void)cudaGetLastError();
  }
  comm_release(c);
  return WEFT_OK;
}

}  // namespace weft
