/**
 * `deno task bench`: weft against the NCCL baseline on every GPU of this
 * machine, DeepSeek-V3 MoE shape, several batch sizes and routing scenarios,
 * both engines in the same run.
 *
 *   deno task bench [--gpus N] [--sizes 4096,8192,16384,32768]
 *                   [--scenarios uniform,zipf,local,hotmix] [--iters 10] [--warmup 3]
 *                   [--combine-wire f32|dtype] [--seed 1]
 *                   [--json FILE] [--svg FILE] [--md FILE]
 *   deno task bench --ranks-per-gpu K --emulate-nodes M [--gpus N] [--sizes 1024,4096] ...
 *
 * The driver launches bench/worker.ts once per GPU through lib/launch.ts,
 * reads rank 0's result, prints the markdown table on stdout (worker output
 * goes to stderr) and writes the files asked for.
 *
 * With `--ranks-per-gpu K > 1` or `--emulate-nodes M > 1` it runs the
 * emulated-node benchmark instead (bench/nodes.ts): N·K ranks as M nodes,
 * bytes per link class with dedupe `device` vs `node`, and the node path's
 * time, labelled as not a performance figure (default sizes 1024,4096).
 *
 * @module
 */
import { deviceCount } from "../lib/native/device.ts";
import { WeftError } from "../dsl/errors.ts";
import { SCENARIOS, scenariosByName } from "./scenarios.ts";
import { type BenchResult, markdownTable, toJson } from "./report.ts";
import { latencyChart } from "./chart.ts";
import { mainNodes, NODE_DEFAULT_SIZES } from "./nodes.ts";
import { launchWorkers } from "./launch_workers.ts";
import { decodeModeArgs, mainDecode } from "./decode.ts";

/** Everything one benchmark run is parameterised by. */
export interface BenchOptions {
  /** Processes (GPUs); undefined: every visible GPU. */
  readonly gpus?: number;
  /** Tokens per GPU, one batch size per entry. */
  readonly sizes: readonly number[];
  /** Scenario names (bench/scenarios.ts). */
  readonly scenarios: readonly string[];
  /** Timed iterations per engine and cell. */
  readonly iters: number;
  /** Untimed iterations before them. */
  readonly warmup: number;
  /** How weft's combine partials cross: "dtype" (the engine's default) or "f32" (one rounding). */
  readonly combineWire: "f32" | "dtype";
  /** Seed of routing and input data. */
  readonly seed: number;
  /** Output files. */
  readonly json?: string;
  readonly svg?: string;
  readonly md?: string;
  /** Worker only: where rank 0 writes its BenchResult. */
  readonly result?: string;
  /** Ranks per GPU (emulated-node mode, bench/nodes.ts). */
  readonly ranksPerGpu?: number;
  /** Emulated nodes the host's ranks form (emulated-node mode). */
  readonly emulateNodes?: number;
}

/** The default sizes: DESIGN.md's anchor table. */
export const DEFAULT_SIZES: readonly number[] = Object.freeze([4096, 8192, 16384, 32768]);
/** Fewer timed iterations than this makes the median too noisy to compare engines. */
export const MIN_RECOMMENDED_ITERS = 10;

const USAGE = `usage: deno task bench [--gpus N] [--sizes 4096,8192,16384,32768]
                       [--scenarios ${
  SCENARIOS.map((s) => s.name).join(",")
}] [--iters 10] [--warmup 3]
                       [--combine-wire f32|dtype] [--seed 1] [--json FILE] [--svg FILE] [--md FILE]
                       [--ranks-per-gpu K] [--emulate-nodes M]`;

function usageError(field: string, problem: string): never {
  throw new WeftError({ field, problem, fix: USAGE });
}

function positiveInt(field: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) {
    usageError(field, `must be an integer ≥ ${min}, got "${text}"`);
  }
  return n;
}

/**
 * Parses the benchmark's command line (the driver's and the worker's: the
 * driver forwards its options to every worker).
 *
 * @throws {WeftError} naming the option for an unknown option or a bad value.
 * @example
 * ```ts
 * import { parseBenchArgs } from "./bench.ts";
 * const o = parseBenchArgs(["--sizes", "4096,8192", "--scenarios=zipf"]);
 * console.assert(o.sizes[1] === 8192 && o.scenarios[0] === "zipf" && o.iters === 10);
 * const n = parseBenchArgs(["--ranks-per-gpu", "4", "--emulate-nodes", "2"]);
 * console.assert(n.ranksPerGpu === 4 && n.emulateNodes === 2 && n.sizes.join() === "1024,4096");
 * ```
 */
