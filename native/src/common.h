// Shared by every native source: error reporting, launch checks, the device
// status word that carries bad-input and timeout verdicts through one call,
// and the small device helpers (system-scope flags, dtype conversion).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>
#include <stddef.h>

#include "../include/weft.h"

namespace weft {

// Limits of the NVLink engine. Masks of destination ranks are 32-bit words
// and a token's fan-out list lives in the lanes of one warp.
constexpr int kMaxWorld = 32;
constexpr int kMaxTopK = 32;
// World limit of the hierarchical (multi-node) engine; a node still has at
// most kMaxWorld ranks (its barrier and peer table are node-wide).
constexpr int kMaxHierWorld = 1024;

// ---- errors ----------------------------------------------------------------

// Records a failure: the message is prefixed with the current API call's name
// and kept process-wide (see weft_last_error), with no failing rank known.
void set_error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// The same for a message that names `rank` as the failing one (this rank for
// its own bad input, the first peer that failed or timed out): what
// weft_last_error_rank returns until the next failure (errors.cpp).
void set_error_at(int32_t rank, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
int32_t last_error_rank();
// weft_last_error's copy of the message.
int32_t last_error(char* buf, int32_t len);
// Names the C ABI call that is running on this thread (for messages).
struct ApiScope {
  explicit ApiScope(const char* name);
  ~ApiScope();
  const char* prev;
};
// WEFT_DEBUG=1: synchronize and check after every kernel, log stages to stderr.
bool debug_enabled();
void debug_log(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
// Checks that `device` is a visible CUDA device and makes it current (device.cu).
int32_t set_device(int32_t device);
// The device and memory calls of the C ABI (device.cu).
int32_t device_count(int32_t* out);
int32_t device_alloc(int32_t device, uint64_t bytes, void** out);
int32_t device_free(int32_t device, void* ptr);
int32_t device_copy_h2d(int32_t device, void* dst, const void* src, uint64_t bytes);
int32_t device_copy_d2h(int32_t device, void* dst, const void* src, uint64_t bytes);
int32_t device_memset(int32_t device, void* dst, int32_t value, uint64_t bytes);

#define WEFT_API(name)      \
  weft::ApiScope weft_scope_(name); \
  (void)cudaGetLastError()

#define WEFT_CUDA(call)                                                                 \
  do {                                                                                  \
    cudaError_t e_ = (call);                                                            \
    if (e_ != cudaSuccess) {                                                            \
      weft::set_error("%s:%d: %s failed: %s (%s)", __FILE__, __LINE__, #call,           \
                      cudaGetErrorName(e_), cudaGetErrorString(e_));                    \
      return WEFT_ERR_CUDA;                                                             \
    }                                                                                   \
  } while (0)

// After every kernel launch: the launch error, and under WEFT_DEBUG the
// kernel's own completion status.
#define WEFT_LAUNCHED(name, stream)                                                     \
  do {                                                                                  \
    cudaError_t e_ = cudaGetLastError();                                                \
    if (e_ == cudaSuccess && weft::debug_enabled()) {                                   \
      e_ = cudaStreamSynchronize(stream);                                               \
      weft::debug_log("kernel %s done: %s", name, cudaGetErrorName(e_));                \
    }                                                                                   \
    if (e_ != cudaSuccess) {                                                            \
      weft::set_error("%s:%d: kernel %s failed: %s (%s)", __FILE__, __LINE__, name,     \
                      cudaGetErrorName(e_), cudaGetErrorString(e_));                    \
      return WEFT_ERR_CUDA;                                                             \
    }                                                                                   \
  } while (0)

#define WEFT_TRY(expr)                  \
  do {                                  \
    int32_t s_ = (expr);                \
    if (s_ != WEFT_OK) return s_;       \
  } while (0)

#define WEFT_FAIL(code, ...)            \
  do {                                  \
    weft::set_error(__VA_ARGS__);       \
    return (code);                      \
  } while (0)

// WEFT_FAIL for a message that names `rank` as the failing rank.
#define WEFT_FAIL_AT(code, rank, ...)          \
  do {                                         \
    weft::set_error_at((rank), __VA_ARGS__);   \
    return (code);                             \
  } while (0)

// ---- device status of one collective call -----------------------------------

// Kinds of a rank-local input failure (low 4 bits of bad_key).
enum BadKind : unsigned {
  kBadNone = 0,
  kBadExpertRange = 1,  // topk_idx out of [-1, experts)
  kBadDuplicate = 2,    // the same expert twice in one token
  kBadNanWeight = 3,    // NaN in topk_weights
  kBadCapacity = 4,     // tokens > max_tokens (pos = tokens)
  kBadArgument = 5,     // a host-side check failed (NULL or unusable pointer, failed allocation)
};

// One per communicator, in device memory; reset at the start of each call.
// Kernels that run after a barrier return at once when `abort` is set, so a
// bad input anywhere makes every rank skip every write to its outputs.
struct DevStatus {
  unsigned long long bad_key;  // min over failures of (t*K + k) << 4 | kind; ~0 = none
  unsigned int local_bad;      // this rank's input failed a check
  unsigned int internal;       // an index fell outside its buffer (a bug, never user data)
  unsigned int peer_err_mask;  // ranks whose error bit was set at a barrier of this call
  unsigned int timeout_mask;   // ranks that did not arrive at a barrier in time
  unsigned int abort;          // skip the remaining kernels of this call
  unsigned int pad_;
};

#ifdef __CUDACC__  // device helpers; plain C++ sources see only the types
__device__ __forceinline__ unsigned ld_volatile_u32(const unsigned* p) {
  return *reinterpret_cast<const volatile unsigned*>(p);
}
// True when the kernels of this call must not touch outputs any more.
__device__ __forceinline__ bool call_aborted(const DevStatus* st) {
  return ld_volatile_u32(&st->abort) != 0u || ld_volatile_u32(&st->local_bad) != 0u;
}
__device__ __forceinline__ void report_bad(DevStatus* st, unsigned long long pos, unsigned kind) {
  atomicMin(&st->bad_key, (pos << 4) | kind);
  atomicExch(&st->local_bad, 1u);
}
__device__ __forceinline__ void report_internal(DevStatus* st) { atomicExch(&st->internal, 1u); }
// Clears the status for a new call (one thread). A peer that timed out stays
// timed out: calls queued behind the failed one skip their work instead of
// waiting out the timeout again (the host marks the comm unusable when it
// settles the failed call).
__device__ __forceinline__ void reset_status(DevStatus* st) {
  if (st->timeout_mask != 0u) {
    st->abort = 1u;
    return;
  }
  st->bad_key = ~0ull;
  st->local_bad = 0u;
  st->internal = 0u;
  st->peer_err_mask = 0u;
  st->timeout_mask = 0u;
  st->abort = 0u;
  st->pad_ = 0u;
}
// Copies the status into host memory mapped for the device (one thread, after
// every write of the call to st), where the host reads it once an event
// recorded after this kernel has completed. A kernel's store costs the
// stream less than a copy-engine transfer of 32 bytes, which sat between
// kernels for ~5-8 µs (bench/NOTES-nvlink.md step 20).
__device__ __forceinline__ void publish_status(const DevStatus* st, DevStatus* to) {
  const volatile DevStatus* v = st;
  to->bad_key = v->bad_key;
  to->local_bad = v->local_bad;
  to->internal = v->internal;
  to->peer_err_mask = v->peer_err_mask;
  to->timeout_mask = v->timeout_mask;
  to->abort = v->abort;
  to->pad_ = 0u;
  __threadfence_system();
}

#endif  // __CUDACC__

// ---- peers -------------------------------------------------------------------

// Heap base of every rank as mapped in this process (own heap at [rank]).
// Passed to kernels by value.
struct PeerTable {
  uint8_t* base[kMaxWorld];
};

// Tokens of every rank in one batch and their prefix sum; by value.
struct TokenTable {
  int tokens[kMaxWorld];
  int base[kMaxWorld + 1];  // base[r] = sum of tokens[r'] for r' < r
};

#ifdef __CUDACC__
// ---- system-scope flags ------------------------------------------------------

__device__ __forceinline__ void st_release_sys_u64(uint64_t* p, uint64_t v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ uint64_t ld_acquire_sys_u64(const uint64_t* p) {
  uint64_t v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ uint64_t globaltimer_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// ---- 16-byte vectors of each dtype -------------------------------------------

// Rows are moved as uint4 (16 bytes). Vec<DT> converts one uint4 of dtype DT
// to and from floats, with round-to-nearest-even on the way back.
template <int DT>
struct Vec;

__device__ __forceinline__ float bf16_bits_to_f32(unsigned bits) { return __uint_as_float(bits << 16); }
__device__ __forceinline__ unsigned f32_to_bf16_bits(float f) {
  return static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(f)));
}
__device__ __forceinline__ float f16_bits_to_f32(unsigned bits) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
__device__ __forceinline__ unsigned f32_to_f16_bits(float f) {
  return static_cast<unsigned>(__half_as_ushort(__float2half_rn(f)));
}

// The two 16-bit dtypes differ only in their element conversions.
template <int DT>
struct Bits16;
template <>
struct Bits16<WEFT_BF16> {
  __device__ static __forceinline__ float to_f32(unsigned bits) { return bf16_bits_to_f32(bits); }
  __device__ static __forceinline__ unsigned from_f32(float f) { return f32_to_bf16_bits(f); }
};
template <>
struct Bits16<WEFT_F16> {
  __device__ static __forceinline__ float to_f32(unsigned bits) { return f16_bits_to_f32(bits); }
  __device__ static __forceinline__ unsigned from_f32(float f) { return f32_to_f16_bits(f); }
};

// One uint4 of a 16-bit dtype: 8 elements, two per 32-bit word, low half first.
template <int DT>
struct Vec16 {
  static constexpr int kElems = 8;
  __device__ static __forceinline__ void unpack(const uint4& v, float (&f)[kElems]) {
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = Bits16<DT>::to_f32(w[i] & 0xffffu);
      f[2 * i + 1] = Bits16<DT>::to_f32(w[i] >> 16);
    }
  }
  __device__ static __forceinline__ uint4 pack(const float (&f)[kElems]) {
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) w[i] = Bits16<DT>::from_f32(f[2 * i]) | (Bits16<DT>::from_f32(f[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
  }
};

template <>
struct Vec<WEFT_BF16> : Vec16<WEFT_BF16> {};
template <>
struct Vec<WEFT_F16> : Vec16<WEFT_F16> {};

template <>
struct Vec<WEFT_F32> {
  static constexpr int kElems = 4;
  __device__ static __forceinline__ void unpack(const uint4& v, float (&f)[kElems]) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
  __device__ static __forceinline__ uint4 pack(const float (&f)[kElems]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]), __float_as_uint(f[3]));
  }
};

// N floats (the elements of one row vector of the row dtype) stored in, or
// loaded from, the wire dtype WDT: N*sizeof(WDT) bytes, 1 or 2 uint4.
template <int WDT, int N>
struct Wire {
  static constexpr int kElemsPerVec = Vec<WDT>::kElems;
  static_assert(N % kElemsPerVec == 0, "wire vectors must hold whole row vectors");
  static constexpr int kVecs = N / kElemsPerVec;
  __device__ static __forceinline__ void store(uint4* dst, const float (&f)[N]) {
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      float part[kElemsPerVec];
#pragma unroll
      for (int i = 0; i < kElemsPerVec; ++i) part[i] = f[j * kElemsPerVec + i];
      dst[j] = Vec<WDT>::pack(part);
    }
  }
  __device__ static __forceinline__ void load(const uint4* src, float (&f)[N]) {
#pragma unroll
    for (int j = 0; j < kVecs; ++j) {
      float part[kElemsPerVec];
      Vec<WDT>::unpack(src[j], part);
#pragma unroll
      for (int i = 0; i < kElemsPerVec; ++i) f[j * kElemsPerVec + i] = part[i];
    }
  }
};

#endif  // __CUDACC__

inline int dtype_bytes(int dt) { return dt == WEFT_F32 ? 4 : 2; }

// Allocation offsets are kept 256-byte aligned (heap regions, index arrays).
inline uint64_t align256(uint64_t v) { return (v + 255ull) & ~255ull; }

// Blocks to launch for n work items of `per_block` each (0 = launch nothing).
inline unsigned grid_for(long long n, long long per_block) {
  return n <= 0 ? 0u : static_cast<unsigned>((n + per_block - 1) / per_block);
}

}  // namespace weft
