/**
 * One rank of `deno task bench` (started by bench/bench.ts through
 * lib/launch.ts, or by hand: `deno task launch --gpus 4 bench/worker.ts
 * --result out.json`).
 *
 * For every (tokens per GPU, scenario) cell, in the same process and run:
 * weft's dispatch + combine with identity experts (y = recv), a cached
 * re-dispatch through the handle, the same with dispatch quantized to E4M3,
 * and the NCCL baseline's dispatch + combine. Both engines take their
 * routing from the same device tensors (i32 ids, f32 weights), where a
 * router on the GPU leaves it; one more weft run takes it from host arrays.
 * Each is timed with CUDA events on the communicator's stream after warm-up,
 * each rank takes its median, and rank 0 keeps the maximum over ranks, as
 * anchors/moe_baseline.py does. Rank 0 also measures the GPU→GPU copy
 * ceiling and writes the {@link BenchResult}.
 *
 * @module
 */
import { experts, Plan } from "../dsl/mod.ts";
import type { PlanSpec } from "../dsl/types.ts";
import { DTYPE_BYTES } from "../dsl/types.ts";
import { Communicator } from "../lib/dist/communicator.ts";
import { DeviceTensor } from "../lib/gpu/device_tensor.ts";
import { quantizeRows } from "../lib/core/fp8.ts";
import { Engine } from "../lib/gpu/engine.ts";
import type { RankInput, Tensor } from "../lib/core/engine_api.ts";
import { readLaunchEnv } from "../lib/dist/env.ts";
import { copyCeilingMs, NcclBaseline, StreamTimer } from "./baseline.ts";
import {
  CHECK_ROWS,
  CHECK_TOLERANCE,
  gather,
  outputError,
  randomBf16,
  timeRuns,
} from "./rank_util.ts";
import { type BenchOptions, parseBenchArgs } from "./bench.ts";
import type { BenchResult, BenchRow, CopyCeiling, CopyCeilingPair } from "./report.ts";
import { median } from "./report.ts";
import { batchTraffic, type Scenario, scenariosByName } from "./scenarios.ts";

/** DeepSeek-V3's MoE layer: the shape DESIGN.md's anchors were measured at. */
const SHAPE = Object.freeze({ experts: 256, topK: 8, hidden: 7168, dtype: "bf16" as const });
/** Bytes per copy of the copy-ceiling measurement (DESIGN.md's ceiling table uses 1 GiB). */
const COPY_CEILING_BYTES = 2 ** 30;
/** Headroom above the copy size: the communicator keeps the front of its heap for itself. */
const HEAP_HEADROOM_BYTES = 2 ** 20;

/** What a rank reports for one cell. */
interface RankCell {
  readonly weftMs: number;
  readonly weftE4m3Ms: number;
  readonly weftE4m3Error: number;
  readonly weftE4m3InPlaceMs: number;
  readonly weftDispatchMs: number;
  readonly weftCopyInMs: number;
  readonly baselineMs: number;
  readonly redispatchMs: number;
  readonly weftError: number;
  readonly baselineError: number;
}

function log(rank: number, text: string): void {
  if (rank === 0) console.error(`bench: ${text}`);
}

/**
 * The copy ceiling, one source rank at a time so that no two copies share a
 * link: each rank copies to each peer while the others wait in a host barrier.
 */
async function measureCopyCeiling(comm: Communicator, iters: number): Promise<CopyCeiling | null> {
  if (comm.world < 2) return null;
  // A heap smaller than the copy asks for (a small plan's heap) gets a smaller copy.
  const bytes = Math.min(
    COPY_CEILING_BYTES,
    Math.floor((comm.heapBytes - HEAP_HEADROOM_BYTES) / HEAP_HEADROOM_BYTES) * HEAP_HEADROOM_BYTES,
  );
  if (bytes <= 0) return null;
  const mine: CopyCeilingPair[] = [];
  for (let src = 0; src < comm.world; src++) {
    await comm.hostBarrier();
    if (src !== comm.rank) continue;
    for (let dst = 0; dst < comm.world; dst++) {
      if (dst === src) continue;
      const ms = await copyCeilingMs(comm, dst, bytes, iters);
      mine.push({ src, dst, gbps: bytes / (ms * 1e-3) / 1e9 });
    }
  }
  await comm.hostBarrier();
  const pairs = (await gather(comm, "copy-ceiling", mine)).flat();
  return { bytes, pairs, gbps: Math.max(...pairs.map((p) => p.gbps)) };
}

