/**
 * The decode-mode part of the symbol table (weft.h "decode mode"), merged
 * into `symbols` by ffi.ts: the engine whose sizes are fixed by a capacity,
 * captured in a CUDA graph and replayed (lib/gpu/decode.ts).
 *
 * @module
 */

/**
 * Decode mode's symbols, in weft.h's order.
 *
 * @example
 * ```ts
 * import { decodeSymbols } from "./ffi_decode.ts";
 * console.assert(decodeSymbols.weft_decode_check.nonblocking);
 * ```
 */
export const decodeSymbols = {
  weft_decode_heap_bytes: {
    parameters: [
      "buffer", // const weft_plan_desc* plan (max_tokens = capacity)
      "i32", // int32_t expert_capacity: rows per local expert, 0 = world × max_tokens
      "buffer", // uint64_t* heap_out: symmetric heap bytes
      "buffer", // uint64_t* device_out: private device bytes
    ],
    result: "i32",
  },
  weft_decode_create: {
    parameters: [
      "pointer", // weft_comm_t comm
      "buffer", // const weft_plan_desc* plan
      "i32", // int32_t expert_capacity
      "buffer", // weft_decode_t* out
    ],
    result: "i32",
    nonblocking: true, // collective: two comm barriers
  },
  weft_decode_get_info: {
    parameters: [
      "pointer", // weft_decode_t d
      "buffer", // weft_decode_info* out
    ],
    result: "i32",
  },
  weft_decode_dispatch: {
    parameters: [
      "pointer", // weft_decode_t d
    ],
    result: "i32", // enqueues only: never waits
  },
  weft_decode_combine: {
    parameters: [
      "pointer", // weft_decode_t d
      "pointer", // const void* y [L × C × hidden] device, NULL = recv
      "pointer", // void* out [max_tokens × hidden] device, NULL = the engine's out
    ],
    result: "i32",
  },
  weft_decode_capture_begin: {
    parameters: [
      "pointer", // weft_decode_t d
    ],
    result: "i32",
  },
  weft_decode_capture_end: {
    parameters: [
      "pointer", // weft_decode_t d
      "buffer", // int32_t* graph: the captured graph's index
    ],
    result: "i32",
  },
  weft_decode_replay: {
    parameters: [
      "pointer", // weft_decode_t d
      "i32", // int32_t graph
    ],
    result: "i32", // launches only: never waits
  },
  weft_decode_check: {
    parameters: [
      "pointer", // weft_decode_t d
    ],
    result: "i32",
    nonblocking: true, // waits for the engine's work
  },
  weft_decode_destroy: {
    parameters: [
      "pointer", // weft_decode_t d
    ],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;
