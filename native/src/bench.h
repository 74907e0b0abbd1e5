// What the benchmark uses besides the engine: the NCCL baseline
// (baseline.cu) and CUDA-event timers and the copy ceiling (timer.cu).
#pragma once

#include "comm.h"

namespace weft {

int32_t baseline_create(weft_comm_t c, const weft_plan_desc* plan, weft_baseline_t* out);
int32_t baseline_run(weft_baseline_t b, const void* x, const int32_t* topk_idx, const float* topk_weights,
                     int32_t tokens, void* out, int32_t* recv_rows_out);
int32_t baseline_destroy(weft_baseline_t b);

int32_t bench_timer_create(weft_comm_t c, weft_timer_t* out);
int32_t bench_timer_start(weft_timer_t t);
int32_t bench_timer_stop(weft_timer_t t, float* ms_out);
int32_t bench_timer_destroy(weft_timer_t t);
int32_t copy_ceiling(weft_comm_t c, int32_t peer, uint64_t bytes, int32_t iters, float* ms_out);

}  // namespace weft
