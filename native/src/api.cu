// The C ABI of weft.h that is not the communicator's or the engine's:
// the version, the last error, devices and memory. Every extern "C" symbol
// of the library is defined in api.cu, api_comm.cu or api_engine.cu; each
// names itself for error messages (WEFT_API) and forwards to namespace weft.
#include "common.h"

extern "C" int32_t weft_abi_version(void) { return WEFT_ABI_VERSION; }

// Not WEFT_API: asking for the message must not change it.
extern "C" int32_t weft_last_error(char* buf, int32_t len) { return weft::last_error(buf, len); }

extern "C" int32_t weft_last_error_rank(void) { return weft::last_error_rank(); }

extern "C" int32_t weft_device_count(int32_t* out) {
  WEFT_API("weft_device_count");
  return weft::device_count(out);
}

extern "C" int32_t weft_alloc(int32_t device, uint64_t bytes, void** out) {
  WEFT_API("weft_alloc");
  return weft::device_alloc(device, bytes, out);
}

extern "C" int32_t weft_free(int32_t device, void* ptr) {
  WEFT_API("weft_free");
  return weft::device_free(device, ptr);
}

extern "C" int32_t weft_copy_h2d(int32_t device, void* dst, const void* src, uint64_t bytes) {
  WEFT_API("weft_copy_h2d");
  return weft::device_copy_h2d(device, dst, src, bytes);
}

extern "C" int32_t weft_copy_d2h(int32_t device, void* dst, const void* src, uint64_t bytes) {
  WEFT_API("weft_copy_d2h");
  return weft::device_copy_d2h(device, dst, src, bytes);
}

extern "C" int32_t weft_memset(int32_t device, void* dst, int32_t value, uint64_t bytes) {
  WEFT_API("weft_memset");
  return weft::device_memset(device, dst, value, bytes);
}
