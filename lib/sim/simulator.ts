/**
 * The Simulator: every rank of a plan in one process, on the CPU. It is the
 * oracle the GPU engine is tested against, so it implements DESIGN.md's
 * Semantics literally: dispatch copies raw row bits into the layout's receive
 * order (with `quantize: e4m3`, the source rows' E4M3 bytes and block scales
 * as lib/core/fp8.ts defines them); combine reduces in true f32 arithmetic
 * (every product and every sum rounded to f32) in the normative order, and
 * rounds to the dtype once.
 *
 * By default a batch moves in one hop (source → destination). With
 * `protocol: "staged"` it moves through the hierarchical protocol of dedupe
 * `node` stage by stage (lib/sim/protocol.ts), with the same results and
 * byte counts per stage.
 *
 * @module
 */
import type { BatchLayout, DType, PlanSpec } from "../../dsl/types.ts";
import { computeLayout } from "../../dsl/layout.ts";
import type {
  Dispatched,
  DispatchHandle,
  HostRows,
  QuantizedInput,
  RankInput,
  RankRouting,
  RoutingInput,
  ShuffleEngine,
  Tensor,
} from "../core/engine_api.ts";
import type { HostTensor } from "../core/host_tensor.ts";
import { checkRankInputs, checkRankShapes } from "../core/input_check.ts";
import { WeftError } from "../../dsl/errors.ts";
import { readInputs, readRouting, readRows, type SourceRows } from "./inputs.ts";
import { scatter, type SimDispatchResult } from "./dispatch_rows.ts";
import { combineRank, ExpertRows } from "./combine_math.ts";
import { type SimBatch, SimulatorHandle } from "./handle.ts";
import {
  type ResolvedSimulatorOptions,
  resolveSimulatorOptions,
  type SimulatorOptions,
} from "./options.ts";
import { stagedCombine, stagedDispatch, stagedLayout } from "./protocol.ts";
import type { StageTraffic } from "./protocol_traffic.ts";

export type { SimDispatchResult } from "./dispatch_rows.ts";
export { type SimBatch, SimulatorHandle } from "./handle.ts";
export type { ResolvedSimulatorOptions, SimulatorOptions } from "./options.ts";
export type { RankStageBytes, Stage, StageLink, StageTraffic } from "./protocol_traffic.ts";
export { sliceSchedule, type SliceStream, type SliceTransfer } from "./slices.ts";

/** What {@link Simulator.dispatch} returns: the results, the handle, and the layout for inspection. */
export interface SimDispatched extends Dispatched {
  /** One per rank, in rank order. */
  readonly results: readonly SimDispatchResult[];
  /** The batch's cached layout, for combine and re-dispatch. */
  readonly handle: SimulatorHandle;
  /** The batch's layout descriptor. */
  readonly layout: BatchLayout;
  /** The staged protocol's byte counts per stage (`protocol: "staged"` only). */
  readonly traffic?: StageTraffic;
}

/**
 * The CPU engine: drives all ranks of `plan`.
 *
 * @example
 * ```ts
 * import assert from "node:assert/strict";
 * import { Simulator } from "./simulator.ts";
 * import { compilePlacement } from "../../dsl/placement.ts";
 * import type { PlanSpec } from "../../dsl/types.ts";
 * const pattern = { placement: { kind: "byDevice" }, topK: 2, dedupe: "device", receive: "expert-major", combine: "weighted", dtype: "f32" } as const;
 * const plan: PlanSpec = {
 *   pattern, world: 2, gpusPerNode: 2, nodes: 1, experts: 4, topK: 2, hidden: 2, dtype: "f32",
 *   dedupe: "device", receive: "expert-major", combine: "weighted",
 *   ...compilePlacement({ placement: pattern.placement, experts: 4, world: 2, gpusPerNode: 2 }),
 * };
 * using sim = new Simulator(plan);
 * const d = await sim.dispatch([
 *   { x: Float32Array.of(1, 2), topkIdx: Int32Array.of(0, 3), topkWeights: Float32Array.of(0.25, 0.75) },
 *   { x: new Float32Array(0), topkIdx: new Int32Array(0), topkWeights: new Float32Array(0) },
 * ]);
 * const [out] = await sim.combine(d.handle, d.results.map((r) => r.recv));
 * assert.ok((await out.read())[1] === 2); // identity experts: x · Σw
 * d.handle.close();
 * ```
 *
 * @example The staged protocol over two nodes
 * ```ts
 * import assert from "node:assert/strict";
 * import { Simulator } from "./simulator.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(4).byDevice().topK(2).dedupe("node").dtype("f32").hidden(8)
 *   .compile({ world: 4, gpusPerNode: 2 });
 * using sim = new Simulator(plan, { protocol: "staged", sliceRows: 1 });
 * const one = (e: number[]) => ({ x: new Float32Array(8).fill(2), topkIdx: Int32Array.from(e), topkWeights: Float32Array.of(0.5, 0.5) });
 * const d = await sim.dispatch([one([2, 3]), one([0, 1]), one([0, 2]), one([3, 1])]);
 * // rank 0's token crosses to node 1 once (to forwarder 2), which fans it out to rank 3
 * assert.deepEqual(d.traffic!.links.filter((l) => l.src === 0).map((l) => [l.stage, l.dst]), [["nic", 2]]);
 * const outs = await sim.combine(d.handle, d.results.map((r) => r.recv));
 * assert.equal((await outs[0].read())[1], 2);
 * ```
 */
