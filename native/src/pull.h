// The NVLink pull of dispatched rows from every source's heap staging into
// this rank's receive rows: SM loads (pull_sm.cu) or the Hopper bulk-copy
// engine (pull_tma.cu).
#pragma once

#include "engine.h"

namespace weft {

// Enqueues the pull of a handle's rows; picks the bulk-copy pull when
// pull_tma_wanted, else SM loads (pull_sm.cu).
int32_t launch_pull(weft_engine* e, weft_handle* h);
// pull_tma.cu: the Hopper default for dedupe device/node on unquantized
// rows; WEFT_PULL=sm opts out.
bool pull_tma_wanted(const weft_engine* e);
int32_t launch_pull_tma(weft_engine* e, weft_handle* h, int max_tokens_now);

}  // namespace weft
