/**
 * `deno task launch --gpus N script.ts [args…]`: one process per GPU (or k
 * per GPU), like torchrun. Each process gets RANK, WORLD_SIZE, LOCAL_RANK,
 * LOCAL_WORLD_SIZE, NODE_RANK, WEFT_DEVICE, WEFT_STORE (the rendezvous store,
 * hosted by the launcher of node 0) and WEFT_STORE_SECRET (the job's store
 * secret). Output lines are prefixed `[rank r] `. The first rank that fails
 * stops the others (SIGTERM to its process group, then SIGKILL after a grace
 * period) and the launcher exits non-zero naming it. Ctrl-C stops every rank
 * (exit 130), SIGTERM too (exit 143). Ranks exit when the launcher dies, even
 * by SIGKILL (a watchdog is preloaded into every rank).
 *
 * The parent environment passes through unchanged (NCCL_NVLS_ENABLE,
 * CUDA_VISIBLE_DEVICES, …). Nothing here needs a GPU: `--gpus N` only sets
 * the number of processes and their WEFT_DEVICE.
 *
 * Several nodes on one GPU: `--gpus 1 --ranks-per-gpu 4 --emulate-nodes 2`
 * runs 4 ranks on GPU 0 as 2 nodes × 2 ranks. With k > 1 ranks per GPU every
 * process gets its own NCCL_HOSTID (NCCL refuses two ranks of one
 * communicator on one GPU under one host hash); otherwise emulated nodes get
 * one NCCL_HOSTID each. weft takes node grouping from NODE_RANK/LOCAL_* only.
 *
 * Options: see {@link USAGE}. The split of concerns: `launch_plan.ts`
 * (options, validation, {@link placeRanks}), `launch_run.ts` (process
 * supervision, {@link launch}), this file (the command line).
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import type { LaunchOptions } from "./launch_plan.ts";
import { launch } from "./launch_run.ts";

export {
  type LaunchOptions,
  type LaunchResult,
  type LaunchShape,
  type PlacementOptions,
  placeRanks,
  type RankExit,
  type RankPlacement,
  resolveSecret,
  storeBindHost,
  validateLaunch,
} from "./launch_plan.ts";
export { INTERRUPT_EXIT_CODE, launch, SIGTERM_EXIT_CODE } from "./launch_run.ts";

/** The launcher's usage text, printed with every command-line error. */
export const USAGE: string =
  `usage: deno task launch --gpus N [--ranks-per-gpu k] [--emulate-nodes M]
                        [--nnodes K --node-rank i --master host:port [--bind host]]
                        [--secret s] [--grace s] [--timeout s] script.ts [args...]
  --gpus N            GPUs on this host (required)
  --ranks-per-gpu k   processes per GPU (default 1): N·k processes, process i
                      drives GPU floor(i/k) (WEFT_DEVICE); with k > 1 each gets
                      its own NCCL_HOSTID
  --emulate-nodes M   one host only: the N·k processes form M nodes of N·k/M
                      consecutive ranks (NODE_RANK, LOCAL_RANK, LOCAL_WORLD_SIZE;
                      one NCCL_HOSTID per node when k = 1); M must divide N·k
  --nnodes K          nodes in the world (default 1); one launcher per node
  --node-rank i       this node's index, 0 <= i < K (default 0)
  --master host:port  the store address; node 0 listens there (required with K > 1)
  --bind host         interface node 0's store binds (default: --master's host,
                      else 127.0.0.1; never 0.0.0.0 unless given)
  --secret s          the job's store secret, the same on every node (default:
                      WEFT_STORE_SECRET, else generated on one host; required
                      with K > 1; at least 16 characters). Prefer setting
                      WEFT_STORE_SECRET: a flag shows in \`ps\`
  --grace s           seconds between SIGTERM and SIGKILL when stopping (default 5)
  --timeout s         stop every rank after s seconds; also bounds store waits
                      (default: none; store waits then end after 15 min)
example: deno task launch --gpus 1 --ranks-per-gpu 4 --emulate-nodes 2 script.ts`;

