// weft_comm: the symmetric heap shared over CUDA IPC, the bounded barrier,
// and the optional NCCL communicator.
//
// Barrier protocol. Every heap starts with flags[2][kMaxWorld] (uint64). The
// host numbers barriers 1, 2, 3, … (the same sequence on every rank). At
// barrier e, rank r writes (e << 1 | err) into flags[e & 1][r] of every rank
// (its own included) with a system-scope release store, then spins with
// acquire loads on its own flags[e & 1][p] for every p until each shows an
// epoch ≥ e, or until the timeout (read from %globaltimer) passes. A rank can
// run at most one barrier ahead of a peer (it cannot pass e+1 before the peer
// arrives at e+1), so the parity slot of epoch e holds e or e-2 and never
// loses an error bit to a later barrier. The error bit carries "my input was
// bad" to every rank, so all ranks fail the call together; a peer that never
// arrives is reported by rank, and the comm is marked broken.
#include <stdio.h>
#include <string.h>

#include <chrono>
#include <string>
#include <thread>

#include "comm.h"

namespace weft {
namespace {

// epoch_at, when not null, holds the epoch (written by an earlier kernel of
// the call), so that a captured graph can replay the launch. publish, when
// not null, receives the status once the barrier is done (a call's end
// barrier: its tail's slot in mapped host memory).
__global__ void __launch_bounds__(32) barrier_kernel(PeerTable peers, int rank, int world, uint64_t epoch,
                                                     const uint64_t* epoch_at, uint64_t timeout_ns, DevStatus* st,
                                                     DevStatus* publish) {
  const int lane = threadIdx.x;
  if (epoch_at != nullptr) epoch = *epoch_at;
  // A peer already failed to arrive in this call: waiting again would only
  // double the time to the error.
  if (ld_volatile_u32(&st->timeout_mask) != 0u) {
    if (lane == 0 && publish != nullptr) publish_status(st, publish);
    return;
  }
  const unsigned err = (ld_volatile_u32(&st->local_bad) | ld_volatile_u32(&st->internal)) != 0u ? 1u : 0u;
  // Make this rank's earlier writes (its own kernels' remote stores included)
  // visible system-wide before announcing arrival.
  __threadfence_system();
  if (lane < world) {
    uint64_t* slot = reinterpret_cast<uint64_t*>(peers.base[lane] + flag_offset(epoch, rank));
    st_release_sys_u64(slot, (epoch << 1) | err);
  }
  bool arrived = true;
  bool peer_err = false;
  if (lane < world) {
    const uint64_t* flag = reinterpret_cast<const uint64_t*>(peers.base[rank] + flag_offset(epoch, lane));
    const uint64_t start = globaltimer_ns();
    arrived = false;
    while (true) {
      const uint64_t v = ld_acquire_sys_u64(flag);
      if ((v >> 1) >= epoch) {
        arrived = true;
        peer_err = (v & 1ull) != 0ull;
        break;
      }
      if (globaltimer_ns() - start > timeout_ns) break;
    }
  }
  const unsigned missing = __ballot_sync(0xffffffffu, !arrived);
  const unsigned errs = __ballot_sync(0xffffffffu, peer_err);
  if (lane == 0) {
    if (errs != 0u) atomicOr(&st->peer_err_mask, errs);
    if (missing != 0u) atomicOr(&st->timeout_mask, missing);
    if ((errs | missing) != 0u) atomicExch(&st->abort, 1u);
    // Every write to st of this call is done: earlier kernels have ended,
    // and this one's were made by this thread.
    if (publish != nullptr) publish_status(st, publish);
  }
}

__global__ void reset_status_kernel(DevStatus* st) { reset_status(st); }

__global__ void report_bad_kernel(DevStatus* st, unsigned long long pos, unsigned kind) { report_bad(st, pos, kind); }

using Clock = std::chrono::steady_clock;


void nccl_abort(weft_comm* c) {
  if (c->nccl != nullptr && c->nccl_api != nullptr) c->nccl_api->CommAbort(c->nccl);
  c->nccl = nullptr;
}

// Initializes NCCL in nonblocking mode where the library supports it, so that
// a peer that never joins yields WEFT_ERR_TIMEOUT instead of a hang.
int32_t nccl_init(weft_comm* c, const uint8_t* id_bytes) {
  const NcclApi* api = nccl_api();
  if (api == nullptr) return WEFT_ERR_NCCL;
  c->nccl_api = api;
  ncclUniqueId id;
  memcpy(id.internal, id_bytes, sizeof id.internal);
  if (api->CommInitRankConfig == nullptr) {
    ncclResult_t r = api->CommInitRank(&c->nccl, c->world, id, c->rank);
    if (r != ncclSuccess) {
      c->nccl = nullptr;
      WEFT_FAIL_AT(WEFT_ERR_NCCL, c->rank, "ncclCommInitRank(rank %d of %d) failed: %s", c->rank, c->world,
                api->GetErrorString(r));
    }
    return WEFT_OK;
  }
  ncclConfigV21400 cfg;
  cfg.size = sizeof cfg;
  cfg.magic = kNcclApiMagic;
  cfg.version = kNcclConfigVersion;
  cfg.blocking = 0;
  cfg.cgaClusterSize = kNcclConfigUndefInt;
  cfg.minCTAs = kNcclConfigUndefInt;
  cfg.maxCTAs = kNcclConfigUndefInt;
  cfg.netName = nullptr;
  cfg.splitShare = kNcclConfigUndefInt;
  ncclResult_t r = api->CommInitRankConfig(&c->nccl, c->world, id, c->rank, &cfg);
  if (r != ncclSuccess && r != ncclInProgress) {
    if (c->nccl != nullptr) api->CommAbort(c->nccl);
    c->nccl = nullptr;
    WEFT_FAIL_AT(WEFT_ERR_NCCL, c->rank, "ncclCommInitRankConfig(rank %d of %d) failed: %s", c->rank, c->world,
              api->GetErrorString(r));
  }
  // Joining takes seconds on a busy node: allow at least 30 s.
  const int wait_ms = c->timeout_ms > 30000 ? c->timeout_ms : 30000;
  const auto deadline = Clock::now() + std::chrono::milliseconds(wait_ms);
  while (true) {
    ncclResult_t a = ncclInProgress;
    ncclResult_t q = api->CommGetAsyncError(c->nccl, &a);
    if (q != ncclSuccess) a = q;
    if (a == ncclSuccess) return WEFT_OK;
    if (a != ncclInProgress) {
      nccl_abort(c);
      WEFT_FAIL_AT(WEFT_ERR_NCCL, c->rank, "NCCL init (rank %d of %d) failed: %s", c->rank, c->world,
                   api->GetErrorString(a));
    }
    if (Clock::now() > deadline) {
      nccl_abort(c);
      WEFT_FAIL(WEFT_ERR_TIMEOUT,
                "NCCL init (rank %d of %d) did not complete within %d ms: a rank did not join "
                "(dead, or given another unique id)",
                c->rank, c->world, wait_ms);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void nccl_finish(weft_comm* c) {
  if (c->nccl == nullptr) return;
  const NcclApi* api = c->nccl_api;
  if (c->broken == WEFT_OK && api->CommFinalize != nullptr) {
    ncclResult_t r = api->CommFinalize(c->nccl);
    const auto deadline = Clock::now() + std::chrono::milliseconds(c->timeout_ms);
    while (r == ncclSuccess || r == ncclInProgress) {
      ncclResult_t a = ncclInProgress;
      if (api->CommGetAsyncError(c->nccl, &a) != ncclSuccess) break;
      if (a == ncclSuccess) break;
      if (a != ncclInProgress || Clock::now() > deadline) {
        r = ncclInternalError;
        break;
      }
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    if (r == ncclSuccess || r == ncclInProgress) {
      api->CommDestroy(c->nccl);
      c->nccl = nullptr;
      return;
    }
  }
  api->CommAbort(c->nccl);
  c->nccl = nullptr;
}

void close_peers(weft_comm* c) {
  for (int p = 0; p < c->world; ++p) {
    if (p != c->rank && c->peers.base[p] != nullptr) {
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
  c->peers.base[c->rank] = c->heap;
  WEFT_CUDA(cudaMemset(c->heap, 0, kCommReserved));
  HeapHeader hdr;
  hdr.magic = kHeapMagic;
  hdr.heap_bytes = c->heap_bytes;
  hdr.world = c->world;
  hdr.rank = c->rank;
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

int32_t comm_reset_status(weft_comm* c) {
  reset_status_kernel<<<1, 1, 0, c->stream>>>(c->d_status);
  WEFT_LAUNCHED("reset_status", c->stream);
  return WEFT_OK;
}

int32_t comm_report_bad(weft_comm* c, unsigned long long pos, unsigned kind) {
  report_bad_kernel<<<1, 1, 0, c->stream>>>(c->d_status, pos, kind);
  WEFT_LAUNCHED("report_bad", c->stream);
  return WEFT_OK;
}

int32_t comm_barrier_async(weft_comm* c, const char* stage) {
  c->epoch += 1;
  debug_log("rank %d barrier %llu (%s)", c->rank, static_cast<unsigned long long>(c->epoch), stage);
  return comm_barrier_at(c, c->stream, nullptr);
}

int32_t comm_barrier_at(weft_comm* c, cudaStream_t s, const uint64_t* epoch_at, DevStatus* publish) {
  const uint64_t timeout_ns = static_cast<uint64_t>(c->timeout_ms) * 1000000ull;
  barrier_kernel<<<1, 32, 0, s>>>(c->peers, c->rank, c->world, epoch_at != nullptr ? 0 : c->epoch, epoch_at,
                                  timeout_ns, c->d_status, publish);
  WEFT_LAUNCHED("barrier", s);
  return WEFT_OK;
}

int32_t comm_waited(weft_comm* c, cudaError_t e) {
  if (e == cudaSuccess) return WEFT_OK;
  comm_mark_broken(c, WEFT_ERR_CUDA, cudaGetErrorString(e));
  WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "rank %d: a kernel failed: %s (%s)", c->rank, cudaGetErrorName(e),
               cudaGetErrorString(e));
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

int32_t comm_sync_status(weft_comm* c) {
  WEFT_CUDA(cudaMemcpyAsync(c->h_status, c->d_status, sizeof(DevStatus), cudaMemcpyDeviceToHost, c->stream));
  return comm_waited(c, cudaStreamSynchronize(c->stream));
}

int32_t comm_barrier_now(weft_comm* c, const char* stage) {
  WEFT_TRY(comm_reset_status(c));
  WEFT_TRY(comm_barrier_async(c, stage));
  WEFT_TRY(comm_sync_status(c));
  return comm_check_peers(c, stage);
}

namespace {

// Waits for the oldest queued tail, takes it off the queue and reports it.
int32_t settle_oldest(weft_comm* c) {
  const int slot = c->tail_head;
  weft_comm::Tail& t = c->tails[slot];
  const std::string stage = std::string(t.call) + " (its queued work, reported by a later call)";
  c->tail_head = (c->tail_head + 1) % weft_comm::kMaxTails;
  c->tail_count -= 1;
  t.call = nullptr;
  cudaError_t e = cudaEventSynchronize(t.done);
  if (e != cudaSuccess) {
    comm_mark_broken(c, WEFT_ERR_CUDA, cudaGetErrorString(e));
    WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "rank %d: a kernel of %s failed: %s (%s)", c->rank, stage.c_str(),
                 cudaGetErrorName(e), cudaGetErrorString(e));
  }
  *c->h_status = c->h_tail_status[slot];
  return comm_check_peers(c, stage.c_str());
}

}  // namespace

int32_t comm_end_with_barrier(weft_comm* c, const char* barrier_stage, const char* call, const char* stage,
                              bool queue) {
  if (!queue) {
    WEFT_TRY(comm_barrier_async(c, barrier_stage));
    c->profile.mark(c->stream, "barrier: end");
    const int32_t rc = comm_sync_status(c);
    c->profile.end(c->stream);
    return rc != WEFT_OK ? rc : comm_check_peers(c, stage);
  }
  if (c->tail_count == weft_comm::kMaxTails) WEFT_TRY(settle_oldest(c));
  const int slot = (c->tail_head + c->tail_count) % weft_comm::kMaxTails;
  c->epoch += 1;
  debug_log("rank %d barrier %llu (%s)", c->rank, static_cast<unsigned long long>(c->epoch), barrier_stage);
  // The barrier itself writes the status into the tail's slot: no copy on
  // the stream between this call and the next.
  WEFT_TRY(comm_barrier_at(c, c->stream, nullptr, c->d_tail_status + slot));
  c->profile.mark(c->stream, "barrier: end");
  WEFT_CUDA(cudaEventRecord(c->tails[slot].done, c->stream));
  c->tails[slot].call = call;
  c->tail_count += 1;
  c->profile.end(c->stream);
  return WEFT_OK;
}

int32_t comm_check_not_begun(weft_comm* c) {
  if (c->begun.call != nullptr) {
    WEFT_FAIL(WEFT_ERR_INVALID, "a %s was begun (weft_dispatch_begin) and not finished: call weft_dispatch_finish first",
              c->begun.call);
  }
  return WEFT_OK;
}

int32_t comm_settle(weft_comm* c) {
  WEFT_TRY(comm_check_not_begun(c));
  while (c->tail_count > 0) WEFT_TRY(settle_oldest(c));
  c->profile.flush();
  return WEFT_OK;
}

int32_t comm_check_peers(weft_comm* c, const char* stage) {
  const DevStatus& s = *c->h_status;
  if (s.timeout_mask != 0u) {
    char why[512];
    snprintf(why, sizeof why, "rank(s) %s did not reach the %s barrier of rank %d within %d ms",
             rank_list(s.timeout_mask).c_str(), stage, c->rank, c->timeout_ms);
    comm_mark_broken(c, WEFT_ERR_TIMEOUT, why);
    WEFT_FAIL_AT(WEFT_ERR_TIMEOUT, first_rank(s.timeout_mask),
              "%s: the process is dead or stuck, or did not make the same collective call. "
              "This communicator is now unusable: destroy it and create a new one",
              why);
  }
  if (s.local_bad != 0u) return WEFT_OK;  // the caller describes its own bad input
  if (s.internal != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank,
              "internal error on rank %d during %s: a layout index fell outside its buffer "
              "(a weft bug; rerun with WEFT_DEBUG=1 and report it). Nothing was written to the outputs",
              c->rank, stage);
  }
  const unsigned others = s.peer_err_mask & ~(1u << c->rank);
  if (others != 0u) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, first_rank(others),
              "rank(s) %s failed during %s (bad input, or out of memory: see the error reported on those "
              "ranks); every rank failed the call and nothing was written to the outputs",
              rank_list(others).c_str(), stage);
  }
  return WEFT_OK;
}

int32_t comm_nccl_check(weft_comm* c, ncclResult_t r, const char* what) {
  if (r == ncclSuccess || r == ncclInProgress) return WEFT_OK;
  const char* msg = c->nccl_api->GetErrorString(r);
  nccl_abort(c);
  comm_mark_broken(c, WEFT_ERR_NCCL, msg);
  WEFT_FAIL_AT(WEFT_ERR_NCCL, c->rank, "%s failed on rank %d: %s", what, c->rank, msg);
}

int32_t comm_nccl_group_end(weft_comm* c, const char* what) {
  WEFT_TRY(comm_nccl_check(c, c->nccl_api->GroupEnd(), what));
  const auto deadline = Clock::now() + std::chrono::milliseconds(c->timeout_ms);
  while (true) {
    ncclResult_t a = ncclInProgress;
    ncclResult_t q = c->nccl_api->CommGetAsyncError(c->nccl, &a);
    if (q != ncclSuccess) a = q;
    if (a == ncclSuccess) return WEFT_OK;
    if (a != ncclInProgress) return comm_nccl_check(c, a, what);
    if (Clock::now() > deadline) {
      nccl_abort(c);
      comm_mark_broken(c, WEFT_ERR_TIMEOUT, "NCCL group did not launch in time");
      WEFT_FAIL(WEFT_ERR_TIMEOUT, "%s on rank %d was not launched within %d ms; NCCL aborted", what, c->rank,
                c->timeout_ms);
    }
    std::this_thread::yield();
  }
}

int32_t comm_nccl_stream_wait(weft_comm* c, const char* what) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(c->timeout_ms);
  while (true) {
    cudaError_t q = cudaStreamQuery(c->stream);
    if (q == cudaSuccess) return WEFT_OK;
    if (q != cudaErrorNotReady) {
      comm_mark_broken(c, WEFT_ERR_CUDA, cudaGetErrorString(q));
      WEFT_FAIL_AT(WEFT_ERR_CUDA, c->rank, "%s on rank %d: %s (%s)", what, c->rank, cudaGetErrorName(q),
                   cudaGetErrorString(q));
    }
    if (c->nccl != nullptr) {
      ncclResult_t a = ncclSuccess;
      ncclResult_t e = c->nccl_api->CommGetAsyncError(c->nccl, &a);
      if (e != ncclSuccess) a = e;
      if (a != ncclSuccess && a != ncclInProgress) return comm_nccl_check(c, a, what);
    }
    if (Clock::now() > deadline) {
      nccl_abort(c);
      comm_mark_broken(c, WEFT_ERR_TIMEOUT, "NCCL transfer timed out");
      WEFT_FAIL(WEFT_ERR_TIMEOUT,
                "%s on rank %d did not finish within %d ms (a peer is dead or stuck); NCCL was aborted. "
                "Destroy this communicator and create a new one",
                what, c->rank, c->timeout_ms);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(5));
  }
}


int32_t comm_create(int32_t device, int32_t rank, int32_t world, const uint8_t* nccl_id, uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  if (world < 1 || world > kMaxWorld) {
    WEFT_FAIL(WEFT_ERR_INVALID, "world = %d; it must be in [1, %d]", world, kMaxWorld);
  }
  if (rank < 0 || rank >= world) WEFT_FAIL(WEFT_ERR_INVALID, "rank = %d; it must be in [0, world = %d)", rank, world);
  WEFT_TRY(set_device(device));
  weft_comm* c = new weft_comm();
  c->device = device;
  c->rank = rank;
  c->world = world;
  c->timeout_ms = timeout_ms > 0 ? timeout_ms : 30000;
  const uint64_t granule = 4096;
  uint64_t bytes = heap_bytes < kCommReserved ? kCommReserved : heap_bytes;
  c->heap_bytes = (bytes + granule - 1) / granule * granule;
  int32_t rc = comm_init(c, nccl_id);
  if (rc != WEFT_OK) {
    comm_release(c);
    return rc;
  }
  debug_log("rank %d of %d on device %d: heap %llu bytes, %d SMs, nccl %s", rank, world, device,
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
  if (handles == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "handles is NULL (needs world x %d bytes)", WEFT_IPC_HANDLE_BYTES);
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

  for (int p = 0; p < c->world; ++p) {
    if (p == c->rank) continue;
    cudaIpcMemHandle_t h;
    memcpy(&h, handles + static_cast<size_t>(p) * WEFT_IPC_HANDLE_BYTES, sizeof h);
    void* ptr = nullptr;
    cudaError_t e = cudaIpcOpenMemHandle(&ptr, h, cudaIpcMemLazyEnablePeerAccess);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_CUDA, p,
                "cannot map rank %d's heap on rank %d: %s (%s). The NVLink path needs every rank on "
                "one node with peer access between their GPUs, and the handles in rank order",
                p, c->rank, cudaGetErrorName(e), cudaGetErrorString(e));
    }
    c->peers.base[p] = static_cast<uint8_t*>(ptr);
    HeapHeader hdr;
    e = cudaMemcpy(&hdr, c->peers.base[p] + kHeaderOffset, sizeof hdr, cudaMemcpyDefault);
    if (e != cudaSuccess) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_CUDA, p, "cannot read rank %d's heap header: %s", p, cudaGetErrorString(e));
    }
    if (hdr.magic != kHeapMagic || hdr.rank != p || hdr.world != c->world) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_INVALID, p,
                "handle %d is not rank %d's heap of a world of %d (it says rank %d of %d): pass the "
                "handles of every rank in rank order",
                p, p, c->world, hdr.rank, hdr.world);
    }
    if (hdr.heap_bytes != c->heap_bytes) {
      close_peers(c);
      WEFT_FAIL_AT(WEFT_ERR_INVALID, p,
                "rank %d's heap has %llu bytes and rank %d's has %llu: every rank must pass the same heap_bytes",
                p, static_cast<unsigned long long>(hdr.heap_bytes), c->rank,
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
