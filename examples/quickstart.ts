/**
 * `deno task demo`: one DeepSeek-V3-shaped MoE shuffle, end to end.
 *
 * Builds `experts(256).byDevice().topK(8)` for hidden 7168 bf16, routes a
 * batch uniformly, dispatches it, runs identity experts, combines, and
 * prints where the bytes went. On a machine with GPUs and a built engine
 * (`deno task build`) it relaunches itself with one process per GPU and runs
 * on the GPU engine; otherwise it runs 4 simulated ranks on the CPU
 * Simulator. With --e4m3 the pattern quantizes dispatch to FP8
 * (`.quantize("e4m3")`): the identity experts then dequantize what they
 * receive (bytes · scales) and return bf16, as FP8 experts would.
 *
 *   deno task demo [--tokens N] [--ranks N] [--simulator] [--e4m3]
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import {
  availableGpus,
  Communicator,
  dequantizeRows,
  DeviceTensor,
  type DispatchResult,
  Engine,
  experts,
  f32ToBf16,
  formatLinks,
  formatLoad,
  type HostRows,
  launch,
  type Plan,
  type PlanSpec,
  QUANT_BLOCK,
  type RankInput,
  Simulator,
  type Tensor,
  trafficTotals,
  uniform,
} from "../mod.ts";

const { values } = parseArgs({
  args: Deno.args,
  options: {
    tokens: { type: "string" },
    ranks: { type: "string", default: "4" },
    simulator: { type: "boolean", default: false },
    e4m3: { type: "boolean", default: false },
  },
});

const HIDDEN = 7168;
const pattern = experts(256).byDevice().topK(8).dtype("bf16").hidden(HIDDEN)
  .quantize(values.e4m3 ? "e4m3" : "none");

/**
 * Identity experts: the received rows as bf16 outputs. Quantized rows are
 * dequantized first (byte · block scale); plain rows go back as they are.
 */
async function identityExperts(r: DispatchResult): Promise<HostRows | Tensor> {
  if (r.recvScales === undefined) return r.recv;
  const q = await r.recv.read() as Uint8Array;
  const scales = await r.recvScales.read() as Float32Array;
  // In chunks of rows, so no f32 copy of the whole buffer is ever held.
  const out = new Uint16Array(q.length);
  const CHUNK = 256, S = HIDDEN / QUANT_BLOCK;
  const f32 = new Float32Array(CHUNK * HIDDEN);
  for (let row = 0; row < r.recv.rows; row += CHUNK) {
    const n = Math.min(CHUNK, r.recv.rows - row);
    const part = dequantizeRows(
      {
        q: q.subarray(row * HIDDEN, (row + n) * HIDDEN),
        scales: scales.subarray(row * S, (row + n) * S),
      },
      HIDDEN,
      f32.subarray(0, n * HIDDEN),
    );
    f32ToBf16(part, out.subarray(row * HIDDEN, (row + n) * HIDDEN));
  }
  return out;
}

/** Random bf16 rows (never zeros: unwritten outputs must not look right). */
function randomRows(tokens: number, seed: number): Uint16Array {
  const f = new Float32Array(tokens * HIDDEN);
  let s = seed >>> 0;
  for (let i = 0; i < f.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    f[i] = (s / 2 ** 32) * 2 - 1 || 0.5;
  }
  return f32ToBf16(f);
}

function inputsFor(plan: PlanSpec, tokens: number): RankInput[] {
  const routing = uniform(plan, { tokens, seed: 7 });
  return routing.map((r, rank) => ({ ...r, x: randomRows(tokens, 1000 + rank) }));
}

