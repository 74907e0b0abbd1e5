// The C ABI of the communicator, NCCL, the NCCL baseline and the bench
// timers (weft.h): each call names itself for error messages (WEFT_API)
// and forwards to comm.cu, nccl_loader.cpp, baseline.cu or timer.cu.
#include "bench.h"
#include "comm.h"
#include "nccl_loader.h"

extern "C" int32_t weft_nccl_available(int32_t* out) {
  WEFT_API("weft_nccl_available");
  return weft::nccl_available(out);
}

extern "C" int32_t weft_nccl_unique_id(uint8_t* out) {
  WEFT_API("weft_nccl_unique_id");
  return weft::nccl_unique_id(out);
}

extern "C" int32_t weft_comm_create(int32_t device, int32_t rank, int32_t world, const uint8_t* nccl_id,
                                    uint64_t heap_bytes, int32_t timeout_ms, weft_comm_t* out) {
  WEFT_API("weft_comm_create");
  return weft::comm_create(device, rank, world, nccl_id, heap_bytes, timeout_ms, out);
}

extern "C" int32_t weft_comm_create2(int32_t device, int32_t rank, int32_t world, int32_t local_rank,
                                     int32_t local_world, const uint8_t* nccl_id, uint64_t heap_bytes,
                                     int32_t timeout_ms, weft_comm_t* out) {
  WEFT_API("weft_comm_create2");
  return weft::comm_create2(device, rank, world, local_rank, local_world, nccl_id, heap_bytes, timeout_ms, out);
}
extern "C" int32_t weft_comm_ipc_handle(weft_comm_t c, uint8_t* out) {
  WEFT_API("weft_comm_ipc_handle");
  return weft::comm_ipc_handle(c, out);
}

extern "C" int32_t weft_comm_open_peers(weft_comm_t c, const uint8_t* handles) {
  WEFT_API("weft_comm_open_peers");
  return weft::comm_open_peers(c, handles);
}

extern "C" int32_t weft_comm_barrier(weft_comm_t c) {
  WEFT_API("weft_comm_barrier");
  return weft::comm_barrier(c);
}

extern "C" int32_t weft_comm_sync(weft_comm_t c) {
  WEFT_API("weft_comm_sync");
  return weft::comm_sync(c);
}

extern "C" int32_t weft_comm_destroy(weft_comm_t c) {
  WEFT_API("weft_comm_destroy");
  return weft::comm_destroy(c);
}

extern "C" int32_t weft_baseline_create(weft_comm_t c, const weft_plan_desc* plan, weft_baseline_t* out) {
  WEFT_API("weft_baseline_create");
  return weft::baseline_create(c, plan, out);
}

extern "C" int32_t weft_baseline_run(weft_baseline_t b, const void* x, const int32_t* topk_idx,
                                     const float* topk_weights, int32_t tokens, void* out, int32_t* recv_rows_out) {
  WEFT_API("weft_baseline_run");
  return weft::baseline_run(b, x, topk_idx, topk_weights, tokens, out, recv_rows_out);
}

extern "C" int32_t weft_baseline_destroy(weft_baseline_t b) {
  WEFT_API("weft_baseline_destroy");
  return weft::baseline_destroy(b);
}

extern "C" int32_t weft_timer_create(weft_comm_t c, weft_timer_t* out) {
  WEFT_API("weft_timer_create");
  return weft::bench_timer_create(c, out);
}

extern "C" int32_t weft_timer_start(weft_timer_t t) {
  WEFT_API("weft_timer_start");
  return weft::bench_timer_start(t);
}

extern "C" int32_t weft_timer_stop(weft_timer_t t, float* ms_out) {
  WEFT_API("weft_timer_stop");
  return weft::bench_timer_stop(t, ms_out);
}

extern "C" int32_t weft_timer_destroy(weft_timer_t t) {
  WEFT_API("weft_timer_destroy");
  return weft::bench_timer_destroy(t);
}

extern "C" int32_t weft_copy_ceiling(weft_comm_t c, int32_t peer, uint64_t bytes, int32_t iters, float* ms_out) {
  WEFT_API("weft_copy_ceiling");
  return weft::copy_ceiling(c, peer, bytes, iters, ms_out);
}
