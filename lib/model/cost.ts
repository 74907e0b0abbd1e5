/**
 * The cost model: one batch's traffic (rank_traffic.ts) on a topology
 * (topology.ts) → predicted milliseconds per stage of dispatch and combine.
 *
 * **Bytes.** A row crosses as `dispatchRowBytes` (the pattern dtype, or E4M3
 * + scales) in dispatch and as the combine wire row (pattern dtype, or f32
 * with `combineWire: "f32"`) in combine. Per rank r:
 * - NVLink: rows to and from ranks of r's node, the forwarder's fan-out included;
 * - NIC: rows to and from other nodes (with dedupe `node`, to the forwarder);
 * - HBM, read and write bytes both counted: dispatch scatter
 *   (R_r expert-major writes + the rows r reads from itself + the rows its
 *   node peers read from it), pack (read + write of each NIC row), the
 *   partials (read the R_r expert outputs, write own partials, receive peers'),
 *   the forwarder's reduce (read its partials, write one row per staged row)
 *   and the home sum (read its partials, write T_r output rows).
 *
 * **Rates.** NVLink reads (dispatch is a pull) at `nvlinkReadGBs`, writes
 * (combine is a push) at `nvlinkWriteGBs`; the NIC at one NIC per GPU
 * (`nicGBsPerGpu`), full duplex: a rank's network time is its larger
 * direction (`nicHalfDuplex`: the sum); HBM streams (pack, reduce, home sum,
 * quantize) at `streamEff`·hbmGBs and row-granular scatters (the pull's
 * writes, the partials) at `scatterEff`·hbmGBs, both calibrated
 * (calibration.ts).
 *
 * **Overlap, as the engines do it.** Stages are separated by barriers, so a
 * stage takes its slowest rank. Inside a stage the NVLink transfer and its
 * HBM side run in the same kernel: max(NVLink, HBM). With more than one node,
 * packing runs beside the NIC transfer slice by slice (hier_dispatch.cu:
 * pack slice j+1 while slice j is on the wire), and so do the forwarder's
 * reduce and the return: max(a, b) + min(a, b)/slices + slices·sliceMs. The
 * fan-out starts after the transfer (node barrier), the home sum after the
 * return.
 *
 * dispatch = quantize + front (+ exchange) + pipe(pack, NIC) + fan-out/pull + barriers/2
 * combine  = partials + pipe(reduce, NIC) + home sum + barriers/2
 *
 * @module
 */
import type { BatchLayout } from "../../dsl/types.ts";
import { DTYPE_BYTES } from "../../dsl/types.ts";
import { dispatchRowBytes } from "../../dsl/layout.ts";
import { WeftError } from "../../dsl/errors.ts";
import { forwarderLoads, type ForwarderTable, greedyTable } from "../../dsl/balance.ts";
import { nicGBsPerGpu, type Topology } from "./topology.ts";
import { type RankTraffic, rankTraffic } from "./rank_traffic.ts";

/** The engine's fixed costs and achieved fractions (fitted in calibration.ts). */
export interface EngineConstants {
  /** Layout, bases and publish of one dispatch (profile 16384 uniform: 0.076 + 0.039). */
  readonly frontMs: number;
  /** World 1's front (the bench's layout column: 0.13–0.17). */
  readonly frontMsSingle: number;
  /** All barriers of one dispatch + combine with more than one rank (profile: 0.04). */
  readonly barrierMs: number;
  /** Multi-node: the NCCL all-gather of counts before rows move. */
  readonly exchangeMs: number;
  /** Fraction of hbmGBs a row-granular scatter/gather reaches, world > 1. */
  readonly scatterEff: number;
  /** The same in world 1. */
  readonly scatterEffSingle: number;
  /** Fraction of hbmGBs a streaming pass (reduce, pack, sum) reaches. */
  readonly streamEff: number;
  /** Rows per NIC slice (hier engine's default C). */
  readonly sliceRows: number;
  /** Fixed cost of one NCCL slice step. */
  readonly sliceMs: number;
  /**
   * The NVLink pull's cost per row it reads from a peer, a floor under the
   * byte time: each row is its own bulk copy, so rows much smaller than a
   * bf16 DeepSeek row (E4M3's 7392 B) stop at this rate, not the fabric's.
   */
  readonly pullRowNs: number;
}

/** Fitted on nvidia-h200-x4 / nvidia-h200 (calibration.ts states the fit and its error). */
export const ENGINE_CONSTANTS: EngineConstants = Object.freeze({
  frontMs: 0.115,
  frontMsSingle: 0.15,
  barrierMs: 0.04,
  exchangeMs: 0.05,
  scatterEff: 0.506,
  scatterEffSingle: 0.883,
  streamEff: 0.95,
  sliceRows: 512,
  sliceMs: 0.01,
  pullRowNs: 36,
});

