// The hierarchical engine's memory and the helpers of its calls: heap
// regions, the engine's scratch and streams, the handle's memory, the
// streams' hand-offs, the sliced NCCL transfer, the argument agreement and
// the end of a call. The batch tables computed from the all-gathered records:
// hier_tables.cu. Kernels: hier_dispatch.cu, hier_transfer.cu,
// hier_fanout.cu, hier_combine.cu.
#include <string.h>

#include <algorithm>
#include <string>
#include <vector>

#include "carve.h"
#include "handles.h"
#include "hier_move.h"
#include "layout.h"
#include "settings.h"

namespace weft {

HierLayout hier_heap_layout(const PlanHost& p) {
  HierLayout h;
  HeapLayout& b = h.base;
  b = HeapLayout{};
  HeapCarve take;
  const uint64_t T = static_cast<uint64_t>(p.max_tokens);
  const uint64_t K = static_cast<uint64_t>(p.top_k);
  const uint64_t N = static_cast<uint64_t>(p.nodes());
  const uint64_t gpn = static_cast<uint64_t>(p.gpus_per_node);
  h.reach = static_cast<int>(std::min<uint64_t>(K, N - 1));
  h.parts = static_cast<int>(std::min<uint64_t>(K, gpn));
  h.rec_ints = 4 + p.slots + p.nodes();
  h.payload = (p.send_row_bytes() + 15ull) & ~15ull;
  h.row_stride = h.payload + ((4ull + 12ull * K + 15ull) & ~15ull);
  const uint64_t WB = p.wire_row_bytes();
  carve_staging(p, take, &b);
  h.rec = take(static_cast<uint64_t>(h.rec_ints) * 4);
  b.slot_count = h.rec + 16;  // route_tokens writes the per-slot totals into the record
  const uint64_t send_rows = T * static_cast<uint64_t>(h.reach);
  const uint64_t stage_rows = (N - 1) * T;
  h.send = take(send_rows * h.row_stride);
  h.stage = take(stage_rows * h.row_stride);
  h.fwd_land = take(stage_rows * static_cast<uint64_t>(h.parts) * WB);
  h.fwd_ret = take(stage_rows * WB);
  h.home_ret = take(send_rows * WB);
  h.home_land = take(T * static_cast<uint64_t>(h.parts) * WB);
  h.landed = take(sizeof(uint64_t));
  h.end = align256(take.off);
  b.end = h.end;
  return h;
}

int32_t hier_engine_init(weft_engine* e) {
  const PlanHost& p = e->plan;
  weft_comm* c = e->comm;
  HierEngine* he = new HierEngine();
  e->hier = he;
  he->hl = hier_heap_layout(p);
  const int s = setting_int(Setting::kHierSlice);
  he->slice = s >= 1 ? s : 512;
  WEFT_CUDA(cudaStreamCreateWithFlags(&he->side, cudaStreamNonBlocking));
  WEFT_CUDA(cudaStreamCreateWithFlags(&he->fan, cudaStreamNonBlocking));
  he->fan_per_slice = strcmp(setting_text(Setting::kHierFanout), "after") != 0;
  // A per-slice fan-out launch takes at most 4 blocks (16 warps) per SM of
  // half the SMs the data kernels may use (WEFT_SMS): spread over the GPU
  // that is about 2 blocks an SM, which leaves every SM room for an NCCL or
  // pack block beside it while a slice's blocks wait for its landing.
  he->fan_grid = std::max(1, c->num_sms / 2) * 4;
  // The landed flag starts below every call's values; peers read it only
  // after this rank reaches the first dispatch's node barrier, after this.
  WEFT_CUDA(cudaMemsetAsync(c->heap + he->hl.landed, 0, sizeof(uint64_t), c->stream));
  WEFT_CUDA(cudaStreamSynchronize(c->stream));
  WEFT_TRY(upload_route_tables(p, {}, &e->d_tables, &e->rt, nullptr));
  he->chunk_stride = route_chunks(p.max_tokens) > 0 ? route_chunks(p.max_tokens) : 1;
  const size_t Tm = static_cast<size_t>(p.max_tokens);
  const size_t N = static_cast<size_t>(p.nodes());
  void* d = nullptr;
  WEFT_CUDA(cudaMalloc(&d, static_cast<size_t>(p.slots) * he->chunk_stride * sizeof(int)));
  he->d_chunk_counts = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, std::max<size_t>(1, N * Tm) * sizeof(int)));
  he->d_list = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, std::max<size_t>(1, Tm * p.top_k) * sizeof(int)));
  he->d_pos = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, std::max<size_t>(1, Tm * p.top_k) * sizeof(int)));
  he->d_node = static_cast<int*>(d);
  WEFT_CUDA(cudaMalloc(&d, std::max<size_t>(1, Tm) * sizeof(unsigned)));
  he->d_own = static_cast<unsigned*>(d);
  const size_t gather = static_cast<size_t>(p.world) * he->hl.rec_ints * sizeof(int);
  WEFT_CUDA(cudaMalloc(&d, gather));
  he->d_gather = static_cast<int*>(d);
  void* h = nullptr;
  WEFT_CUDA(cudaMallocHost(&h, gather));
  he->h_gather = static_cast<int*>(h);
  WEFT_CUDA(cudaMalloc(&d, (1 + static_cast<size_t>(p.world)) * sizeof(int)));
  he->d_flag = static_cast<int*>(d);
  WEFT_CUDA(cudaMallocHost(&h, static_cast<size_t>(p.world) * sizeof(int)));
  he->h_flag = static_cast<int*>(h);
  WEFT_TRY(route_prepare(p, c->smem_optin));
  return WEFT_OK;
}

