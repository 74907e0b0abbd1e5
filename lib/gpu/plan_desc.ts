/**
 * `weft_plan_desc`, the plan as native reads it: declared once here (member
 * names and C types in weft.h's order), filled from a PlanSpec, packed into
 * bytes. tests/ffi_test.ts checks the declaration against weft.h, so adding
 * a plan field is one edit here ({@link PLAN_DESC} and
 * {@link planDescFields}, which the type checker then demands) and one in
 * weft.h.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { readPointer, stableCopy } from "../native/pointers.ts";
import { native } from "../native/loader.ts";
import { unwrap } from "../native/status.ts";
import { type CStruct, cStruct, type Padding, writeStruct } from "../native/struct.ts";
import { DEFAULT_MAX_TOKENS, type EngineOptions } from "./options.ts";

/** weft.h's codes of the plan's choices (dtype, dedupe, receive, combine, quantize, balance). */
export const Codes: Readonly<{
  dtype: Readonly<{ bf16: 0; f16: 1; f32: 2 }>;
  dedupe: Readonly<{ none: 0; device: 1; node: 2 }>;
  receive: Readonly<{ "expert-major": 0; "rank-major": 1 }>;
  combine: Readonly<{ weighted: 0; sum: 1 }>;
  quantize: Readonly<{ none: 0; e4m3: 1 }>;
  balance: Readonly<{ rail: 0; greedy: 1 }>;
}> = Object.freeze({
  dtype: Object.freeze({ bf16: 0, f16: 1, f32: 2 } as const),
  dedupe: Object.freeze({ none: 0, device: 1, node: 2 } as const),
  receive: Object.freeze({ "expert-major": 0, "rank-major": 1 } as const),
  combine: Object.freeze({ weighted: 0, sum: 1 } as const),
  quantize: Object.freeze({ none: 0, e4m3: 1 } as const),
  balance: Object.freeze({ rail: 0, greedy: 1 } as const),
});

/** The members of `weft_plan_desc` in weft.h's order: `[C name, C type]`. */
export const PLAN_DESC_MEMBERS = [
  ["world", "int32_t"],
  ["rank", "int32_t"],
  ["gpus_per_node", "int32_t"],
  ["experts", "int32_t"],
  ["top_k", "int32_t"],
  ["hidden", "int32_t"],
  ["dtype", "int32_t"],
  ["dedupe", "int32_t"],
  ["receive", "int32_t"],
  ["combine", "int32_t"],
  ["max_tokens", "int32_t"],
  ["combine_wire_f32", "int32_t"],
  ["quantize", "int32_t"],
  ["balance", "int32_t"],
  ["local_experts", "pointer"], // [world]
  ["slot_base", "pointer"], // [world + 1]
  ["slot_expert", "pointer"], // [slots]
  ["replica_start", "pointer"], // [experts + 1]
  ["replica_slots", "pointer"], // [replica_start[experts]]
] as const;

/**
 * The layout of `weft_plan_desc`.
 *
 * @example
 * ```ts
 * import { PLAN_DESC } from "./plan_desc.ts";
 * console.assert(PLAN_DESC.offsets.local_experts === 56 && PLAN_DESC.bytes === 96);
 * ```
 */
export const PLAN_DESC: CStruct<typeof PLAN_DESC_MEMBERS> = cStruct(
  "weft_plan_desc",
  PLAN_DESC_MEMBERS,
);

/**
 * The values of a `weft_plan_desc` by C name: numbers for the int32
 * members, host arrays (which native copies) for the pointer members.
 */
export type PlanDescFields = {
  readonly [E in (typeof PLAN_DESC_MEMBERS)[number] as Exclude<E[0], Padding>]: E[1] extends
    "int32_t" ? number
    : Int32Array;
};

/**
 * The fields of `weft_plan_desc` for `plan` on `rank`.
 *
 * @example
 * ```ts
 * import { planDescFields } from "./plan_desc.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * console.assert(planDescFields(plan, 1, { maxTokens: 128 }).max_tokens === 128);
 * ```
 */
