/**
 * `deno task launch --gpus N script.ts [args…]`: one process per GPU, like
 * torchrun. Each process gets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
 * NODE_RANK, WEFT_DEVICE and WEFT_STORE (the rendezvous store, hosted by the
 * launcher of node 0). Output lines are prefixed `[rank r] `. The first rank
 * that fails stops the others (SIGTERM, then SIGKILL after a grace period)
 * and the launcher exits non-zero naming it. Ctrl-C stops every rank.
 *
 * The parent environment passes through unchanged (NCCL_NVLS_ENABLE,
 * CUDA_VISIBLE_DEVICES, …). Nothing here needs a GPU: `--gpus N` only sets
 * the number of processes.
 *
 * Options:
 *   --gpus N            processes on this node (required)
 *   --nnodes K          nodes in the world (default 1); one launcher per node
 *   --node-rank i       this node's index (default 0)
 *   --master host:port  the store address; node 0 listens on its port
 *                       (required with --nnodes > 1)
 *   --emulate-nodes M   on one host, M groups of N/M processes, each group
 *                       with its own NCCL_HOSTID and NODE_RANK
 *   --grace s           seconds between SIGTERM and SIGKILL (default 5)
 *   --timeout s         stop every rank after s seconds (default: none)
 *
 * @module
 */
import { WeftError } from "../../dsl/errors.ts";
import { ENV, parseAddress } from "./env.ts";
import { StoreServer } from "./store.ts";

/** What {@link launch} starts and how. */
export interface LaunchOptions {
  /** The script every rank runs. */
  readonly script: string;
  /** Arguments after the script. */
  readonly args?: readonly string[];
  /** Processes on this node. */
  readonly gpus: number;
  /** Nodes in the world (default 1). */
  readonly nnodes?: number;
  /** This node's index (default 0). */
  readonly nodeRank?: number;
  /** Store address `host:port`; node 0 hosts it. Required with nnodes > 1. */
  readonly master?: string;
  /** Split this host's processes into M emulated nodes (distinct NCCL_HOSTID). */
  readonly emulateNodes?: number;
  /** Milliseconds between SIGTERM and SIGKILL when stopping ranks (default 5000). */
  readonly graceMs?: number;
  /** Stop every rank after this many milliseconds. */
  readonly timeoutMs?: number;
  /** Extra variables for every rank, on top of the inherited environment. */
  readonly env?: Readonly<Record<string, string>>;
  /** Permission flags for `deno run` (default `["--allow-all"]`). */
  readonly denoFlags?: readonly string[];
  /** Receives every output line (prefixed, newline-terminated) and the launcher's own messages. */
  readonly output?: (stream: "stdout" | "stderr", text: string) => void;
  /** Aborting stops every rank (the CLI wires Ctrl-C here). */
  readonly signal?: AbortSignal;
}

/** How one rank ended. */
export interface RankExit {
  /** Global rank. */
  readonly rank: number;
  /** Exit code (128 + n when killed by signal n). */
  readonly code: number;
  /** The signal that killed it, if one did. */
  readonly signal: Deno.Signal | null;
}

/** How the launch ended. */
export interface LaunchResult {
  /** 0 when every rank succeeded; otherwise the launcher's exit code. */
  readonly code: number;
  /** The rank that failed first, if any. */
  readonly failedRank?: number;
  /** One line naming what went wrong, if anything did. */
  readonly message?: string;
  /** Every rank of this node, in rank order. */
  readonly exits: readonly RankExit[];
  /** Wall time of the whole launch. */
  readonly elapsedMs: number;
}

/** The variables {@link launch} sets for process `index` of this node. */
export interface RankPlacement {
  /** Global rank of the process. */
  readonly rank: number;
  /** Variables set for it (on top of the inherited environment). */
  readonly env: Readonly<Record<string, string>>;
}

/**
 * Computes each local process's rank and variables (exported so the mapping
 * is testable without starting anything).
 *
 * @example
 * ```ts
 * import { placeRanks } from "./launch.ts";
 * const p = placeRanks({ gpus: 4, emulateNodes: 2 }, "127.0.0.1:1234");
 * console.assert(p[3].env.NODE_RANK === "1" && p[3].env.LOCAL_RANK === "1" && p[3].env.WEFT_DEVICE === "3");
 * ```
 */
export function placeRanks(
  options: Pick<LaunchOptions, "gpus" | "nnodes" | "nodeRank" | "emulateNodes">,
  store: string,
): RankPlacement[] {
  const { gpus, nnodes, nodeRank, emulate } = validate(options);
  const perNode = gpus / emulate;
  return Array.from({ length: gpus }, (_, i) => {
    const rank = nodeRank * gpus + i;
    const env: Record<string, string> = {
      [ENV.rank]: String(rank),
      [ENV.world]: String(nnodes * gpus),
      [ENV.localRank]: String(i % perNode),
      [ENV.localWorld]: String(perNode),
      [ENV.nodeRank]: String(emulate > 1 ? Math.floor(i / perNode) : nodeRank),
      [ENV.device]: String(i),
      [ENV.store]: store,
    };
    if (emulate > 1) env.NCCL_HOSTID = `weft-node-${Math.floor(i / perNode)}`;
    return { rank, env };
  });
}

