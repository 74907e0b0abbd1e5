/**
 * The one set of rules a pattern must obey, shared by the builder steps, the
 * YAML/JSON readers and `compile`, so a value rejected in one place is
 * rejected with the same field name and fix everywhere.
 *
 * Rules that need the topology (owners < world, experts divisible by world,
 * copies ≤ world) live in `plan.ts`; everything knowable from the pattern
 * alone lives here.
 *
 * @module
 */
import { WeftError } from "./errors.ts";
import { checkAtMost, MAX_EXPERTS, MAX_HIDDEN, MAX_TOPK } from "./limits.ts";
import { show } from "./show.ts";
import { QUANT_BLOCK } from "./types.ts";
import type {
  Balance,
  BasePlacement,
  CombineOp,
  Dedupe,
  DType,
  PatternSpec,
  Quantize,
  ReceiveOrder,
  Replication,
} from "./types.ts";

/**
 * A pattern still being built: a {@link PatternSpec} whose `topK` may not be
 * set yet. The builder's `spec` has this type until `.topK(k)` is called.
 *
 * @example
 * ```ts
 * import type { PatternDraft } from "./validate_pattern.ts";
 * const draft: PatternDraft = {
 *   placement: { kind: "byDevice" },
 *   dedupe: "device",
 *   receive: "expert-major",
 *   combine: "weighted",
 *   dtype: "bf16",
 * };
 * console.assert(draft.topK === undefined);
 * ```
 */
export type PatternDraft = Omit<PatternSpec, "topK"> & { readonly topK?: number };

/**
 * Values a pattern gets for the steps it does not call.
 *
 * @example
 * ```ts
 * import { PATTERN_DEFAULTS } from "./validate_pattern.ts";
 * console.assert(PATTERN_DEFAULTS.dedupe === "device");
 * ```
 */
export const PATTERN_DEFAULTS: Readonly<{
  dedupe: Dedupe;
  receive: ReceiveOrder;
  combine: CombineOp;
  dtype: DType;
}> = Object.freeze({
  dedupe: "device",
  receive: "expert-major",
  combine: "weighted",
  dtype: "bf16",
});

/**
 * Hidden sizes must be a multiple of this many elements: a bf16/f16 row is
 * then a whole number of 16-byte vectors (f32: 32 bytes), which is what the
 * copy kernels move per load; no row ever needs a ragged tail.
 *
 * @example
 * ```ts
 * import { HIDDEN_MULTIPLE } from "./validate_pattern.ts";
 * console.assert(7168 % HIDDEN_MULTIPLE === 0);
 * ```
 */
export const HIDDEN_MULTIPLE = 8;

const DEDUPES: readonly Dedupe[] = ["none", "device", "node"];
const RECEIVE_ORDERS: readonly ReceiveOrder[] = ["expert-major", "rank-major"];
const COMBINE_OPS: readonly CombineOp[] = ["weighted", "sum"];
const DTYPES: readonly DType[] = ["bf16", "f16", "f32"];
/** The values `quantize` may take; `"none"` means absent. */
export const QUANTIZES: readonly (Quantize | "none")[] = ["e4m3", "none"];
/** The values `balance` may take; `"rail"` (the default) is written as absent. */
export const BALANCE_MODES: readonly Balance[] = ["rail", "greedy"];
/** The base placement kinds. */
export const PLACEMENT_KINDS: readonly BasePlacement["kind"][] = [
  "byDevice",
  "roundRobin",
  "table",
];

/** Every PatternSpec field, in canonical (YAML) order. */
export const PATTERN_FIELDS = [
  "experts",
  "placement",
  "replicas",
  "topK",
  "dedupe",
  "receive",
  "combine",
  "dtype",
  "quantize",
  "balance",
  "hidden",
] as const;

/** True for a number that is an integer (not NaN, not ±Infinity). */
export function isInteger(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value);
}

/** True for a plain mapping: an object that is not null and not an array. */
export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * Checks an expert count (the pattern's or the compile context's).
 *
 * @example
 * ```ts
 * import { checkExpertCount } from "./validate_pattern.ts";
 * checkExpertCount("experts", 256);
 * ```
 */
export function checkExpertCount(field: string, value: unknown): asserts value is number {
  if (!isInteger(value) || value < 1) {
    throw new WeftError({
      field,
      problem: `must be an integer ≥ 1, got ${show(value)}`,
      fix: "give the number of experts of the MoE layer, e.g. experts(256) or .count(256)",
    });
  }
  checkAtMost(field, value, MAX_EXPERTS, `use at most ${MAX_EXPERTS} experts (MAX_EXPERTS)`);
}