export function planDescFields(
  plan: PlanSpec,
  rank: number,
  options: EngineOptions = {},
): PlanDescFields {
  return {
    world: plan.world,
    rank,
    gpus_per_node: plan.gpusPerNode,
    experts: plan.experts,
    top_k: plan.topK,
    hidden: plan.hidden,
    dtype: Codes.dtype[plan.dtype],
    dedupe: Codes.dedupe[plan.dedupe],
    receive: Codes.receive[plan.receive],
    combine: Codes.combine[plan.combine],
    max_tokens: options.maxTokens ?? DEFAULT_MAX_TOKENS,
    combine_wire_f32: (options.combineWire ?? "dtype") === "f32" ? 1 : 0,
    quantize: Codes.quantize[plan.quantize ?? "none"],
    balance: Codes.balance[plan.balance ?? "rail"],
    local_experts: plan.localExperts,
    slot_base: plan.slotBase,
    slot_expert: plan.slotExpert,
    replica_start: plan.replicaStart,
    replica_slots: plan.replicaSlots,
  };
}

/**
 * The bytes of a `weft_plan_desc`, and the arrays its pointers point into:
 * keep `keepAlive` reachable for as long as native may read the struct.
 *
 * @example
 * ```ts
 * import { packPlanDesc, planDescFields, PLAN_DESC } from "./plan_desc.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * const { bytes } = packPlanDesc(planDescFields(plan, 1));
 * console.assert(new DataView(bytes.buffer).getInt32(PLAN_DESC.offsets.rank, true) === 1);
 * ```
 */
export function packPlanDesc(
  fields: PlanDescFields,
): { bytes: Uint8Array<ArrayBuffer>; keepAlive: readonly Int32Array[] } {
  const keepAlive: Int32Array[] = [];
  const values: Record<string, number | Deno.PointerValue> = {};
  for (const [name, value] of Object.entries(fields)) {
    if (typeof value === "number") {
      values[name] = value;
      continue;
    }
    const array = stableCopy(value);
    keepAlive.push(array);
    values[name] = Deno.UnsafePointer.of(array);
  }
  return { bytes: writeStruct(PLAN_DESC, values as never), keepAlive };
}

/**
 * The symmetric heap `plan` needs per rank (`weft_engine_heap_bytes`).
 *
 * @example
 * ```ts ignore
 * import { planHeapBytes } from "./plan_desc.ts";
 * console.log(planHeapBytes(plan, 0, { maxTokens: 4096 }));
 * ```
 */
export function planHeapBytes(plan: PlanSpec, rank: number, options: EngineOptions = {}): number {
  const { bytes, keepAlive } = packPlanDesc(planDescFields(plan, rank, options));
  const out = new BigUint64Array(1);
  unwrap(native().weft_engine_heap_bytes(bytes, out), "weft_engine_heap_bytes", {
    field: "plan",
  });
  void keepAlive;
  return Number(out[0]);
}

/**
 * Creates the native engine of `plan` on `rank` over the native
 * communicator `comm` (`weft_engine_create`).
 *
 * @example
 * ```ts ignore
 * import { createNativeEngine } from "./plan_desc.ts";
 * const engine = createNativeEngine(comm.nativeHandle, plan, comm.rank, { maxTokens: 4096 });
 * ```
 */
export function createNativeEngine(
  comm: Deno.PointerValue,
  plan: PlanSpec,
  rank: number,
  options: EngineOptions,
): Deno.PointerValue {
  const { bytes, keepAlive } = packPlanDesc(planDescFields(plan, rank, options));
  const out = new BigUint64Array(1);
  unwrap(native().weft_engine_create(comm, bytes, out), "weft_engine_create", {
    rank,
    field: "plan",
  });
  void keepAlive;
  return readPointer(out);
}
