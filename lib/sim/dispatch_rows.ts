/**
 * The Simulator's dispatch outputs: the per-rank result buffers both
 * protocols fill, the rows a source sends (quantized once per source row
 * when the pattern quantizes dispatch), and the one-hop scatter.
 *
 * @module
 */
import type { BatchLayout, DType, PlanSpec } from "../../dsl/types.ts";
import type { DispatchResult, HostRows } from "../core/engine_api.ts";
import { QUANT_BLOCK, type QuantizedRows, quantizeRows } from "../core/fp8.ts";
import { HostTensor } from "../core/host_tensor.ts";
import { isQuantizedInput } from "../core/input_check.ts";
import type { SourceRows } from "./inputs.ts";

/** A Simulator dispatch result: `recv` (and `recvScales`) are {@link HostTensor}s. */
export interface SimDispatchResult extends DispatchResult {
  /** [R × H] received rows, in the plan's receive order, on the host (e4m3 bytes when quantized). */
  readonly recv: HostTensor<DType | "e4m3">;
  /** [R × H/128] f32 block scales of `recv` when the pattern quantizes dispatch. */
  readonly recvScales?: HostTensor<"f32">;
}

/**
 * Zeroed result buffers for `R` received rows on `rank`; the caller fills
 * them. `expertCounts` is taken as it is.
 */
export function newResult(
  plan: PlanSpec,
  rank: number,
  R: number,
  expertCounts: Int32Array,
): SimDispatchResult {
  const H = plan.hidden;
  const quantized = plan.quantize === "e4m3";
  return {
    rank,
    recv: new HostTensor(quantized ? "e4m3" : plan.dtype, R, H),
    ...(quantized ? { recvScales: new HostTensor("f32", R, H / QUANT_BLOCK) } : {}),
    expertCounts,
    recvWeights: new Float32Array(R),
    srcRank: new Int32Array(R),
    srcToken: new Int32Array(R),
    srcK: new Int32Array(R),
  };
}

/**
 * The rows each source sends when the pattern quantizes dispatch: its E4M3
 * bytes and block scales (lib/core/fp8.ts, quantized once per source row
 * whatever its fan-out; or as given, when the rows came pre-quantized).
 */
export function quantizedSources(plan: PlanSpec, xs: readonly SourceRows[]): QuantizedRows[] {
  return xs.map((x) =>
    isQuantizedInput(x) ? x as QuantizedRows : quantizeRows(x as HostRows, plan.dtype, plan.hidden)
  );
}

/**
 * One-hop dispatch: every received row is its source row's bits (x as
 * given, or its E4M3 bytes and scales), placed where the layout says.
 */
export function scatter(
  plan: PlanSpec,
  layout: BatchLayout,
  weights: readonly Float32Array[],
  xs: readonly SourceRows[],
): SimDispatchResult[] {
  const { hidden: H, topK: K } = plan;
  const sent = plan.quantize === "e4m3" ? quantizedSources(plan, xs) : undefined;
  const S = H / QUANT_BLOCK;
  return layout.ranks.map((rl) => {
    const res = newResult(plan, rl.rank, rl.recvRows, rl.expertCounts.slice());
    const out = res.recv.data;
    for (let i = 0; i < rl.recvRows; i++) {
      const s = rl.srcRank[i];
      const t = rl.srcToken[i];
      if (sent !== undefined) {
        out.set(sent[s].q.subarray(t * H, (t + 1) * H), i * H);
        res.recvScales!.data.set(sent[s].scales.subarray(t * S, (t + 1) * S), i * S);
      } else {
        out.set((xs[s] as HostRows).subarray(t * H, (t + 1) * H), i * H);
      }
      res.recvWeights[i] = weights[s][t * K + rl.srcK[i]];
    }
    res.srcRank.set(rl.srcRank);
    res.srcToken.set(rl.srcToken);
    res.srcK.set(rl.srcK);
    return res;
  });
}
