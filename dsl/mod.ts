/**
 * weft's pattern DSL: build a shuffle pattern, read and write it as YAML or
 * JSON, compile it against a topology into a {@link Plan}.
 *
 * @example
 * ```ts
 * import { experts, fromYAML } from "./mod.ts";
 * const pattern = experts(256).byDevice().topK(8).hidden(7168);
 * const plan = fromYAML(pattern.toYAML()).compile({ world: 4 });
 * console.assert(plan.localExperts[0] === 64);
 * ```
 *
 * @module
 */
export { type Experts, experts, type ExpertsRoot } from "./experts.ts";
export {
  type CompileContextFor,
  type CompletePattern,
  type CompleteState,
  type CompleteSteps,
  type CountStep,
  type FreshState,
  fromJSON,
  fromSpec,
  fromYAML,
  type Mark,
  type Pattern,
  type PatternState,
  type PatternSteps,
  type ReplicateStep,
  type TopKStep,
} from "./pattern.ts";
export { Plan, type PlanJSON } from "./plan.ts";
export { LIMITS, MAX_EXPERTS, MAX_HIDDEN, MAX_NESTING, MAX_TOPK, MAX_WORLD } from "./limits.ts";
export { HIDDEN_MULTIPLE, PATTERN_DEFAULTS, type PatternDraft } from "./validate_pattern.ts";
export type {
  Balance,
  BasePlacement,
  BatchLayout,
  CombineOp,
  CompileContext,
  Dedupe,
  DType,
  LinkTraffic,
  PatternSpec,
  PlanSpec,
  Quantize,
  RankLayout,
  ReceiveOrder,
  Replication,
  TensorDType,
} from "./types.ts";
export { DTYPE_BYTES, TENSOR_DTYPE_BYTES } from "./types.ts";