/** A short device description for the report ("4× NVIDIA H200"), from nvidia-smi when present. */
async function describeDevice(device: number, world: number): Promise<string> {
  try {
    const { success, stdout } = await new Deno.Command("nvidia-smi", {
      args: ["--query-gpu=name", "--format=csv,noheader", "-i", String(device)],
      stdout: "piped",
      stderr: "null",
    }).output();
    const name = new TextDecoder().decode(stdout).trim();
    if (success && name !== "") return `${world}× ${name}`;
  } catch { /* no nvidia-smi: fall back below */ }
  return `${world}× CUDA GPU`;
}

/** Runs one batch size: every scenario, both engines; returns rank 0's rows (others: empty). */
async function runSize(
  comm: Communicator,
  plan: PlanSpec,
  planE4m3: PlanSpec,
  tokens: number,
  scenarios: readonly Scenario[],
  options: BenchOptions,
  timer: StreamTimer,
): Promise<BenchRow[]> {
  const { rank, device } = comm;
  const { hidden, topK, dtype } = plan;
  const wireRowBytes = hidden * (options.combineWire === "f32" ? 4 : DTYPE_BYTES[dtype]);
  const rows: BenchRow[] = [];
  // One engine and baseline per size, sized for it, so memory goes back between sizes.
  using engine = await Engine.create(plan, comm, {
    maxTokens: tokens,
    combineWire: options.combineWire,
  });
  // The same shape with dispatch quantized to E4M3 (its own heap regions are
  // reused by whichever engine runs: every call ends with a barrier).
  using engineE4m3 = await Engine.create(planE4m3, comm, {
    maxTokens: tokens,
    combineWire: options.combineWire,
  });
  using baseline = NcclBaseline.create(comm, plan, { maxTokens: tokens });
  const xHost = randomBf16(tokens * hidden, options.seed * 65_537 + rank);
  using x = DeviceTensor.upload(device, dtype, tokens, hidden, xHost);
  const xQuantized = quantizeRows(xHost, dtype, hidden);
  // weft's input written in place, where the peers read it (no staging copy).
  const xInPlace = engine.inputRows(tokens);
  using weftOut = DeviceTensor.alloc(device, dtype, tokens, hidden);
  using baselineOut = DeviceTensor.alloc(device, dtype, tokens, hidden);

  // Timed runs of one dispatch + combine into weftOut; y is the experts'
  // outputs (by default the received rows: identity experts).
  const timeShuffle = (eng: Engine, input: RankInput, y?: Tensor) =>
    timeRuns(comm, timer, options.warmup, options.iters, async () => {
      const { results: [result], handle } = await eng.dispatch([input]);
      await eng.combine(handle, [y ?? result.recv], { out: [weftOut] });
      return () => handle.close();
    });

  for (const scenario of scenarios) {
    const routing = scenario.route(plan, tokens, options.seed);
    const mine = routing[rank];
    // The routing on the device, where a router leaves it: ids as i32, weights
    // as f32. Both engines read these same tensors, so they start from the
    // same place.
    using idxDevice = DeviceTensor.upload(device, "i32", tokens, topK, mine.topkIdx);
    using weightsDevice = DeviceTensor.upload(device, "f32", tokens, topK, mine.topkWeights);
    const routingDevice = { topkIdx: idxDevice, topkWeights: weightsDevice };
    // Inputs in place, as a model that writes them where weft reads them:
    // x in the heap, the routing in its device tensors.
    const input = { x: xInPlace, ...routingDevice };
    // Rewritten every scenario: the E4M3 engine shares the heap.
    xInPlace.write(xHost);

    weftOut.poison();
    // The last run's handle stays open for the re-dispatch runs.
    let kept: Awaited<ReturnType<Engine["dispatch"]>>["handle"] | undefined;
    const weftTimes = await timeRuns(comm, timer, options.warmup, options.iters, async (last) => {
      const { results: [result], handle } = await engine.dispatch([input]);
      // Identity experts: the received rows go straight back.
      await engine.combine(handle, [result.recv], { out: [weftOut] });
      return () => {
        if (last) kept = handle;
        else handle.close();
      };
    });
    // The same with the inputs where a host-side caller has them: x in a
    // tensor of its own (copied into the heap by dispatch), the routing in
    // plain host arrays (staged through page-locked memory by dispatch).
    const copyInTimes = await timeShuffle(engine, { x, ...mine });
    // The layout step alone (routing copied from its device tensors, checked,
    // indexed; no rows moved).
    const layoutTimes = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
      const planned = await engine.layout([routingDevice]);
      return () => planned.close();
    });
    // Dispatch alone, in runs of its own: a timer between dispatch and combine
    // would put one more host round trip inside the dispatch + combine window.
    const dispatchTimes = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
      const { handle } = await engine.dispatch([input]);
      return () => handle.close();
    });
    const weftError = outputError(weftOut, xHost, mine, hidden, topK);

    const handle = kept!;
    const redispatchTimes = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
      await engine.redispatch(handle, [xInPlace]);
      return () => {};
    });

    // E4M3 dispatch + combine. The experts' outputs are the exact bf16 rows
    // (the bf16 handle's recv: same routing, same receive layout), so the
    // output check is the same as weft's.
    const keptRecv = (await engine.redispatch(handle, [xInPlace])).results[0].recv;
    const xE4m3 = engineE4m3.inputRows(tokens);
    xE4m3.write(xHost);
    weftOut.poison();
    const e4m3Times = await timeShuffle(engineE4m3, { x: xE4m3, ...routingDevice }, keptRecv);
    const weftE4m3Error = outputError(weftOut, xHost, mine, hidden, topK);
    // The same rows quantized beforehand, written where the peers read them.
    const qIn = engineE4m3.inputQuantizedRows(tokens);
    qIn.q.write(xQuantized.q);
    qIn.scales.write(xQuantized.scales);
    weftOut.poison();
    const e4m3InPlaceTimes = await timeShuffle(engineE4m3, { x: qIn, ...routingDevice }, keptRecv);
    const weftE4m3InPlaceError = outputError(weftOut, xHost, mine, hidden, topK);
    handle.close();

    baselineOut.poison();
    const baselineTimes = await timeRuns(comm, timer, options.warmup, options.iters, async () => {
      await baseline.run(x, idxDevice, weightsDevice, baselineOut);
      return () => {};
    });
    const baselineError = outputError(baselineOut, xHost, mine, hidden, topK);

    const cell: RankCell = {
      weftMs: median(weftTimes),
      weftE4m3Ms: median(e4m3Times),
      weftE4m3Error: Math.max(weftE4m3Error, weftE4m3InPlaceError),
      weftE4m3InPlaceMs: median(e4m3InPlaceTimes),
      weftDispatchMs: median(dispatchTimes),
      weftCopyInMs: median(copyInTimes),
      baselineMs: median(baselineTimes),
      redispatchMs: median(redispatchTimes),
      weftError,
      baselineError,
    };
    const cells = await gather(comm, `${tokens}/${scenario.name}`, cell);
    if (rank !== 0) continue;

    const traffic = batchTraffic(plan, routing.map((r) => r.topkIdx), wireRowBytes);
    const max = (xs: readonly number[]): number => Math.max(...xs);
    const row: BenchRow = {
      tokens,
      scenario: scenario.name,
      weftMs: max(cells.map((c) => c.weftMs)),
      weftDispatchMs: max(cells.map((c) => c.weftDispatchMs)),
      weftCopyInMs: max(cells.map((c) => c.weftCopyInMs)),
      weftE4m3Ms: max(cells.map((c) => c.weftE4m3Ms)),
      weftE4m3Error: max(cells.map((c) => c.weftE4m3Error)),
      weftE4m3InPlaceMs: max(cells.map((c) => c.weftE4m3InPlaceMs)),
      baselineMs: max(cells.map((c) => c.baselineMs)),
      redispatchMs: max(cells.map((c) => c.redispatchMs)),
      layoutMs: median(layoutTimes),
      weftDispatchRemoteBytes: max(traffic.weftDispatchOut),
      weftOutgoingRemoteBytes: max(
        traffic.weftDispatchOut.map((b, r) => b + traffic.weftCombineOut[r]),
      ),
      baselineDispatchRemoteBytes: max(traffic.baselineDispatchOut),
      weftMsPerRank: cells.map((c) => c.weftMs),
      baselineMsPerRank: cells.map((c) => c.baselineMs),
      links: traffic.links,
      weftError: max(cells.map((c) => c.weftError)),
      baselineError: max(cells.map((c) => c.baselineError)),
    };
    rows.push(row);
    log(
      rank,
      `${tokens} ${scenario.name}: weft ${row.weftMs.toFixed(3)} ms (dispatch ` +
        `${row.weftDispatchMs!.toFixed(3)}; inputs copied in ${
          row.weftCopyInMs!.toFixed(3)
        }; e4m3 dispatch ${row.weftE4m3Ms!.toFixed(3)}, pre-quantized in place ${
          row.weftE4m3InPlaceMs!.toFixed(3)
        }), baseline ${row.baselineMs.toFixed(3)} ms, ` +
        `redispatch ${row.redispatchMs!.toFixed(3)} ms, check ${
          row.weftError!.toExponential(1)
        } / ` +
        `${row.baselineError!.toExponential(1)}`,
    );
  }
  return rows;
}

