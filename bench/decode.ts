/**
 * `deno task bench --mode decode`: decode-mode latency (lib/gpu/decode.ts)
 * for small batches, DeepSeek-V3 MoE shape (256 experts, top-8, bf16,
 * hidden 7168, uniform routing). For every size (tokens per rank): the exact
 * memory (heap and private device bytes) at capacity = size and the default
 * expert capacity (never overflows), then dispatch alone, combine alone
 * (identity expert) and both, each captured once as a CUDA graph and timed
 * per replay with CUDA events on the communicator's stream after a barrier:
 * median and p99 per rank, the maximum over ranks reported.
 *
 *   deno task bench --mode decode [--gpus N] [--ranks-per-gpu K]
 *                   [--sizes 1,8,32,128,256] [--replays 200] [--warmup 20]
 *                   [--combine-wire dtype|f32] [--md FILE] [--json FILE]
 *
 * Rows where ranks share a GPU (world 1, or --ranks-per-gpu > 1) are
 * labelled "not a performance figure".
 *
 * @module
 */
import { WeftError } from "../dsl/errors.ts";
import { launchWorkers } from "./launch_workers.ts";

/** Options of the decode benchmark (driver and worker). */
export interface DecodeBenchOptions {
  readonly gpus?: number;
  readonly ranksPerGpu: number;
  readonly sizes: readonly number[];
  readonly replays: number;
  readonly warmup: number;
  readonly combineWire: "dtype" | "f32";
  readonly md?: string;
  readonly json?: string;
  /** Worker only: where rank 0 writes the result. */
  readonly result?: string;
}

/** Median and p99 of one part, µs, maximum over ranks. */
export interface DecodeTiming {
  readonly medianUs: number;
  readonly p99Us: number;
}

/** One size's row. */
export interface DecodeBenchRow {
  readonly tokens: number;
  readonly world: number;
  readonly ranksPerGpu: number;
  readonly expertCapacity: number;
  readonly heapBytes: number;
  readonly deviceBytes: number;
  readonly dispatch: DecodeTiming;
  readonly combine: DecodeTiming;
  readonly both: DecodeTiming;
}

const USAGE = "usage: deno task bench --mode decode [--gpus N] [--ranks-per-gpu K] " +
  "[--sizes 1,8,32,128,256] [--replays 200] [--warmup 20] [--combine-wire dtype|f32] [--md FILE] [--json FILE]";

/**
 * Parses the decode benchmark's options (without `--mode decode`).
 *
 * @example
 * ```ts
 * import { parseDecodeArgs } from "./decode.ts";
 * const o = parseDecodeArgs(["--sizes", "1,8", "--replays", "300"]);
 * console.assert(o.sizes.join() === "1,8" && o.replays === 300 && o.ranksPerGpu === 1);
 * ```
 */
export function parseDecodeArgs(argv: readonly string[]): DecodeBenchOptions {
  const known = [
    "gpus",
    "ranks-per-gpu",
    "sizes",
    "replays",
    "warmup",
    "combine-wire",
    "md",
    "json",
    "result",
  ];
  const v = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const eq = arg.indexOf("=");
    const name = arg.startsWith("--") ? (eq >= 0 ? arg.slice(2, eq) : arg.slice(2)) : "";
    const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
    if (!known.includes(name) || value === undefined) {
      throw new WeftError({
        field: arg,
        problem: "is not a decode bench option with a value",
        fix: USAGE,
      });
    }
    v.set(name, value);
  }
  const int = (name: string, fallback: number, min: number): number => {
    const n = Number(v.get(name) ?? fallback);
    if (!Number.isInteger(n) || n < min) {
      throw new WeftError({
        field: `--${name}`,
        problem: `must be an integer ≥ ${min}`,
        fix: USAGE,
      });
    }
    return n;
  };
  const sizes = (v.get("sizes") ?? "1,8,32,128,256").split(",").map((s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 1) {
      throw new WeftError({ field: "--sizes", problem: `has "${s}"`, fix: USAGE });
    }
    return n;
  });
  const wire = v.get("combine-wire") ?? "dtype";
  if (wire !== "dtype" && wire !== "f32") {
    throw new WeftError({ field: "--combine-wire", problem: `is "${wire}"`, fix: USAGE });
  }
  return {
    ...(v.has("gpus") ? { gpus: int("gpus", 1, 1) } : {}),
    ranksPerGpu: int("ranks-per-gpu", 1, 1),
    sizes,
    replays: int("replays", 200, 1),
    warmup: int("warmup", 20, 0),
    combineWire: wire,
    ...(v.has("md") ? { md: v.get("md")! } : {}),
    ...(v.has("json") ? { json: v.get("json")! } : {}),
    ...(v.has("result") ? { result: v.get("result")! } : {}),
  };
}

