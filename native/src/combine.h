// Combine (combine.cu): partial sums pushed over NVLink to each token's
// home, then reduced there in a fixed order.
#pragma once

#include "engine.h"

namespace weft {

int32_t launch_combine_push(weft_engine* e, weft_handle* h, const void* y);
int32_t launch_combine_reduce(weft_engine* e, weft_handle* h, void* out);
// weft_combine.
int32_t combine_entry(weft_handle_t h, const void* y, void* out);

}  // namespace weft
