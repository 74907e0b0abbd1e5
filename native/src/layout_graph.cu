// The layout's launches around dispatch's host sync, issued directly or
// replayed as CUDA graphs captured once per engine, and open_call, the
// kernel that opens each dispatch.
//
// Why graphs: each launch costs the host ~3-5 µs, more when the stream is
// idle, and dispatch opens with ~10 small kernels that the GPU finishes
// faster than the host issues them. Directly launched, the GPU's pace up to
// the staging barrier is the host's; replayed, it is the GPU's (2026-11-22,
// 4xH200: dispatch's GPU time 0.711 → 0.684 ms at 4096 tokens, 2.224 →
// 2.181 at 16384, bench/NOTES-nvlink.md step 18). Everything a call changes
// reaches the kernels through DispatchCall, which open_call copies from
// mapped host memory to the device, so one capture serves every call and
// nothing in it is updated per call.
#include "layout.h"

namespace weft {
namespace {

// A dispatch's first kernel: the status reset, and the call's values copied
// from mapped host memory to where the layout kernels read them, one 8-byte
// word a lane so that the reads over PCIe are in flight together.
__global__ void __launch_bounds__(32) open_call_kernel(DevStatus* st, const DispatchCall* src, DispatchCall* out) {
  static_assert(sizeof(DispatchCall) % 8 == 0 && sizeof(DispatchCall) / 8 <= 64, "DispatchCall: two words a lane");
  constexpr int kWords = static_cast<int>(sizeof(DispatchCall) / 8);
  const volatile unsigned long long* from = reinterpret_cast<const volatile unsigned long long*>(src);
  unsigned long long* to = reinterpret_cast<unsigned long long*>(out);
  for (int i = threadIdx.x; i < kWords; i += 32) to[i] = from[i];
  if (threadIdx.x == 0) reset_status(st);
}

}  // namespace

// A dispatch's first launch (alone, or as the head of graph_front_open).
int32_t open_call(weft_engine* e, cudaStream_t s) {
  open_call_kernel<<<1, 32, 0, s>>>(e->comm->d_status, e->d_call_src, e->d_call);
  WEFT_LAUNCHED("open_call", s);
  return WEFT_OK;
}


// The layout's launches up to the host sync: routing of this rank's tokens,
// the staging barrier, the receive-row bases, and what the host waits for
// written to it. `marks`: profile each step (direct launches on the comm
// stream only, never while capturing).
int32_t enqueue_layout_front(weft_engine* e, cudaStream_t s, bool marks) {
  weft_comm* c = e->comm;
  WEFT_TRY(layout_source(e, s));
  if (marks) c->profile.mark(s, "layout: source side");
  WEFT_TRY(comm_barrier_at(c, s, &e->d_call->epoch));
  if (marks) c->profile.mark(s, "barrier: staged");
  WEFT_TRY(layout_bases(e, s));
  if (marks) c->profile.mark(s, "layout: bases");
  WEFT_TRY(layout_publish(e, s));
  if (marks) c->profile.mark(s, "layout: publish");
  return WEFT_OK;
}

int32_t enqueue_layout_build(weft_engine* e, cudaStream_t s, bool marks) {
  WEFT_TRY(layout_build(e, s));
  if (marks) e->comm->profile.mark(s, "layout: build");
  return WEFT_OK;
}

namespace {

// open_call and the front.
int32_t enqueue_open_front(weft_engine* e, cudaStream_t s, bool marks) {
  WEFT_TRY(open_call(e, s));
  return enqueue_layout_front(e, s, marks);
}

// Captures enqueue(e, capture stream) as an executable graph.
int32_t capture_graph(weft_engine* e, int32_t (*enqueue)(weft_engine*, cudaStream_t, bool), cudaGraphExec_t* out) {
  cudaStream_t s = e->capture;
  WEFT_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  const int32_t rc = enqueue(e, s, false);
  cudaGraph_t g = nullptr;
  const cudaError_t end = cudaStreamEndCapture(s, &g);
  cudaError_t inst = cudaErrorUnknown;
  if (rc == WEFT_OK && end == cudaSuccess) inst = cudaGraphInstantiate(out, g, 0);
  if (rc != WEFT_OK || end != cudaSuccess || inst != cudaSuccess) {
    if (g != nullptr) cudaGraphDestroy(g);
    debug_log("rank %d: capturing the layout graph failed (%s, %s): launching directly", e->comm->rank,
              cudaGetErrorString(end), cudaGetErrorString(inst));
    *out = nullptr;
    (void)cudaGetLastError();
    return WEFT_ERR_CUDA;
  }
  cudaGraphDestroy(g);
  return WEFT_OK;
}

}  // namespace

// Whether the layout launches replay as graphs: on unless WEFT_GRAPH=0 or
// WEFT_DEBUG (which synchronizes after every launch); captured on first use.
// A failed capture falls back to direct launches for good.
bool layout_graphs(weft_engine* e) {
  if (e->graphs >= 0) return e->graphs == 1;
  e->graphs = 0;
  if (!setting_on(Setting::kGraph) || debug_enabled()) return false;
  if (cudaStreamCreateWithFlags(&e->capture, cudaStreamNonBlocking) != cudaSuccess) {
    (void)cudaGetLastError();
    e->capture = nullptr;
    return false;
  }
  if (capture_graph(e, enqueue_layout_front, &e->graph_front) != WEFT_OK ||
      capture_graph(e, enqueue_layout_build, &e->graph_build) != WEFT_OK ||
      capture_graph(e, enqueue_open_front, &e->graph_front_open) != WEFT_OK) {
    (void)cudaGetLastError();
    return false;
  }
  e->graphs = 1;
  return true;
}

}  // namespace weft
