/**
 * Decode mode's options and small types (lib/gpu/decode.ts): what
 * DecodeEngine.create takes, what it reports about memory, one step's
 * inputs, what a capture callback gets, and the plan descriptor it passes.
 *
 * @module
 */
import { checkCombineWire } from "./options.ts";
import type { DType, PlanSpec } from "../../dsl/types.ts";
import type { HostRows } from "../core/engine_api.ts";
import type { DeviceTensor } from "./device_tensor.ts";
import { packPlanDesc, planDescFields } from "./plan_desc.ts";

/** Options of {@link DecodeEngine.create}. */
export interface DecodeOptions {
  /** Most tokens this rank (any rank) sends per step. */
  readonly capacity: number;
  /** Rows per local expert (C); omitted: world × capacity, which never overflows. */
  readonly expertCapacity?: number;
  /** Combine partials cross in f32 ("f32": bitwise the Simulator's) or in the dtype (default). */
  readonly combineWire?: "dtype" | "f32";
}

/** Memory of a decode engine, exact (from native). */
export interface DecodeFootprint {
  /** Symmetric heap per rank, comm reserve included: create the Communicator with at least this. */
  readonly heapBytes: number;
  /** Private device memory the engine allocates (receive buffer, output, index arrays). */
  readonly deviceBytes: number;
  /** heapBytes + deviceBytes. */
  readonly totalBytes: number;
}

/** One step's inputs for {@link DecodeEngine.stage}. */
export interface DecodeStep {
  /** [T × H] rows in the plan's dtype (T ≤ capacity). */
  readonly x: HostRows;
  /** [T × K] expert ids, -1 empty. */
  readonly topkIdx: Int32Array;
  /** [T × K] weights. */
  readonly topkWeights: Float32Array;
}

/** What a {@link DecodeEngine.capture} callback gets: where to enqueue, what to read and write. */
export interface CaptureContext {
  /** The cudaStream_t being captured: enqueue your expert kernels on it. */
  readonly stream: Deno.PointerValue;
  /** [L·C × H] the received rows (padded). */
  readonly recv: DeviceTensor<DType>;
  /** [L × 1] rows per local expert (device). */
  readonly expertCounts: DeviceTensor<"i32">;
}

/** Throws a WeftError naming a bad option. */
export function checkOptions(options: DecodeOptions, rank: number): void {
  checkCombineWire(options.combineWire, rank);
}

/** The packed `weft_plan_desc` of `plan` at `options.capacity` (keep keepAlive reachable). */
export function descFor(plan: PlanSpec, rank: number, options: DecodeOptions) {
  return packPlanDesc(planDescFields(plan, rank, {
    maxTokens: options.capacity,
    ...(options.combineWire !== undefined ? { combineWire: options.combineWire } : {}),
  }));
}
