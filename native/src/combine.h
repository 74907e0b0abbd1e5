// Combine (combine.cu, combine_push.cu): partial sums pushed over NVLink to
// each token's home, then reduced there in a fixed order.
#pragma once

#include "engine.h"

namespace weft {

// Whether one-term partials cross unrounded (see the precision rule in
// combine.cu): weighted, 16-bit rows, wire = row dtype. The push and the
// home's reduce both follow it.
template <int DT, int WDT, bool WEIGHTED>
constexpr bool kRawSingle = WEIGHTED && WDT == DT && DT != WEFT_F32;

// During the dispatch's layout (layout_build, after the staging barrier):
// the weights the home applies to one-term partials (IndexArrays::part_w),
// from this rank's staged slots and weights. A no-op for plans that do not
// use them.
int32_t launch_combine_home_weights(weft_engine* e, cudaStream_t s);
// combine_push.cu.
int32_t launch_combine_push(weft_engine* e, weft_handle* h, const void* y);
// combine.cu.
int32_t launch_combine_reduce(weft_engine* e, weft_handle* h, void* out);
// weft_combine.
int32_t combine_entry(weft_handle_t h, const void* y, void* out);

}  // namespace weft
