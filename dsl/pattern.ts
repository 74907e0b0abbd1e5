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
import { Plan } from "./plan.ts";
import type {
  BasePlacement,
  CombineOp,
  CompileContext,
  Dedupe,
  DType,
  PatternSpec,
  Quantize,
  ReceiveOrder,
} from "./types.ts";
import {
  canonicalPattern,
  checkPatternDraft,
  PATTERN_DEFAULTS,
  type PatternDraft,
} from "./validate_pattern.ts";
import { specFromJSON, specFromYAML, specToYAML } from "./yaml.ts";

/**
 * What a pattern's type knows about its chain so far. `true`: done, `false`:
 * not yet, `boolean`: unknown (a pattern read from text).
 *
 * @example
 * ```ts
 * import type { PatternState } from "./pattern.ts";
 * const s: PatternState = { counted: true, topK: false, replicated: false, sized: false };
 * console.assert(!s.topK);
 * ```
 */
export interface PatternState {
  /** The expert count is fixed: `experts(n)`, `.count(n)` or a `table(...)` placement. */
  readonly counted: boolean;
  /** `.topK(k)` was called; the pattern is complete and can compile. */
  readonly topK: boolean;
  /** `.replicate(...)` was called. */
  readonly replicated: boolean;
  /** `.hidden(n)` was called. */
  readonly sized: boolean;
}

/**
 * The state of a pattern straight after its placement step.
 *
 * @example
 * ```ts
 * import type { FreshState, Pattern } from "./pattern.ts";
 * import { experts } from "./experts.ts";
 * const p: Pattern<FreshState<true>> = experts(16).byDevice();
 * console.assert(p.spec.experts === 16);
 * ```
 */
export type FreshState<Counted extends boolean> = {
  readonly counted: Counted;
  readonly topK: false;
  readonly replicated: false;
  readonly sized: false;
};

/**
 * The state of any complete pattern, e.g. one read from YAML or JSON.
 *
 * @example
 * ```ts
 * import type { CompleteState, Pattern } from "./pattern.ts";
 * import { experts } from "./experts.ts";
 * const p: Pattern<CompleteState> = experts(16).byDevice().topK(2);
 * console.assert(p.spec.topK === 2);
 * ```
 */
export type CompleteState = {
  readonly counted: boolean;
  readonly topK: true;
  readonly replicated: boolean;
  readonly sized: boolean;
};

/**
 * Any complete pattern (`.topK` called): it has a {@link PatternSpec} and can
 * compile and be written as YAML or JSON.
 *
 * @example
 * ```ts
 * import type { CompletePattern } from "./pattern.ts";
 * import { experts } from "./experts.ts";
 * const patterns: CompletePattern[] = [experts.byDevice().topK(8), experts(8).roundRobin().topK(2)];
 * console.assert(patterns.length === 2);
 * ```
 */
export type CompletePattern = Pattern<CompleteState>;

/**
 * State `S` with flag `K` turned on: the state after a step.
 *
 * @example
 * ```ts
 * import type { FreshState, Mark } from "./pattern.ts";
 * const s: Mark<FreshState<false>, "topK"> = { counted: false, topK: true, replicated: false, sized: false };
 * console.assert(s.topK);
 * ```
 */
export type Mark<S extends PatternState, K extends keyof PatternState> = {
  readonly [P in keyof PatternState]: P extends K ? true : S[P];
};

/**
 * The compile context a pattern in state `S` needs: `experts` and `hidden`
 * become required when the pattern certainly lacks them.
 *
 * @example
 * ```ts
 * import type { CompileContextFor, FreshState } from "./pattern.ts";
 * const ctx: CompileContextFor<FreshState<false>> = { world: 4, experts: 64, hidden: 1024 };
 * console.assert(ctx.world === 4);
 * ```
 */
export type CompileContextFor<S extends PatternState> =
  & CompileContext
  & (S["counted"] extends false ? { readonly experts: number } : unknown)
  & (S["sized"] extends false ? { readonly hidden: number } : unknown);

/**
 * Steps every pattern has. Options (`dedupe`, `receive`, `combine`, `dtype`, `quantize`,
 * `hidden`) may be set in any order and again; the last call wins.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * const p = experts.byDevice().dedupe("node").receive("rank-major").combine("sum").dtype("f32");
 * console.assert(p.spec.dedupe === "node" && p.spec.dtype === "f32");
 * ```
 */
