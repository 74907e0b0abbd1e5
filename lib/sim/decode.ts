/**
 * Decode mode on the CPU: the Simulator with a stated capacity, reproducing
 * the GPU decode engine's padded layout exactly (native/README.md "Decode
 * mode"). Rows of local expert l land at `l·C + j`, j < counts[l], in the
 * normal layout's (source rank, token, k) order: the normal expert-major
 * rows placed at padded offsets. Padding rows are zeros here (stale on the
 * GPU), their weights 0 and their sources -1 (as on the GPU).
 *
 * Overflow rule (the device's): local expert l of rank d overflows when
 * more than C pairs of the step go to it; its first C rows (in order) are
 * kept, counts[l] = C, and that step's combine writes nothing (here:
 * {@link DecodeSimulator.combine} throws the WeftError the GPU's `check()`
 * throws).
 *
 * @module
 */
import type { DType, PlanSpec } from "../../dsl/types.ts";
import { WeftError } from "../../dsl/errors.ts";
import type { HostRows, RankInput } from "../core/engine_api.ts";
import { HostTensor } from "../core/host_tensor.ts";
import { Simulator, type SimulatorHandle } from "./simulator.ts";

/** The capacity a decode engine is created with. */
export interface DecodeCapacity {
  /** Most tokens a rank sends per step. */
  readonly maxTokens: number;
  /** Rows per local expert (C); omitted or 0: world × maxTokens, which never overflows. */
  readonly expertCapacity?: number;
}

/**
 * C for `plan` and `capacity`: expertCapacity, or world × maxTokens when
 * omitted/0, never more than world × maxTokens (a local expert cannot get
 * more). Throws a WeftError naming the bad field.
 *
 * @example
 * ```ts
 * import { decodeExpertCapacity } from "./decode.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(8).byDevice().topK(2).dtype("f32").hidden(8).compile({ world: 2 });
 * console.assert(decodeExpertCapacity(plan, { maxTokens: 16 }) === 32);
 * console.assert(decodeExpertCapacity(plan, { maxTokens: 16, expertCapacity: 5 }) === 5);
 * ```
 */
export function decodeExpertCapacity(plan: PlanSpec, capacity: DecodeCapacity, rank = 0): number {
  const { maxTokens, expertCapacity = 0 } = capacity;
  if (
    !Number.isInteger(maxTokens) || maxTokens < 1 ||
    plan.world * maxTokens * plan.topK > 2 ** 31 - 1
  ) {
    throw new WeftError({
      field: "capacity",
      rank,
      problem: `is ${maxTokens}`,
      fix: "pass the most tokens a rank sends per step, an integer ≥ 1",
    });
  }
  if (!Number.isInteger(expertCapacity) || expertCapacity < 0) {
    throw new WeftError({
      field: "expertCapacity",
      rank,
      problem: `is ${expertCapacity}`,
      fix: "pass an integer ≥ 1 (rows per local expert), or 0 for world × capacity",
    });
  }
  const worst = plan.world * maxTokens;
  return expertCapacity === 0 || expertCapacity > worst ? worst : expertCapacity;
}

/** An overflowing local expert of one step. */
export interface DecodeOverflow {
  /** The rank holding it. */
  readonly rank: number;
  /** Its local index on that rank. */
  readonly localExpert: number;
  /** The rows the step sent it (> expertCapacity). */
  readonly rows: number;
}

/** One rank's padded dispatch output. */
export interface DecodeRankResult {
  /** The rank. */
  readonly rank: number;
  /** [L·C × H] rows; padding zeros. */
  readonly recv: HostTensor<DType>;
  /** [L] rows per local expert (at most C). */
  readonly expertCounts: Int32Array;
  /** [L·C] weights, 0 in padding. */
  readonly recvWeights: Float32Array;
  /** [L·C] source rank, -1 in padding. */
  readonly srcRank: Int32Array;
  /** [L·C] source token, -1 in padding. */
  readonly srcToken: Int32Array;
  /** [L·C] k slot, -1 in padding. */
  readonly srcK: Int32Array;
}

/** What {@link DecodeSimulator.dispatch} returns. */
export interface DecodeSimDispatched {
  /** One per rank. */
  readonly results: readonly DecodeRankResult[];
  /** Overflowing experts of this step (empty when none). */
  readonly overflow: readonly DecodeOverflow[];
  /** The normal Simulator's handle (combine uses it). */
  readonly handle: SimulatorHandle;
}

/**
 * The Simulator in decode mode: all ranks in one process.
 *
 * @example
 * ```ts
 * import { DecodeSimulator } from "./decode.ts";
 * import { experts } from "../../dsl/mod.ts";
 * const plan = experts(2).byDevice().topK(1).dtype("f32").hidden(8).compile({ world: 1 });
 * using sim = new DecodeSimulator(plan, { maxTokens: 4, expertCapacity: 2 });
 * const x = new Float32Array([1, 2, 3, 4, 5, 6, 7, 8]);
 * const d = await sim.dispatch([{ x, topkIdx: new Int32Array([1]), topkWeights: new Float32Array([2]) }]);
 * console.assert(d.results[0].expertCounts[1] === 1 && d.results[0].recv.data[2 * 8] === 1);
 * const [out] = await sim.combine(d, [d.results[0].recv.data as Float32Array]);
 * console.assert(out.data[3] === 8);
 * ```
 */
