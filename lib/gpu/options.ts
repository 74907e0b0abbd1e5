/**
 * The options of `Engine.create` (engine.ts), and what it checks before it builds
 * an engine.
 *
 * @module
 */
import type { PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";

/** Tokens per rank per batch when {@link EngineOptions.maxTokens} is not given. */
export const DEFAULT_MAX_TOKENS = 4096;

/** Options of `Engine.create` (engine.ts). */
export interface EngineOptions {
  /** Most tokens any rank passes in one batch (sizes the buffers; default 4096). */
  readonly maxTokens?: number;
  /**
   * How combine's partial sums cross between GPUs. `dtype` (default) sends
   * each (token, device) partial that sums two or more terms in the data's
   * dtype, as every peer system does: half the bytes of f32 for bf16/f16,
   * one more rounding per such partial (results stay within the dtype's
   * rounding of the Simulator and are deterministic run to run). A partial
   * of one term crosses as the expert's output row itself, unrounded, and
   * its weight is applied at the home in f32, so with dedupe `none` (or any
   * token whose devices hold one pair each) the result is one rounding of
   * the exact sum, as on the NCCL path. `f32` keeps DESIGN.md's single
   * rounding exactly for every token, at twice the combine traffic.
   */
  readonly combineWire?: "dtype" | "f32";
}

/**
 * The maxTokens `options` ask for, after checking both options; a WeftError
 * naming the option otherwise.
 *
 * @example
 * ```ts
 * import { checkEngineOptions } from "./options.ts";
 * console.assert(checkEngineOptions({}, 0) === 4096);
 * ```
 */
export function checkEngineOptions(options: EngineOptions, rank: number): number {
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
  if (!Number.isInteger(maxTokens) || maxTokens < 1 || maxTokens > 2 ** 31 - 1) {
    throw new WeftError({
      field: "maxTokens",
      rank,
      problem: `is ${maxTokens}`,
      fix: "pass an integer ≥ 1",
    });
  }
  checkCombineWire(options.combineWire, rank);
  return maxTokens;
}

/**
 * Throws a WeftError unless `wire` is a combine wire (`"dtype"`, `"f32"`) or
 * absent; shared by the Engine's and the DecodeEngine's options.
 *
 * @example
 * ```ts
 * import { checkCombineWire } from "./options.ts";
 * checkCombineWire("f32", 0);
 * ```
 */
export function checkCombineWire(wire: unknown, rank: number): void {
  if (wire !== undefined && wire !== "dtype" && wire !== "f32") {
    throw new WeftError({
      field: "combineWire",
      rank,
      problem: `is "${wire}"`,
      fix: 'pass "dtype" or "f32"',
    });
  }
}

/**
 * Throws a WeftError unless `plan` runs on `communicator`: the same world,
 * and a heap of at least `needed` bytes (the plan's heap at `maxTokens`).
 *
 * @example
 * ```ts
 * import { checkCommunicator } from "./options.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(4).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * checkCommunicator(plan, { rank: 0, world: 2, heapBytes: 1 << 20 }, 16, 1 << 10);
 * ```
 */
export function checkCommunicator(
  plan: PlanSpec,
  communicator: { readonly rank: number; readonly world: number; readonly heapBytes: number },
  maxTokens: number,
  needed: number,
): void {
  const { rank, world, heapBytes } = communicator;
  if (plan.world !== world) {
    throw new WeftError({
      field: "plan.world",
      rank,
      problem: `is ${plan.world}, but the communicator has ${world} ranks`,
      fix: "compile the plan with { world: communicator.world }",
    });
  }
  if (needed > heapBytes) {
    throw new WeftError({
      field: "heapBytes",
      rank,
      problem:
        `the communicator's heap has ${heapBytes} bytes; this plan with maxTokens ${maxTokens} needs ${needed}`,
      fix:
        "create the Communicator with heapBytes ≥ Engine.heapBytes(plan, { maxTokens }), or lower maxTokens",
    });
  }
}
