// Devices and memory: the device check every entry point makes, and the
// small calls (device count, alloc, free, copies, memset) that api.cu wraps.
#include "common.h"

namespace weft {

int32_t set_device(int32_t device) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    (void)cudaGetLastError();
    WEFT_FAIL(WEFT_ERR_NO_DEVICE, "no CUDA device is visible (%s)", cudaGetErrorString(e));
  }
  if (device < 0 || device >= count) {
    WEFT_FAIL(WEFT_ERR_INVALID, "device = %d; this process sees %d device(s)", device, count);
  }
  WEFT_CUDA(cudaSetDevice(device));
  return WEFT_OK;
}

namespace {

// Engine calls return before their tails run on the comm stream, which does
// not order itself with the legacy stream these copies use. Waiting for the
// whole device first makes a copy see (and a free or overwrite not race) the
// rows a dispatch or combine is still writing or reading. Their errors are
// reported by the engine's next call, or weft_comm_sync.
int32_t wait_for_engine_work() {
  WEFT_CUDA(cudaDeviceSynchronize());
  return WEFT_OK;
}

// weft_copy_h2d and weft_copy_d2h: a copy that is complete when it returns.
int32_t blocking_copy(int32_t device, void* dst, const void* src, uint64_t bytes) {
  if (bytes == 0) return WEFT_OK;
  if (dst == nullptr || src == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "dst or src is NULL");
  WEFT_TRY(set_device(device));
  WEFT_TRY(wait_for_engine_work());
  WEFT_CUDA(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
  WEFT_CUDA(cudaStreamSynchronize(cudaStreamLegacy));  // device-to-device copies return early
  return WEFT_OK;
}

}  // namespace

int32_t device_count(int32_t* out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = 0;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    WEFT_FAIL(WEFT_ERR_NO_DEVICE, "no CUDA driver or device: %s (%s)", cudaGetErrorName(e), cudaGetErrorString(e));
  }
  *out = count;
  return count > 0 ? WEFT_OK : WEFT_ERR_NO_DEVICE;
}

int32_t device_alloc(int32_t device, uint64_t bytes, void** out) {
  if (out == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "out is NULL");
  *out = nullptr;
  WEFT_TRY(set_device(device));
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, bytes > 0 ? bytes : 16);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    WEFT_FAIL(WEFT_ERR_CUDA, "cudaMalloc(%llu bytes) on device %d failed: %s", static_cast<unsigned long long>(bytes),
              device, cudaGetErrorString(e));
  }
  *out = p;
  return WEFT_OK;
}

int32_t device_free(int32_t device, void* ptr) {
  if (ptr == nullptr) return WEFT_OK;
  WEFT_TRY(set_device(device));
  WEFT_TRY(wait_for_engine_work());
  WEFT_CUDA(cudaFree(ptr));
  return WEFT_OK;
}

int32_t device_copy_h2d(int32_t device, void* dst, const void* src, uint64_t bytes) {
  return blocking_copy(device, dst, src, bytes);
}

int32_t device_copy_d2h(int32_t device, void* dst, const void* src, uint64_t bytes) {
  return blocking_copy(device, dst, src, bytes);
}

int32_t device_memset(int32_t device, void* dst, int32_t value, uint64_t bytes) {
  if (bytes == 0) return WEFT_OK;
  if (dst == nullptr) WEFT_FAIL(WEFT_ERR_INVALID, "dst is NULL");
  WEFT_TRY(set_device(device));
  WEFT_TRY(wait_for_engine_work());
  WEFT_CUDA(cudaMemset(dst, value, bytes));
  WEFT_CUDA(cudaStreamSynchronize(cudaStreamLegacy));
  return WEFT_OK;
}

}  // namespace weft
