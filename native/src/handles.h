// A dispatch's memory (handles.cu): the index arrays' block, the receive
// block, the engine's spare blocks, and the handle's lifetime.
#pragma once

#include "engine.h"

namespace weft {

// Receive rows this rank can get at most: a token holds each slot at most
// once, so from each rank at most max_tokens x min(K, local slots).
long long recv_capacity(const PlanHost& p);
uint64_t index_block_bytes(const PlanHost& p);
// Carves `block` (index_block_bytes) into the arrays.
IndexArrays index_arrays(const PlanHost& p, void* block);


// An index block goes back to the engine's spare slot if it is free (and
// the engine open), else to the pool.
void free_index(weft_engine* e, void* block);
// The begun dispatch's index arrays (e->pending), stream-ordered on the comm
// stream; WEFT_ERR_CAPACITY, with no message, when out of memory.
int32_t alloc_pending_index(weft_engine* e);
// Frees the index arrays of a dispatch that did not reach its handle.
void drop_pending_index(weft_engine* e);
// recv (and its scales) of a handle whose recv_rows is set.
int32_t handle_alloc(weft_engine* e, weft_handle* h);
// The handle takes the index arrays the layout wrote.
void handle_take_index(weft_handle* h, const IndexArrays& ix);
// Frees a handle (NULL is fine), keeping its blocks as the engine's spares
// where the slots are free, and releases its engine.
void handle_free(weft_handle* h);
int32_t handle_info(weft_handle_t h, weft_dispatch_info* out);
int32_t handle_destroy(weft_handle_t h);

}  // namespace weft
