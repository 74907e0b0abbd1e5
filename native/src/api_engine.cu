// The C ABI of the engine (weft.h "engine" and "Stream-ordered returns"):
// each call names itself for error messages (WEFT_API) and forwards to its
// implementation in namespace weft: engine.cu and plan.cpp (lifetime, heap
// size, staging), dispatch.cu (dispatch, layout, redispatch), handles.cu
// (handle info and destroy), combine.cu.
#include "combine.h"
#include "dispatch.h"
#include "engine.h"
#include "handles.h"

extern "C" int32_t weft_engine_heap_bytes(const weft_plan_desc* plan, uint64_t* out) {
  WEFT_API("weft_engine_heap_bytes");
  return weft::engine_heap_bytes(plan, out);
}

extern "C" int32_t weft_engine_create(weft_comm_t c, const weft_plan_desc* plan, weft_engine_t* out) {
  WEFT_API("weft_engine_create");
  return weft::engine_create(c, plan, out);
}

extern "C" int32_t weft_engine_input_rows(weft_engine_t e, void** out) {
  WEFT_API("weft_engine_input_rows");
  return weft::engine_input_rows(e, out);
}

extern "C" int32_t weft_engine_input_e4m3(weft_engine_t e, void** q, float** scales) {
  WEFT_API("weft_engine_input_e4m3");
  return weft::engine_input_e4m3(e, q, scales);
}

extern "C" int32_t weft_engine_pin_host(weft_engine_t e, void* ptr, uint64_t bytes) {
  WEFT_API("weft_engine_pin_host");
  return weft::engine_pin_host(e, ptr, bytes);
}

extern "C" int32_t weft_engine_destroy(weft_engine_t e) {
  WEFT_API("weft_engine_destroy");
  return weft::engine_destroy(e);
}

extern "C" int32_t weft_dispatch(weft_engine_t e, const void* x, const int32_t* topk_idx, const float* topk_weights,
                                 int32_t tokens, int32_t inputs_on_device, weft_handle_t* out) {
  WEFT_API("weft_dispatch");
  return weft::dispatch_entry(e, x, topk_idx, topk_weights, tokens, inputs_on_device, out);
}

extern "C" int32_t weft_dispatch_begin(weft_engine_t e, const void* x, const int32_t* topk_idx,
                                       const float* topk_weights, int32_t tokens) {
  WEFT_API("weft_dispatch_begin");
  return weft::dispatch_begin_entry(e, x, topk_idx, topk_weights, tokens);
}

extern "C" int32_t weft_dispatch_begin_e4m3(weft_engine_t e, const void* q, const float* scales,
                                            const int32_t* topk_idx, const float* topk_weights, int32_t tokens) {
  WEFT_API("weft_dispatch_begin_e4m3");
  return weft::dispatch_begin_e4m3_entry(e, q, scales, topk_idx, topk_weights, tokens);
}

extern "C" int32_t weft_dispatch_finish(weft_engine_t e, weft_handle_t* out) {
  WEFT_API("weft_dispatch_finish");
  return weft::dispatch_finish_entry(e, out);
}

extern "C" int32_t weft_dispatch_layout(weft_engine_t e, const int32_t* topk_idx, const float* topk_weights,
                                        int32_t tokens, weft_handle_t* out) {
  WEFT_API("weft_dispatch_layout");
  return weft::dispatch_layout_entry(e, topk_idx, topk_weights, tokens, out);
}

extern "C" int32_t weft_redispatch(weft_handle_t h, const void* x, int32_t inputs_on_device) {
  WEFT_API("weft_redispatch");
  return weft::redispatch_x_entry(h, x, inputs_on_device);
}

extern "C" int32_t weft_redispatch_e4m3(weft_handle_t h, const void* q, const float* scales) {
  WEFT_API("weft_redispatch_e4m3");
  return weft::redispatch_e4m3_entry(h, q, scales);
}

extern "C" int32_t weft_handle_info(weft_handle_t h, weft_dispatch_info* out) {
  WEFT_API("weft_handle_info");
  return weft::handle_info(h, out);
}

extern "C" int32_t weft_handle_destroy(weft_handle_t h) {
  WEFT_API("weft_handle_destroy");
  return weft::handle_destroy(h);
}

extern "C" int32_t weft_combine(weft_handle_t h, const void* y, void* out) {
  WEFT_API("weft_combine");
  return weft::combine_entry(h, y, out);
}
