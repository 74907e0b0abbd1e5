/**
 * weft: expert-parallel dispatch and combine for Mixture-of-Experts models,
 * with the permutations fused into the data movement.
 *
 * @example
 * ```ts
 * import { experts, Simulator, uniform } from "./mod.ts";
 * const plan = experts(16).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * const routing = uniform(plan, { tokens: 4, seed: 1 });
 * using sim = new Simulator(plan);
 * const { results, handle } = await sim.dispatch(
 *   routing.map((r) => ({ ...r, x: new Float32Array(4 * 8).fill(1) })),
 * );
 * const outs = await sim.combine(handle, results.map((r) => r.recv));
 * console.assert(outs.length === 2);
 * handle.close();
 * ```
 *
 * @module
 */

// The DSL: patterns, plans, YAML/JSON.
export {
  type CompileContextFor,
  type CompletePattern,
  type CompleteState,
  type CompleteSteps,
  type CountStep,
  type Experts,
  experts,
  type ExpertsRoot,
  type FreshState,
  fromJSON,
  fromSpec,
  fromYAML,
  type Mark,
  type Pattern,
  type PatternDraft,
  type PatternState,
  type PatternSteps,
  Plan,
  type PlanJSON,
  type ReplicateStep,
  type TopKStep,
} from "./dsl/mod.ts";
export type {
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
} from "./dsl/types.ts";
export { DTYPE_BYTES, TENSOR_DTYPE_BYTES } from "./dsl/types.ts";
export { type CompiledPlacement, compilePlacement, resolveSlot } from "./dsl/placement.ts";
export {
  computeLayout,
  layoutFromJSON,
  layoutFromYAML,
  layoutToJSON,
  layoutToYAML,
} from "./dsl/layout.ts";

// Engines and their shared call shape.
export type {
  Dispatched,
  DispatchHandle,
  DispatchResult,
  HostArray,
  HostArrayOf,
  HostRows,
  QuantizedInput,
  RankInput,
  RoutingInput,
  ShuffleEngine,
  Tensor,
} from "./lib/core/engine_api.ts";
export {
  type SimDispatched,
  type SimDispatchResult,
  Simulator,
  type SimulatorHandle,
} from "./lib/sim/simulator.ts";
export { Engine, type EngineOptions, type GpuDispatchHandle } from "./lib/gpu/engine.ts";
export { Communicator, type CommunicatorOptions } from "./lib/dist/communicator.ts";
export { HostTensor } from "./lib/core/host_tensor.ts";
export { DeviceTensor, type ViewOwner } from "./lib/gpu/device_tensor.ts";
export { availableGpus, type GpuProbe, probeGpus } from "./lib/gpu/gpus.ts";
export { launch, type LaunchOptions, type LaunchResult, type RankExit } from "./lib/dist/launch.ts";
export { StoreClient, StoreServer } from "./lib/dist/store.ts";

// Routing generators and trace loaders.
export {
  deviceLocal,
  hotMix,
  loadRoutingJSON,
  loadRoutingNpy,
  nodeLocal,
  type RankRouting,
  type RoutingOptions,
  type RoutingPlan,
  uniform,
  zipf,
} from "./lib/io/routing.ts";

// Data types, errors, reports.
export { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, fromF32, toF32 } from "./lib/core/dtype.ts";
export {
  dequantizeRows,
  E4M3_MAX,
  e4m3Decode,
  e4m3Encode,
  QUANT_BLOCK,
  type QuantizedRows,
  quantizeRows,
  scaleExponent,
} from "./lib/core/fp8.ts";
export { WeftError, type WeftErrorInfo } from "./dsl/errors.ts";
export { formatLinks, formatLoad, type TrafficTotals, trafficTotals } from "./lib/core/traffic.ts";