export class Simulator implements ShuffleEngine {
  /** Always "simulator". */
  readonly kind = "simulator" as const;
  /** The plan every batch is shuffled by. */
  readonly plan: PlanSpec;
  /** Every rank of the plan, 0 … world−1. */
  readonly ranks: readonly number[];
  /** The protocol and its settings, defaults filled in. */
  readonly options: ResolvedSimulatorOptions;
  #closed = false;
  #lastLayout: BatchLayout | undefined;
  #lastTraffic: StageTraffic | undefined;

  /**
   * An engine for `plan`; holds no resources beyond the last layout.
   *
   * @throws {WeftError} for bad {@link SimulatorOptions} (see `resolveSimulatorOptions`).
   */
  constructor(plan: PlanSpec, options: SimulatorOptions = {}) {
    this.plan = plan;
    this.ranks = Object.freeze(Array.from({ length: plan.world }, (_, r) => r));
    this.options = resolveSimulatorOptions(plan, options);
  }

  /** The layout of the most recent dispatch, for inspection. */
  get lastLayout(): BatchLayout | undefined {
    return this.#lastLayout;
  }

  /** The stage byte counts of the most recent staged dispatch, re-dispatch or combine. */
  get lastTraffic(): StageTraffic | undefined {
    return this.#lastTraffic;
  }

