// The C ABI of decode mode (weft.h "decode mode"): each call names itself
// for error messages (WEFT_API) and forwards to decode_engine.cu.
#include "decode.h"

extern "C" int32_t weft_decode_heap_bytes(const weft_plan_desc* plan, int32_t expert_capacity, uint64_t* heap_out,
                                          uint64_t* device_out) {
  WEFT_API("weft_decode_heap_bytes");
  return weft::decode_heap_bytes(plan, expert_capacity, heap_out, device_out);
}

extern "C" int32_t weft_decode_create(weft_comm_t comm, const weft_plan_desc* plan, int32_t expert_capacity,
                                      weft_decode_t* out) {
  WEFT_API("weft_decode_create");
  return weft::decode_create(comm, plan, expert_capacity, out);
}

extern "C" int32_t weft_decode_get_info(weft_decode_t d, weft_decode_info* out) {
  WEFT_API("weft_decode_get_info");
  return weft::decode_info(d, out);
}

extern "C" int32_t weft_decode_dispatch(weft_decode_t d) {
  WEFT_API("weft_decode_dispatch");
  return weft::decode_dispatch(d);
}

extern "C" int32_t weft_decode_combine(weft_decode_t d, const void* y, void* out) {
  WEFT_API("weft_decode_combine");
  return weft::decode_combine(d, y, out);
}

extern "C" int32_t weft_decode_capture_begin(weft_decode_t d) {
  WEFT_API("weft_decode_capture_begin");
  return weft::decode_capture_begin(d);
}

extern "C" int32_t weft_decode_capture_end(weft_decode_t d, int32_t* graph) {
  WEFT_API("weft_decode_capture_end");
  return weft::decode_capture_end(d, graph);
}

extern "C" int32_t weft_decode_replay(weft_decode_t d, int32_t graph) {
  WEFT_API("weft_decode_replay");
  return weft::decode_replay(d, graph);
}

extern "C" int32_t weft_decode_check(weft_decode_t d) {
  WEFT_API("weft_decode_check");
  return weft::decode_check(d);
}

extern "C" int32_t weft_decode_destroy(weft_decode_t d) {
  WEFT_API("weft_decode_destroy");
  return weft::decode_destroy(d);
}