/** The worker's command line for `options`. */
export function decodeWorkerArgs(options: DecodeBenchOptions, result: string): string[] {
  return [
    "--sizes",
    options.sizes.join(","),
    "--replays",
    String(options.replays),
    "--warmup",
    String(options.warmup),
    "--combine-wire",
    options.combineWire,
    "--ranks-per-gpu",
    String(options.ranksPerGpu),
    "--result",
    result,
  ];
}

const us = (t: DecodeTiming) => `${t.medianUs.toFixed(1)} / ${t.p99Us.toFixed(1)}`;

/**
 * The rows as a markdown table (paste into bench/RESULTS.md).
 *
 * @example
 * ```ts
 * import { decodeTable } from "./decode.ts";
 * const t = { medianUs: 10, p99Us: 12 };
 * const md = decodeTable([{ tokens: 8, world: 1, ranksPerGpu: 1, expertCapacity: 8, heapBytes: 2 ** 20,
 *   deviceBytes: 2 ** 21, dispatch: t, combine: t, both: t }]);
 * console.assert(md.includes("| 8 | 1 | 1 | 8 | 1048576 | 2097152 | 10.0 / 12.0 |") && md.includes("not a performance figure"));
 * ```
 */
export function decodeTable(rows: readonly DecodeBenchRow[]): string {
  const head =
    "| tokens/rank | world | ranks/GPU | C | heap bytes | device bytes | dispatch µs (median / p99) | " +
    "combine µs | dispatch + combine µs | note |\n|---|---|---|---|---|---|---|---|---|---|\n";
  return head +
    rows.map((r) =>
      `| ${r.tokens} | ${r.world} | ${r.ranksPerGpu} | ${r.expertCapacity} | ${r.heapBytes} | ` +
      `${r.deviceBytes} | ${us(r.dispatch)} | ${us(r.combine)} | ${us(r.both)} | ` +
      `${
        r.world === 1 || r.ranksPerGpu > 1
          ? "not a performance figure (ranks share a GPU / no peer)"
          : "CUDA graph replay, CUDA events"
      } |`
    ).join("\n") + "\n";
}

/**
 * `argv` without `--mode decode` when it asks for decode mode, else
 * undefined (`--mode default` is the default benchmark).
 *
 * @example
 * ```ts
 * import { decodeModeArgs } from "./decode.ts";
 * console.assert(decodeModeArgs(["--mode", "decode", "--sizes", "1"])?.join() === "--sizes,1");
 * console.assert(decodeModeArgs(["--sizes", "4096"]) === undefined);
 * ```
 */
export function decodeModeArgs(argv: readonly string[]): string[] | undefined {
  const rest: string[] = [];
  let mode = "default";
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--mode") mode = argv[++i] ?? "";
    else if (argv[i].startsWith("--mode=")) mode = argv[i].slice(7);
    else rest.push(argv[i]);
  }
  if (mode !== "decode" && mode !== "default") {
    throw new WeftError({
      field: "--mode",
      problem: `is "${mode}"`,
      fix: 'pass "decode" or "default"',
    });
  }
  return mode === "decode" ? rest : undefined;
}

/** The driver: returns the exit code. */
export async function mainDecode(argv: readonly string[], visibleGpus: number): Promise<number> {
  let options: DecodeBenchOptions;
  try {
    options = parseDecodeArgs(argv);
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  }
  const gpus = options.gpus ?? visibleGpus;
  const result = await launchWorkers<DecodeBenchRow[]>(
    "./decode_worker.ts",
    gpus,
    (path) => decodeWorkerArgs(options, path),
    options.ranksPerGpu > 1 ? { ranksPerGpu: options.ranksPerGpu } : {},
  );
  if (typeof result === "number") return result;
  const md = decodeTable(result);
  console.log(md);
  if (options.md !== undefined) await Deno.writeTextFile(options.md, md);
  if (options.json !== undefined) {
    await Deno.writeTextFile(options.json, JSON.stringify(result, null, 2));
  }
  return 0;
}