  /**
   * Dispatch one batch: one input per rank. All ranks' inputs are checked
   * before anything is computed; a bad one throws a WeftError naming the
   * field and the rank. Routing given as tensors is read to the host first
   * (`await t.read()`) and then checked and used exactly as arrays are.
   * (The staged protocol checks shapes first and routing values in its
   * route stage, failing every rank at the exchange, before any row moves.)
   */
  async dispatch(inputs: readonly RankInput[]): Promise<SimDispatched> {
    this.#checkOpen();
    const tokens = this.#checkInputs(inputs);
    const routing = await readRouting(this.plan, inputs, tokens, !this.#staged);
    const xs = await readInputs(this.plan, "x", inputs.map((i) => i.x), null);
    const handle = new SimulatorHandle(this, this.#newBatch(routing, tokens));
    return this.#move(handle, xs);
  }

  /**
   * The layout of a batch without its rows: one routing per rank, host
   * arrays or tensors (read to the host, as in dispatch). The returned
   * handle's rows are moved by {@link redispatch}; layout then redispatch
   * gives exactly what dispatch gives.
   */
  async layout(routing: readonly RoutingInput[]): Promise<SimulatorHandle> {
    this.#checkOpen();
    const tokens = this.#checkInputs(routing);
    const host = await readRouting(this.plan, routing, tokens, !this.#staged);
    return new SimulatorHandle(this, this.#newBatch(host, tokens));
  }

  /** Dispatch new rows (same shapes) through a handle's cached layout; returns the same handle. */
  async redispatch(
    handle: DispatchHandle,
    xs: readonly (HostRows | Tensor | QuantizedInput)[],
  ): Promise<SimDispatched> {
    this.#checkOpen();
    const h = this.#handle(handle);
    const { layout } = h.open(this);
    const rows = await readInputs(this.plan, "xs", xs, layout.ranks.map((r) => r.tokens));
    return this.#move(h, rows);
  }

  /** Nothing runs after a Simulator call returns: resolves at once (API parity with Engine). */
  synchronize(): Promise<void> {
    this.#checkOpen();
    return Promise.resolve();
  }

  /**
   * Combine expert outputs y (one [R_d × H] per rank, in the handle's receive
   * order) into one [T_r × H] tensor per rank. For each token: a partial per
   * destination device (its pairs in ascending k), then the partials in
   * ascending device rank — with dedupe `node`, the devices of one remote
   * node are first summed into the forwarder's partial, which is then added
   * in the forwarder's turn. Every product and sum is rounded to f32; the
   * result is rounded to the dtype once. Tokens with no expert get zeros.
   * (Staged with `combineWire: "dtype"`, partials are also rounded to the
   * dtype each time they cross to another rank.)
   */
  async combine(
    handle: DispatchHandle,
    ys: readonly (HostRows | Tensor)[],
  ): Promise<HostTensor<DType>[]> {
    this.#checkOpen();
    const { layout, weights, staged } = this.#handle(handle).open(this);
    const rows = await readRows(this.plan, "ys", ys, layout.ranks.map((r) => r.recvRows));
    const y = new ExpertRows(rows, this.plan.dtype, this.plan.hidden);
    if (staged === undefined) {
      return layout.ranks.map((rl) => combineRank(this.plan, rl, y, weights[rl.rank]));
    }
    const { combineWire, sliceRows } = this.options;
    const run = stagedCombine(this.plan, staged, y, combineWire, sliceRows);
    this.#lastTraffic = run.traffic;
    return run.outs;
  }

  /** Release the engine; later calls throw. */
  close(): void {
    this.#closed = true;
    this.#lastLayout = undefined;
    this.#lastTraffic = undefined;
  }

  /** Same as {@link Simulator.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  get #staged(): boolean {
    return this.options.protocol === "staged";
  }

  /**
   * Every rank's inputs checked before any is read: in full for one-hop;
   * shapes only for staged, whose route stage checks the values.
   */
  #checkInputs(inputs: readonly (RankInput | RoutingInput)[]): number[] {
    if (!this.#staged) return checkRankInputs(this.plan, inputs);
    if (!Array.isArray(inputs) || inputs.length !== this.plan.world) {
      // The count message is checkRankInputs's own.
      return checkRankInputs(this.plan, inputs);
    }
    return inputs.map((input, r) => checkRankShapes(this.plan, r, input));
  }

  /** A batch's layout (and protocol state), from every rank's host routing. */
  #newBatch(routing: readonly RankRouting[], tokens: readonly number[]): SimBatch {
    const staged = this.#staged
      ? stagedLayout(this.plan, routing, tokens, this.options.sliceRows)
      : undefined;
    const layout = computeLayout(this.plan, routing.map((r) => r.topkIdx));
    this.#lastLayout = layout;
    const weights = staged?.routes.map((r) => r.weights) ??
      routing.map((r) => r.topkWeights.slice());
    return { layout, weights, ...(staged !== undefined ? { staged } : {}) };
  }

  /** Move a batch's rows by the handle's layout. */
  #move(handle: SimulatorHandle, xs: SourceRows[]): SimDispatched {
    const { layout, weights, staged } = handle.open(this);
    if (staged === undefined) {
      return { results: scatter(this.plan, layout, weights, xs), handle, layout };
    }
    const run = stagedDispatch(this.plan, staged, xs, this.options.sliceRows);
    this.#lastTraffic = run.traffic;
    return { results: run.results!, handle, layout, traffic: run.traffic };
  }

  #checkOpen(): void {
    if (this.#closed) {
      throw new WeftError({
        field: "simulator",
        problem: "is closed",
        fix: "create a new Simulator",
      });
    }
  }

  #handle(handle: DispatchHandle): SimulatorHandle {
    if (!(handle instanceof SimulatorHandle)) {
      throw new WeftError({
        field: "handle",
        problem: "is not a Simulator handle",
        fix: "pass the handle returned by this Simulator's dispatch",
      });
    }
    return handle;
  }
}