/** The notes that belong under the table for this run. */
function runNotes(
  rows: readonly BenchRow[],
  options: BenchOptions,
  ceiling: CopyCeiling | null,
): string[] {
  const notes = [
    "layout ms: Engine.layout alone (routing copied from its device tensors, checked on the device, " +
    "receive rows generated, outputs allocated; no rows moved), a part of weft ms.",
    "weft ms is the Engine API end to end, from the call of dispatch to the end of combine's GPU work: the " +
    "routing copied from device tensors, layout, dispatch, and combine into a preallocated output " +
    "(DispatchResult's index arrays stay on the device until read), with the inputs where a model on the " +
    "GPU has them: x written in place in the engine's heap (Engine.inputRows, where the peers read it), " +
    "the routing as the router leaves it, an i32 topkIdx and an f32 topkWeights DeviceTensor, the same " +
    "tensors the baseline reads. 'inputs copied in' passes x in a tensor of its own, which dispatch first " +
    "copies into the heap, and the routing in plain host arrays (Int32Array, Float32Array), which dispatch " +
    "stages through page-locked host memory. " +
    "The baseline's inputs (x, topkIdx, topkWeights) sit on the device before timing.",
    `weft remote MB/rank/dir: dispatch bytes one rank sends to other GPUs (one row per (token, destination ` +
    `GPU)), max over ranks; achieved GB/s counts dispatch + combine outgoing bytes (combine partials in ` +
    `${options.combineWire === "f32" ? "f32, 4 B/element" : "the row dtype"}) over weft ms.`,
    'weft ms, e4m3 dispatch: the same run with the pattern\'s .quantize("e4m3"): each row crosses as ' +
    "E4M3 bytes + one f32 scale per 128 elements (7392 B instead of 14336), lands as e4m3 rows and scales; " +
    "combine unchanged (bf16 expert outputs). Different work from the bf16 rows, so it has no speedup " +
    "column; its output is checked like weft's. 'e4m3, pre-quantized in place': the same rows quantized " +
    "before timing and written to Engine.inputQuantizedRows, as a model whose kernel quantizes its output " +
    "would: no staging copy and no quantize pass inside dispatch.",
  ];
  if (ceiling === null) notes.push("copy ceiling: not measured (one GPU: no peer to copy to).");
  const errors = (r: BenchRow): number[] => [
    r.weftError ?? 0,
    r.baselineError ?? 0,
    r.weftE4m3Error ?? 0,
  ];
  const failed = rows.filter((r) => !errors(r).every((e) => e <= CHECK_TOLERANCE));
  const worst = Math.max(0, ...rows.flatMap(errors));
  notes.push(
    failed.length === 0
      ? `output check passed: out ≈ x·Σw on ${CHECK_ROWS} sampled rows per rank, every engine, every cell ` +
        `(worst relative L2 error ${worst.toExponential(1)} ≤ ${CHECK_TOLERANCE}).`
      : `OUTPUT CHECK FAILED in ${failed.map((r) => `${r.tokens}/${r.scenario}`).join(", ")} ` +
        `(relative L2 error > ${CHECK_TOLERANCE}): those timings are of a wrong result.`,
  );
  return notes;
}