const OPTIONS = [
  "gpus",
  "ranks-per-gpu",
  "nnodes",
  "node-rank",
  "master",
  "bind",
  "secret",
  "emulate-nodes",
  "grace",
  "timeout",
];

/**
 * Parses the command line: options up to the script, everything after it
 * goes to the script.
 *
 * @example
 * ```ts
 * import { parseLaunchArgs } from "./launch.ts";
 * const o = parseLaunchArgs(["--gpus", "2", "--ranks-per-gpu", "2", "w.ts", "--gpus", "9"]);
 * console.assert(o.gpus === 2 && o.ranksPerGpu === 2 && o.args?.[1] === "9");
 * ```
 */
export function parseLaunchArgs(argv: readonly string[]): LaunchOptions {
  const values: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length && argv[i].startsWith("--"); i++) {
    const eq = argv[i].indexOf("=");
    const name = eq >= 0 ? argv[i].slice(2, eq) : argv[i].slice(2);
    const value = eq >= 0 ? argv[i].slice(eq + 1) : argv[++i];
    if (!OPTIONS.includes(name)) {
      throw new WeftError({ field: `--${name}`, problem: "is not a launcher option", fix: USAGE });
    }
    if (value === undefined) {
      throw new WeftError({ field: `--${name}`, problem: "needs a value", fix: USAGE });
    }
    values[name] = value;
  }
  const script = argv[i];
  if (script === undefined) {
    throw new WeftError({ field: "script", problem: "is missing", fix: USAGE });
  }
  if (values.gpus === undefined) {
    throw new WeftError({ field: "--gpus", problem: "is required", fix: USAGE });
  }
  const num = (name: string): number | undefined => {
    if (values[name] === undefined) return undefined;
    const n = Number(values[name]);
    if (values[name].trim() === "" || !Number.isFinite(n) || n < 0) {
      throw new WeftError({
        field: `--${name}`,
        problem: `"${values[name]}" is not a number`,
        fix: USAGE,
      });
    }
    return n;
  };
  const grace = num("grace");
  const timeout = num("timeout");
  const opt = <K extends keyof LaunchOptions>(
    key: K,
    value: LaunchOptions[K] | undefined,
  ): Partial<LaunchOptions> => (value === undefined ? {} : { [key]: value });
  return {
    script,
    args: argv.slice(i + 1),
    gpus: num("gpus")!,
    ...opt("ranksPerGpu", num("ranks-per-gpu")),
    ...opt("nnodes", num("nnodes")),
    ...opt("nodeRank", num("node-rank")),
    ...opt("master", values.master),
    ...opt("bind", values.bind),
    ...opt("secret", values.secret),
    ...opt("emulateNodes", num("emulate-nodes")),
    ...opt("graceMs", grace === undefined ? undefined : grace * 1000),
    ...opt("timeoutMs", timeout === undefined ? undefined : timeout * 1000),
  };
}

/**
 * The CLI: parses `argv`, launches, returns the exit code. Ctrl-C stops
 * every rank and returns 130; SIGTERM to the launcher does the same and
 * returns 143.
 *
 * @example
 * ```ts ignore
 * import { main } from "./launch.ts";
 * Deno.exit(await main(["--gpus", "2", "tests/gpu/worker.ts"]));
 * ```
 */
export async function main(argv: readonly string[]): Promise<number> {
  let options: LaunchOptions;
  try {
    options = parseLaunchArgs(argv);
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  }
  const controller = new AbortController();
  const handlers: [Deno.Signal, () => void][] = [
    ["SIGINT", () => controller.abort("SIGINT")],
    ["SIGTERM", () => controller.abort("SIGTERM")],
  ];
  for (const [s, h] of handlers) Deno.addSignalListener(s, h);
  try {
    const result = await launch({ ...options, signal: controller.signal });
    if (result.code !== 0) console.error(`weft launch: failed: ${result.message}`);
    return result.code;
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  } finally {
    for (const [s, h] of handlers) Deno.removeSignalListener(s, h);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
