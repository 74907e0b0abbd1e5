// Messages for inputs that failed a check (input_check.cu), shared by the
// engine's dispatch and the NCCL baseline.
#pragma once

#include <string>

#include "engine.h"

namespace weft {

// The message and status code for this rank's failed input check (after a
// sync has copied the device status to `s`). idx_device: the checked topk_idx,
// to quote the offending value; host_msg: what a host-side failure was.
std::string bad_input_message(const PlanHost& p, const DevStatus& s, int rank, int tokens, const int* idx_device,
                              const std::string& host_msg);
int32_t bad_input_code(unsigned kind);

}  // namespace weft