export function parseBenchArgs(argv: readonly string[]): BenchOptions {
  const values = new Map<string, string>();
  const known = [
    "gpus",
    "sizes",
    "scenarios",
    "iters",
    "warmup",
    "combine-wire",
    "seed",
    "json",
    "svg",
    "md",
    "result",
    "ranks-per-gpu",
    "emulate-nodes",
  ];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) usageError(arg, "is not an option");
    const eq = arg.indexOf("=");
    const name = eq >= 0 ? arg.slice(2, eq) : arg.slice(2);
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (!known.includes(name)) usageError(`--${name}`, "is not a bench option");
    if (value === undefined) usageError(`--${name}`, "needs a value");
    values.set(name, value);
  }
  const list = (name: string): string[] | undefined =>
    values.get(name)?.split(",").map((s) => s.trim()).filter((s) => s !== "");
  const ranksPerGpu = values.has("ranks-per-gpu")
    ? positiveInt("--ranks-per-gpu", values.get("ranks-per-gpu")!, 1)
    : undefined;
  const emulateNodes = values.has("emulate-nodes")
    ? positiveInt("--emulate-nodes", values.get("emulate-nodes")!, 1)
    : undefined;
  const nodeMode = (ranksPerGpu ?? 1) > 1 || (emulateNodes ?? 1) > 1;
  const sizes = list("sizes")?.map((s) => positiveInt("--sizes", s, 1)) ??
    [...(nodeMode ? NODE_DEFAULT_SIZES : DEFAULT_SIZES)];
  const scenarios = list("scenarios") ?? SCENARIOS.map((s) => s.name);
  scenariosByName(scenarios);
  if (sizes.length === 0) usageError("--sizes", "is empty");
  if (scenarios.length === 0) usageError("--scenarios", "is empty");
  const wire = values.get("combine-wire") ?? "dtype";
  if (wire !== "f32" && wire !== "dtype") {
    usageError("--combine-wire", `must be f32 or dtype, got "${wire}"`);
  }
  const gpus = values.get("gpus");
  const opt = (name: string): Record<string, string> =>
    values.has(name) ? { [name]: values.get(name)! } : {};
  return {
    ...(gpus !== undefined ? { gpus: positiveInt("--gpus", gpus, 1) } : {}),
    sizes,
    scenarios,
    iters: positiveInt("--iters", values.get("iters") ?? "10", 1),
    warmup: positiveInt("--warmup", values.get("warmup") ?? "3", 0),
    combineWire: wire,
    seed: positiveInt("--seed", values.get("seed") ?? "1", 0),
    ...opt("json"),
    ...opt("svg"),
    ...opt("md"),
    ...opt("result"),
    ...(ranksPerGpu !== undefined ? { ranksPerGpu } : {}),
    ...(emulateNodes !== undefined ? { emulateNodes } : {}),
  };
}

/** The worker's command line for `options`, with rank 0's result going to `result`. */
export function workerArgs(options: BenchOptions, result: string): string[] {
  return [
    "--sizes",
    options.sizes.join(","),
    "--scenarios",
    options.scenarios.join(","),
    "--iters",
    String(options.iters),
    "--warmup",
    String(options.warmup),
    "--combine-wire",
    options.combineWire,
    "--seed",
    String(options.seed),
    "--result",
    result,
  ];
}

/**
 * How many GPUs this machine has, or why there are none to benchmark on:
 * `{ gpus: 0, why }` when there is no GPU (nothing to measure: the Simulator
 * has no timing worth reporting), an exception for a GPU machine whose
 * library is missing or broken (that needs fixing, not skipping).
 */
export function detectGpus(): { gpus: number; why?: string } {
  try {
    return { gpus: deviceCount() };
  } catch (error) {
    if (!(error instanceof WeftError)) throw error;
    if (error.field === "device") return { gpus: 0, why: error.message };
    // No library on a machine with no NVIDIA driver either: nothing to build for.
    if (!hasNvidiaDevice()) return { gpus: 0, why: error.message };
    throw error;
  }
}

function hasNvidiaDevice(): boolean {
  try {
    Deno.statSync("/dev/nvidiactl");
    return true;
  } catch {
    return false;
  }
}

async function writeText(path: string, text: string): Promise<void> {
  await Deno.writeTextFile(path, text);
  console.error(`bench: wrote ${path}`);
}

/** The CLI: returns the exit code. */
export async function main(argv: readonly string[]): Promise<number> {
  // `--mode decode`: decode-mode latency (bench/decode.ts).
  let decodeArgs: string[] | undefined;
  try {
    decodeArgs = decodeModeArgs(argv);
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  }
  if (decodeArgs !== undefined) {
    const { gpus, why } = detectGpus();
    if (gpus === 0) {
      console.log(`bench: no GPU here, nothing to benchmark.\n  ${why ?? ""}`);
      return 0;
    }
    return await mainDecode(decodeArgs, gpus);
  }
  let options: BenchOptions;
  try {
    options = parseBenchArgs(argv);
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  }
  const { gpus: visible, why } = detectGpus();
  if (visible === 0) {
    console.log(
      "bench: no GPU here, nothing to benchmark (the Simulator's timings mean nothing for the " +
        `GPU engine).\n  ${why ?? ""}\n  Run \`deno task bench\` on a machine with NVIDIA GPUs.`,
    );
    return 0;
  }
  const gpus = options.gpus ?? visible;
  if (gpus > visible) {
    console.error(`bench: --gpus ${gpus} asked for, this machine has ${visible}`);
    return 2;
  }
  if ((options.ranksPerGpu ?? 1) > 1 || (options.emulateNodes ?? 1) > 1) {
    return await mainNodes(options, gpus, (path) => workerArgs(options, path));
  }
  if (options.iters < MIN_RECOMMENDED_ITERS) {
    console.error(
      `bench: --iters ${options.iters} < ${MIN_RECOMMENDED_ITERS}: medians will be noisy; ` +
        "do not compare engines on them",
    );
  }

  const result = await launchWorkers<BenchResult>(
    "./worker.ts",
    gpus,
    (path) => workerArgs(options, path),
  );
  if (typeof result === "number") return result;
  const md = markdownTable(result);
  console.log(md);
  if (options.json !== undefined) await writeText(options.json, toJson(result));
  if (options.svg !== undefined) await writeText(options.svg, latencyChart(result));
  if (options.md !== undefined) await writeText(options.md, md);
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));
