// The message and status code of an input that failed a check: the device
// status names the first bad (t, k) and its kind; the message quotes the
// value and says how to fix it. Used by dispatch and the NCCL baseline.
#include <stdio.h>

#include <string>

#include "input_check.h"

namespace weft {

std::string bad_input_message(const PlanHost& p, const DevStatus& s, int rank, int tokens, const int* idx_device,
                              const std::string& host_msg) {
  const unsigned kind = static_cast<unsigned>(s.bad_key & 15ull);
  const unsigned long long pos = s.bad_key >> 4;
  const int K = p.top_k;
  const long long t = static_cast<long long>(pos / static_cast<unsigned long long>(K));
  const int k = static_cast<int>(pos % static_cast<unsigned long long>(K));
  int value = 0;
  if ((kind == kBadExpertRange || kind == kBadDuplicate) && idx_device != nullptr) {
    if (cudaMemcpy(&value, idx_device + pos, sizeof value, cudaMemcpyDeviceToHost) != cudaSuccess) {
      (void)cudaGetLastError();
    }
  }
  char buf[1024];
  switch (kind) {
    case kBadExpertRange:
      snprintf(buf, sizeof buf,
               "topk_idx[%lld][%d] = %d on rank %d is not an expert id: ids must be in [-1, %d) (-1 = empty slot). "
               "Every rank failed the call; nothing was written",
               t, k, value, rank, p.experts);
      break;
    case kBadDuplicate:
      snprintf(buf, sizeof buf,
               "topk_idx[%lld] on rank %d lists expert %d twice (again at k = %d): a token's experts must be "
               "distinct. Every rank failed the call; nothing was written",
               t, rank, value, k);
      break;
    case kBadNanWeight:
      snprintf(buf, sizeof buf,
               "topk_weights[%lld][%d] on rank %d is NaN: routing weights must be numbers. Every rank failed the "
               "call; nothing was written",
               t, k, rank);
      break;
    case kBadCapacity:
      snprintf(buf, sizeof buf,
               "tokens = %d on rank %d exceeds the plan's max_tokens = %d: raise max_tokens (and the heap, see "
               "weft_engine_heap_bytes) or split the batch. Every rank failed the call",
               tokens, rank, p.max_tokens);
      break;
    default:
      snprintf(buf, sizeof buf, "%s on rank %d. Every rank failed the call; nothing was written",
               host_msg.empty() ? "bad argument" : host_msg.c_str(), rank);
      break;
  }
  return buf;
}

int32_t bad_input_code(unsigned kind) {
  switch (kind) {
    case kBadExpertRange:
    case kBadDuplicate:
    case kBadNanWeight:
      return WEFT_ERR_BAD_INPUT;
    case kBadCapacity:
      return WEFT_ERR_CAPACITY;
    default:
      return WEFT_ERR_INVALID;
  }
}

}  // namespace weft
