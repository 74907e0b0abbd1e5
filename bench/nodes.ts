/**
 * `deno task bench --ranks-per-gpu k --emulate-nodes M`: the emulated-node
 * benchmark. The host's GPUs × k ranks form M nodes (lib/dist/launch.ts);
 * weft's hierarchical path (dedupe `node`) runs the DeepSeek-V3 shape, and
 * for every (tokens per rank, scenario) the report gives, per link class
 * (NVLink/IPC inside a node, network between nodes), the dispatch bytes with
 * dedupe `device` and with dedupe `node` (computeLayout on the same routing,
 * bench/node_traffic.ts), and the measured time of the node path.
 *
 * With ranks sharing a GPU, or nodes that are emulated on one host (NCCL
 * over sockets), the times are not performance figures, and every time line
 * says so. The byte counts are exact either way.
 *
 * @module
 */
import { launchWorkers } from "./launch_workers.ts";
import type { BenchOptions } from "./bench.ts";
import { formatNodeTraffic, type NodeTraffic } from "./node_traffic.ts";
import { CHECK_TOLERANCE } from "./rank_util.ts";

/** Tokens per rank the node mode runs when `--sizes` is not given (ranks may share a GPU). */
export const NODE_DEFAULT_SIZES: readonly number[] = Object.freeze([1024, 4096]);

/** One (tokens, scenario) cell of the node benchmark. */
export interface NodeBenchRow {
  readonly tokens: number;
  readonly scenario: string;
  readonly traffic: NodeTraffic;
  /** Dispatch + combine of the node path, median per rank, max over ranks (ms). */
  readonly nodeMs: number;
  /** Dispatch alone, the same way (ms). */
  readonly nodeDispatchMs: number;
  /** Worst relative L2 error of out ≈ x·Σw (identity experts) over ranks. */
  readonly error: number;
}

/** What rank 0 of bench/nodes_worker.ts writes. */
export interface NodeBenchResult {
  readonly world: number;
  readonly gpus: number;
  readonly ranksPerGpu: number;
  readonly nodes: number;
  readonly hidden: number;
  readonly experts: number;
  readonly topK: number;
  readonly combineWire: "f32" | "dtype";
  readonly iters: number;
  readonly rows: readonly NodeBenchRow[];
}

/**
 * The label every time of such a run carries.
 *
 * @example
 * ```ts
 * import { timingCaveat } from "./nodes.ts";
 * console.assert(
 *   timingCaveat(4, 2) ===
 *     "(not a performance figure: 4 ranks share one GPU, NCCL over sockets)",
 * );
 * console.assert(timingCaveat(1, 2).startsWith("(not a performance figure: emulated nodes"));
 * ```
 */
export function timingCaveat(ranksPerGpu: number, nodes: number): string {
  if (ranksPerGpu > 1) {
    return `(not a performance figure: ${ranksPerGpu} ranks share one GPU, NCCL over sockets)`;
  }
  return nodes > 1
    ? "(not a performance figure: emulated nodes on one host, NCCL over sockets)"
    : "";
}

/**
 * The report: per cell, the link-class table and the time lines.
 *
 * @example
 * ```ts
 * import { formatNodeBench } from "./nodes.ts";
 * const c = (rows: number) => ({ rows, bytes: rows * 14336 });
 * const text = formatNodeBench({
 *   world: 4, gpus: 1, ranksPerGpu: 4, nodes: 2, hidden: 7168, experts: 256, topK: 8,
 *   combineWire: "dtype", iters: 10,
 *   rows: [{
 *     tokens: 1024, scenario: "uniform", nodeMs: 12.5, nodeDispatchMs: 6, error: 1e-3,
 *     traffic: {
 *       device: { intra: c(10), net: c(30), maxRankNetBytes: 1 },
 *       node: { intra: c(25), net: c(15), maxRankNetBytes: 1 },
 *     },
 *   }],
 * });
 * console.assert(text.includes("12.500 ms (not a performance figure: 4 ranks share one GPU"));
 * ```
 */
export function formatNodeBench(r: NodeBenchResult): string {
  const caveat = timingCaveat(r.ranksPerGpu, r.nodes);
  const out = [
    `# weft over ${r.nodes} nodes × ${r.world / r.nodes} ranks (${r.world} ranks on ${r.gpus} GPU${
      r.gpus > 1 ? "s" : ""
    }), experts ${r.experts}, top-${r.topK}, hidden ${r.hidden}, bf16`,
    "",
    "Bytes are the dispatch direction, from computeLayout on the same routing for both dedupes;",
    "combine sends the same rows back (partials, in " +
    (r.combineWire === "f32" ? "f32" : "bf16") + ").",
  ];
  for (const row of r.rows) {
    out.push(
      "",
      `## ${row.tokens} tokens per rank, ${row.scenario}`,
      "",
      formatNodeTraffic(row.traffic),
      "",
      `dedupe node dispatch + combine: ${row.nodeMs.toFixed(3)} ms ${caveat}`.trimEnd(),
      `dedupe node dispatch alone: ${row.nodeDispatchMs.toFixed(3)} ms ${caveat}`.trimEnd(),
      `output check: relative L2 error ${row.error.toExponential(1)} ${
        row.error <= CHECK_TOLERANCE ? "≤" : "> (FAILED)"
      } ${CHECK_TOLERANCE}`,
    );
  }
  return out.join("\n");
}

/**
 * The node mode's driver: launches bench/nodes_worker.ts with `workerArgs`
 * (bench.ts's, given where rank 0 writes its result), prints the report and
 * returns the exit code.
 */
export async function mainNodes(
  options: BenchOptions,
  gpus: number,
  workerArgs: (result: string) => string[],
): Promise<number> {
  const result = await launchWorkers<NodeBenchResult>("./nodes_worker.ts", gpus, workerArgs, {
    ranksPerGpu: options.ranksPerGpu ?? 1,
    emulateNodes: options.emulateNodes ?? 1,
  });
  if (typeof result === "number") return result;
  const text = formatNodeBench(result);
  console.log(text);
  if (options.json !== undefined) {
    await Deno.writeTextFile(options.json, JSON.stringify(result, null, 2) + "\n");
  }
  if (options.md !== undefined) await Deno.writeTextFile(options.md, text + "\n");
  return result.rows.every((r) => r.error <= CHECK_TOLERANCE) ? 0 : 1;
}
