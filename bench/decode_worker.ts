/**
 * One rank of `deno task bench --mode decode` (bench/decode.ts starts it
 * through lib/dist/launch.ts). For each size: a DecodeEngine at capacity =
 * size, uniform routing (distinct random experts per token, never zero
 * rows), three graphs (dispatch, combine, both), each replayed warmup +
 * replays times, every replay timed alone with CUDA events after a host
 * barrier; per-rank median and p99, maximum over ranks; rank 0 writes the
 * rows.
 *
 * @module
 */
import { experts } from "../dsl/mod.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { readLaunchEnv } from "../lib/dist/env.ts";
import { DecodeEngine } from "../lib/gpu/decode.ts";
import { mulberry32 } from "../lib/io/routing.ts";
import { StreamTimer } from "./baseline.ts";
import { gather, randomBf16 } from "./rank_util.ts";
import { type DecodeBenchRow, type DecodeTiming, parseDecodeArgs } from "./decode.ts";

const options = parseDecodeArgs(Deno.args);
const env = readLaunchEnv();
const plan = experts(256).byDevice().topK(8).dtype("bf16").hidden(7168).compile({
  world: env.world,
});
const heapBytes = Math.max(
  ...options.sizes.map((s) =>
    DecodeEngine.footprint(plan, { capacity: s, combineWire: options.combineWire }, env.rank)
      .heapBytes
  ),
);
const comm = await Communicator.fromEnv({ heapBytes });
const timer = StreamTimer.create(comm);

function quantile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

// Times replays of `graph`. A combine needs a dispatch before it (the
// engine refuses two combines in a row), so a combine-only graph is timed
// after an untimed replay of `before`, queued ahead of the start event.
async function timeGraph(
  dec: DecodeEngine,
  graph: number,
  before?: number,
): Promise<DecodeTiming> {
  const ms: number[] = [];
  for (let i = 0; i < options.warmup + options.replays; i++) {
    await comm.barrier();
    if (before !== undefined) dec.replay(before);
    timer.start();
    dec.replay(graph);
    const t = await timer.stop();
    if (i >= options.warmup) ms.push(t);
  }
  await dec.check();
  ms.sort((a, b) => a - b);
  const mine = { medianUs: quantile(ms, 0.5) * 1000, p99Us: quantile(ms, 0.99) * 1000 };
  const all = await gather(comm, `decode-${dec.capacity}-${graph}`, mine);
  return {
    medianUs: Math.max(...all.map((a) => a.medianUs)),
    p99Us: Math.max(...all.map((a) => a.p99Us)),
  };
}

const rows: DecodeBenchRow[] = [];
for (const size of options.sizes) {
  using dec = await DecodeEngine.create(plan, comm, {
    capacity: size,
    combineWire: options.combineWire,
  });
  const rng = mulberry32(1000 * size + env.rank);
  const K = plan.topK;
  const topkIdx = new Int32Array(size * K);
  for (let t = 0; t < size; t++) {
    const pool = Array.from({ length: plan.experts }, (_, e) => e);
    for (let k = 0; k < K; k++) {
      topkIdx[t * K + k] = pool.splice(Math.floor(rng() * pool.length), 1)[0];
    }
  }
  const topkWeights = Float32Array.from({ length: size * K }, () => 0.05 + rng() / 8);
  dec.stage({ x: randomBf16(size * plan.hidden, 17 + env.rank), topkIdx, topkWeights });
  const gDispatch = dec.capture(undefined, "dispatch");
  const gCombine = dec.capture(undefined, "combine");
  const gBoth = dec.capture(undefined, "both");
  const dispatch = await timeGraph(dec, gDispatch);
  const combine = await timeGraph(dec, gCombine, gDispatch);
  const both = await timeGraph(dec, gBoth);
  rows.push({
    tokens: size,
    world: env.world,
    ranksPerGpu: options.ranksPerGpu,
    expertCapacity: dec.expertCapacity,
    heapBytes: dec.footprint.heapBytes,
    deviceBytes: dec.footprint.deviceBytes,
    dispatch,
    combine,
    both,
  });
  console.error(
    `[decode] rank ${env.rank} size ${size}: heap ${dec.footprint.heapBytes} B, device ` +
      `${dec.footprint.deviceBytes} B; dispatch ${dispatch.medianUs.toFixed(1)} µs, combine ` +
      `${combine.medianUs.toFixed(1)} µs, both ${
        both.medianUs.toFixed(1)
      } µs (median, max over ranks)`,
  );
}
if (env.rank === 0 && options.result !== undefined) {
  await Deno.writeTextFile(options.result, JSON.stringify(rows));
}
timer.close();
await comm.hostBarrier();
comm.close();
await comm.store.closed;
