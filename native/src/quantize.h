// FP8 E4M3 quantization of the rows dispatch sends (quantize.cu).
#pragma once

#include "engine.h"

namespace weft {

// x rows staged in the heap → their E4M3 send rows (plans with quantize E4M3).
int32_t launch_quantize(weft_engine* e, int tokens);

}  // namespace weft
