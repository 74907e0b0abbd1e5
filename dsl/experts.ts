/**
 * `experts`: where every pattern starts. It is both a callable and an
 * object: `experts(256)` fixes the expert count, `experts.byDevice()` leaves
 * it to a later `.count(n)` or to the compile context. Either way the next
 * step is a placement, which the types enforce: `experts.topK(8)` and
 * `experts.replicate(...)` do not compile.
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import { type FreshState, type Pattern, startPattern } from "./pattern.ts";
import { checkExpertCount } from "./validate_pattern.ts";

/**
 * The placement steps, which turn `experts` into a pattern.
 *
 * @example
 * ```ts
 * import { experts, type ExpertsRoot } from "./experts.ts";
 * const root: ExpertsRoot<true> = experts(8);
 * console.assert(root.table([0, 0, 1, 1, 2, 2, 3, 3]).spec.placement.kind === "table");
 * ```
 */
export interface ExpertsRoot<Counted extends boolean> {
  /**
   * Contiguous blocks: expert e on rank ⌊e / (E/W)⌋. The expert count must be
   * divisible by the world size (checked at compile).
   */
  byDevice(): Pattern<FreshState<Counted>>;
  /** Expert e on rank e mod W. */
  roundRobin(): Pattern<FreshState<Counted>>;
  /**
   * An explicit owner rank per expert (`owners[e]` holds expert e; the
   * length fixes the expert count). Owners must be < world (checked at
   * compile); a rank may own no experts.
   */
  table(owners: readonly number[]): Pattern<FreshState<true>>;
}

/**
 * The type of {@link experts}: placement steps, and a call that fixes the
 * expert count first.
 *
 * @example
 * ```ts
 * import { experts, type Experts } from "./experts.ts";
 * const root: Experts = experts;
 * console.assert(root(256).byDevice().spec.experts === 256);
 * ```
 */
export interface Experts extends ExpertsRoot<false> {
  /** Fixes the global expert count (an integer ≥ 1), then a placement follows. */
  (count: number): ExpertsRoot<true>;
}

function root<Counted extends boolean>(count: number | undefined): ExpertsRoot<Counted> {
  return Object.freeze({
    byDevice: () => startPattern<Counted>({ kind: "byDevice" }, count),
    roundRobin: () => startPattern<Counted>({ kind: "roundRobin" }, count),
    table: (owners: readonly number[]) => {
      if (!Array.isArray(owners)) {
        throw new WeftError({
          field: "placement.owners",
          problem: `must be a list of owner ranks, got ${typeof owners}`,
          fix: "pass one owner rank per expert, e.g. experts.table([0, 0, 1, 1])",
        });
      }
      return startPattern<true>({ kind: "table", owners }, count);
    },
  });
}

/**
 * Where a pattern starts: pick a placement, optionally fixing the expert
 * count first.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * const a = experts.byDevice().topK(8);           // count from the compile context
 * const b = experts(256).byDevice().topK(8);      // count in the pattern
 * const c = experts.table([0, 1, 1, 0]).topK(2);  // count = table length
 * console.assert(a.spec.experts === undefined && b.spec.experts === 256 && c.spec.topK === 2);
 * ```
 */
export const experts: Experts = Object.freeze(
  Object.assign((count: number): ExpertsRoot<true> => {
    checkExpertCount("experts", count);
    return root<true>(count);
  }, root<false>(undefined)),
);