void hier_engine_free(weft_engine* e) {
  HierEngine* he = e->hier;
  if (he == nullptr) return;
  for (cudaStream_t s : {he->side, he->fan}) {
    if (s != nullptr) {
      cudaStreamSynchronize(s);
      cudaStreamDestroy(s);
    }
  }
  for (cudaEvent_t ev : he->events) cudaEventDestroy(ev);
  if (he->h_gather != nullptr) cudaFreeHost(he->h_gather);
  if (he->h_flag != nullptr) cudaFreeHost(he->h_flag);
  void* dev[] = {he->d_chunk_counts, he->d_list, he->d_pos, he->d_node, he->d_own, he->d_gather, he->d_flag};
  for (void* p : dev) {
    if (p != nullptr) cudaFree(p);
  }
  (void)cudaGetLastError();
  delete he;
  e->hier = nullptr;
}

void hier_handle_free(weft_handle* h) {
  HierHandle* hh = h->hier;
  if (hh == nullptr) return;
  if (hh->block != nullptr) {
    cudaSetDevice(h->engine->comm->device);
    // Kernels on the comm stream may still read it (a failed call's tail).
    cudaStreamSynchronize(h->engine->comm->stream);
    cudaFree(hh->block);
  }
  if (h->recv != nullptr) {
    cudaFree(h->recv);
    h->recv = nullptr;
  }
  (void)cudaGetLastError();
  delete hh;
  h->hier = nullptr;
}