/**
 * Checks a hidden size (the pattern's or the compile context's): a positive
 * integer that is a multiple of {@link HIDDEN_MULTIPLE} elements.
 *
 * @example
 * ```ts
 * import { checkHidden } from "./validate_pattern.ts";
 * checkHidden("hidden", 7168);
 * ```
 */
export function checkHidden(field: string, value: unknown): asserts value is number {
  if (!isInteger(value) || value < 1) {
    throw new WeftError({
      field,
      problem: `must be an integer ≥ 1 (elements per row), got ${show(value)}`,
      fix: "give the model's hidden size, e.g. .hidden(7168)",
    });
  }
  checkAtMost(field, value, MAX_HIDDEN, `use a hidden size of at most ${MAX_HIDDEN} (MAX_HIDDEN)`);
  if (value % HIDDEN_MULTIPLE !== 0) {
    throw new WeftError({
      field,
      problem: `must be a multiple of ${HIDDEN_MULTIPLE} elements (16-byte rows in bf16/f16), ` +
        `got ${value}`,
      fix: `pad the hidden size up to ${Math.ceil(value / HIDDEN_MULTIPLE) * HIDDEN_MULTIPLE}`,
    });
  }
}

/** Checks that `value` is one of `allowed`, or throws a WeftError naming `field` and listing them. */
export function checkEnum<T extends string>(
  field: string,
  value: unknown,
  allowed: readonly T[],
): asserts value is T {
  if (!allowed.includes(value as T)) {
    throw new WeftError({
      field,
      problem: `must be one of ${allowed.map((a) => `"${a}"`).join(", ")}, got ${show(value)}`,
      fix: `use one of ${allowed.map((a) => `"${a}"`).join(", ")}`,
    });
  }
}

/** The expert count a draft implies: stated, or the length of its owner table. */
function impliedExperts(draft: PatternDraft): number | undefined {
  if (draft.experts !== undefined) return draft.experts;
  return draft.placement.kind === "table" ? draft.placement.owners.length : undefined;
}

function checkNonEmptyList(
  field: string,
  value: unknown,
  what: string,
  fix: string,
): asserts value is unknown[] {
  if (!Array.isArray(value) || value.length === 0) {
    throw new WeftError({
      field,
      problem: `must be a non-empty list of ${what}, got ${show(value)}`,
      fix,
    });
  }
}

function checkPlacement(placement: BasePlacement, experts: number | undefined): void {
  checkEnum("placement.kind", placement.kind, PLACEMENT_KINDS);
  if (placement.kind !== "table") return;
  const owners: unknown = placement.owners;
  checkNonEmptyList(
    "placement.owners",
    owners,
    "owner ranks",
    "give one owner rank per expert, e.g. table([0, 0, 1, 1])",
  );
  owners.forEach((owner: unknown, i: number) => {
    if (!isInteger(owner) || owner < 0) {
      throw new WeftError({
        field: `placement.owners[${i}]`,
        problem: `must be a rank (an integer ≥ 0), got ${show(owner)}`,
        fix: "give each expert's owner as a rank number between 0 and world - 1",
      });
    }
  });
  if (experts !== undefined && owners.length !== experts) {
    throw new WeftError({
      field: "placement.owners",
      problem: `has ${owners.length} entries but the pattern has ${experts} experts`,
      fix: `give exactly one owner rank per expert (${experts} entries), or drop the expert count`,
    });
  }
}

function checkReplicas(replicas: Replication, experts: number | undefined): void {
  const ids: unknown = replicas.experts;
  checkNonEmptyList(
    "replicas.experts",
    ids,
    "expert ids",
    "list the hot experts to replicate, e.g. .replicate([3, 17], 2)",
  );
  const seen = new Map<number, number>();
  ids.forEach((id: unknown, i: number) => {
    const field = `replicas.experts[${i}]`;
    if (!isInteger(id) || id < 0 || (experts !== undefined && id >= experts)) {
      throw new WeftError({
        field,
        problem: `must be an expert id between 0 and ${
          experts === undefined ? "experts" : experts
        } - 1, got ${show(id)}`,
        fix: "list only ids of existing experts",
      });
    }
    const first = seen.get(id);
    if (first !== undefined) {
      throw new WeftError({
        field,
        problem: `expert ${id} is listed twice (also at index ${first})`,
        fix: "list each hot expert once; `copies` sets how many replicas each gets",
      });
    }
    seen.set(id, i);
  });
  if (!isInteger(replicas.copies) || replicas.copies < 2) {
    throw new WeftError({
      field: "replicas.copies",
      problem: `must be an integer ≥ 2 (total copies, the owner's included), got ${
        show(replicas.copies)
      }`,
      fix: "give 2 or more copies, or drop the replication",
    });
  }
}

