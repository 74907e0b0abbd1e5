// Timing for the benchmark: CUDA events on the comm stream, and the
// copy-engine ceiling between two heaps.
#include <algorithm>
#include <vector>

#include "bench.h"

struct weft_timer {
  weft_comm* comm = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  bool started = false;
};

namespace weft {

int32_t bench_timer_create(weft_comm_t c, weft_timer_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(comm_enter(c, false));
  weft_timer* t = new weft_timer();
  t->comm = c;
  if (cudaEventCreate(&t->start) != cudaSuccess || cudaEventCreate(&t->stop) != cudaSuccess) {
    cudaError_t e = cudaGetLastError();
    if (t->start != nullptr) cudaEventDestroy(t->start);
    if (t->stop != nullptr) cudaEventDestroy(t->stop);
    delete t;
    WEFT_FAIL(WEFT_ERR_CUDA, "cudaEventCreate failed: %s", cudaGetErrorString(e));
  }
  comm_retain(c);
  *out = t;
  return WEFT_OK;
}

int32_t bench_timer_start(weft_timer_t t) {
  if (t == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "the timer is NULL");
  WEFT_CUDA(cudaSetDevice(t->comm->device));
  WEFT_CUDA(cudaEventRecord(t->start, t->comm->stream));
  // With WEFT_PROFILE=1, the first call timed shows the GPU's idle time
  // from this start to its first work as "(GPU idle before)".
  t->comm->profile.begin(t->comm->stream, "timer start");
  t->comm->profile.end(t->comm->stream);
  t->comm->profile.host_lap(nullptr);
  t->started = true;
  return WEFT_OK;
}

int32_t bench_timer_stop(weft_timer_t t, float* ms_out) {
  if (t == nullptr || ms_out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "timer or ms_out is NULL");
  if (!t->started) WEFT_FAIL(WEFT_ERR_INVALID, "weft_timer_start was not called");
  WEFT_CUDA(cudaSetDevice(t->comm->device));
  WEFT_CUDA(cudaEventRecord(t->stop, t->comm->stream));
  WEFT_CUDA(cudaEventSynchronize(t->stop));
  WEFT_CUDA(cudaEventElapsedTime(ms_out, t->start, t->stop));
  t->started = false;
  // The timed calls returned before their tails ran: report their failures here.
  WEFT_TRY(comm_enter(t->comm, false));
  CommLock lock(t->comm);
  WEFT_TRY(comm_settle(t->comm));
  return WEFT_OK;
}

int32_t bench_timer_destroy(weft_timer_t t) {
  if (t == nullptr) return WEFT_OK;
  cudaSetDevice(t->comm->device);
  cudaEventDestroy(t->start);
  cudaEventDestroy(t->stop);
  (void)cudaGetLastError();
  weft_comm* c = t->comm;
  delete t;
  comm_release(c);
  return WEFT_OK;
}

// Not collective. It writes into the peer's heap past the comm's reserved
// area, i.e. over engine staging: run it only while no engine call is in
// flight on any rank (the benchmark brackets it with weft_comm_barrier).
int32_t copy_ceiling(weft_comm_t c, int32_t peer, uint64_t bytes, int32_t iters, float* ms_out) {
  if (ms_out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "ms_out is NULL");
  WEFT_TRY(comm_enter(c, true));
  CommLock lock(c);
  WEFT_TRY(comm_settle(c));
  if (peer < 0 || peer >= c->world) WEFT_FAIL(WEFT_ERR_INVALID, "peer = %d; must be in [0, %d)", peer, c->world);
  if (peer / c->local_world != c->node) {
    WEFT_FAIL(WEFT_ERR_INVALID, "peer = %d is on node %d and rank %d on node %d: the copy ceiling needs a peer of the same node",
              peer, peer / c->local_world, c->rank, c->node);
  }
  peer %= c->local_world;  // the peer table is by local rank
  if (iters < 1) WEFT_FAIL(WEFT_ERR_INVALID, "iters = %d; must be >= 1", iters);
  const uint64_t room = comm_engine_bytes(c);
  if (bytes == 0 || bytes > room) {
    WEFT_FAIL(WEFT_ERR_CAPACITY, "bytes = %llu; the heap has room for 1..%llu (create the comm with a larger heap)",
              static_cast<unsigned long long>(bytes), static_cast<unsigned long long>(room));
  }
  uint8_t* src = c->heap + kCommReserved;
  uint8_t* dst = c->peers.base[peer] + kCommReserved;
  std::vector<cudaEvent_t> ev(2 * static_cast<size_t>(iters) + 2, nullptr);
  int32_t rc = WEFT_OK;
  for (auto& e : ev) {
    if (cudaEventCreate(&e) != cudaSuccess) {
      rc = WEFT_ERR_CUDA;
      break;
    }
  }
  std::vector<float> ms;
  if (rc == WEFT_OK) {
    // One untimed copy first: it maps the route and warms the engines.
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream);
    for (int i = 0; i < iters && e == cudaSuccess; ++i) {
      e = cudaEventRecord(ev[2 * i], c->stream);
      if (e == cudaSuccess) e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream);
      if (e == cudaSuccess) e = cudaEventRecord(ev[2 * i + 1], c->stream);
    }
    if (e == cudaSuccess) e = cudaStreamSynchronize(c->stream);
    for (int i = 0; i < iters && e == cudaSuccess; ++i) {
      float t = 0.f;
      e = cudaEventElapsedTime(&t, ev[2 * i], ev[2 * i + 1]);
      ms.push_back(t);
    }
    if (e != cudaSuccess) {
      set_error_at(peer, "copying %llu bytes to rank %d failed: %s", static_cast<unsigned long long>(bytes), peer,
                      cudaGetErrorString(e));
      rc = WEFT_ERR_CUDA;
    }
  } else {
    set_error("cudaEventCreate failed: %s", cudaGetErrorString(cudaGetLastError()));
  }
  for (auto& e : ev) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  (void)cudaGetLastError();
  if (rc != WEFT_OK) return rc;
  std::sort(ms.begin(), ms.end());
  *ms_out = ms[ms.size() / 2];
  return WEFT_OK;
}

}  // namespace weft