function validate(options: Pick<LaunchOptions, "gpus" | "nnodes" | "nodeRank" | "emulateNodes">): {
  gpus: number;
  nnodes: number;
  nodeRank: number;
  emulate: number;
} {
  const gpus = options.gpus;
  const nnodes = options.nnodes ?? 1;
  const nodeRank = options.nodeRank ?? 0;
  const emulate = options.emulateNodes ?? 1;
  const bad = (field: string, problem: string, fix: string): never => {
    throw new WeftError({ field, problem, fix });
  };
  if (!Number.isInteger(gpus) || gpus < 1) bad("--gpus", `is ${gpus}`, "pass --gpus N with N ≥ 1");
  if (!Number.isInteger(nnodes) || nnodes < 1) {
    bad("--nnodes", `is ${nnodes}`, "pass --nnodes K with K ≥ 1");
  }
  if (!Number.isInteger(nodeRank) || nodeRank < 0 || nodeRank >= nnodes) {
    bad("--node-rank", `is ${nodeRank} with --nnodes ${nnodes}`, "pass 0 ≤ --node-rank < --nnodes");
  }
  if (!Number.isInteger(emulate) || emulate < 1 || gpus % emulate !== 0) {
    bad("--emulate-nodes", `is ${emulate} with --gpus ${gpus}`, "pass a divisor of --gpus");
  }
  if (emulate > 1 && nnodes > 1) {
    bad(
      "--emulate-nodes",
      "cannot be combined with --nnodes > 1",
      "emulate nodes on one host only",
    );
  }
  return { gpus, nnodes, nodeRank, emulate };
}

/**
 * Starts one `deno run` per local rank and waits for all of them. On the
 * first failure it stops the rest and reports that rank.
 *
 * @example
 * ```ts ignore
 * import { launch } from "./launch.ts";
 * const result = await launch({ script: "tests/gpu/worker.ts", gpus: 4 });
 * if (result.code !== 0) console.error(result.message);
 * ```
 */
export async function launch(options: LaunchOptions): Promise<LaunchResult> {
  const started = Date.now();
  const { nnodes, nodeRank } = validate(options);
  const out = options.output ?? writeToConsole;
  const graceMs = options.graceMs ?? 5000;
  const master = options.master;
  if (nnodes > 1 && master === undefined) {
    throw new WeftError({
      field: "--master",
      problem: "is required with --nnodes > 1",
      fix: "pass --master host:port with the address of node 0 to every node's launcher",
    });
  }
  const masterAddr = master === undefined ? undefined : parseAddress(master);
  if (master !== undefined && masterAddr === undefined) {
    throw new WeftError({
      field: "--master",
      problem: `"${master}" is not host:port`,
      fix: "pass e.g. --master 10.0.0.1:29500",
    });
  }

  const server = nodeRank === 0
    ? StoreServer.listen(
      masterAddr === undefined
        ? {}
        : { hostname: bindHostFor(masterAddr.hostname), port: masterAddr.port },
    )
    : undefined;
  try {
    const store = master ?? server!.address;
    if (nnodes > 1 && server !== undefined) {
      out("stderr", `weft launch: store listening for ${nnodes} nodes at ${store}\n`);
    }
    return await runRanks(options, placeRanks(options, store), out, graceMs, started);
  } finally {
    await server?.close();
  }
}

/** A wildcard bind lets other nodes reach node 0; loopback masters stay on loopback. */
function bindHostFor(hostname: string): string {
  return hostname === "localhost" || hostname.startsWith("127.") || hostname === "::1"
    ? hostname
    : "0.0.0.0";
}