/** Options of a prediction. */
export interface CostOptions {
  /** Combine's wire dtype (default "dtype": the pattern's). */
  readonly combineWire?: "f32" | "dtype";
  /**
   * Override the layout's forwarder table for dedupe `node`: absent or
   * "rail" keeps the layout's own (which follows the plan's `balance`),
   * "greedy" or a table moves the NIC inbound loads only ({@link rebalance}).
   * For exact fan-out loads too, compile the plan with `.balance("greedy")`
   * instead (the explorer does).
   */
  readonly balance?: "rail" | "greedy" | ForwarderTable;
  /** Sends and receives of one GPU share its NIC's rate (default false). */
  readonly nicHalfDuplex?: boolean;
  /** Override constants. */
  readonly constants?: Partial<EngineConstants>;
}

/** Predicted ms per stage (each the slowest rank's) and in total. */
export interface Prediction {
  /** Dispatch's stages, ms. */
  readonly dispatch: {
    /** FP8 quantization of the sent rows (0 without `.quantize("e4m3")`). */
    readonly quantize: number;
    /** Routing, layout, bases (and across nodes the count exchange). */
    readonly front: number;
    /** Packing rows for the NIC (across nodes). */
    readonly pack: number;
    /** The NIC transfer alone. */
    readonly network: number;
    /** Pack and NIC transfer as they overlap (slice pipeline); 0 on one node. */
    readonly transfer: number;
    /** The NVLink pull / fan-out into expert-major rows. */
    readonly fanout: number;
  };
  /** Combine's stages, ms. */
  readonly combine: {
    /** Partial sums pushed over NVLink. */
    readonly partials: number;
    /** The forwarder's reduce (across nodes). */
    readonly reduce: number;
    /** The NIC return alone. */
    readonly network: number;
    /** Reduce and NIC return as they overlap; the reduce alone on one node. */
    readonly transfer: number;
    /** The home-side sum. */
    readonly home: number;
  };
  /** Barriers of one dispatch + combine. */
  readonly barriers: number;
  /** Dispatch, ms. */
  readonly dispatchMs: number;
  /** Combine, ms. */
  readonly combineMs: number;
  /** Dispatch + combine, ms. */
  readonly totalMs: number;
  /** Bytes per link class, max over ranks (per rank and direction) and summed over ranks. */
  readonly bytes: LinkClassBytes;
}

/**
 * Bytes per link class of one batch. NVLink and NIC: dispatch direction
 * (combine moves the same rows back at the combine row size); `…Max` is the
 * busiest rank's larger direction, `…Total` the sum of what ranks send. HBM:
 * dispatch + combine, read and write bytes.
 */
export interface LinkClassBytes {
  /** Busiest rank's NVLink bytes, larger direction, dispatch. */
  readonly nvlinkMax: number;
  /** NVLink bytes all ranks send in dispatch. */
  readonly nvlinkTotal: number;
  /** Busiest rank's NIC bytes, larger direction, dispatch. */
  readonly nicMax: number;
  /** NIC bytes all ranks send in dispatch. */
  readonly nicTotal: number;
  /** Busiest rank's HBM bytes (read + write), dispatch + combine. */
  readonly hbmMax: number;
  /** HBM bytes of all ranks. */
  readonly hbmTotal: number;
  /** The busiest forwarder's inbound NIC rows (dedupe `node`; 0 otherwise). */
  readonly busiestForwarderRows: number;
}

const max = (a: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, a[i]);
  return m;
};
const sum = (a: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m += a[i];
  return m;
};
/** ms for bytes at GB/s. */
const ms = (bytes: number, gbs: number) => (bytes <= 0 ? 0 : bytes / (gbs * 1e6));

/**
 * Traffic with the NIC inbound loads moved to another forwarder table
 * (NVLink fan-out loads are left as the layout's: an approximation for
 * tables the plan cannot express; a plan's own `balance` is exact through
 * its layout).
 */
export function rebalance(t: RankTraffic, table: ForwarderTable): RankTraffic {
  return { ...t, nicIn: forwarderLoads(t.nodeRows, table) };
}

/**
 * Predicts one batch's dispatch + combine on a topology.
 *
 * @throws {WeftError} `topology` when its GPUs per node or world differ from the plan's.
 * @example
 * ```ts
 * import { experts } from "../../dsl/mod.ts";
 * import { uniform } from "../io/routing.ts";
 * import { predict } from "./cost.ts";
 * import { TOPOLOGIES } from "./topology.ts";
 * const plan = experts(256).byDevice().topK(8).hidden(7168).compile({ world: 4 });
 * const layout = plan.layout(uniform(plan, { tokens: 1024 }).map((r) => r.topkIdx));
 * const p = predict(layout, TOPOLOGIES.h200x4);
 * console.assert(p.totalMs > 0.2 && p.totalMs < 1);
 * ```
 */
