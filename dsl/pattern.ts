/**
 * The pattern builder: an immutable, typed chain of steps over a frozen
 * {@link PatternSpec}. Each step returns a new pattern and leaves the old one
 * as it was.
 *
 * The builder carries type-state (phantom flags in {@link PatternState}), so
 * chains that make no sense do not compile: `.topK` twice, `.compile` before
 * `.topK`, `.replicate` twice, `.count` when the count is already fixed, and
 * `compile` without `experts` / `hidden` in the context when the pattern does
 * not give them. What types cannot carry (ranges, combinations) is checked at
 * each step and throws a {@link WeftError} naming the field.
 *
 * Patterns start at `experts` (see `experts.ts`).
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import { show } from "./show.ts";
import { Plan } from "./plan.ts";
import type { BasePlacement, CompileContext, PatternSpec } from "./types.ts";
import {
  canonicalPattern,
  checkPatternDraft,
  PATTERN_DEFAULTS,
  type PatternDraft,
} from "./validate_pattern.ts";
import { specFromJSON, specFromYAML, specToYAML } from "./yaml.ts";

// The type-state types live in pattern_types.ts; importers find them here too.
export type {
  CompileContextFor,
  CompletePattern,
  CompleteState,
  CompleteSteps,
  CountStep,
  FreshState,
  Mark,
  Pattern,
  PatternState,
  PatternSteps,
  ReplicateStep,
  TopKStep,
} from "./pattern_types.ts";
import type { CompletePattern, FreshState, Pattern } from "./pattern_types.ts";

/**
 * The one runtime class behind every `Pattern<S>` type: all steps exist at
 * run time, and guard the orders the types forbid for callers without types.
 */
class PatternBuilder {
  readonly spec: PatternDraft;

  constructor(spec: PatternDraft) {
    this.spec = spec;
    Object.freeze(this);
  }

  #with(change: Partial<PatternDraft>): PatternBuilder {
    const draft = { ...this.spec, ...change };
    checkPatternDraft(draft);
    return new PatternBuilder(canonicalPattern(draft));
  }

  #once(field: keyof PatternDraft, step: string): void {
    const value = this.spec[field];
    if (value !== undefined) {
      throw new WeftError({
        field,
        problem: `is already set to ${show(value)}`,
        fix: `call ${step} once per pattern`,
      });
    }
  }

  #complete(step: string): PatternSpec {
    if (this.spec.topK === undefined) {
      throw new WeftError({
        field: "topK",
        problem: `is not set; ${step} needs a complete pattern`,
        fix: `call .topK(k) before ${step}`,
      });
    }
    return this.spec as PatternSpec;
  }

  count(experts: number): PatternBuilder {
    this.#once("experts", ".count(n) / experts(n)");
    if (this.spec.placement.kind === "table") {
      // The table already fixed the count; a second statement can only repeat or contradict it.
      throw new WeftError({
        field: "experts",
        problem: `is fixed by the table placement (${this.spec.placement.owners.length} owners)`,
        fix: "drop .count(n); the table has one owner per expert",
      });
    }
    return this.#with({ experts });
  }

  topK(k: number): PatternBuilder {
    this.#once("topK", ".topK(k)");
    return this.#with({ topK: k });
  }

  replicate(experts: readonly number[], copies: number): PatternBuilder {
    this.#once("replicas", ".replicate(...)");
    return this.#with({ replicas: { experts, copies } });
  }

  dedupe(mode: PatternSpec["dedupe"]): PatternBuilder {
    return this.#with({ dedupe: mode });
  }

  receive(order: PatternSpec["receive"]): PatternBuilder {
    return this.#with({ receive: order });
  }

  combine(op: PatternSpec["combine"]): PatternBuilder {
    return this.#with({ combine: op });
  }

  dtype(dtype: PatternSpec["dtype"]): PatternBuilder {
    return this.#with({ dtype });
  }

  quantize(format: PatternSpec["quantize"] | "none"): PatternBuilder {
    return this.#with({ quantize: format as PatternSpec["quantize"] });
  }

  balance(mode: PatternSpec["balance"]): PatternBuilder {
    return this.#with({ balance: mode });
  }

  hidden(size: number): PatternBuilder {
    return this.#with({ hidden: size });
  }

  compile(ctx: CompileContext): Plan {
    return Plan.compile(this.#complete(".compile(...)"), ctx);
  }

  toYAML(): string {
    return specToYAML(this.#complete(".toYAML()"));
  }

  toJSON(): PatternSpec {
    return this.#complete(".toJSON()");
  }
}

/**
 * Starts a pattern from its placement step, with the defaults filled in.
 * Used by `experts`; most code starts there instead.
 *
 * @example
 * ```ts
 * import { startPattern } from "./pattern.ts";
 * const p = startPattern<true>({ kind: "roundRobin" }, 32);
 * console.assert(p.spec.experts === 32 && p.spec.receive === "expert-major");
 * ```
 */
export function startPattern<Counted extends boolean>(
  placement: BasePlacement,
  experts?: number,
): Pattern<FreshState<Counted>> {
  const draft: PatternDraft = { experts, placement, ...PATTERN_DEFAULTS };
  checkPatternDraft(draft);
  return new PatternBuilder(canonicalPattern(draft)) as unknown as Pattern<FreshState<Counted>>;
}

/**
 * Wraps a complete spec (checked first) as a pattern.
 *
 * @example
 * ```ts
 * import { fromSpec } from "./pattern.ts";
 * const p = fromSpec({
 *   placement: { kind: "byDevice" }, topK: 2,
 *   dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "bf16",
 * });
 * console.assert(p.spec.topK === 2);
 * ```
 */
export function fromSpec(spec: PatternSpec): CompletePattern {
  return new PatternBuilder(specFromJSON(spec)) as unknown as CompletePattern;
}

/**
 * Reads a pattern from YAML (as written by `pattern.toYAML()` or by hand).
 * Unknown fields, wrong types and impossible combinations throw a
 * {@link WeftError} with `field` and 1-based `line`.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * import { fromYAML } from "./pattern.ts";
 * const p = experts(64).byDevice().replicate([3], 2).topK(4);
 * console.assert(JSON.stringify(fromYAML(p.toYAML()).spec) === JSON.stringify(p.spec));
 * ```
 */
export function fromYAML(text: string): CompletePattern {
  return new PatternBuilder(specFromYAML(text)) as unknown as CompletePattern;
}

/**
 * Reads a pattern from JSON text, or from plain data such as
 * `pattern.toJSON()`. Same rules as {@link fromYAML}.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * import { fromJSON } from "./pattern.ts";
 * const p = experts.roundRobin().topK(2).dedupe("none");
 * console.assert(fromJSON(JSON.stringify(p)).spec.dedupe === "none");
 * ```
 */
export function fromJSON(json: unknown): CompletePattern {
  return new PatternBuilder(specFromJSON(json)) as unknown as CompletePattern;
}