async function runRanks(
  options: LaunchOptions,
  placements: readonly RankPlacement[],
  out: (stream: "stdout" | "stderr", text: string) => void,
  graceMs: number,
  started: number,
): Promise<LaunchResult> {
  const flags = options.denoFlags ?? ["--allow-all"];
  const children = placements.map((p) =>
    new Deno.Command(Deno.execPath(), {
      args: ["run", ...flags, options.script, ...(options.args ?? [])],
      env: { ...options.env, ...p.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn()
  );
  const running = new Set(children.map((_, i) => i));
  let failure: { rank?: number; message: string; code: number } | undefined;
  let killTimer: ReturnType<typeof setTimeout> | undefined;

  const stopAll = (): void => {
    for (const i of running) signalChild(children[i], "SIGTERM");
    killTimer ??= setTimeout(() => {
      for (const i of running) signalChild(children[i], "SIGKILL");
    }, graceMs);
  };
  const fail = (f: { rank?: number; message: string; code: number }): void => {
    if (failure !== undefined) return;
    failure = f;
    out(
      "stderr",
      `weft launch: ${f.message}${running.size > 0 ? "; stopping the other ranks" : ""}\n`,
    );
    stopAll();
  };

  const timeout = options.timeoutMs === undefined ? undefined : setTimeout(() => {
    fail({ message: `timed out after ${options.timeoutMs} ms`, code: 124 });
  }, options.timeoutMs);
  const onAbort = (): void => fail({ message: "interrupted", code: 130 });
  if (options.signal?.aborted) onAbort();
  options.signal?.addEventListener("abort", onAbort);

  const exits: RankExit[] = new Array(children.length);
  const pumps = children.flatMap((child, i) => {
    const prefix = `[rank ${placements[i].rank}] `;
    return [
      pumpLines(child.stdout, (line) => out("stdout", prefix + line)),
      pumpLines(child.stderr, (line) => out("stderr", prefix + line)),
    ];
  });
  const waits = children.map(async (child, i) => {
    const status = await child.status;
    running.delete(i);
    const rank = placements[i].rank;
    exits[i] = { rank, code: status.code, signal: status.signal };
    if (!status.success) {
      const how = status.signal !== null
        ? `was killed by ${status.signal}`
        : `exited with code ${status.code}`;
      fail({ rank, message: `rank ${rank} ${how}`, code: status.code !== 0 ? status.code : 1 });
    }
  });
  try {
    await Promise.all(waits);
    await Promise.all(pumps);
  } finally {
    clearTimeout(killTimer);
    clearTimeout(timeout);
    options.signal?.removeEventListener("abort", onAbort);
  }
  const elapsedMs = Date.now() - started;
  if (failure === undefined) return { code: 0, exits, elapsedMs };
  return {
    code: failure.code,
    ...(failure.rank !== undefined ? { failedRank: failure.rank } : {}),
    message: failure.message,
    exits,
    elapsedMs,
  };
}

function signalChild(child: Deno.ChildProcess, signal: Deno.Signal): void {
  try {
    child.kill(signal);
  } catch {
    // It exited between the check and the kill.
  }
}

/** Calls `line` for every newline-terminated line; a last partial line gets a newline. */
async function pumpLines(
  stream: ReadableStream<Uint8Array>,
  line: (text: string) => void,
): Promise<void> {
  let rest = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    rest += chunk;
    let nl: number;
    while ((nl = rest.indexOf("\n")) >= 0) {
      line(rest.slice(0, nl + 1));
      rest = rest.slice(nl + 1);
    }
  }
  if (rest !== "") line(rest + "\n");
}

const encoder = new TextEncoder();

function writeToConsole(stream: "stdout" | "stderr", text: string): void {
  const target = stream === "stdout" ? Deno.stdout : Deno.stderr;
  const bytes = encoder.encode(text);
  let off = 0;
  while (off < bytes.length) off += target.writeSync(bytes.subarray(off));
}

const USAGE = `usage: deno task launch --gpus N [--nnodes K --node-rank i --master host:port]
                        [--emulate-nodes M] [--grace s] [--timeout s] script.ts [args...]`;

/**
 * Parses the command line: options up to the script, everything after it
 * goes to the script.
 *
 * @example
 * ```ts
 * import { parseLaunchArgs } from "./launch.ts";
 * const o = parseLaunchArgs(["--gpus", "2", "w.ts", "--gpus", "9"]);
 * console.assert(o.gpus === 2 && o.args?.[1] === "9");
 * ```
 */
export function parseLaunchArgs(argv: readonly string[]): LaunchOptions {
  const values: Record<string, string> = {};
  let i = 0;
  for (; i < argv.length && argv[i].startsWith("--"); i++) {
    const eq = argv[i].indexOf("=");
    const name = eq >= 0 ? argv[i].slice(2, eq) : argv[i].slice(2);
    const value = eq >= 0 ? argv[i].slice(eq + 1) : argv[++i];
    if (
      !["gpus", "nnodes", "node-rank", "master", "emulate-nodes", "grace", "timeout"].includes(name)
    ) {
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
    if (!Number.isFinite(n) || n < 0) {
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
  return {
    script,
    args: argv.slice(i + 1),
    gpus: num("gpus")!,
    ...(values.nnodes !== undefined ? { nnodes: num("nnodes") } : {}),
    ...(values["node-rank"] !== undefined ? { nodeRank: num("node-rank") } : {}),
    ...(values.master !== undefined ? { master: values.master } : {}),
    ...(values["emulate-nodes"] !== undefined ? { emulateNodes: num("emulate-nodes") } : {}),
    ...(grace !== undefined ? { graceMs: grace * 1000 } : {}),
    ...(timeout !== undefined ? { timeoutMs: timeout * 1000 } : {}),
  };
}

/**
 * The CLI: parses `argv`, launches, returns the exit code. Ctrl-C (and
 * SIGTERM to the launcher) stops every rank.
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
  const stop = (): void => controller.abort();
  const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  try {
    const result = await launch({ ...options, signal: controller.signal });
    if (result.code !== 0) console.error(`weft launch: failed: ${result.message}`);
    return result.code;
  } catch (error) {
    console.error(error instanceof WeftError ? error.message : String(error));
    return 2;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