export interface PatternSteps<S extends PatternState> {
  /** The pattern as frozen plain data (`topK` unset until `.topK(k)`). */
  readonly spec: S["topK"] extends true ? PatternSpec : PatternDraft;
  /** How many copies of a token cross the interconnect (default `"device"`). */
  dedupe(mode: Dedupe): Pattern<S>;
  /** Row order of the dispatch output (default `"expert-major"`). */
  receive(order: ReceiveOrder): Pattern<S>;
  /** How combine merges expert outputs (default `"weighted"`). */
  combine(op: CombineOp): Pattern<S>;
  /** Element type of the rows (default `"bf16"`). */
  dtype(dtype: DType): Pattern<S>;
  /**
   * Dispatch rows as FP8: `"e4m3"` quantizes each row at its source with one
   * power-of-two scale per 128 elements (lib/fp8.ts), so about half the bytes
   * of bf16 cross; the receiver gets `recv` in e4m3 and `recvScales`.
   * Combine is unchanged. `"none"` (the default) moves rows in `dtype`.
   * Needs a hidden size that is a multiple of 128.
   */
  quantize(format: Quantize | "none"): Pattern<S>;
  /** Hidden size H: a positive multiple of 8 elements (16-byte bf16 rows). */
  hidden(size: number): Pattern<Mark<S, "sized">>;
}

/**
 * The `.count(n)` step, present while the expert count is not fixed.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * console.assert(experts.byDevice().count(256).spec.experts === 256);
 * ```
 */
export interface CountStep<S extends PatternState> {
  /** Fixes the global expert count E (an integer ≥ 1). */
  count(experts: number): Pattern<Mark<S, "counted">>;
}

/**
 * The `.topK(k)` step, present until it is called.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * console.assert(experts.byDevice().topK(8).spec.topK === 8);
 * ```
 */
export interface TopKStep<S extends PatternState> {
  /** Experts per token K: an integer, 1 ≤ K ≤ experts. */
  topK(k: number): Pattern<Mark<S, "topK">>;
}

/**
 * The `.replicate(...)` step, present until it is called.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * const p = experts(64).byDevice().replicate([3, 17], 2);
 * console.assert(p.spec.replicas?.copies === 2);
 * ```
 */
export interface ReplicateStep<S extends PatternState> {
  /**
   * Gives each of the hot `experts` `copies` copies in total (its owner's
   * included; 2 ≤ copies ≤ world). Ids must be distinct and < experts.
   * Which copy a token uses is the rule documented on `Replication`.
   */
  replicate(experts: readonly number[], copies: number): Pattern<Mark<S, "replicated">>;
}

/**
 * Steps of a complete pattern.
 *
 * @example
 * ```ts
 * import { experts } from "./experts.ts";
 * const p = experts(8).byDevice().topK(2).hidden(64);
 * console.assert(p.compile({ world: 2 }).experts === 8 && p.toYAML().includes("topK: 2"));
 * ```
 */
export interface CompleteSteps<S extends PatternState> {
  /** Binds the pattern to a topology; see `Plan.compile` for the checks. */
  compile(ctx: CompileContextFor<S>): Plan;
  /** The spec as YAML text; `fromYAML` reads it back to an equal spec. */
  toYAML(): string;
  /** The spec as plain JSON data (so `JSON.stringify(pattern)` works); `fromJSON` reads it back. */
  toJSON(): PatternSpec;
}

/**
 * A shuffle pattern in type-state `S`: the steps that make sense next, and no
 * others.
 *
 * @example
 * ```ts
 * import type { Pattern } from "./pattern.ts";
 * import { experts } from "./experts.ts";
 * const p = experts.byDevice().topK(8);
 * const q: Pattern = p.dedupe("none");
 * console.assert(p.spec.dedupe === "device" && q.spec.dedupe === "none");
 * ```
 */
export type Pattern<S extends PatternState = PatternState> =
  & PatternSteps<S>
  & (S["counted"] extends false ? CountStep<S> : unknown)
  & (S["topK"] extends false ? TopKStep<S> : unknown)
  & (S["topK"] extends true ? CompleteSteps<S> : unknown)
  & (S["replicated"] extends false ? ReplicateStep<S> : unknown);

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
        problem: `is already set to ${JSON.stringify(value)}`,
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

  dedupe(mode: Dedupe): PatternBuilder {
    return this.#with({ dedupe: mode });
  }

  receive(order: ReceiveOrder): PatternBuilder {
    return this.#with({ receive: order });
  }

  combine(op: CombineOp): PatternBuilder {
    return this.#with({ combine: op });
  }

  dtype(dtype: DType): PatternBuilder {
    return this.#with({ dtype });
  }

  quantize(format: Quantize | "none"): PatternBuilder {
    return this.#with({ quantize: format as Quantize });
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