int32_t hier_event(weft_engine* e, int i, cudaEvent_t* out) {
  HierEngine* he = e->hier;
  while (static_cast<int>(he->events.size()) <= i) {
    cudaEvent_t ev = nullptr;
    WEFT_CUDA(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    he->events.push_back(ev);
  }
  *out = he->events[i];
  return WEFT_OK;
}

int32_t hier_stream_wait(weft_engine* e, int i, cudaStream_t done, cudaStream_t waits) {
  cudaEvent_t ev;
  WEFT_TRY(hier_event(e, i, &ev));
  WEFT_CUDA(cudaEventRecord(ev, done));
  WEFT_CUDA(cudaStreamWaitEvent(waits, ev, 0));
  return WEFT_OK;
}

int hier_slice_count(const HierHandle* hh, int slice) {
  int J = 0;
  for (const HierSeg& sg : hh->send) J = std::max(J, hier_slices(sg.rows, slice));
  for (const HierSeg& sg : hh->stage) J = std::max(J, hier_slices(sg.rows, slice));
  return J;
}

int32_t hier_slice_transfer(weft_comm* c, cudaStream_t s, const std::vector<HierSeg>& out, const uint8_t* out_base,
                            const std::vector<HierSeg>& in, uint8_t* in_base, uint64_t row, int C, int j,
                            const HierSliceNames& names) {
  const NcclApi* nc = c->nccl_api;
  // Rows of segment sg in slice j (none when <= 0), and the byte offset of the first.
  auto rows = [C, j](const HierSeg& sg) {
    return std::min<long long>(C, static_cast<long long>(sg.rows) - static_cast<long long>(j) * C);
  };
  auto at = [C, j, row](const HierSeg& sg) { return (static_cast<uint64_t>(sg.off) + static_cast<uint64_t>(j) * C) * row; };
  WEFT_TRY(comm_nccl_check(c, nc->GroupStart(), names.group_start));
  for (const HierSeg& sg : out) {
    const long long n = rows(sg);
    if (n > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Send(out_base + at(sg), static_cast<size_t>(n) * row, ncclUint8, sg.peer, c->nccl, s),
                               names.send));
    }
  }
  for (const HierSeg& sg : in) {
    const long long n = rows(sg);
    if (n > 0) {
      WEFT_TRY(comm_nccl_check(c, nc->Recv(in_base + at(sg), static_cast<size_t>(n) * row, ncclUint8, sg.peer, c->nccl, s),
                               names.recv));
    }
  }
  return comm_nccl_group_end(c, names.group_end);
}

int32_t hier_agree(weft_engine* e, bool ok, const char* stage, const char* why) {
  weft_comm* c = e->comm;
  HierEngine* he = e->hier;
  const int W = e->plan.world;
  const int v = ok ? 0 : 1;
  WEFT_CUDA(cudaMemcpyAsync(he->d_flag + W, &v, sizeof v, cudaMemcpyHostToDevice, c->stream));
  WEFT_TRY(comm_nccl_check(c, c->nccl_api->GroupStart(), "ncclGroupStart (argument check)"));
  WEFT_TRY(comm_nccl_check(c, c->nccl_api->AllGather(he->d_flag + W, he->d_flag, 1, ncclInt32, c->nccl, c->stream),
                           "ncclAllGather (argument check)"));
  WEFT_TRY(comm_nccl_group_end(c, "ncclAllGather (argument check)"));
  WEFT_CUDA(cudaMemcpyAsync(he->h_flag, he->d_flag, static_cast<size_t>(W) * sizeof(int), cudaMemcpyDeviceToHost,
                            c->stream));
  WEFT_TRY(comm_nccl_stream_wait(c, stage));
  int first = -1, n = 0;
  for (int r = 0; r < W; ++r) {
    if (he->h_flag[r] != 0) {
      if (first < 0) first = r;
      ++n;
    }
  }
  if (!ok) {
    WEFT_FAIL_AT(WEFT_ERR_INVALID, c->rank, "%s (rank %d). Every rank failed the call; nothing was written", why,
                 c->rank);
  }
  if (first >= 0) {
    WEFT_FAIL_AT(WEFT_ERR_BAD_INPUT, first,
                 "rank %d%s failed the argument checks of %s (see the error reported there); every rank failed the "
                 "call and nothing was written",
                 first, n > 1 ? " (and others)" : "", stage);
  }
  return WEFT_OK;
}

int32_t hier_end_call(weft_engine* e, const char* stage) {
  weft_comm* c = e->comm;
  WEFT_TRY(comm_barrier_async(c, stage));
  WEFT_CUDA(cudaMemcpyAsync(c->h_status, c->d_status, sizeof(DevStatus), cudaMemcpyDeviceToHost, c->stream));
  WEFT_TRY(comm_nccl_stream_wait(c, stage));
  return comm_check_peers(c, stage);
}

}  // namespace weft
