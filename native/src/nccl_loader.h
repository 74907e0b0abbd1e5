// NCCL, loaded at run time with dlopen so that libweft builds and loads where
// NCCL is absent. Only the handful of declarations weft uses are written here;
// their values are NCCL's stable ABI (nccl.h, 2.14 to 2.30).
#pragma once

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

namespace weft {

typedef struct ncclComm* ncclComm_t;

typedef enum {
  ncclSuccess = 0,
  ncclUnhandledCudaError = 1,
  ncclSystemError = 2,
  ncclInternalError = 3,
  ncclInvalidArgument = 4,
  ncclInvalidUsage = 5,
  ncclRemoteError = 6,
  ncclInProgress = 7,
  ncclTimeout = 8,
} ncclResult_t;

typedef enum {
  ncclInt8 = 0,
  ncclUint8 = 1,
  ncclInt32 = 2,
} ncclDataType_t;

typedef struct {
  char internal[128];
} ncclUniqueId;

// The leading fields of ncclConfig_t as of NCCL 2.14. NCCL copies `size`
// bytes of the caller's struct and gives every field added after `version`
// its default, so this prefix is a valid config for every later NCCL.
struct ncclConfigV21400 {
  size_t size;
  unsigned int magic;
  unsigned int version;
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
};
constexpr unsigned int kNcclApiMagic = 0xcafebeefu;
constexpr unsigned int kNcclConfigVersion = 21400;  // NCCL_VERSION(2, 14, 0)
constexpr int kNcclConfigUndefInt = -2147483647 - 1;  // INT_MIN

struct NcclApi {
  ncclResult_t (*GetVersion)(int*);
  ncclResult_t (*GetUniqueId)(ncclUniqueId*);
  ncclResult_t (*CommInitRank)(ncclComm_t*, int, ncclUniqueId, int);
  ncclResult_t (*CommInitRankConfig)(ncclComm_t*, int, ncclUniqueId, int, ncclConfigV21400*);  // may be null
  ncclResult_t (*CommFinalize)(ncclComm_t);                                                    // may be null
  ncclResult_t (*CommDestroy)(ncclComm_t);
  ncclResult_t (*CommAbort)(ncclComm_t);
  ncclResult_t (*CommGetAsyncError)(ncclComm_t, ncclResult_t*);
  ncclResult_t (*Send)(const void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*Recv)(void*, size_t, ncclDataType_t, int, ncclComm_t, cudaStream_t);
  ncclResult_t (*AllGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t);
  ncclResult_t (*GroupStart)();
  ncclResult_t (*GroupEnd)();
  const char* (*GetErrorString)(ncclResult_t);
  int version;       // ncclGetVersion's code, e.g. 22807
  char path[1024];   // the file that was loaded
};

// Loads NCCL once per process. Returns the API, or null with weft's last
// error set to a message listing every place that was tried.
const NcclApi* nccl_api();
// weft_nccl_available and weft_nccl_unique_id.
int32_t nccl_available(int32_t* out);
int32_t nccl_unique_id(uint8_t* out);

}  // namespace weft
