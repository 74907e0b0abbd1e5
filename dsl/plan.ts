/**
 * A plan: a pattern bound to a topology. Compiling resolves every field the
 * pattern left open (expert count, hidden size) against the compile context,
 * checks what only the topology can decide, and compiles the placement to the
 * flat slot tables the layout compiler and the engines index into.
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import { checkAtMost, MAX_WORLD } from "./limits.ts";
import { show } from "./show.ts";
import { computeLayout } from "./layout.ts";
import { compilePlacement } from "./placement.ts";
import { PLAN_FIELD_NAMES, type PlanJSON, planToJSON } from "./plan_fields.ts";
import type { BatchLayout, CompileContext, PatternSpec, PlanSpec } from "./types.ts";
import {
  canonicalPattern,
  checkExpertCount,
  checkHidden,
  checkPatternDraft,
} from "./validate_pattern.ts";

export type { PlanJSON } from "./plan_fields.ts";

const CONTEXT_FIELDS = ["world", "gpusPerNode", "experts", "hidden"];

function checkRankCount(field: string, value: unknown, fix: string): asserts value is number {
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new WeftError({ field, problem: `must be an integer ≥ 1, got ${show(value)}`, fix });
  }
  checkAtMost(field, value, MAX_WORLD, `use at most ${MAX_WORLD} ranks (MAX_WORLD)`);
}

/**
 * One field the pattern may state and the context may supply: the pattern's
 * value, else the context's, else `fallback`; stating it twice differently
 * is an error rather than a silent override.
 */
function resolveShared(
  field: "experts" | "hidden",
  fromPattern: number | undefined,
  fromContext: number | undefined,
  fallback: number | undefined,
): number {
  if (fromPattern !== undefined && fromContext !== undefined && fromPattern !== fromContext) {
    throw new WeftError({
      field,
      problem: `the pattern says ${fromPattern} but the compile context says ${fromContext}`,
      fix: `state ${field} in one place, or make both agree`,
    });
  }
  const value = fromPattern ?? fromContext ?? fallback;
  if (value === undefined) {
    throw new WeftError({
      field,
      problem: "is not known: neither the pattern nor the compile context gives it",
      fix: field === "experts"
        ? "write experts(256) or .count(256), or pass compile({ experts })"
        : "write .hidden(7168), or pass compile({ hidden })",
    });
  }
  return value;
}

// The fields come from PlanSpec by declaration merging (the interface
// below), so they are declared once, in types.ts, with their documentation;
// the constructor copies exactly the fields plan_fields.ts lists.
/** A compiled plan's fields: those of {@link PlanSpec}. */
export interface Plan extends PlanSpec {}

/**
 * A compiled plan: every {@link PlanSpec} field, resolved and frozen (the
 * Int32Array tables cannot be frozen by JavaScript; treat them as read-only),
 * plus the per-batch layout.
 *
 * @example
 * ```ts
 * import { experts } from "./mod.ts";
 * const plan = experts(8).byDevice().topK(2).hidden(64).compile({ world: 4 });
 * console.assert(plan.localExperts.join() === "2,2,2,2" && plan.nodes === 1);
 * ```
 */
export class Plan {
  private constructor(spec: PlanSpec) {
    // Only set fields become own properties, so an unquantized plan has no
    // `quantize` key at all (as before the field existed).
    const self = this as unknown as Record<string, unknown>;
    for (const name of PLAN_FIELD_NAMES) if (spec[name] !== undefined) self[name] = spec[name];
    Object.freeze(this);
  }

