/**
 * The GPU engine's test cases for multi-node worlds (more than one node,
 * real or emulated: `--ranks-per-gpu k --emulate-nodes M`), where
 * Engine.create takes the hierarchical path (NCCL between nodes, IPC
 * inside). Plans are compiled with `gpusPerNode` = ranks per node and, but
 * for the cases that probe the other dedupes, dedupe `node`.
 *
 * Checked by run_case.ts like the one-node cases: dispatch bit for bit
 * against the Simulator into poisoned outputs, combine bit for bit with
 * `combineWire: "f32"` (the hierarchical protocol's promise) and within
 * rounding with the default wire, a second smaller batch on the same engine;
 * bad input on one rank must fail every rank with a WeftError naming that
 * rank.
 *
 * @module
 */
import { type GpuCase, pattern } from "./case_data.ts";
import { gpuCases } from "./cases.ts";

/**
 * The cases for a multi-node world of `world` ranks in nodes of
 * `gpusPerNode` (the plan's, too): every one-node case of dedupe `device`
 * (cases.ts, failure cases included) run with dedupe `node` under the name
 * `node-<name>`, a few of their own, FUSCO's balancer (`balance: "greedy"`,
 * {@link greedyCases}), and the one-node cases of dedupe `none` plus one of
 * dedupe `device` as probes the engine may refuse.
 *
 * @example
 * ```ts
 * import { nodeCases } from "./cases_nodes.ts";
 * const cases = nodeCases(4, 2);
 * console.assert(cases.some((c) => c.combineBitwise) && cases.some((c) => c.nameBadRank));
 * console.assert(cases.some((c) => c.pattern.quantize === "e4m3" && c.pattern.dedupe === "node"));
 * console.assert(cases.filter((c) => c.pattern.balance === "greedy").length === 4);
 * console.assert(new Set(cases.map((c) => c.name)).size === cases.length);
 * console.assert(nodeCases(4, 4).length === 0);
 * ```
 */
export function nodeCases(world: number, gpusPerNode: number): GpuCase[] {
  // One node: no hierarchical path to test (the one-node cases cover it).
  if (world / gpusPerNode <= 1) return [];
  const oneNode = gpuCases(world, gpusPerNode);
  const asNode = oneNode.filter((c) => c.pattern.dedupe === "device").map((c): GpuCase => ({
    ...c,
    name: `node-${c.name}`,
    pattern: { ...c.pattern, dedupe: "node" },
    // The hierarchical protocol's promise: f32 partials reduce bit for bit.
    ...(c.combineWire === "f32" ? { combineBitwise: true } : {}),
    // bad-combine names the rank by itself (run_failure.ts).
    ...(c.failure !== undefined && c.failure !== "bad-combine" ? { nameBadRank: true } : {}),
  }));
  const probes = oneNode.filter((c) => c.pattern.dedupe === "none").map((c): GpuCase => ({
    ...c,
    name: `node-world-${c.name}-runs-or-is-refused`,
    mayReject: "dedupe",
  }));
  // Tokens per rank: uneven, a rank with none (rank 2: node 1 in 2 × 2,
  // node 2 in 4 × 1), so a whole node or a forwarder sends nothing.
  const uneven = [80, 33, 0, 57, 12, 101, 1, 64];
  return [
    ...asNode,
    {
      name: "node-bf16-h2048-uneven-zero-token-rank",
      pattern: pattern({ dedupe: "node", experts: 64, hidden: 2048 }),
      tokens: uneven,
      routing: "uniform",
      seed: 31,
    },
    {
      name: "node-combine-wire-f32-bitwise-f32-h768-rank-major-sum-empty-slots",
      pattern: pattern({
        dedupe: "node",
        experts: 64,
        hidden: 768,
        dtype: "f32",
        receive: "rank-major",
        combine: "sum",
        topK: 6,
      }),
      tokens: [41, 0, 70, 9, 3, 0, 12, 55],
      routing: "empty-slots",
      seed: 33,
      combineWire: "f32",
      combineBitwise: true,
    },
    {
      name: "node-e4m3-prequantized-uneven-bf16-h7168",
      pattern: pattern({ dedupe: "node", experts: 256, hidden: 7168, quantize: "e4m3" }),
      tokens: uneven,
      routing: "uniform",
      seed: 40,
      preQuantized: true,
    },
    ...greedyCases(),
    ...probes,
    {
      name: "node-world-dedupe-device-runs-or-is-refused",
      pattern: pattern({ experts: 64, hidden: 2048 }),
      tokens: uneven,
      routing: "uniform",
      seed: 44,
      mayReject: "dedupe",
    },
  ];
}

/**
 * Node cases with the greedy forwarder table. Token counts make the loads
 * uneven so that the table pairs other ranks than rail in 2 × 2, 2 × 4 and
 * 4 × 2 worlds (tests/balance_cases_test.ts checks it; swapping both nodes
 * of a 2 × 2 world would only relabel rail's pairs). The
 * one-expert case is a hot expert on one node: every other node's ranks
 * send all their tokens there, that node sends nothing (loads tie, and the
 * rotation alone moves its forwarders). Results must match the Simulator as
 * for rail: bitwise dispatch, bitwise combine with an f32 wire.
 *
 * @example
 * ```ts
 * import { greedyCases } from "./cases_nodes.ts";
 * console.assert(greedyCases().every((c) => c.pattern.balance === "greedy"));
 * ```
 */
export function greedyCases(): GpuCase[] {
  const skewed = [20, 90, 5, 70, 0, 64, 33, 101];
  return [
    {
      name: "node-greedy-bf16-h2048-uneven-skewed-senders",
      pattern: pattern({ dedupe: "node", balance: "greedy", experts: 64, hidden: 2048 }),
      tokens: skewed,
      routing: "uniform",
      seed: 51,
    },
    {
      name: "node-greedy-combine-wire-f32-bitwise-bf16-h1024-empty-slots-zero-token-rank",
      pattern: pattern({ dedupe: "node", balance: "greedy", experts: 64, hidden: 1024, topK: 6 }),
      tokens: [9, 77, 0, 40, 3, 58, 12, 1],
      routing: "empty-slots",
      seed: 52,
      combineWire: "f32",
      combineBitwise: true,
    },
    {
      name: "node-greedy-hot-expert-combine-wire-f32-bitwise-f32-h512-rank-major",
      pattern: pattern({
        dedupe: "node",
        balance: "greedy",
        experts: 64,
        hidden: 512,
        dtype: "f32",
        receive: "rank-major",
      }),
      tokens: [90, 20, 5, 70, 0, 64, 33, 101],
      routing: "one-expert",
      seed: 53,
      combineWire: "f32",
      combineBitwise: true,
    },
    {
      name: "node-greedy-e4m3-uneven-bf16-h7168",
      pattern: pattern({
        dedupe: "node",
        balance: "greedy",
        experts: 256,
        hidden: 7168,
        quantize: "e4m3",
      }),
      tokens: skewed,
      routing: "uniform",
      seed: 54,
    },
  ];
}
