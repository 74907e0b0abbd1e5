/**
 * The largest values weft accepts, so that a pattern or plan that passes
 * validation also compiles and runs: past these, the placement tables, the
 * layout's per-expert arrays or the native engine (world ≤ 1024 for the
 * multi-node engine, topK ≤ 32 in its kernels) would fail in ways that name
 * nothing (out of memory, RangeError). Each is checked with a WeftError that
 * names the field, the limit and the fix.
 *
 * @example
 * ```ts
 * import { LIMITS } from "./limits.ts";
 * console.assert(LIMITS.topK === 32 && LIMITS.world === 1024);
 * ```
 *
 * @module
 */
import { WeftError } from "./errors.ts";

/** Most experts a pattern may have (global expert count E). */
export const MAX_EXPERTS = 65536;
/** Most ranks a plan may span: the multi-node engine's limit. */
export const MAX_WORLD = 1024;
/** Largest hidden size, in elements per row. */
export const MAX_HIDDEN = 65536;
/** Most experts per token: the engine kernels' limit. */
export const MAX_TOPK = 32;
/** Deepest nesting of lists and mappings in a YAML or JSON pattern text. */
export const MAX_NESTING = 32;

/** The limits by the field they bound. */
export const LIMITS: Readonly<{
  experts: number;
  world: number;
  hidden: number;
  topK: number;
  nesting: number;
}> = Object.freeze({
  experts: MAX_EXPERTS,
  world: MAX_WORLD,
  hidden: MAX_HIDDEN,
  topK: MAX_TOPK,
  nesting: MAX_NESTING,
});

/**
 * Throws a WeftError naming `field`, the limit and `fix` when `value` is
 * above `limit`. The value is already known to be an integer.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { checkAtMost, MAX_TOPK } from "./limits.ts";
 * checkAtMost("topK", 8, MAX_TOPK, "use a smaller k");
 * assert.throws(() => checkAtMost("topK", 33, MAX_TOPK, "use a smaller k"), /at most 32/);
 * ```
 */
export function checkAtMost(field: string, value: number, limit: number, fix: string): void {
  if (value > limit) {
    throw new WeftError({
      field,
      problem: `is ${value}, past weft's limit: it must be at most ${limit}`,
      fix,
    });
  }
}