/** The worker: returns when rank 0 has written the result. */
export async function main(argv: readonly string[]): Promise<void> {
  const options = parseBenchArgs(argv);
  const env = readLaunchEnv();
  const scenarios = scenariosByName(options.scenarios);
  const date = new Date().toISOString();
  const plan = experts(SHAPE.experts).byDevice().topK(SHAPE.topK).dtype(SHAPE.dtype).hidden(
    SHAPE.hidden,
  )
    .compile({ world: env.world, gpusPerNode: env.localWorld });
  const planE4m3 = Plan.compile({ ...plan.pattern, quantize: "e4m3" }, {
    world: env.world,
    gpusPerNode: env.localWorld,
  });
  const maxTokens = Math.max(...options.sizes);
  // The heap must hold the largest size's engine regions and the copy-ceiling source.
  const heapOptions = { maxTokens, combineWire: options.combineWire, rank: env.rank };
  const engineHeap = Math.max(
    Engine.heapBytes(plan, heapOptions),
    Engine.heapBytes(planE4m3, heapOptions),
  );
  const heapBytes = engineHeap === undefined
    ? undefined
    : Math.max(engineHeap, COPY_CEILING_BYTES + HEAP_HEADROOM_BYTES);
  await using comm = await Communicator.fromEnv({
    nccl: true,
    ...(heapBytes !== undefined ? { heapBytes } : {}),
  });
  log(comm.rank, `world ${comm.world}, heap ${(comm.heapBytes / 2 ** 30).toFixed(2)} GiB per rank`);
  using timer = StreamTimer.create(comm);

  const ceiling = await measureCopyCeiling(comm, Math.max(options.iters, 10));
  if (ceiling !== null) {
    log(comm.rank, `copy ceiling ${ceiling.gbps.toFixed(1)} GB/s one-way (fastest pair)`);
  }

  const rows: BenchRow[] = [];
  for (const tokens of options.sizes) {
    rows.push(...await runSize(comm, plan, planE4m3, tokens, scenarios, options, timer));
  }
  await comm.hostBarrier();

  if (comm.rank !== 0) return;
  const result: BenchResult = {
    device: await describeDevice(comm.device, comm.world),
    date,
    world: comm.world,
    hidden: plan.hidden,
    experts: plan.experts,
    topK: plan.topK,
    dtype: plan.dtype,
    iters: options.iters,
    warmup: options.warmup,
    combineWire: options.combineWire,
    copyCeiling: ceiling,
    rows,
    notes: runNotes(rows, options, ceiling),
  };
  const path = options.result;
  const text = JSON.stringify(result, null, 2) + "\n";
  if (path !== undefined) await Deno.writeTextFile(path, text);
  else console.log(text);
}

if (import.meta.main) await main(Deno.args);
