/**
 * weft inside a Deno Web Streams pipeline: a TransformStream that takes one
 * MoE batch (every rank's tokens and routing), dispatches it, applies a
 * function to each expert's rows, and combines the results back to each
 * token's home.
 *
 *   deno run --allow-all examples/pipeline.ts [--batches N] [--tokens N] [--simulator]
 *
 * With GPUs and a built engine it relaunches itself with one process per GPU
 * and runs the same stage on `Engine`, each process feeding its own rank's
 * share of every batch; otherwise it runs on the CPU Simulator, every rank in
 * this process. Both print the same norms (same seeds, same reduction order).
 */
import { parseArgs } from "node:util";
import { fileURLToPath } from "node:url";
import {
  availableGpus,
  Communicator,
  Engine,
  experts,
  launch,
  type PlanSpec,
  type RankInput,
  type ShuffleEngine,
  Simulator,
  zipf,
} from "../mod.ts";

/** One batch: one input per rank. */
export interface MoeBatch {
  readonly step: number;
  readonly inputs: readonly RankInput[];
}

/** One batch's outputs: one [T × H] f32 array per rank. */
export interface MoeOutput {
  readonly step: number;
  readonly outputs: readonly Float32Array[];
  readonly rowsPerExpert: readonly Int32Array[];
}

/** An expert's computation on its [rows × H] f32 input, in place. */
export type ExpertFn = (
  rank: number,
  localExpert: number,
  rows: Float32Array,
  hidden: number,
) => void;

/**
 * A pipeline stage: dispatch → expert functions → combine, one batch per chunk.
 *
 * @example
 * ```ts
 * import { experts, Simulator } from "../mod.ts";
 * import { moeStage } from "./pipeline.ts";
 * const plan = experts(4).byDevice().topK(1).dtype("f32").hidden(8).compile({ world: 2 });
 * const stage = moeStage(new Simulator(plan), plan, () => {});
 * console.assert(stage.readable instanceof ReadableStream);
 * ```
 */
export function moeStage(
  engine: ShuffleEngine,
  plan: PlanSpec,
  expert: ExpertFn,
): TransformStream<MoeBatch, MoeOutput> {
  if (plan.dtype !== "f32") throw new Error("this example's expert functions work on f32 plans");
  return new TransformStream({
    async transform(batch, controller) {
      const { results, handle } = await engine.dispatch(batch.inputs);
      try {
        // Expert-major receive order: each local expert's rows are one slice.
        const ys = await Promise.all(results.map(async (r) => {
          const y = (await r.recv.read()).slice() as Float32Array;
          let row = 0;
          r.expertCounts.forEach((n, e) => {
            expert(r.rank, e, y.subarray(row * plan.hidden, (row + n) * plan.hidden), plan.hidden);
            row += n;
          });
          return y;
        }));
        const outs = await engine.combine(handle, ys);
        controller.enqueue({
          step: batch.step,
          outputs: await Promise.all(outs.map(async (o) => (await o.read()) as Float32Array)),
          rowsPerExpert: results.map((r) => r.expertCounts),
        });
      } finally {
        handle.close();
      }
    },
  });
}

/** Batches with Zipf-skewed routing (a few popular experts) for the given ranks. */
function batchSource(plan: PlanSpec, batches: number, tokens: number, ranks: readonly number[]) {
  return new ReadableStream<MoeBatch>({
    start(controller) {
      for (let step = 0; step < batches; step++) {
        const routing = zipf(plan, { tokens, seed: step + 1, s: 1.1 });
        controller.enqueue({
          step,
          inputs: ranks.map((rank) => ({
            ...routing[rank],
            x: Float32Array.from(
              { length: tokens * plan.hidden },
              (_, i) => Math.sin(i + step + rank) + 1.5,
            ),
          })),
        });
      }
      controller.close();
    },
  });
}

/** Runs the pipeline on `engine`; prints from the engine's first rank. */
async function run(
  engine: ShuffleEngine,
  plan: PlanSpec,
  batches: number,
  tokens: number,
  where: string,
) {
  // Expert e scales its rows by (1 + e/100): a stand-in for an FFN.
  const stage = moeStage(engine, plan, (_rank, e, rows) => {
    for (let i = 0; i < rows.length; i++) rows[i] *= 1 + e / 100;
  });
  const print = engine.ranks[0] === 0;
  const t0 = performance.now();
  for await (const out of batchSource(plan, batches, tokens, engine.ranks).pipeThrough(stage)) {
    const busiest = Math.max(...out.rowsPerExpert[0]);
    const norm = Math.sqrt(out.outputs[0].reduce((s, v) => s + v * v, 0));
    if (print) {
      console.log(
        `batch ${out.step}: busiest expert on rank 0 ${busiest} rows, ‖out of rank 0‖ = ${
          norm.toFixed(4)
        }`,
      );
    }
  }
  if (print) {
    console.log(`${batches} batches in ${(performance.now() - t0).toFixed(0)} ms on ${where}`);
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      batches: { type: "string", default: "4" },
      tokens: { type: "string", default: "256" },
      simulator: { type: "boolean", default: false },
    },
  });
  const batches = Number(values.batches), tokens = Number(values.tokens);
  const pattern = experts(64).byDevice().topK(4).dtype("f32").hidden(256);
  if (Deno.env.get("RANK") !== undefined) {
    const plan = pattern.compile({ world: Number(Deno.env.get("WORLD_SIZE")) });
    await using comm = await Communicator.fromEnv({
      heapBytes: Engine.heapBytes(plan, { maxTokens: tokens }),
    });
    using engine = await Engine.create(plan, comm, { maxTokens: tokens });
    await run(engine, plan, batches, tokens, `the GPU engine (${plan.world} GPUs)`);
  } else {
    const gpus = values.simulator ? 0 : availableGpus();
    if (gpus >= 2) {
      const result = await launch({
        script: fileURLToPath(import.meta.url),
        args: Deno.args,
        gpus,
      });
      if (result.code !== 0) console.error(result.message);
      Deno.exit(result.code);
    }
    const plan = pattern.compile({ world: 4 });
    using sim = new Simulator(plan);
    await run(sim, plan, batches, tokens, "the CPU Simulator (4 ranks)");
  }
}
