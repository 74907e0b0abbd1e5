/**
 * `weft_decode_info` (weft.h "decode mode"), declared once here in weft.h's
 * order and decoded into sizes and device addresses. The two `uint64_t`
 * byte counts are declared as 8-byte "pointer" members (the same size and
 * alignment on x86-64 and aarch64) and read back as numbers.
 *
 * @module
 */
import { type CStruct, cStruct, readStruct } from "../native/struct.ts";

/** The members of `weft_decode_info` in weft.h's order: `[C name, C type]`. */
export const DECODE_INFO_MEMBERS = [
  ["max_tokens", "int32_t"],
  ["expert_capacity", "int32_t"],
  ["local_experts", "int32_t"],
  ["graphs", "int32_t"],
  ["heap_bytes", "pointer"], // uint64_t
  ["device_bytes", "pointer"], // uint64_t
  ["x", "pointer"],
  ["topk_idx", "pointer"],
  ["topk_weights", "pointer"],
  ["tokens", "pointer"],
  ["recv", "pointer"],
  ["recv_weights", "pointer"],
  ["expert_counts", "pointer"],
  ["src_rank", "pointer"],
  ["src_token", "pointer"],
  ["src_k", "pointer"],
  ["out", "pointer"],
  ["stream", "pointer"],
] as const;

/**
 * The layout of `weft_decode_info`.
 *
 * @example
 * ```ts
 * import { DECODE_INFO } from "./decode_info.ts";
 * console.assert(DECODE_INFO.offsets.heap_bytes === 16 && DECODE_INFO.bytes === 128);
 * ```
 */
export const DECODE_INFO: CStruct<typeof DECODE_INFO_MEMBERS> = cStruct(
  "weft_decode_info",
  DECODE_INFO_MEMBERS,
);

/** A decoded `weft_decode_info`. */
export interface DecodeInfo {
  /** Tokens per rank per step (capacity). */
  readonly maxTokens: number;
  /** Rows per local expert (C). */
  readonly expertCapacity: number;
  /** L of this rank. */
  readonly localExperts: number;
  /** Graphs captured so far. */
  readonly graphs: number;
  /** Symmetric heap bytes (comm reserve included). */
  readonly heapBytes: number;
  /** Private device bytes. */
  readonly deviceBytes: number;
  /** Device addresses, as weft.h describes them. */
  readonly x: Deno.PointerValue;
  readonly topkIdx: Deno.PointerValue;
  readonly topkWeights: Deno.PointerValue;
  readonly tokens: Deno.PointerValue;
  readonly recv: Deno.PointerValue;
  readonly recvWeights: Deno.PointerValue;
  readonly expertCounts: Deno.PointerValue;
  readonly srcRank: Deno.PointerValue;
  readonly srcToken: Deno.PointerValue;
  readonly srcK: Deno.PointerValue;
  readonly out: Deno.PointerValue;
  /** The comm's cudaStream_t. */
  readonly stream: Deno.PointerValue;
}

/**
 * Reads a `weft_decode_info` that native filled in.
 *
 * @example
 * ```ts
 * import { DECODE_INFO, decodeDecodeInfo } from "./decode_info.ts";
 * const raw = new Uint8Array(DECODE_INFO.bytes);
 * const v = new DataView(raw.buffer);
 * v.setInt32(DECODE_INFO.offsets.expert_capacity, 64, true);
 * v.setBigUint64(DECODE_INFO.offsets.heap_bytes, 5000n, true);
 * const info = decodeDecodeInfo(raw);
 * console.assert(info.expertCapacity === 64 && info.heapBytes === 5000);
 * ```
 */
export function decodeDecodeInfo(raw: Uint8Array): DecodeInfo {
  const c = readStruct(DECODE_INFO, raw);
  const bytes = (p: Deno.PointerValue) => Number(p === null ? 0n : Deno.UnsafePointer.value(p));
  return {
    maxTokens: c.max_tokens,
    expertCapacity: c.expert_capacity,
    localExperts: c.local_experts,
    graphs: c.graphs,
    heapBytes: bytes(c.heap_bytes),
    deviceBytes: bytes(c.device_bytes),
    x: c.x,
    topkIdx: c.topk_idx,
    topkWeights: c.topk_weights,
    tokens: c.tokens,
    recv: c.recv,
    recvWeights: c.recv_weights,
    expertCounts: c.expert_counts,
    srcRank: c.src_rank,
    srcToken: c.src_token,
    srcK: c.src_k,
    out: c.out,
    stream: c.stream,
  };
}