export class DecodeSimulator implements Disposable {
  /** The plan. */
  readonly plan: PlanSpec;
  /** Most tokens per rank per step. */
  readonly maxTokens: number;
  /** Rows per local expert (C). */
  readonly expertCapacity: number;
  readonly #sim: Simulator;

  /** A decode Simulator for `plan` with `capacity` (see {@link decodeExpertCapacity}). */
  constructor(plan: PlanSpec, capacity: DecodeCapacity) {
    if (plan.receive !== "expert-major") {
      throw new WeftError({
        field: "mode",
        problem: `decode mode with receive "${plan.receive}"`,
        fix: 'decode mode lays rows out expert-major with padding: use receive "expert-major"',
      });
    }
    this.plan = plan;
    this.maxTokens = capacity.maxTokens;
    this.expertCapacity = decodeExpertCapacity(plan, capacity);
    this.#sim = new Simulator(plan);
  }

  /** Dispatches one step (one input per rank); tokens per rank ≤ maxTokens. */
  async dispatch(inputs: readonly RankInput[]): Promise<DecodeSimDispatched> {
    inputs.forEach((input, r) => {
      const T = input.topkIdx instanceof Int32Array
        ? input.topkIdx.length / this.plan.topK
        : input.topkIdx.rows;
      if (T > this.maxTokens) {
        throw new WeftError({
          field: "tokens",
          rank: r,
          problem: `is ${T}, more than the capacity ${this.maxTokens}`,
          fix: "send at most capacity tokens per step, or create the engine with a larger capacity",
        });
      }
    });
    const d = await this.#sim.dispatch(inputs);
    const C = this.expertCapacity, H = this.plan.hidden;
    const overflow: DecodeOverflow[] = [];
    const results = d.results.map((res, rank): DecodeRankResult => {
      const L = res.expertCounts.length;
      const recv = new HostTensor(this.plan.dtype, L * C, H);
      const recvWeights = new Float32Array(L * C);
      const [srcRank, srcToken, srcK] = [0, 1, 2].map(() => new Int32Array(L * C).fill(-1));
      const expertCounts = new Int32Array(L);
      const rows = res.recv.data as HostRows;
      let from = 0;
      for (let l = 0; l < L; l++) {
        const n = res.expertCounts[l];
        if (n > C) overflow.push({ rank, localExpert: l, rows: n });
        const kept = Math.min(n, C);
        expertCounts[l] = kept;
        (recv.data as HostRows).set(rows.subarray(from * H, (from + kept) * H), l * C * H);
        for (let j = 0; j < kept; j++) {
          recvWeights[l * C + j] = res.recvWeights[from + j];
          srcRank[l * C + j] = res.srcRank[from + j];
          srcToken[l * C + j] = res.srcToken[from + j];
          srcK[l * C + j] = res.srcK[from + j];
        }
        from += n;
      }
      return { rank, recv, expertCounts, recvWeights, srcRank, srcToken, srcK };
    });
    return { results, overflow, handle: d.handle };
  }

  /**
   * Combines padded expert outputs (one [L·C × H] per rank, rows past each
   * expert's count ignored) into each rank's [T × H]. Throws the overflow
   * WeftError for a step that overflowed (the GPU's combine writes nothing).
   */
  async combine(step: DecodeSimDispatched, ys: readonly HostRows[]): Promise<HostTensor<DType>[]> {
    const first = step.overflow[0];
    if (first !== undefined) {
      throw new WeftError({
        field: "expertCapacity",
        rank: first.rank,
        problem:
          `local expert ${first.localExpert} of rank ${first.rank} received ${first.rows} rows, more than ${this.expertCapacity}`,
        fix: `pass a larger expertCapacity (world × capacity = ${
          this.plan.world * this.maxTokens
        } never overflows)`,
      });
    }
    const C = this.expertCapacity, H = this.plan.hidden;
    const dense = step.results.map((res, r) => {
      const y = ys[r];
      const total = res.expertCounts.reduce((a, b) => a + b, 0);
      const out = new (y.constructor as { new (n: number): HostRows })(total * H);
      let at = 0;
      res.expertCounts.forEach((n, l) => {
        out.set(y.subarray(l * C * H, (l * C + n) * H), at * H);
        at += n;
      });
      return out;
    });
    return await this.#sim.combine(step.handle, dense);
  }

  /** Releases the Simulator. */
  close(): void {
    this.#sim.close();
  }

  /** Same as {@link DecodeSimulator.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