  /**
   * Binds a pattern spec to a topology. Throws a {@link WeftError} naming the
   * field when `world` or `gpusPerNode` is not a positive integer (or
   * `gpusPerNode` does not divide `world`, or either is past MAX_WORLD, limits.ts), when the expert count or hidden
   * size is unknown or stated differently by pattern and context, when
   * `topK` exceeds the experts, or when the placement cannot be laid out on
   * this world (byDevice with experts not divisible by world, a table owner
   * ≥ world, more replica copies than ranks). Dedupe `node` on one node is
   * allowed and then moves the same rows as `device`.
   *
   * @example
   * ```ts
   * import { Plan } from "./plan.ts";
   * const plan = Plan.compile(
   *   { placement: { kind: "roundRobin" }, topK: 2, dedupe: "node", receive: "expert-major",
   *     combine: "weighted", dtype: "bf16" },
   *   { world: 4, gpusPerNode: 2, experts: 16, hidden: 128 },
   * );
   * console.assert(plan.nodes === 2 && plan.slotExpert.length === 16);
   * ```
   */
  static compile(pattern: PatternSpec, ctx: CompileContext): Plan {
    checkPatternDraft(pattern);
    if (pattern.topK === undefined) {
      throw new WeftError({
        field: "topK",
        problem: "is not set; a pattern needs k before it can be compiled",
        fix: "call .topK(k) before .compile(...)",
      });
    }
    if (typeof ctx !== "object" || ctx === null) {
      throw new WeftError({
        field: "world",
        problem: "no compile context was given",
        fix: "call compile({ world }) with the number of ranks",
      });
    }
    for (const key of Object.keys(ctx)) {
      if (!CONTEXT_FIELDS.includes(key)) {
        throw new WeftError({
          field: key,
          problem: "is not a compile context field",
          fix: `remove it; the fields are ${CONTEXT_FIELDS.join(", ")}`,
        });
      }
    }
    const world = ctx.world;
    checkRankCount("world", world, "pass compile({ world }) with the number of ranks (GPUs)");
    const gpusPerNode = ctx.gpusPerNode ?? world;
    checkRankCount("gpusPerNode", gpusPerNode, "pass the number of GPUs in one node");
    if (world % gpusPerNode !== 0) {
      throw new WeftError({
        field: "gpusPerNode",
        problem: `${gpusPerNode} does not divide world ${world} into whole nodes`,
        fix: "use a gpusPerNode that divides world (every node has the same number of GPUs)",
      });
    }
    if (ctx.experts !== undefined) checkExpertCount("experts", ctx.experts);
    if (ctx.hidden !== undefined) checkHidden("hidden", ctx.hidden);

    const placement = pattern.placement;
    const tableLength = placement.kind === "table" ? placement.owners.length : undefined;
    const experts = resolveShared("experts", pattern.experts, ctx.experts, tableLength);
    if (tableLength !== undefined && tableLength !== experts) {
      throw new WeftError({
        field: "placement.owners",
        problem: `has ${tableLength} entries but there are ${experts} experts`,
        fix: `give exactly one owner rank per expert (${experts} entries)`,
      });
    }
    const hidden = resolveShared("hidden", pattern.hidden, ctx.hidden, undefined);
    // Re-run the pattern rules with the context's values filled in, so that
    // e.g. topK ≤ experts and replica ids < experts hold for a count that
    // only the context gave.
    checkPatternDraft({ ...pattern, experts, hidden });

    const tables = compilePlacement({
      placement,
      replicas: pattern.replicas,
      experts,
      world,
      gpusPerNode,
    });
    const canonical = canonicalPattern(pattern);
    return new Plan({
      pattern: canonical,
      world,
      gpusPerNode,
      nodes: world / gpusPerNode,
      experts,
      topK: pattern.topK,
      hidden,
      dtype: pattern.dtype,
      ...(canonical.quantize !== undefined ? { quantize: canonical.quantize } : {}),
      dedupe: pattern.dedupe,
      ...(canonical.balance !== undefined ? { balance: canonical.balance } : {}),
      receive: pattern.receive,
      combine: pattern.combine,
      ...tables,
    });
  }

  /**
   * The layout descriptors of one batch: `topkIdx[r]` is rank r's [T_r × K]
   * routing (global expert ids, -1 for an empty slot), one array per rank.
   *
   * @example
   * ```ts
   * import { experts } from "./mod.ts";
   * const plan = experts(4).byDevice().topK(1).hidden(8).compile({ world: 2 });
   * const layout = plan.layout([Int32Array.of(3), Int32Array.of(0)]);
   * console.assert(layout.ranks[1].recvRows === 1);
   * ```
   */
  layout(topkIdx: readonly Int32Array[]): BatchLayout {
    return computeLayout(this, topkIdx);
  }

  /**
   * The plan as plain JSON data (tables as number arrays), so
   * `JSON.stringify(plan)` writes every field.
   *
   * @example
   * ```ts
   * import { experts } from "./mod.ts";
   * const plan = experts(4).roundRobin().topK(2).hidden(8).compile({ world: 2 });
   * console.assert(JSON.stringify(plan).includes('"slotBase":[0,2,4]'));
   * ```
   */
  toJSON(): PlanJSON {
    return planToJSON(this) as PlanJSON;
  }
}
