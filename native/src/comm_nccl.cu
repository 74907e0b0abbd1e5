// weft_comm's optional NCCL communicator: nonblocking init bounded by a
// deadline, finish or abort, the check of every NCCL result, and host waits
// that watch NCCL for asynchronous errors (bounded by the comm's timeout).
#include <string.h>

#include <chrono>
#include <thread>

#include "comm.h"

namespace weft {
namespace {

using Clock = std::chrono::steady_clock;

void nccl_abort(weft_comm* c) {
  if (c->nccl != nullptr && c->nccl_api != nullptr) c->nccl_api->CommAbort(c->nccl);
  c->nccl = nullptr;
}

}  // namespace

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

int32_t comm_nccl_check(weft_comm* c, ncclResult_t r, const char* what) {
  if (r == ncclSuccess || r == ncclInProgress) return WEFT_OK;
  const char* msg = c->nccl_api->GetErrorString(r);
  nccl_abort(c);
  if (r == ncclRemoteError) {
    // A peer's process or connection went away: the same answer as a peer
    // that stopped answering (WEFT_ERR_TIMEOUT names the peer, not NCCL).
    comm_mark_broken(c, WEFT_ERR_TIMEOUT, msg);
    WEFT_FAIL(WEFT_ERR_TIMEOUT,
              "%s failed on rank %d: a peer process exited or its connection broke (NCCL: %s); NCCL was aborted. "
              "Destroy this communicator and create a new one",
              what, c->rank, msg);
  }
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

// Polls `query` (cudaStreamQuery / cudaEventQuery) until the work it names
// is done, NCCL reports an asynchronous error, or timeout_ms passes; on a
// timeout NCCL is aborted so no kernel of it spins on after we return.
template <typename Query>
static int32_t nccl_wait_done(weft_comm* c, const char* what, Query query) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(c->timeout_ms);
  while (true) {
    cudaError_t q = query();
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

int32_t comm_nccl_stream_wait(weft_comm* c, const char* what) {
  return nccl_wait_done(c, what, [c] { return cudaStreamQuery(c->stream); });
}

int32_t comm_nccl_event_wait(weft_comm* c, cudaEvent_t ev, const char* what) {
  return nccl_wait_done(c, what, [ev] { return cudaEventQuery(ev); });
}

}  // namespace weft
