/**
 * One rank of the emulated-node benchmark (bench/nodes.ts), started through
 * lib/dist/launch.ts with `--ranks-per-gpu` / `--emulate-nodes`, or by hand:
 *
 *   deno task launch --gpus 1 --ranks-per-gpu 4 --emulate-nodes 2 bench/nodes_worker.ts
 *
 * For every (tokens per rank, scenario): weft's dispatch + combine with
 * dedupe `node` (the hierarchical path) and identity experts, timed with
 * CUDA events after warm-up, median per rank, max over ranks; dispatch alone
 * the same way; the output checked against x·Σw on sampled rows. Rank 0 adds
 * the bytes per link class with dedupe `device` and `node` from the layout
 * compiler and writes a {@link NodeBenchResult}.
 *
 * @module
 */
import { experts } from "../dsl/mod.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { readLaunchEnv } from "../lib/dist/env.ts";
import { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { Engine } from "../lib/gpu/engine.ts";
import type { RankRouting } from "../lib/io/routing.ts";
import { StreamTimer } from "./baseline.ts";
import { type BenchOptions, parseBenchArgs } from "./bench.ts";
import type { NodeBenchResult, NodeBenchRow } from "./nodes.ts";
import { nodeTraffic } from "./node_traffic.ts";
import { median } from "./report.ts";
import { gather, outputError, randomBf16, timeRuns } from "./rank_util.ts";
import { scenariosByName } from "./scenarios.ts";

/** What one rank measured in one cell. */
interface RankCell {
  readonly ms: number;
  readonly dispatchMs: number;
  readonly error: number;
}

/** One cell on this rank: timed runs, then the check of the last output. */
async function runCell(
  comm: Communicator,
  engine: Engine,
  timer: StreamTimer,
  plan: PlanSpec,
  routing: RankRouting,
  tokens: number,
  options: BenchOptions,
): Promise<RankCell> {
  const xHost = randomBf16(tokens * plan.hidden, options.seed * 65_537 + comm.rank);
  using x = DeviceTensor.upload(engine.device, plan.dtype, tokens, plan.hidden, xHost);
  using out = DeviceTensor.alloc(engine.device, plan.dtype, tokens, plan.hidden);
  out.poison();
  const input = { x, ...routing };
  // Identity experts: the received rows go straight back.
  const times = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
    const { results: [r], handle } = await engine.dispatch([input]);
    await engine.combine(handle, [r.recv], { out: [out] });
    return () => handle.close();
  });
  const error = outputError(out, xHost, routing, plan.hidden, plan.topK);
  const dispatchTimes = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
    const { handle } = await engine.dispatch([input]);
    return () => handle.close();
  });
  return { ms: median(times), dispatchMs: median(dispatchTimes), error };
}

/** The worker: returns when rank 0 has written the result. */
export async function main(argv: readonly string[]): Promise<void> {
  const options = parseBenchArgs(argv);
  const env = readLaunchEnv();
  const scenarios = scenariosByName(options.scenarios);
  const plan = experts(256).byDevice().topK(8).dtype("bf16").hidden(7168).dedupe("node")
    .compile({ world: env.world, gpusPerNode: env.localWorld });
  const maxTokens = Math.max(...options.sizes);
  const heapBytes = Engine.heapBytes(plan, {
    maxTokens,
    combineWire: options.combineWire,
    rank: env.rank,
  });
  await using comm = await Communicator.fromEnv({ nccl: true, heapBytes });
  using timer = StreamTimer.create(comm);
  const rows: NodeBenchRow[] = [];
  for (const tokens of options.sizes) {
    // One engine per size, sized for it.
    using engine = await Engine.create(plan, comm, {
      maxTokens: tokens,
      combineWire: options.combineWire,
    });
    for (const scenario of scenarios) {
      const routing = scenario.route(plan, tokens, options.seed);
      const cell = await runCell(comm, engine, timer, plan, routing[comm.rank], tokens, options);
      const cells = await gather(comm, `nodes/${tokens}/${scenario.name}`, cell);
      if (comm.rank !== 0) continue;
      const row: NodeBenchRow = {
        tokens,
        scenario: scenario.name,
        traffic: nodeTraffic(plan, routing.map((r) => r.topkIdx)),
        nodeMs: Math.max(...cells.map((c) => c.ms)),
        nodeDispatchMs: Math.max(...cells.map((c) => c.dispatchMs)),
        error: Math.max(...cells.map((c) => c.error)),
      };
      rows.push(row);
      console.error(
        `bench: ${tokens} ${scenario.name}: node path ${row.nodeMs.toFixed(3)} ms ` +
          "(not a performance figure when ranks share a GPU or nodes are emulated)",
      );
    }
  }
  // GPUs in use and ranks per GPU, from the devices the ranks drive (one host).
  const devices = await gather(comm, "nodes/devices", comm.device);
  await comm.hostBarrier();
  if (comm.rank !== 0) return;
  const gpus = new Set(devices).size;
  const result: NodeBenchResult = {
    world: comm.world,
    gpus,
    ranksPerGpu: Math.ceil(comm.world / gpus),
    nodes: comm.world / env.localWorld,
    hidden: plan.hidden,
    experts: plan.experts,
    topK: plan.topK,
    combineWire: options.combineWire,
    iters: options.iters,
    rows,
  };
  const text = JSON.stringify(result, null, 2) + "\n";
  if (options.result !== undefined) await Deno.writeTextFile(options.result, text);
  else console.log(text);
}

if (import.meta.main) await main(Deno.args);