/**
 * Checks every rule a pattern can be checked against without a topology:
 * each present field's type and range, and the combinations (topK ≤ experts,
 * one owner per expert, replica ids among the experts). Throws a
 * {@link WeftError} naming the first field at fault.
 *
 * @example
 * ```ts
 * import { checkPatternDraft } from "./validate_pattern.ts";
 * checkPatternDraft({
 *   experts: 256, placement: { kind: "byDevice" }, topK: 8,
 *   dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "bf16",
 * });
 * ```
 */
export function checkPatternDraft(draft: PatternDraft): void {
  if (draft.experts !== undefined) checkExpertCount("experts", draft.experts);
  checkPlacement(draft.placement, draft.experts);
  const experts = impliedExperts(draft);
  if (draft.replicas !== undefined) checkReplicas(draft.replicas, experts);
  if (draft.topK !== undefined) {
    if (!isInteger(draft.topK) || draft.topK < 1) {
      throw new WeftError({
        field: "topK",
        problem: `must be an integer ≥ 1 (experts per token), got ${show(draft.topK)}`,
        fix: "give the router's k, e.g. .topK(8)",
      });
    }
    checkAtMost("topK", draft.topK, MAX_TOPK, `use a k of at most ${MAX_TOPK} (MAX_TOPK)`);
    if (experts !== undefined && draft.topK > experts) {
      throw new WeftError({
        field: "topK",
        problem: `is ${draft.topK}, more than the ${experts} experts there are`,
        fix: `use a k between 1 and ${experts}`,
      });
    }
  }
  checkEnum("dedupe", draft.dedupe, DEDUPES);
  checkEnum("receive", draft.receive, RECEIVE_ORDERS);
  checkEnum("combine", draft.combine, COMBINE_OPS);
  checkEnum("dtype", draft.dtype, DTYPES);
  if (draft.quantize !== undefined) checkEnum("quantize", draft.quantize, QUANTIZES);
  if (draft.balance !== undefined) checkEnum("balance", draft.balance, BALANCE_MODES);
  if (draft.hidden !== undefined) checkHidden("hidden", draft.hidden);
  if (draft.quantize === "e4m3" && draft.hidden !== undefined && draft.hidden % QUANT_BLOCK !== 0) {
    throw new WeftError({
      field: "hidden",
      problem: `is ${draft.hidden}; quantize "e4m3" scales blocks of ${QUANT_BLOCK} elements`,
      fix: `use a hidden size that is a multiple of ${QUANT_BLOCK}, or drop quantize`,
    });
  }
}

/**
 * A deeply frozen copy of a draft with its keys in the canonical order (the
 * order YAML is written in) and unset optional fields left out, so that two
 * equal patterns have equal specs and equal text.
 *
 * @example
 * ```ts
 * import { canonicalPattern } from "./validate_pattern.ts";
 * const spec = canonicalPattern({
 *   topK: 8, placement: { kind: "roundRobin" },
 *   dedupe: "none", receive: "rank-major", combine: "sum", dtype: "f32",
 * });
 * console.assert(Object.isFrozen(spec.placement) && Object.keys(spec)[0] === "placement");
 * ```
 */
export function canonicalPattern<D extends PatternDraft>(draft: D): D {
  const placement: BasePlacement = draft.placement.kind === "table"
    ? Object.freeze({
      kind: "table",
      owners: Object.freeze(Array.from(draft.placement.owners)),
    })
    : Object.freeze({ kind: draft.placement.kind });
  const out: Record<string, unknown> = {};
  if (draft.experts !== undefined) out.experts = draft.experts;
  out.placement = placement;
  if (draft.replicas !== undefined) {
    out.replicas = Object.freeze({
      experts: Object.freeze(Array.from(draft.replicas.experts)),
      copies: draft.replicas.copies,
    });
  }
  if (draft.topK !== undefined) out.topK = draft.topK;
  out.dedupe = draft.dedupe;
  out.receive = draft.receive;
  out.combine = draft.combine;
  out.dtype = draft.dtype;
  // "none" is the absence of quantization: it is left out, like an unset field.
  if (draft.quantize !== undefined && (draft.quantize as string) !== "none") {
    out.quantize = draft.quantize;
  }
  // "rail" is the default table: left out, so patterns without a balancer keep their text.
  if (draft.balance !== undefined && draft.balance !== "rail") out.balance = draft.balance;
  if (draft.hidden !== undefined) out.hidden = draft.hidden;
  return Object.freeze(out) as D;
}
