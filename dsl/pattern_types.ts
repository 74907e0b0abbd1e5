/**
 * The pattern builder's types: the type-state flags a chain carries
 * ({@link PatternState}) and the steps each state offers, so chains that make
 * no sense do not compile. The runtime builder is in pattern.ts.
 *
 * @module
 */
import type { Plan } from "./plan.ts";
import type {
  Balance,
  CombineOp,
  CompileContext,
  Dedupe,
  DType,
  PatternSpec,
  Quantize,
  ReceiveOrder,
} from "./types.ts";
import type { PatternDraft } from "./validate_pattern.ts";

/**
 * What a pattern's type knows about its chain so far. `true`: done, `false`:
 * not yet, `boolean`: unknown (a pattern read from text).
 *
 * @example
 * ```ts
 * import type { PatternState } from "./pattern_types.ts";
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
 * import type { FreshState, Pattern } from "./pattern_types.ts";
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
 * import type { CompleteState, Pattern } from "./pattern_types.ts";
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
 * import type { CompletePattern } from "./pattern_types.ts";
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
 * import type { FreshState, Mark } from "./pattern_types.ts";
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
 * import type { CompileContextFor, FreshState } from "./pattern_types.ts";
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
 * `balance`, `hidden`) may be set in any order and again; the last call wins.
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
  /**
   * The forwarder table of dedupe `node` over several nodes: `"rail"` (the
   * default: the rank with the source's local index forwards) or `"greedy"`
   * (FUSCO's balancer: per batch, from the ranks' cross-node send volumes,
   * so hot senders do not share a forwarder). Outputs are the same bits
   * either way; only which ranks carry the forwarded bytes changes. Accepted
   * and inert with dedupe `none`/`device` or on one node.
   */
  balance(mode: Balance): Pattern<S>;
  /** Hidden size H: a positive multiple of 8 elements (16-byte bf16 rows), at most MAX_HIDDEN (65536). */
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
  /** Fixes the global expert count E (an integer, 1 ≤ E ≤ MAX_EXPERTS = 65536). */
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
  /** Experts per token K: an integer, 1 ≤ K ≤ experts and K ≤ MAX_TOPK (32). */
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
 * import type { Pattern } from "./pattern_types.ts";
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
