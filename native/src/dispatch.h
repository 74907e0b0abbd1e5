// Dispatch orchestration (dispatch.cu): the entry points of weft_dispatch,
// weft_dispatch_begin/_finish, weft_dispatch_layout and weft_redispatch.
// Each takes the comm's lock and runs one collective call.
#pragma once

#include "engine.h"

namespace weft {

int32_t dispatch_entry(weft_engine* e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                       int32_t tokens, int32_t inputs_on_device, weft_handle** out);
int32_t dispatch_begin_entry(weft_engine* e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                             int32_t tokens);
int32_t dispatch_begin_e4m3_entry(weft_engine* e, const void* q, const float* scales, const int32_t* topk_idx,
                                  const float* topk_weights, int32_t tokens);
int32_t dispatch_finish_entry(weft_engine* e, weft_handle** out);
int32_t dispatch_layout_entry(weft_engine* e, const int32_t* topk_idx, const float* topk_weights, int32_t tokens,
                              weft_handle** out);
int32_t redispatch_x_entry(weft_handle* h, const void* x, int32_t inputs_on_device);
int32_t redispatch_e4m3_entry(weft_handle* h, const void* q, const float* scales);

}  // namespace weft
