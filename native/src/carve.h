// Carving one allocation into 256-byte aligned regions: a handle's block of
// index arrays (handles.cu, hier_tables.cu) and an engine's heap regions
// (plan.cpp, hier_engine.cu).
#pragma once

#include "engine.h"

namespace weft {

// Offsets into a block allocated afterwards (off bytes in all): each region
// 256-byte aligned; an empty one still takes 16 bytes.
struct Bump {
  uint64_t off = 0;
  uint64_t operator()(uint64_t bytes) {
    const uint64_t at = off;
    off = align256(at + (bytes > 0 ? bytes : 16));
    return at;
  }
};

// Heap regions from the comm's reserved area on, each 256-byte aligned; a
// layout ends at align256(off).
struct HeapCarve {
  uint64_t off = kCommReserved;
  uint64_t operator()(uint64_t bytes) {
    const uint64_t at = align256(off);
    off = at + bytes;
    return at;
  }
};

// The regions both engines stage a call's inputs in, first in their heap and
// in this order: meta, x, xq, xs, idx, w, slot, ord (plan.cpp).
void carve_staging(const PlanHost& p, HeapCarve& take, HeapLayout* h);

}  // namespace weft
