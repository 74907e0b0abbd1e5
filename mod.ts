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
 * What a user needs, by group: the pattern DSL and its plans; the batch
 * layout those plans compile to; the two engines that run a plan (the CPU
 * {@link Simulator}, the oracle, and the GPU {@link Engine} over a
 * {@link Communicator}, started by {@link launch}); routing generators and
 * trace loaders; dtype and FP8 helpers; traffic summaries; {@link WeftError};
 * the cost model behind `deno task explore`. Internals (the native symbol
 * table, the rendezvous store's server, the Simulator's stage executor, the
 * explorer's report) are reachable from their own modules under `lib/`.
 *
 * @module
 */

// ---- The pattern DSL: `experts(n).byDevice().topK(k)…`, specs, YAML/JSON, limits.
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
export { LIMITS } from "./dsl/limits.ts";
export { WeftError, type WeftErrorInfo } from "./dsl/errors.ts";

// ---- Placement and layout: where every row of a batch comes from and lands.
export { type CompiledPlacement, compilePlacement, resolveSlot } from "./dsl/placement.ts";
export {
  computeLayout,
  layoutFromJSON,
  layoutFromYAML,
  layoutToJSON,
  layoutToYAML,
} from "./dsl/layout.ts";

// ---- Engines: one call shape (ShuffleEngine), the Simulator (CPU oracle) and the GPU Engine;
// decode mode (sizes fixed by a capacity, replayed as a CUDA graph) and its Simulator.
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
  type RankStageBytes,
  type ResolvedSimulatorOptions,
  type SimDispatched,
  type SimDispatchResult,
  Simulator,
  type SimulatorHandle,
  type SimulatorOptions,
  type Stage,
  type StageLink,
  type StageTraffic,
} from "./lib/sim/simulator.ts";
export { Engine, type EngineOptions, type GpuDispatchHandle } from "./lib/gpu/engine.ts";
export {
  type CaptureContext,
  DecodeEngine,
  type DecodeFootprint,
  type DecodeOptions,
  type DecodeStep,
} from "./lib/gpu/decode.ts";
export {
  type DecodeCapacity,
  decodeExpertCapacity,
  type DecodeOverflow,
  type DecodeRankResult,
  type DecodeSimDispatched,
  DecodeSimulator,
} from "./lib/sim/decode.ts";
export { HostTensor } from "./lib/core/host_tensor.ts";
export { DeviceTensor, type ViewOwner } from "./lib/gpu/device_tensor.ts";
export { availableGpus, type GpuProbe, probeGpus } from "./lib/gpu/gpus.ts";

// ---- Running ranks: the launcher and the communicator every rank opens.
export { launch, type LaunchOptions, type LaunchResult, type RankExit } from "./lib/dist/launch.ts";
export { Communicator, type CommunicatorOptions } from "./lib/dist/communicator.ts";
export type { StoreClient } from "./lib/dist/store.ts";

// ---- Routing: generators for experiments, loaders for real router traces.
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

// ---- Row formats: bf16/f16 conversion and FP8 E4M3 blocks.
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

// ---- Traffic and cost: bytes per link class, per-rank load, and the topology cost model that
// `deno task explore` prints (predicted, calibrated on our measurements: lib/model/calibration.ts).
export { formatLinks, formatLoad, type TrafficTotals, trafficTotals } from "./lib/core/traffic.ts";
export {
  type CostOptions,
  type EngineConstants,
  type LinkClassBytes,
  predict,
  type Prediction,
} from "./lib/model/cost.ts";
export { TOPOLOGIES, type Topology } from "./lib/model/topology.ts";
export type { Balance, ForwarderTable } from "./dsl/balance.ts";