function report(plan: Plan, engine: string, tokens: number, ms: number): void {
  const layout = plan.layout(uniform(plan, { tokens, seed: 7 }).map((r) => r.topkIdx));
  const t = trafficTotals(layout);
  console.log(`weft demo — ${engine}`);
  console.log(
    `pattern: experts(256).byDevice().topK(8)${
      plan.quantize ? `.quantize("${plan.quantize}")` : ""
    }, hidden ${HIDDEN} bf16, ${plan.world} ranks × ${tokens} tokens, uniform routing\n`,
  );
  console.log("Traffic per link (dispatch direction; combine sends the same rows back):\n");
  console.log(formatLinks(layout));
  console.log(
    `\ndedupe "${plan.dedupe}" moves ${(t.bytes / 1e6).toFixed(0)} MB instead of ${
      (t.bytesNoDedupe / 1e6).toFixed(0)
    } MB ` +
      `(${(t.bytesNoDedupe / Math.max(1, t.bytes)).toFixed(2)}× fewer bytes)\n`,
  );
  console.log("Load per rank:\n");
  console.log(formatLoad(layout));
  console.log(
    `\ndispatch + combine: ${ms.toFixed(2)} ms (${engine}, wall clock${
      engine.startsWith("GPU") ? ", median of 5 after a warm-up" : ""
    })`,
  );
}

async function runSimulator(): Promise<void> {
  const ranks = Number(values.ranks);
  const tokens = Number(values.tokens ?? 4096);
  const plan = pattern.compile({ world: ranks });
  const inputs = inputsFor(plan, tokens);
  using sim = new Simulator(plan);
  const t0 = performance.now();
  const { results, handle } = await sim.dispatch(inputs);
  const t1 = performance.now();
  // Identity experts: each expert returns its input rows (not timed).
  const ys = await Promise.all(results.map(identityExperts));
  const t2 = performance.now();
  const outs = await sim.combine(handle, ys);
  const ms = (t1 - t0) + (performance.now() - t2);
  handle.close();
  if (outs.length !== ranks) throw new Error("combine returned the wrong number of outputs");
  report(plan, `CPU Simulator (${ranks} simulated ranks)`, tokens, ms);
}

async function runGpuRank(): Promise<void> {
  const tokens = Number(values.tokens ?? 16384);
  const world = Number(Deno.env.get("WORLD_SIZE"));
  const plan = pattern.compile({ world });
  const heapBytes = Engine.heapBytes(plan, { maxTokens: tokens });
  await using comm = await Communicator.fromEnv({ heapBytes });
  using engine = await Engine.create(plan, comm, { maxTokens: tokens });
  const mine = inputsFor(plan, tokens)[comm.rank];
  // Activations live on the GPU, as in a model: upload once, reuse the output.
  using x = DeviceTensor.upload(
    engine.device,
    plan.dtype,
    tokens,
    plan.hidden,
    mine.x as Uint16Array,
  );
  using out = DeviceTensor.alloc(engine.device, plan.dtype, tokens, plan.hidden);
  // Quantized: the experts' bf16 outputs, made once from a first dispatch
  // (same routing every iteration, so the same receive layout).
  let y: HostRows | Tensor | undefined;
  if (plan.quantize !== undefined) {
    const { results: [r], handle } = await engine.dispatch([{ ...mine, x }]);
    const rows = await identityExperts(r);
    y = DeviceTensor.upload(engine.device, plan.dtype, r.recv.rows, plan.hidden, rows as HostRows);
    handle.close();
  }
  const times: number[] = [];
  for (let i = 0; i < 6; i++) { // the first call pays for pool growth and module load
    await comm.barrier();
    const t0 = performance.now();
    const { results: [r], handle } = await engine.dispatch([{ ...mine, x }]);
    await engine.combine(handle, [y ?? r.recv], { out: [out] });
    // combine returns with its work queued on the GPU: wait for it before
    // reading the clock, so the time is the work's, not the enqueue's.
    await engine.synchronize();
    times.push(performance.now() - t0);
    handle.close();
  }
  if (y instanceof DeviceTensor) y.close();
  const ms = times.slice(1).sort((a, b) => a - b)[2];
  if (comm.rank === 0) report(plan, `GPU engine (${world} GPUs)`, tokens, ms);
}

if (Deno.env.get("RANK") !== undefined) {
  await runGpuRank();
} else {
  const gpus = values.simulator ? 0 : availableGpus();
  if (gpus >= 2) {
    const result = await launch({ script: fileURLToPath(import.meta.url), args: Deno.args, gpus });
    if (result.code !== 0) console.error(result.message);
    Deno.exit(result.code);
  }
  await runSimulator();
}