export function predict(layout: BatchLayout, topo: Topology, opts: CostOptions = {}): Prediction {
  const plan = layout.plan;
  if (plan.gpusPerNode !== topo.gpusPerNode || plan.world !== topo.gpusPerNode * topo.nodes) {
    throw new WeftError({
      field: "topology",
      problem: `${topo.name} has ${topo.nodes} × ${topo.gpusPerNode} GPUs, the plan ${
        plan.world / plan.gpusPerNode
      } × ${plan.gpusPerNode}`,
      fix: "compile the plan with the topology's world and gpusPerNode",
    });
  }
  const c = { ...ENGINE_CONSTANTS, ...opts.constants };
  let t = rankTraffic(layout);
  const multiNode = topo.nodes > 1;
  if (
    multiNode && plan.dedupe === "node" && opts.balance !== undefined && opts.balance !== "rail"
  ) {
    const table = opts.balance === "greedy"
      ? greedyTable(t.nicOut, plan.gpusPerNode)
      : opts.balance;
    t = rebalance(t, table);
  }
  const W = plan.world;
  const rb = dispatchRowBytes(plan);
  const ob = plan.hidden * DTYPE_BYTES[plan.dtype];
  const cb = opts.combineWire === "f32" ? plan.hidden * 4 : ob;
  const single = W === 1;
  const scatter = topo.hbmGBs * (single ? c.scatterEffSingle : c.scatterEff);
  const stream = topo.hbmGBs * c.streamEff;
  const nic = nicGBsPerGpu(topo);
  const N = topo.nodes;
  const netRows = (r: number) =>
    opts.nicHalfDuplex ? t.nicOut[r] + t.nicIn[r] : Math.max(t.nicOut[r], t.nicIn[r]);
  const steps = (r: number) => {
    let peerMax = 0;
    for (let m = 0; m < N; m++) peerMax = Math.max(peerMax, t.nodeRows[r * N + m]);
    return Math.ceil(Math.max(peerMax, t.nicIn[r] / Math.max(1, N - 1)) / c.sliceRows);
  };
  const pipe = (a: number, b: number, n: number) =>
    Math.max(a, b) + (n > 0 ? Math.min(a, b) / n + n * c.sliceMs : 0);

  const per = (f: (r: number) => number) => {
    let m = 0;
    for (let r = 0; r < W; r++) m = Math.max(m, f(r));
    return m;
  };
  const hbmD = (r: number) => (t.recvRows[r] + t.selfRows[r] + t.nvOut[r]) * rb;
  const hbmPack = (r: number) => 2 * t.nicOut[r] * rb;
  const hbmC = (r: number) => t.recvRows[r] * ob + (t.selfRows[r] + t.nvOut[r]) * cb;
  const hbmReduce = (r: number) => (t.forwarderPartials[r] + t.stagedRows[r]) * cb;
  const hbmHome = (r: number) => t.homePartials[r] * cb + t.tokens[r] * ob;
  const hbmQuant = (r: number) => (plan.quantize ? t.tokens[r] * (ob + rb) : 0);
  const nvRows = (r: number) => Math.max(t.nvIn[r], t.nvOut[r]);

  const quantize = per((r) => ms(hbmQuant(r), stream));
  const front = (single ? c.frontMsSingle : c.frontMs) + (multiNode ? c.exchangeMs : 0);
  const pack = per((r) => ms(hbmPack(r), stream));
  const dNet = per((r) => ms(netRows(r) * rb, nic));
  const dPipe = multiNode
    ? per((r) => pipe(ms(hbmPack(r), stream), ms(netRows(r) * rb, nic), steps(r)))
    : 0;
  const fanout = per((r) =>
    Math.max(
      ms(nvRows(r) * rb, topo.nvlinkReadGBs),
      t.nvIn[r] * c.pullRowNs * 1e-6,
      ms(hbmD(r), scatter),
    )
  );
  const partials = per((r) =>
    Math.max(ms(nvRows(r) * cb, topo.nvlinkWriteGBs), ms(hbmC(r), scatter))
  );
  const reduce = per((r) => ms(hbmReduce(r), stream));
  const cNet = per((r) => ms(netRows(r) * cb, nic));
  const cPipe = multiNode
    ? per((r) => pipe(ms(hbmReduce(r), stream), ms(netRows(r) * cb, nic), steps(r)))
    : reduce;
  const home = per((r) => ms(hbmHome(r), stream));
  const barriers = single ? 0 : c.barrierMs;
  const dispatchMs = quantize + front + dPipe + fanout + barriers / 2;
  const combineMs = partials + cPipe + home + barriers / 2;

  const hbmBytes = (r: number) =>
    hbmQuant(r) + hbmPack(r) + hbmD(r) + hbmC(r) + hbmReduce(r) + hbmHome(r);
  return {
    dispatch: { quantize, front, pack, network: dNet, transfer: dPipe, fanout },
    combine: { partials, reduce, network: cNet, transfer: cPipe, home },
    barriers,
    dispatchMs,
    combineMs,
    totalMs: dispatchMs + combineMs,
    bytes: {
      nvlinkMax: per((r) => nvRows(r) * rb),
      nvlinkTotal: sum(t.nvOut) * rb,
      nicMax: per((r) => Math.max(t.nicOut[r], t.nicIn[r]) * rb),
      nicTotal: sum(t.nicOut) * rb,
      hbmMax: per(hbmBytes),
      hbmTotal: sum(Float64Array.from({ length: W }, (_, r) => hbmBytes(r))),
      busiestForwarderRows: plan.dedupe === "node" && multiNode ? max(t.nicIn) : 0,
    },
  };
}
