/**
 * The GPU engine's test cases for one-node worlds, run by every rank of
 * tests/gpu/worker.ts (multi-node worlds: cases_nodes.ts).
 *
 * Each rank regenerates every rank's inputs from the case's seed, so it can
 * run the CPU Simulator over the whole world locally and check its own GPU
 * results against that oracle (run_case.ts): dispatch bit for bit, combine
 * within the dtype's rounding, and two GPU runs bit for bit against each
 * other. Data is random and never zero; outputs are poisoned (0xFF bytes,
 * NaN in every dtype) before the GPU writes them, so an element it skips
 * shows up.
 *
 * @module
 */
import { type GpuCase, pattern } from "./case_data.ts";
import { failureCases } from "./cases_failure.ts";

/**
 * The cases for a world of `world` ranks in nodes of `gpusPerNode`.
 *
 * @example
 * ```ts
 * import { gpuCases } from "./cases.ts";
 * console.assert(gpuCases(4, 4).some((c) => c.pattern.hidden === 7168));
 * ```
 */
export function gpuCases(world: number, gpusPerNode: number): GpuCase[] {
  // A table where, from 3 ranks on, the last rank owns no expert at all.
  const owners = Array.from(
    { length: 32 },
    (_, e) => (e * 5 + 1) % (world > 2 ? world - 1 : world),
  );
  const deepseek: GpuCase = {
    name: "deepseek-bf16-h7168-uneven-tokens",
    pattern: pattern({ experts: 256, hidden: 7168 }),
    tokens: [300, 1, 0, 129],
    routing: "uniform",
    seed: 1,
  };
  const roundRobin: GpuCase = {
    name: "f16-h4096-roundRobin-rank-major-sum-dedupe-none",
    pattern: pattern({
      experts: 64,
      placement: { kind: "roundRobin" },
      topK: 6,
      dtype: "f16",
      hidden: 4096,
      dedupe: "none",
      receive: "rank-major",
      combine: "sum",
    }),
    tokens: [97, 250, 3, 0],
    routing: "uniform",
    seed: 2,
  };
  const inPlace: GpuCase = {
    name: "x-written-in-place-bf16-h2048",
    pattern: pattern({ experts: 32, topK: 4, hidden: 2048 }),
    tokens: [77, 128, 5, 64],
    routing: "uniform",
    seed: 14,
    inPlace: true,
  };
  const list: GpuCase[] = [
    deepseek,
    roundRobin,
    {
      name: "f32-h2048-table-rank-without-experts",
      pattern: pattern({
        experts: 32,
        placement: { kind: "table", owners },
        topK: 4,
        dtype: "f32",
        hidden: 2048,
      }),
      tokens: [65, 33, 129, 17],
      routing: "uniform",
      seed: 3,
    },
    {
      name: "one-token-per-rank-f32-h4096",
      pattern: pattern({ experts: 16, topK: 2, dtype: "f32", hidden: 4096 }),
      tokens: [1],
      routing: "uniform",
      seed: 4,
    },
    {
      name: "every-token-to-one-expert-bf16-dedupe-none",
      pattern: pattern({ dedupe: "none", experts: 256, hidden: 2048 }),
      tokens: [77, 130, 0, 5],
      routing: "one-expert",
      seed: 5,
    },
    {
      name: "empty-slots-bf16-h1000-sum",
      pattern: pattern({ combine: "sum", experts: 128, hidden: 1000 }),
      tokens: [64, 65, 0, 31],
      routing: "empty-slots",
      seed: 6,
    },
    {
      name: "some-ranks-zero-tokens-f16-h2048",
      pattern: pattern({ experts: 64, dtype: "f16", hidden: 2048 }),
      tokens: [0, 45],
      routing: "uniform",
      seed: 7,
    },
    {
      name: "device-tensor-inputs-bf16-h2048",
      pattern: pattern({ experts: 64, hidden: 2048 }),
      tokens: [100, 37, 64, 3],
      routing: "uniform",
      seed: 8,
      onDevice: true,
    },
    {
      // Everything on the device, as in a model: x, y and the router's
      // top-k ids (i32) and weights (f32); a rank with no tokens passes
      // empty tensors.
      name: "routing-device-tensors-bf16-h2048",
      pattern: pattern({ experts: 64, hidden: 2048 }),
      tokens: [96, 0, 41, 130],
      routing: "empty-slots",
      seed: 22,
      onDevice: true,
      routingOnDevice: true,
    },
    inPlace,
    {
      name: "combine-wire-f32-bf16-h4096",
      pattern: pattern({ experts: 64, hidden: 4096 }),
      tokens: [90, 91, 92, 93],
      routing: "uniform",
      seed: 9,
      combineWire: "f32",
    },
    ...failureCases(),
  ];
  // Quantized dispatch (E4M3 + block scales) of three cases above: the bytes
  // and the scales must match the Simulator's bit for bit. Their rows span
  // 2^±20 block to block (randomRows' spread), so the scales differ; dedupe
  // none takes the SM-load pull with 16-byte rows split into bytes + scales.
  for (const [i, c] of [deepseek, roundRobin, inPlace].entries()) {
    list.push({
      ...c,
      name: `e4m3-${c.name}`,
      pattern: { ...c.pattern, quantize: "e4m3" },
      seed: 16 + i,
    });
  }
  // Rows quantized by the caller: from the host, from device tensors, and
  // written in place (Engine.inputQuantizedRows: no copy at all).
  for (const [i, where] of (["host", "device", "in-place"] as const).entries()) {
    list.push({
      ...deepseek,
      name: `e4m3-prequantized-${where}-bf16-h7168`,
      pattern: { ...deepseek.pattern, quantize: "e4m3" },
      seed: 19 + i,
      preQuantized: true,
      onDevice: where === "device",
      inPlace: where === "in-place",
    });
  }
  if (world >= 2) {
    list.push({
      name: "replicas-bf16-h1000-rank-major",
      pattern: pattern({
        receive: "rank-major",
        experts: 64,
        replicas: { experts: [0, 1, 2, 3, 40], copies: 2 },
        hidden: 1000,
      }),
      tokens: [120, 44, 0, 61],
      routing: "uniform",
      seed: 12,
    });
  }
  if (world / gpusPerNode > 1) {
    list.push({
      name: "dedupe-node-bf16-h2048",
      pattern: pattern({ dedupe: "node", experts: 64, hidden: 2048 }),
      tokens: [80, 33, 0, 57],
      routing: "uniform",
      seed: 13,
    });
  }
  return list;
}
