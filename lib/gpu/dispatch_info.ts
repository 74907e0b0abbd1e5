/**
 * `weft_dispatch_info`, what native reports about one dispatched batch:
 * declared once here in weft.h's order (tests/ffi_test.ts checks it against
 * weft.h) and decoded into the counts and device pointers the handle uses.
 *
 * @module
 */
import { type CStruct, cStruct, readStruct } from "../native/struct.ts";

/** The members of `weft_dispatch_info` in weft.h's order: `[C name, C type]`. */
export const DISPATCH_INFO_MEMBERS = [
  ["tokens", "int32_t"],
  ["recv_rows", "int32_t"],
  ["local_experts", "int32_t"],
  ["pad_", "int32_t"],
  ["recv", "pointer"],
  ["recv_weights", "pointer"],
  ["expert_counts", "pointer"],
  ["src_rank", "pointer"],
  ["src_token", "pointer"],
  ["src_k", "pointer"],
  ["dest_row", "pointer"], // native's own (combine reads it there); not read here
  ["recv_scales", "pointer"],
] as const;

/**
 * The layout of `weft_dispatch_info`.
 *
 * @example
 * ```ts
 * import { DISPATCH_INFO } from "./dispatch_info.ts";
 * console.assert(DISPATCH_INFO.offsets.recv === 16 && DISPATCH_INFO.bytes === 80);
 * ```
 */
export const DISPATCH_INFO: CStruct<typeof DISPATCH_INFO_MEMBERS> = cStruct(
  "weft_dispatch_info",
  DISPATCH_INFO_MEMBERS,
);

/** A decoded `weft_dispatch_info`: counts, and device pointers owned by the handle. */
export interface DispatchInfo {
  /** T of this rank. */
  readonly tokens: number;
  /** R of this rank. */
  readonly recvRows: number;
  /** L of this rank. */
  readonly localExperts: number;
  /** [R × H] received rows, dtype. */
  readonly recv: Deno.PointerValue;
  /** [R] f32 weight of each row. */
  readonly recvWeights: Deno.PointerValue;
  /** [L] int32 rows per local expert. */
  readonly expertCounts: Deno.PointerValue;
  /** [R] int32 source rank of each row. */
  readonly srcRank: Deno.PointerValue;
  /** [R] int32 source token of each row. */
  readonly srcToken: Deno.PointerValue;
  /** [R] int32 k slot of each row. */
  readonly srcK: Deno.PointerValue;
  /** [R × H/128] f32 scales of recv when the plan quantizes dispatch, else NULL. */
  readonly recvScales: Deno.PointerValue;
}

/**
 * Reads a `weft_dispatch_info` that native filled in.
 *
 * @example
 * ```ts
 * import { DISPATCH_INFO, decodeDispatchInfo } from "./dispatch_info.ts";
 * const raw = new Uint8Array(DISPATCH_INFO.bytes);
 * new DataView(raw.buffer).setInt32(DISPATCH_INFO.offsets.recv_rows, 12, true);
 * console.assert(decodeDispatchInfo(raw).recvRows === 12);
 * ```
 */
export function decodeDispatchInfo(raw: Uint8Array): DispatchInfo {
  const c = readStruct(DISPATCH_INFO, raw);
  return {
    tokens: c.tokens,
    recvRows: c.recv_rows,
    localExperts: c.local_experts,
    recv: c.recv,
    recvWeights: c.recv_weights,
    expertCounts: c.expert_counts,
    srcRank: c.src_rank,
    srcToken: c.src_token,
    srcK: c.src_k,
    recvScales: c.recv_scales,
  };
}
